"""Frame sequences to disk: frames, manifest, contact sheet, plot, GIF/MP4/ZIP; resumable.

`render_sequence(engine, source, target, thetas, alphas, seed, out_dir)` renders one vSLERP
sequence (a sweep, or a grid of theta x alpha) with a loaded pipeline into ``out_dir``, and
`render_path(engine, keyframes, out_dir, frames=...)` a path through keyframes
(`vslerp_app.paths`), with the same files, manifest and resume:

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

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch

from vslerp_app import manifest as mf
from vslerp_app import smoothness
from vslerp_app.engine import embedding_digest
from vslerp_app.files import OutputDir, RenderError, describe_os_error, output_path, remove_partials
from vslerp_app.images import ImageInputError, image_fingerprint, load_image
from vslerp_app.manifest import FRAMES_DIR, MANIFEST_FORMAT, MANIFEST_NAME
from vslerp_app.outputs import DEFAULT_FPS, OutputRequest, drop_missing_outputs, sheet_columns, write_outputs
from vslerp_app.requests import PathRequest, Sampling, SweepRequest
from vslerp_app.specs import MAX_COUNT

__all__ = ["FRAMES_DIR", "MANIFEST_NAME", "RenderError", "RenderProgress", "check_output_folder",
           "check_path_request", "check_sweep_request", "checked_path_request", "iter_render",
           "iter_render_path", "iter_render_sequence", "prepare_output", "render_path", "render_request",
           "render_sequence"]

logger = logging.getLogger(__name__)

SAMPLING_OPTIONS = ("preview", "steps", "super_res_steps", "guidance_scale", "noise_level", "resolution",
                    "strength", "adapter_scale", "prompt")


def _load_input(src, role: str, label: str | None = None):
    """(PIL image or embedding tensor, description for the manifest), or ValueError.

    The error starts with ``label`` (default: "<role> image")."""
    if type(src).__name__ == "Tensor":  # a raw embedding
        emb = src.detach().float().cpu().flatten().contiguous()
        digest = hashlib.sha256(emb.numpy().tobytes()).hexdigest()
        return emb, {"kind": "embedding", "dim": int(emb.shape[0]), "sha256": digest}
    try:
        img = load_image(src)
    except ImageInputError as e:
        raise ValueError(f"{label or role + ' image'}: {e}") from None
    info = {"kind": "image", "size": list(img.size), "sha256": image_fingerprint(img)}
    if isinstance(src, (str, os.PathLike)):
        info["path"] = str(src)
    return img, info


@dataclass
class _Plan:
    """Everything a render is asked for, checked, before any frame is rendered."""

    pairs: list[tuple[float, float]]  # (theta, alpha) per frame; on a path, the segment's local ones
    thetas: list[float]
    alphas: list[float]
    grid: bool
    seed: int
    inputs: dict  # role -> (image or embedding, description); a path: "keyframes" -> (images, descriptions)
    pinned: dict  # what the user asked for, as pinned in the manifest's settings
    sampling: dict  # the sampling overrides that are not None
    chunk: int
    settings: object  # the effective `pipelines.RenderSettings`, checked
    render: Callable[[list[int]], list]  # frame indices -> their Frames
    path: dict | None = None  # a path's layout (`paths.PathPlan.describe`), for the manifest
    keys: list[str] | None = None  # per frame: frames of equal keys are equal, rendered once

    def values(self) -> dict:
        """The values pinned in the settings beside the request: a sweep's thetas and alphas."""
        return {} if self.path is not None else {"thetas": self.thetas, "alphas": self.alphas}


def _inputs(request: SweepRequest) -> dict:
    """role -> (image or embedding, description) of a sweep's source and target; ValueError if unreadable."""
    return {"source": _load_input(request.source, "source"), "target": _load_input(request.target, "target")}


