"""Frame sequences to disk: frames, manifest, contact sheet, plot, GIF/MP4/ZIP; resumable.

`render_sequence(pipe, source, target, thetas, alphas, seed, out_dir)` renders one vSLERP
sequence (a sweep, or a grid of theta x alpha) with a loaded pipeline into ``out_dir``:

    out_dir/frames/0000.png ...   one PNG per frame
    out_dir/manifest.json         settings, fingerprint, per-frame readouts, versions, timings
    out_dir/contact_sheet.png     the frames tiled, captioned with theta/alpha/conformity
    out_dir/conformity.png        conformity (and likelihood) along the sweep
    out_dir/sequence.gif|.mp4|.zip  when asked

Safety: every file is written atomically (`vslerp_app.files`), so a killed run never leaves
a truncated file. Frames are rendered in chunks of ``max_batch`` and each chunk's frames and
the manifest are written as soon as it finishes. Running the same render again keeps every
frame already on disk and valid without rewriting it, and a different setting in the same
directory is refused instead of mixing frames (`vslerp_app.manifest`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vslerp_app import manifest as mf
from vslerp_app.files import OutputDir, RenderError, describe_os_error, output_path, remove_partials
from vslerp_app.images import ImageInputError, image_fingerprint, load_image
from vslerp_app.manifest import FRAMES_DIR, MANIFEST_FORMAT, MANIFEST_NAME
from vslerp_app.outputs import DEFAULT_FPS, OutputRequest, drop_missing_outputs, write_outputs
from vslerp_app.specs import (
    SpecError,
    as_values,
    check_fps,
    check_max_batch,
    check_range,
    check_seed,
    combine,
)

__all__ = ["FRAMES_DIR", "MANIFEST_NAME", "RenderError", "RenderProgress", "check_conformity_request",
           "check_request",
           "iter_render_sequence", "prepare_output", "render_sequence"]

logger = logging.getLogger(__name__)

SAMPLING_OPTIONS = ("preview", "steps", "super_res_steps", "guidance_scale", "noise_level", "resolution")


def _load_input(src, role: str):
    """(PIL image or embedding tensor, description for the manifest), or ValueError."""
    if type(src).__name__ == "Tensor":  # a raw embedding
        emb = src.detach().float().cpu().flatten().contiguous()
        digest = hashlib.sha256(emb.numpy().tobytes()).hexdigest()
        return emb, {"kind": "embedding", "dim": int(emb.shape[0]), "sha256": digest}
    try:
        img = load_image(src)
    except ImageInputError as e:
        raise ValueError(f"{role} image: {e}") from None
    info = {"kind": "image", "size": list(img.size), "sha256": image_fingerprint(img)}
    if isinstance(src, (str, os.PathLike)):
        info["path"] = str(src)
    return img, info


@dataclass
class _Plan:
    """Everything a render is asked for, checked, before any frame is rendered."""

    pairs: list[tuple[float, float]]
    thetas: list[float]
    alphas: list[float]
    grid: bool
    seed: int
    inputs: dict  # role -> (image or embedding, description)
    request: dict  # what the user asked for, as pinned in the manifest's settings
    sampling: dict  # the sampling overrides that are not None
    chunk: int
    aims: list | None = None  # per frame, the engine's AimResult when alpha was aimed at a conformity


def check_request(source, target, thetas, alphas, seed, *, grid: bool = False, fps=DEFAULT_FPS,
                  max_batch=None) -> tuple[list[float], list[float], list[tuple[float, float]], dict]:
    """Check what a render needs no model for (values, seed, fps, both images); refuse clearly.

    Returns (thetas, alphas, (theta, alpha) per frame, role -> (image or embedding,
    description)). The CLI calls it before loading a model.
    """
    theta_values, alpha_values = as_values(thetas, "theta"), as_values(alphas, "alpha")
    check_range(theta_values, alpha_values)
    pairs = combine(theta_values, alpha_values, grid)
    check_seed(seed)
    check_fps(fps)
    if max_batch is not None:
        check_max_batch(max_batch)
    inputs = {role: _load_input(src, role) for role, src in (("source", source), ("target", target))}
    return theta_values, alpha_values, pairs, inputs


def _plan(pipe, source, target, thetas, alphas, seed, grid: bool, max_batch, sampling: dict,
          conformity=None) -> _Plan:
    unknown = set(sampling) - set(SAMPLING_OPTIONS)
    if unknown:
        raise TypeError(f"render_sequence got unknown option(s) {', '.join(sorted(unknown))}")
    if conformity is not None:
        return _aimed_plan(pipe, source, target, thetas, alphas, seed, grid, max_batch, sampling, conformity)
    theta_values, alpha_values, pairs, inputs = check_request(source, target, thetas, alphas, seed,
                                                              grid=grid, max_batch=max_batch)
    seed = check_seed(seed)
    chunk = max_batch if max_batch is not None else pipe.max_batch
    overrides = {k: v for k, v in sampling.items() if v is not None and k != "preview"}
    request = {
        "model": mf.model_id(pipe.model),
        "source": inputs["source"][1]["sha256"], "target": inputs["target"][1]["sha256"],
        "frames": [list(p) for p in pairs], "grid": bool(grid), "seed": seed,
        "preview": bool(sampling.get("preview", False)),
        "reference": None if pipe.reference is None else pipe.reference.space,
    }
    return _Plan(pairs=pairs, thetas=theta_values, alphas=alpha_values, grid=bool(grid), seed=seed,
                 inputs=inputs, request=request, sampling=overrides, chunk=chunk)


def check_conformity_request(alphas, conformity, grid: bool) -> list[float]:
    """The wanted conformity values of an aimed render (finite numbers), or SpecError."""
    if alphas is not None:
        raise SpecError("give alphas or a conformity to aim at, not both (--alpha or --conformity)")
    if grid:
        raise SpecError("a conformity is aimed at per theta: it pairs with theta as a sweep, not --grid")
    return as_values(conformity, "conformity")


def _aimed_plan(pipe, source, target, thetas, alphas, seed, grid, max_batch, sampling, conformity) -> _Plan:
    """The plan of a render whose alphas are chosen for wanted conformities (one per theta)."""
    wanted = check_conformity_request(alphas, conformity, grid)
    plan = _plan(pipe, source, target, thetas, 0.0, seed, False, max_batch, sampling)
    targets = combine(plan.thetas, wanted, False)
    (src, _), (tgt, _) = plan.inputs["source"], plan.inputs["target"]
    aims = pipe.alphas_for_conformity(src, tgt, [t for t, _ in targets], [c for _, c in targets])
    plan.pairs = [(a.theta, a.alpha) for a in aims]
    plan.thetas, plan.alphas, plan.aims = [a.theta for a in aims], [a.alpha for a in aims], aims
    plan.request.update(frames=[list(p) for p in plan.pairs], conformity=wanted)
    return plan


def _settings(pipe, plan: _Plan) -> tuple[dict, object]:
    """(the settings pinned in the manifest, the effective sampling settings); checks them."""
    eff = pipe.settings_for(plan.request["preview"], **plan.sampling)
    pipe.check_inputs(plan.pairs, plan.seed, eff, plan.chunk)
    info = pipe.info()
    settings = {
        **plan.request,
        "format": MANIFEST_FORMAT,
        "kind": pipe.kind,
        "dtype": info["dtype"],
        "thetas": plan.thetas,
        "alphas": plan.alphas,
        "steps": eff.steps,
        "super_res_steps": eff.super_res_steps,
        "guidance_scale": eff.guidance_scale,
        "noise_level": eff.noise_level,
        "resolution": eff.resolution,
        "stats": None if info.get("stats") is None else info["stats"]["checksum"],
        "reference": None if info.get("reference") is None else mf.short(info["reference"]),
    }
    return settings, eff


def prepare_output(out_dir: Path) -> None:
    """Create out_dir/frames (or RenderError saying why not) and remove a killed run's leftovers."""
    frames_dir = out_dir / FRAMES_DIR
    try:
        frames_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create output directory {frames_dir}: {describe_os_error(e)}") from None
    if not os.access(frames_dir, os.W_OK):
        raise RenderError(f"output directory {frames_dir} is not writable")
    remove_partials(out_dir)
    remove_partials(frames_dir)