def check_sweep_request(source, target, thetas, alphas, seed, *, grid: bool = False, fps=DEFAULT_FPS,
                        max_batch=None, conformity=None) -> SweepRequest:
    """The `SweepRequest` of a render, checked for what needs no model (values, seed, fps, both
    images readable); refused clearly. The CLI calls it before loading a model."""
    request = SweepRequest.parse(None, source=source, target=target, thetas=thetas, alphas=alphas, seed=seed,
                                 sampling=Sampling(max_batch=max_batch), grid=grid, fps=fps,
                                 conformity=conformity)
    _inputs(request)
    return request


def _check_sampling(sampling: dict, caller: str) -> None:
    unknown = set(sampling) - set(SAMPLING_OPTIONS)
    if unknown:
        raise TypeError(f"{caller} got unknown option(s) {', '.join(sorted(unknown))}")


def _pinned_overrides(sampling: Sampling) -> dict:
    """The sampling overrides a manifest pins beside the request (a (width, height) as the JSON's list,
    so a resume compares equal)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sampling.overrides().items()}


def _plan(engine, request: SweepRequest) -> _Plan:
    """The plan of a parsed sweep: its inputs read, its aims (if any) resolved, its settings checked
    unless the request was parsed against ``engine``."""
    inputs = _inputs(request)
    (src, _), (tgt, _) = inputs["source"], inputs["target"]
    settings = engine.trusted_settings(request, request.pairs())
    pairs, aims = engine.resolve_aims(src, tgt, request.pairs())
    thetas, alphas = list(request.thetas), list(request.alphas)
    if aims is not None:  # one theta and alpha per frame, the alphas found
        thetas, alphas = [t for t, _ in pairs], [a for _, a in pairs]
    pinned = {
        "model": mf.model_id(engine.model),
        "source": inputs["source"][1]["sha256"], "target": inputs["target"][1]["sha256"],
        "frames": [list(p) for p in pairs], "grid": request.grid, "seed": request.seed,
        "preview": request.sampling.preview,
        "reference": None if engine.reference is None else engine.reference.space,
    }
    if aims is not None:
        pinned["conformity"] = [a.conformity for a in request.alphas]
    chunk = request.sampling.max_batch or engine.max_batch

    def render(idxs: list[int]) -> list:
        return engine.render_pairs(src, tgt, [pairs[i] for i in idxs], request.seed, settings, chunk,
                                   aims=None if aims is None else [aims[i] for i in idxs])

    return _Plan(pairs=pairs, thetas=thetas, alphas=alphas, grid=request.grid, seed=request.seed,
                 inputs=inputs, pinned=pinned, sampling=_pinned_overrides(request.sampling), chunk=chunk,
                 settings=settings, render=render)


def _settings(engine, plan: _Plan) -> dict:
    """The settings pinned in the manifest: the request's and the effective sampling settings."""
    eff = plan.settings
    info = engine.info()
    return {
        **plan.pinned,
        "format": MANIFEST_FORMAT,
        "kind": engine.kind,
        "dtype": info["dtype"],
        **plan.values(),
        "steps": eff.steps,
        "super_res_steps": eff.super_res_steps,
        "guidance_scale": eff.guidance_scale,
        "noise_level": eff.noise_level,
        "resolution": eff.resolution,
        "strength": eff.strength,
        "adapter_scale": eff.adapter_scale,
        "prompt": eff.prompt,
        "stats": None if info.get("stats") is None else info["stats"]["checksum"],
        "reference": None if info.get("reference") is None else mf.short(info["reference"]),
    }


def check_output_folder(out_dir) -> None:
    """RenderError unless out_dir/frames could be created (or exists, writable); creates nothing.

    The CLI asks this before loading the model, so a model that cannot load leaves no folder.
    """
    out_dir = output_path(out_dir)
    folder = Path(os.path.abspath(out_dir / FRAMES_DIR))
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise RenderError(f"cannot create output directory {out_dir / FRAMES_DIR}: "
                          f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == folder else f"cannot be created in {existing} (not writable)"
        raise RenderError(f"output directory {out_dir / FRAMES_DIR} {what}")


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
    frames_denoised: int = 0  # distinct embeddings denoised (equal frames are rendered once)
    frames_reused: int = field(init=False)
    outputs_meta: dict = field(init=False)
    embeddings: dict = field(default_factory=dict)  # index -> this run's re-encoded frame (model's CLIP)
    smoothness: dict | None = None  # `_measure_smoothness`, once every frame is done

    def __post_init__(self):
        self.frames_reused = len(self.entries)
        self.outputs_meta = dict((self.old or {}).get("outputs", {}))
        drop_missing_outputs(self.outputs_meta, self.out.path)

    def manifest(self, status: str) -> dict:
        old = self.old or {}
        n = len(self.plan.pairs)
        done = [self.entries[i] for i in sorted(self.entries)]
        run = {"started": self.started, "frames_rendered": self.frames_rendered,
               "frames_denoised": self.frames_denoised, "frames_reused": self.frames_reused,
               "device": self.info["device"], "host": socket.gethostname(), **_process_info(),
               "seconds": round(time.perf_counter() - self.t_start, 3)}
        return {
            "format": MANIFEST_FORMAT, "status": status, "fingerprint": mf.fingerprint(self.settings),
            "model": self.plan.pinned["model"], "pipeline": self.info, "settings": self.settings,
            "inputs": {role: desc for role, (_, desc) in self.plan.inputs.items()},
            "grid": self.plan.grid,
            "shape": [len(self.plan.thetas), len(self.plan.alphas)] if self.plan.grid else [n],
            **({} if self.plan.path is None else {"path": self.plan.path}),
            **({} if self.smoothness is None else {"smoothness": self.smoothness}),
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


def _render_missing(run: _Run) -> Iterator[RenderProgress]:
    """Render the frames not done yet, chunk by chunk; each chunk lands on disk as it finishes."""
    plan = run.plan
    n = len(plan.pairs)
    fingerprint = mf.fingerprint(run.settings)
    for idxs in _chunks(plan, run.entries):
        t0 = time.perf_counter()
        frames = plan.render(idxs)
        run.render_seconds += time.perf_counter() - t0
        run.frames_denoised += len({embedding_digest(f.embedding) for f in frames})
        for i, frame in zip(idxs, frames, strict=True):
            name = f"{FRAMES_DIR}/{i:04d}.png"
            data = mf.png_bytes(frame.image, {"theta": frame.theta, "alpha": frame.alpha, **frame.place(),
                                              "seed": plan.seed, "fingerprint": fingerprint})
            run.out.write(name, data)
            run.entries[i] = {"index": i, "file": name, **frame.place(), **frame.readouts(),
                              "width": frame.image.width, "height": frame.image.height,
                              "sha256": hashlib.sha256(data).hexdigest()}
            run.frames_rendered += 1
            run.embeddings[i] = frame.frame_embedding
        run.save("partial")
        yield RenderProgress(len(run.entries), n, [run.entries[i] for i in sorted(run.entries)], run.out.path)


def _chunks(plan: _Plan, done: dict[int, dict]) -> Iterator[list[int]]:
    """The frames not done yet, in chunks of at most ``plan.chunk`` distinct frames.

    Frames of equal keys (equal embeddings) go into one chunk, so each is denoised once
    in the whole render, however far apart they sit.
    """
    todo = [i for i in range(len(plan.pairs)) if i not in done]
    groups: dict[object, list[int]] = {}
    for i in todo:
        groups.setdefault(i if plan.keys is None else plan.keys[i], []).append(i)
    members = list(groups.values())
    for start in range(0, len(members), plan.chunk):
        yield sorted(i for group in members[start:start + plan.chunk] for i in group)


def _last_manifest(events: Iterator[RenderProgress], progress: Callable[[int, int], None] | None) -> dict:
    """Run a render to its end, reporting progress after each chunk; its manifest."""
    for event in events:
        if event.manifest is not None:
            return event.manifest
        if progress is not None:
            progress(event.done, event.total)
    raise AssertionError("the render ended without its manifest")


def render_request(engine, request: SweepRequest | PathRequest, out_dir, outputs: OutputRequest | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Render a parsed sweep or path into ``out_dir`` (`iter_render`); return the manifest."""
    return _last_manifest(iter_render(engine, request, out_dir, outputs), progress)


def render_sequence(engine, source, target, thetas, alphas, seed: int, out_dir, *,
                    progress: Callable[[int, int], None] | None = None, **options) -> dict:
    """Render one vSLERP sequence into ``out_dir`` (resuming what is there); return the manifest.

    The arguments are `iter_render_sequence`'s; ``progress`` is called as
    progress(frames_done, frames_total) after each chunk.
    """
    return _last_manifest(iter_render_sequence(engine, source, target, thetas, alphas, seed, out_dir,
                                               **options), progress)


def iter_render_sequence(engine, source, target, thetas, alphas, seed: int, out_dir, *,
                         grid: bool = False, gif: bool = False, mp4: bool = False, zip: bool = False,
                         fps: float = DEFAULT_FPS, contact: bool = True, plot: bool = True, conformity=None,
                         max_batch: int | None = None, **sampling) -> Iterator[RenderProgress]:
    """Render one vSLERP sequence into ``out_dir``, yielding a `RenderProgress` after each chunk.

    The last event carries the manifest. Closing the generator early (a Stop button) stops
    after the chunk in progress; what is on disk stays valid and resumable. The values are
    parsed into a `SweepRequest` (`iter_render` takes one already parsed).

    Args:
        engine: a loaded `VSLERPEngine` (`vslerp_app.load_pipeline`).
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
            alpha is `VSLERPEngine.alpha_for_conformity`'s, each entry gets its "aim".
        sampling: preview, steps, super_res_steps, guidance_scale, noise_level, resolution
            (default: the model preset's).
    """
    _check_sampling(sampling, "render_sequence")
    request = SweepRequest.parse(engine, source=source, target=target, thetas=thetas, alphas=alphas,
                                 seed=seed, sampling=Sampling.from_options(max_batch=max_batch, **sampling),
                                 grid=grid, fps=fps, conformity=conformity)
    outputs = OutputRequest(contact=contact, plot=plot, gif=gif, mp4=mp4, zip=zip)
    yield from iter_render(engine, request, out_dir, outputs)


def iter_render(engine, request: SweepRequest | PathRequest, out_dir,
                outputs: OutputRequest | None = None) -> Iterator[RenderProgress]:
    """Render a parsed sweep or path into ``out_dir``, as `iter_render_sequence` and `iter_render_path`
    do; ``outputs`` says which derived files to write (its fps is the request's)."""
    plan = _path_plan(engine, request) if isinstance(request, PathRequest) else _plan(engine, request)
    outputs = dataclasses.replace(outputs or OutputRequest(), fps=request.fps)
    yield from _render(engine, plan, out_dir, outputs)


# -- paths through keyframes -------------------------------------------------------------------
def check_path_request(keyframes, frames, alphas, seed, *, loop: bool = False, spacing: str = "uniform",
                       fps=DEFAULT_FPS, max_batch=None, max_frames: int = MAX_COUNT
                       ) -> tuple[int, list[float], list[tuple]]:
    """Check what a path render needs no model for; refuse clearly.

    Keyframes (2 or more, each readable: a bad one is named by its position), the frame
    count (None: `paths.default_frames`), alphas (one, or one per segment), seed, fps.
    Returns (frames, one alpha per segment, (image or embedding, description) per keyframe). The
    CLI calls it before loading a model.
    """
    request = PathRequest.parse(None, keyframes=keyframes, frames=frames, alphas=alphas, seed=seed,
                                sampling=Sampling(max_batch=max_batch), loop=loop, spacing=spacing, fps=fps,
                                max_frames=max_frames)
    return request.frames, list(request.alphas), _keyframe_inputs(request)


def checked_path_request(request: PathRequest) -> PathRequest:
    """``request`` once every keyframe is known to be readable (a bad one named by its position)."""
    _keyframe_inputs(request)
    return request


def _keyframe_inputs(request: PathRequest) -> list[tuple]:
    count = len(request.keyframes)
    return [_load_input(src, "keyframe", f"keyframe {i + 1} of {count}")
            for i, src in enumerate(request.keyframes)]


def _path_plan(engine, request: PathRequest) -> _Plan:
    loaded = _keyframe_inputs(request)
    settings = engine.trusted_settings(request, [(0.0, a) for a in request.alphas])
    chunk = request.sampling.max_batch or engine.max_batch
    overrides = _pinned_overrides(request.sampling)
    images, seed = [image for image, _ in loaded], request.seed
    started = time.perf_counter()
    path = engine.plan_path(images, request.frames, list(request.alphas), loop=request.loop,
                            spacing=request.spacing, ease=request.ease, seed=seed,
                            measure={"max_batch": chunk, **{k: v for k, v in overrides.items()
                                                            if k == "guidance_scale"}})
    points = path.points
    layout = path.describe()
    if request.spacing == "perceptual":  # the preview pass's cost, beside the curves it measured
        layout["measure_seconds"] = round(time.perf_counter() - started, 3)
        layout["thetas"] = [p.theta for p in points]
    pinned = {
        "model": mf.model_id(engine.model), "keyframes": [desc["sha256"] for _, desc in loaded],
        "loop": request.loop, "spacing": request.spacing, "ease": request.ease, "alphas": path.alphas,
        "frame_count": len(points), "frames": [[p.segment, p.theta, p.alpha] for p in points], "seed": seed,
        "preview": request.sampling.preview,
        "reference": None if engine.reference is None else engine.reference.space,
    }

    def render(idxs: list[int]) -> list:
        return engine.path_frames(images, [points[i] for i in idxs], seed, settings, chunk)

    keys = [embedding_digest(e) for e in engine.path_embeddings(engine.encode_keyframes(images), points)]
    return _Plan(pairs=[(p.theta, p.alpha) for p in points], thetas=[p.theta for p in points],
                 alphas=[p.alpha for p in points], grid=False, seed=seed,
                 inputs={"keyframes": (images, [desc for _, desc in loaded])}, pinned=pinned,
                 sampling=overrides, chunk=chunk, settings=settings, render=render, path=layout, keys=keys)


def render_path(engine, keyframes, out_dir, *, progress: Callable[[int, int], None] | None = None,
                **options) -> dict:
    """Render a path through keyframes into ``out_dir`` (resuming what is there); return the manifest.

    The arguments are `iter_render_path`'s; ``progress`` is called as
    progress(frames_done, frames_total) after each chunk.
    """
    return _last_manifest(iter_render_path(engine, keyframes, out_dir, **options), progress)


def iter_render_path(engine, keyframes, out_dir, *, frames: int | None = None, alphas=0.0, seed: int = 0,
                     loop: bool = False, spacing: str = "uniform", ease: bool = False,
                     gif: bool = False, mp4: bool = False, zip: bool = False, fps: float = DEFAULT_FPS,
                     contact: bool = True, plot: bool = True, max_batch: int | None = None,
                     **sampling) -> Iterator[RenderProgress]:
    """Render a path through keyframes into ``out_dir``, yielding a `RenderProgress` after each chunk.

    The files, resume, refusals and events are those of `iter_render_sequence`; the
    manifest also has "path" (`paths.PathPlan.describe`: keyframes, segments, loop,
    spacing, ease, alphas and angles per segment, the frame of each keyframe), and each
    frame entry its "segment" and "keyframe", with theta and alpha the segment's local
    ones. Frames equal across segments (a keyframe, a hold, a segment walked back) are
    denoised once in the whole render.

    Args:
        engine: a loaded `VSLERPEngine`.
        keyframes: 2 or more images (path, bytes, PIL, array) or raw embeddings, in order.
        frames, alphas, seed, loop, spacing, ease: as in `VSLERPEngine.generate_path`
            (alphas: one value, one per segment, or a SPEC).
        gif, mp4, zip, fps, contact, plot, max_batch, sampling: as in `iter_render_sequence`.
    """
    _check_sampling(sampling, "render_path")
    request = PathRequest.parse(engine, keyframes=keyframes, frames=frames, alphas=alphas, seed=seed,
                                sampling=Sampling.from_options(max_batch=max_batch, **sampling), loop=loop,
                                spacing=spacing, ease=ease, fps=fps)
    outputs = OutputRequest(contact=contact, plot=plot, gif=gif, mp4=mp4, zip=zip)
    yield from iter_render(engine, request, out_dir, outputs)


def _render(engine, plan: _Plan, out_dir, ask: OutputRequest) -> Iterator[RenderProgress]:
    """Render a checked plan into ``out_dir`` (resuming what is there), chunk by chunk."""
    # 1. What the folder holds: the same request, or refused
    out_dir = output_path(out_dir)
    old = mf.read_manifest(out_dir)
    _refuse_other_render(old, {**plan.pinned, **plan.sampling}, out_dir)

    # 2. The effective settings and their fingerprint: the same, or refused
    settings = _settings(engine, plan)
    if old is not None and old.get("fingerprint") != mf.fingerprint(settings):
        _refuse_other_render(old, settings, out_dir, every_key=True)
        raise RenderError(f"{out_dir} holds a render with another settings fingerprint; {_WHAT_TO_DO}")

    # 3. The output folder, and the frames already done there
    references = _input_readouts(engine, plan)
    prepare_output(out_dir)
    run = _Run(out=OutputDir(out_dir), plan=plan, settings=settings, info=engine.info(), old=old,
               entries=_valid_entries(old, out_dir, len(plan.pairs)))

    # 4. Render the missing frames chunk by chunk
    run.save("partial")
    yield from _render_missing(run)

    # 5. How smoothly the frames move, then the derived outputs (rebuilt when frames changed,
    # missing, or asked anew), then the manifest
    done = [run.entries[i] for i in range(len(plan.pairs))]
    old_measure = (old or {}).get("smoothness")
    run.smoothness = (old_measure if run.frames_rendered == 0 and isinstance(old_measure, dict)
                      else _measure_smoothness(engine, plan, run, done))
    label = (run.info.get("stats") or {}).get("conformity_label", "no conformity")
    title = f"{Path(plan.pinned['model']).name} ({engine.kind}), seed {plan.seed}, {label}"
    manifest = write_outputs(run.out, done, run.outputs_meta, ask, changed=run.frames_rendered > 0,
                             columns=len(plan.alphas) if plan.grid else sheet_columns(len(done)),
                             plot_args=(plan.thetas, plan.alphas, plan.grid, title, references),
                             save_manifest=lambda: run.save("complete"), steps=run.smoothness.get("model"))
    yield RenderProgress(len(done), len(done), done, out_dir, manifest)


def _measure_smoothness(engine, plan: _Plan, run: _Run, entries: list[dict]) -> dict:
    """`smoothness.describe_sequence` of the finished frames, re-encoded: in the model's CLIP
    space ("model"), the reference space when there is one ("reference"), and LPIPS ("lpips")
    where its package and weights are installed. Frames of earlier runs are read from disk."""
    images: list = []

    def frames_on_disk() -> list:
        if not images:
            images.extend(PIL.Image.open(run.out.path / e["file"]).convert("RGB") for e in entries)
        return images

    missing = [i for i in range(len(entries)) if i not in run.embeddings]
    if missing:
        encoded = engine.encoder.encode_batched([frames_on_disk()[i] for i in missing], plan.chunk)
        run.embeddings.update(zip(missing, encoded, strict=True))
    layout = _smoothness_layout(plan, entries)
    model = torch.stack([run.embeddings[i].float().cpu() for i in range(len(entries))])
    out = {"model": smoothness.describe_sequence(model, space=engine.encoder.name, **layout)}
    if engine.reference is not None:
        ref = engine.reference
        encoded = [ref.encoder.encode(frames_on_disk()[i:i + ref.batch_size])
                   for i in range(0, len(entries), ref.batch_size)]
        out["reference"] = smoothness.describe_sequence(torch.cat(encoded), space=ref.space, **layout)
    if "grid" not in layout and smoothness.lpips_weights_present():
        steps = smoothness.lpips_steps(frames_on_disk(), closed=layout.get("loop", False))
        out["lpips"] = {"space": "lpips-alex", "distance": "lpips", **smoothness.measure(steps)}
    return out


def _smoothness_layout(plan: _Plan, entries: list[dict]) -> dict:
    """How the frames line up for `smoothness.describe_sequence`: a grid, a path or a sweep."""
    if plan.grid:
        return {"grid": (len(plan.thetas), len(plan.alphas))}
    if plan.path is not None:
        return {"segments": [e["segment"] for e in entries], "keyframe_frames": plan.path["keyframe_frames"],
                "loop": plan.path["loop"]}
    return {}
_WHAT_TO_DO = "use another --out folder, or delete this one to start over"
_IMAGE_KEYS = ("source", "target", "keyframes")  # content hashes: said to have changed, not spelt out


def _spec_text(values: list[float]) -> str:
    """Values as a person typed them: one number, start:stop:count when evenly spaced, or a list."""
    if len(values) == 1:
        return f"{values[0]:g}"
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    if len(values) > 2 and max(steps) - min(steps) < 1e-9 * max(1.0, *map(abs, values)):
        return f"{values[0]:g}:{values[-1]:g}:{len(values)}"
    if len(values) > 8:
        return ",".join(f"{v:g}" for v in values[:3]) + f",... ({len(values)} values)," + f"{values[-1]:g}"
    return ",".join(f"{v:g}" for v in values)


def _readable_request(settings: dict) -> dict:
    """A render's settings as a person compares them: a sweep's frames as its theta and alpha."""
    out = {k: v for k, v in settings.items() if k not in ("frames", "thetas", "alphas")}
    frames = settings.get("frames") or []
    if frames and len(frames[0]) == 2:  # a sweep's (theta, alpha) pairs; a path's have a segment too
        for k, name in enumerate(("theta", "alpha")):
            out[name] = _spec_text(list(dict.fromkeys(float(f[k]) for f in frames)))
        out["frame count"] = len(frames)
    elif "alphas" in settings:
        out["alpha"] = _spec_text([float(a) for a in settings["alphas"]])
    return out


def _refuse_other_render(old: dict | None, settings: dict, out_dir: Path, every_key: bool = False) -> None:
    """RenderError when ``out_dir`` holds a render of other settings, saying what changed
    ("alpha 1 -> 2") and how to go on; frames are never mixed."""
    if old is None:
        return
    before, now = _readable_request(old.get("settings", {})), _readable_request(settings)
    keys = list(dict.fromkeys([*now, *before])) if every_key else list(now)
    diffs = [f"{k} image changed" if k in _IMAGE_KEYS else
             f"{k} {_plain(before.get(k))} -> {_plain(now.get(k))}"
             for k in keys if before.get(k) != now.get(k)]
    if diffs:
        raise RenderError(f"{out_dir} holds a render with other settings ({'; '.join(diffs)}); refusing to "
                          f"mix frames: {_WHAT_TO_DO}")


def _plain(value) -> str:
    """A setting's value in a message: text and numbers as they are, anything else as short JSON."""
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else mf.short(value)


def _input_readouts(engine, plan: _Plan) -> dict:
    """The inputs' own readouts (None without stats) by role ("source", "target", or "keyframe k"
    along a path); kept with their description in the manifest's ``inputs``; the plot marks them."""
    labelled = []
    for role, (value, desc) in plan.inputs.items():
        if role == "keyframes":  # a path: every keyframe, numbered from 1 as in the strip
            pairs = enumerate(zip(value, desc, strict=True))
            labelled += [(f"keyframe {k + 1}", v, d) for k, (v, d) in pairs]
        else:
            labelled.append((role, value, desc))
    for _, value, desc in labelled:
        desc["readouts"] = None if engine.stats is None else engine.readouts(engine.encode(value)).as_dict()
    return {role: desc["readouts"] for role, _, desc in labelled}


def _process_info() -> dict:
    """This process's rank when launched by accelerate/torchrun (from the environment)."""
    env = os.environ
    return {"process_index": int(env.get("RANK", 0)), "num_processes": int(env.get("WORLD_SIZE", 1))}