def _valid_entries(old: dict | None, out_dir: Path, n: int) -> dict[int, dict]:
    """Frames already done (valid on disk and in the manifest), by index; they are kept as they are."""
    entries: dict[int, dict] = {}
    for e in (old or {}).get("frames", []):
        idx = e.get("index")
        if isinstance(idx, int) and 0 <= idx < n and mf.frame_valid(out_dir, e):
            entries[idx] = e
        else:
            logger.warning("frame %s is missing or damaged, rendering it again", e.get("file"))
    return entries


@dataclass
class _Run:
    """The manifest as it grows: settings, the frames done so far, this run's record."""

    out: OutputDir
    plan: _Plan
    settings: dict
    info: dict
    old: dict | None
    entries: dict[int, dict]
    started: str = field(default_factory=mf.now)
    t_start: float = field(default_factory=time.perf_counter)
    render_seconds: float = 0.0
    frames_rendered: int = 0
    frames_reused: int = field(init=False)
    outputs_meta: dict = field(init=False)

    def __post_init__(self):
        self.frames_reused = len(self.entries)
        self.outputs_meta = dict((self.old or {}).get("outputs", {}))
        drop_missing_outputs(self.outputs_meta, self.out.path)

    def manifest(self, status: str) -> dict:
        old = self.old or {}
        n = len(self.plan.pairs)
        done = [self.entries[i] for i in sorted(self.entries)]
        run = {"started": self.started, "frames_rendered": self.frames_rendered,
               "frames_reused": self.frames_reused,
               "device": self.info["device"], "host": socket.gethostname(), **_process_info(),
               "seconds": round(time.perf_counter() - self.t_start, 3)}
        return {
            "format": MANIFEST_FORMAT, "status": status, "fingerprint": mf.fingerprint(self.settings),
            "model": self.plan.request["model"], "pipeline": self.info, "settings": self.settings,
            "inputs": {role: desc for role, (_, desc) in self.plan.inputs.items()},
            "grid": self.plan.grid,
            "shape": [len(self.plan.thetas), len(self.plan.alphas)] if self.plan.grid else [n],
            "frame_count": n, "frames_done": len(done), "frames": done,
            "outputs": self.outputs_meta, "versions": mf.library_versions(),
            "timings": {"render_seconds": round(self.render_seconds, 3),
                        "seconds_per_frame": (round(self.render_seconds / self.frames_rendered, 4)
                                              if self.frames_rendered else None),
                        "total_seconds": run["seconds"]},
            "runs": list(old.get("runs", [])) + [run],
            "created": old.get("created", self.started), "updated": mf.now(),
        }

    def save(self, status: str) -> dict:
        m = self.manifest(status)
        self.out.write(MANIFEST_NAME, json.dumps(m, indent=1).encode())
        return m


@dataclass
class RenderProgress:
    """Where a render stands, after each chunk of frames is on disk and at the end.

    Attributes:
        done, total: frames on disk (valid) and frames in the sequence.
        frames: the manifest entries of the frames on disk, in sequence order.
        out_dir: the render's folder (entry ``file`` names are relative to it).
        manifest: the final manifest, on the last event only (None before).
    """

    done: int
    total: int
    frames: list[dict]
    out_dir: Path
    manifest: dict | None = None


def _render_missing(pipe, run: _Run, eff) -> Iterator[RenderProgress]:
    """Render the frames not done yet, chunk by chunk; each chunk lands on disk as it finishes."""
    plan = run.plan
    n = len(plan.pairs)
    todo = [i for i in range(n) if i not in run.entries]
    (src, _), (tgt, _) = plan.inputs["source"], plan.inputs["target"]
    fingerprint = mf.fingerprint(run.settings)
    for start in range(0, len(todo), plan.chunk):
        idxs = todo[start:start + plan.chunk]
        t0 = time.perf_counter()
        frames = pipe.generate(src, tgt, [plan.pairs[i][0] for i in idxs], [plan.pairs[i][1] for i in idxs],
                               plan.seed, preview=eff.preview, steps=eff.steps,
                               super_res_steps=eff.super_res_steps, guidance_scale=eff.guidance_scale,
                               noise_level=eff.noise_level, resolution=eff.resolution, max_batch=plan.chunk)
        run.render_seconds += time.perf_counter() - t0
        for i, frame in zip(idxs, frames, strict=True):
            if plan.aims is not None:
                frame.aim = plan.aims[i].as_dict()
            name = f"{FRAMES_DIR}/{i:04d}.png"
            data = mf.png_bytes(frame.image, {"theta": frame.theta, "alpha": frame.alpha,
                                              "seed": plan.seed, "fingerprint": fingerprint})
            run.out.write(name, data)
            run.entries[i] = {"index": i, "file": name, **frame.readouts(),
                              "width": frame.image.width, "height": frame.image.height,
                              "sha256": hashlib.sha256(data).hexdigest()}
            run.frames_rendered += 1
        run.save("partial")
        yield RenderProgress(len(run.entries), n, [run.entries[i] for i in sorted(run.entries)], run.out.path)


def render_sequence(pipe, source, target, thetas, alphas, seed: int, out_dir, *,
                    progress: Callable[[int, int], None] | None = None, **options) -> dict:
    """Render one vSLERP sequence into ``out_dir`` (resuming what is there); return the manifest.

    The arguments are `iter_render_sequence`'s; ``progress`` is called as
    progress(frames_done, frames_total) after each chunk.
    """
    for event in iter_render_sequence(pipe, source, target, thetas, alphas, seed, out_dir, **options):
        if event.manifest is not None:
            return event.manifest
        if progress is not None:
            progress(event.done, event.total)
    raise AssertionError("iter_render_sequence ended without its manifest")


def iter_render_sequence(pipe, source, target, thetas, alphas, seed: int, out_dir, *,
                         grid: bool = False, gif: bool = False, mp4: bool = False, zip: bool = False,
                         fps: float = DEFAULT_FPS, contact: bool = True, plot: bool = True, conformity=None,
                         max_batch: int | None = None, **sampling) -> Iterator[RenderProgress]:
    """Render one vSLERP sequence into ``out_dir``, yielding a `RenderProgress` after each chunk.

    The last event carries the manifest. Closing the generator early (a Stop button) stops
    after the chunk in progress; what is on disk stays valid and resumable.

    Args:
        pipe: a loaded `VSLERPPipeline` (`vslerp_app.load_pipeline`).
        source, target: the two images (path, bytes, PIL, array) or raw embeddings.
        thetas, alphas: SPEC strings (`0.5`, `0,0.5,1`, `0:1:5`), numbers or lists of numbers.
        seed: the shared noise path of every frame.
        out_dir: the output directory (created; a previous render of the same settings is
            resumed, one of other settings refused).
        grid: every theta with every alpha (theta major) instead of a sweep.
        gif, mp4, zip: also write sequence.gif / sequence.mp4 / sequence.zip (frames+manifest).
        fps: frames per second of the GIF/MP4.
        contact, plot: write contact_sheet.png / conformity.png.
        max_batch: frames per generate call, i.e. per chunk written to disk (default: the
            pipeline's).
        conformity: with alphas=None, wanted conformities paired with thetas (a sweep); each
            alpha is `VSLERPPipeline.alpha_for_conformity`'s, each entry gets its "aim".
        sampling: preview, steps, super_res_steps, guidance_scale, noise_level, resolution
            (default: the model preset's).
    """
    # 1. Everything that can be checked before touching the output folder
    plan = _plan(pipe, source, target, thetas, alphas, seed, grid, max_batch, sampling, conformity)
    ask = OutputRequest(contact=contact, plot=plot, gif=gif, mp4=mp4, zip=zip, fps=check_fps(fps))
    out_dir = output_path(out_dir)
    old = mf.read_manifest(out_dir)
    mf.refuse_if_changed(old, {**plan.request, **plan.sampling}, out_dir,
                         keys=list(plan.request) + list(plan.sampling))

    # 2. The effective settings and their fingerprint: the same, or refused
    settings, eff = _settings(pipe, plan)
    if old is not None and old.get("fingerprint") != mf.fingerprint(settings):
        mf.refuse_if_changed(old, settings, out_dir)
        raise RenderError(f"{out_dir} holds a render with another settings fingerprint; use another "
                          "--out directory, or delete this one to start over")

    # 3. The output folder, and the frames already done there
    references = _input_readouts(pipe, plan)
    prepare_output(out_dir)
    run = _Run(out=OutputDir(out_dir), plan=plan, settings=settings, info=pipe.info(), old=old,
               entries=_valid_entries(old, out_dir, len(plan.pairs)))

    # 4. Render the missing frames chunk by chunk
    run.save("partial")
    yield from _render_missing(pipe, run, eff)

    # 5. Derived outputs (rebuilt when frames changed, missing, or asked anew), then the manifest
    done = [run.entries[i] for i in range(len(plan.pairs))]
    label = (run.info.get("stats") or {}).get("conformity_label", "no conformity")
    title = f"{Path(plan.request['model']).name} ({pipe.kind}), seed {plan.seed}, {label}"
    manifest = write_outputs(run.out, done, run.outputs_meta, ask, changed=run.frames_rendered > 0,
                             columns=len(plan.alphas) if plan.grid else min(len(done), 8),
                             plot_args=(plan.thetas, plan.alphas, plan.grid, title, references),
                             save_manifest=lambda: run.save("complete"))
    yield RenderProgress(len(done), len(done), done, out_dir, manifest)


def _input_readouts(pipe, plan: _Plan) -> dict:
    """The source's and target's own readouts (None without stats), by role; kept with their
    description in the manifest's ``inputs``; the conformity plot marks them."""
    for value, desc in plan.inputs.values():
        desc["readouts"] = None if pipe.stats is None else pipe.stats.readouts(pipe.encode(value))
    return {role: desc["readouts"] for role, (_, desc) in plan.inputs.items()}


def _process_info() -> dict:
    """This process's rank when launched by accelerate/torchrun (from the environment)."""
    env = os.environ
    return {"process_index": int(env.get("RANK", 0)), "num_processes": int(env.get("WORLD_SIZE", 1))}
