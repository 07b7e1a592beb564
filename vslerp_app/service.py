"""The studio's service layer: everything `app.py` does that needs no Gradio, testable alone.

What lives here: the server's configuration (`StudioConfig`), the per-session embedding
cache entries (one per input image, kept in `gr.State` by the app so nothing is shared
between users), the checks a request must pass before it reaches the GPU queue, the
theta/alpha values of a sequence (through `vslerp_app.specs.linspace`, as `vslerp render`),
the readouts of a frame as JSON and as a sentence, the gallery and files of a sequence
(written by `vslerp_app.render.render_sequence`, the same code as `vslerp render`), the
request folders and their clean-up, and the plain-words message of any failure.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines import GenerationError
from vslerp_app.engine import AIM_ALPHA_RANGE
from vslerp_app.files import RenderError
from vslerp_app.images import ImageInputError, image_fingerprint, load_image
from vslerp_app.specs import combine, linspace
from vslerp_app.stats import CONFORMITY_LABELS

__all__ = [
    "MAX_SEQUENCE_FRAMES",
    "SWEEP_MODES",
    "InputEntry",
    "aim_markdown",
    "aimed_alpha",
    "StudioConfig",
    "RequestError",
    "check_request",
    "embed_input",
    "frame_caption",
    "frame_readouts",
    "generate_kwargs",
    "json_safe",
    "model_markdown",
    "readouts_markdown",
    "sequence_outputs",
    "sweep_pairs",
    "sweep_values",
    "user_message",
    "wanted_conformity",
    "new_workdir",
    "cleanup_workdirs",
]

logger = logging.getLogger(__name__)

MAX_SEQUENCE_FRAMES = 96  # the paper's demo grid: 6 thetas x 16 alphas; `app.py --max-sequence-frames`
SWEEP_MODES = ("theta", "alpha", "grid")
QUALITIES = ("full", "preview")
WORK_ROOT = Path(tempfile.gettempdir()) / "vslerp-studio"


class RequestError(ValueError):
    """A request the user can fix (a missing image, a value out of range); plain message."""


@dataclass
class StudioConfig:
    """How the studio serves a loaded pipeline (`app.build_demo(pipe, config)`).

    Attributes:
        max_sequence_frames: most frames one sequence request may render.
        queue_size: most requests waiting for the model.
        max_file_size: largest upload, as Gradio reads it ("25mb").
    """

    max_sequence_frames: int = MAX_SEQUENCE_FRAMES
    queue_size: int = 16
    max_file_size: str = "25mb"

    def __post_init__(self):
        if self.max_sequence_frames < 1:
            raise ValueError(f"max_sequence_frames must be at least 1, got {self.max_sequence_frames}")


# -- inputs and their embeddings ---------------------------------------------------------
@dataclass
class InputEntry:
    """One input image of a session: its content key, raw embedding and readouts."""

    key: str
    embedding: torch.Tensor
    readouts: dict


def embed_input(pipe, path, role: str, cached: InputEntry | None = None) -> InputEntry:
    """The embedding of the image at ``path``, reusing ``cached`` when the pixels are equal.

    ``role`` ("source image", "target image") names the input in error messages. The
    embedding is computed with the pipeline's encoder directly, not through
    `VSLERPPipeline.encode`, whose cache is shared by every caller of the process: the app
    keeps each session's entries in that session's state.
    """
    if path is None:
        raise RequestError(f"Add a {role} first (upload, paste or webcam), or click an example.")
    try:
        img = load_image(path)
    except ImageInputError as e:
        raise RequestError(f"The {role} {e.problem}.") from None
    key = image_fingerprint(img)
    if cached is not None and cached.key == key:
        return cached
    emb = pipe.encoder.encode([img])[0]
    return InputEntry(key=key, embedding=emb, readouts=embedding_readouts(pipe, emb))


def embedding_readouts(pipe, emb: torch.Tensor) -> dict:
    """Conformity (and likelihood) of one raw embedding; None values without stats."""
    if pipe.stats is None:
        return {"conformity": None, "conformity_kind": None, "conformity_label": None, "log_likelihood": None,
                "conformity_percentile": None, "log_likelihood_percentile": None}
    return pipe.stats.readouts(emb)


# -- checks ---------------------------------------------------------------------------
def generate_kwargs(quality: str, steps, super_res_steps, preview_steps, guidance_scale,
                    max_batch) -> dict:
    """Keyword arguments of `VSLERPPipeline.generate` for the UI's settings.

    ``steps`` and ``super_res_steps`` are a full frame's; ``preview_steps`` a preview's
    (Karlo previews stop after the 64 px decoder, so they have no super-resolution steps).
    A None leaves the preset's default.
    """
    if quality not in QUALITIES:
        raise RequestError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    preview = quality == "preview"
    kwargs: dict = {"preview": preview}
    wanted = {"steps": preview_steps if preview else steps,
              "super_res_steps": None if preview else super_res_steps,
              "max_batch": max_batch}
    for name, value in wanted.items():
        if value is not None:
            kwargs[name] = _as_int(value, "preview_steps" if preview and name == "steps" else name)
    if guidance_scale is not None:
        try:
            kwargs["guidance_scale"] = float(guidance_scale)
        except (TypeError, ValueError):
            raise RequestError(f"guidance_scale must be a number, got {guidance_scale!r}") from None
    return kwargs


def check_request(pipe, source, target, pairs, seed, kwargs: dict,
                  max_frames: int = MAX_SEQUENCE_FRAMES) -> int:
    """Raise RequestError with a plain message for anything the engine would refuse.

    Returns the seed as an int. Cheap: no image is decoded here beyond what the checks
    of the engine need (none), so it can gate a request before it joins the GPU queue.
    """
    if source is None:
        raise RequestError("Add a source image first (upload, paste or webcam), or click an example.")
    if target is None:
        raise RequestError("Add a target image first (upload, paste or webcam), or click an example.")
    seed = _as_int(seed, "seed")
    if not pairs:
        raise RequestError("nothing to render: the sweep has no frames")
    if len(pairs) > max_frames:
        raise RequestError(f"a sequence has at most {max_frames} frames here, "
                           f"this one would have {len(pairs)}; lower the frame counts")
    settings = pipe.settings_for(kwargs.get("preview", False),
                                 **{k: kwargs.get(k) for k in ("steps", "super_res_steps", "guidance_scale")})
    try:
        pipe.check_inputs(pairs, seed, settings, kwargs.get("max_batch", pipe.max_batch))
    except ValueError as e:
        raise RequestError(str(e)) from None
    return seed


def _as_int(value, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return int(f)


# -- sweeps ----------------------------------------------------------------------------
def sweep_values(mode: str, theta: float, alpha: float, theta_start: float, theta_stop: float,
                 theta_count: int, alpha_start: float, alpha_stop: float,
                 alpha_count: int) -> tuple[list[float], list[float], bool]:
    """(thetas, alphas, grid) of a sequence, as `vslerp_app.render.render_sequence` takes them.

    mode "theta": theta_count thetas from theta_start to theta_stop at the fixed alpha;
    "alpha": alpha_count alphas at the fixed theta; "grid": every theta with every alpha
    (theta major, as the render command's --grid).
    """
    if mode not in SWEEP_MODES:
        raise RequestError(f"sweep must be one of {', '.join(SWEEP_MODES)}, got {mode!r}")
    if mode == "theta":
        return _sweep_linspace(theta_start, theta_stop, theta_count, "theta"), [float(alpha)], False
    if mode == "alpha":
        return [float(theta)], _sweep_linspace(alpha_start, alpha_stop, alpha_count, "alpha"), False
    return (_sweep_linspace(theta_start, theta_stop, theta_count, "theta"),
            _sweep_linspace(alpha_start, alpha_stop, alpha_count, "alpha"), True)


def sweep_pairs(thetas: list[float], alphas: list[float], grid: bool) -> list[tuple[float, float]]:
    """(theta, alpha) of every frame, in the order the render writes them."""
    return combine(thetas, alphas, grid)


def _sweep_linspace(start, stop, count, name) -> list[float]:
    count = _as_int(count, f"{name} frames")
    if not 1 <= count <= MAX_SEQUENCE_FRAMES:
        raise RequestError(f"{name} frames must be between 1 and {MAX_SEQUENCE_FRAMES}, got {count}")
    return linspace(float(start), float(stop), count)


# -- readouts --------------------------------------------------------------------------
def json_safe(obj):
    """The same structure with NaN/inf floats as None and tensors as lists (valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def frame_readouts(frame, source: InputEntry, target: InputEntry, model: str,
                   seconds: float | None = None) -> dict:
    """The numbers of one frame, with the source's and target's conformity beside them."""
    out = frame.readouts()
    out["size"] = list(frame.image.size)
    out["source"] = source.readouts
    out["target"] = target.readouts
    out["model"] = model
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
    return json_safe(out)


def _num(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def readouts_markdown(r: dict | None, stats_note: str = "") -> str:
    """One short paragraph a person reads under the frame."""
    if not r:
        return "Add a source and a target image, then move a slider or press **Generate**."
    kind = r.get("conformity_kind")
    head = (f"**theta = {r['theta']:.3f}, alpha = {r['alpha']:.3f}**, seed {r['seed']}"
            f"{' (preview)' if r.get('preview') else ''}")
    if kind is None:
        return (f"{head}. Conformity is not available: no image-modality statistics for this "
                f"model ({stats_note or 'none found'}).")
    label = r.get("conformity_label") or CONFORMITY_LABELS.get(kind, kind)
    source, target = r.get("source") or {}, r.get("target") or {}
    lines = [
        head,
        f"{label[:1].upper()}{label[1:]}: interpolated embedding **{_num(r.get('conformity'))}**, "
        f"generated frame **{_num(r.get('frame_conformity'))}**; "
        f"source {_num(source.get('conformity'))}, target {_num(target.get('conformity'))}.",
    ]
    lines += _percentile_lines(r)
    if r.get("frame_log_likelihood") is not None:
        lines.append(f"Whitened log-likelihood (up to a constant): embedding "
                     f"{_num(r.get('log_likelihood'), 1)}, frame {_num(r['frame_log_likelihood'], 1)}; "
                     f"source {_num(source.get('log_likelihood'), 1)}, "
                     f"target {_num(target.get('log_likelihood'), 1)}.")
    if r.get("aim"):
        lines.append(aim_markdown(r["aim"]))
    ref = r.get("reference")
    if ref:
        line = (f"Reference space `{ref.get('space')}`: frame conformity "
                f"{_num(ref.get('frame_conformity'))} ({ref.get('conformity_kind')})")
        if ref.get("frame_log_likelihood") is not None:
            line += f", log-likelihood {_num(ref['frame_log_likelihood'], 1)}"
        lines.append(line + ".")
    if r.get("seconds") is not None:
        lines.append(f"Rendered in {r['seconds']:.2f} s.")
    return "  \n".join(lines)


def _percentile_lines(r: dict) -> list[str]:
    """The population's scale, when the stats carry it: "more typical than 73% of ..."."""
    lines = []
    c, f = r.get("conformity_percentile"), r.get("frame_conformity_percentile")
    if c is not None or f is not None:
        parts = [f"the frame is more typical than {f:.0f}%" if f is not None else None,
                 f"its embedding than {c:.0f}%" if c is not None else None]
        lines.append("On the reference images' scale: " + ", ".join(p for p in parts if p)
                     + " of the images the statistics were computed from.")
    ll = r.get("frame_log_likelihood_percentile")
    if ll is not None:
        lines.append(f"The frame is more likely than {ll:.0f}% of those images (whitened CLIP).")
    return lines


def aim_markdown(aim: dict) -> str:
    """One sentence on an aimed alpha: the wanted conformity, the achieved one, and whether reached."""
    if aim.get("reachable"):
        return (f"Aimed at conformity {aim['wanted']:.4f}: alpha = {aim['alpha']:.4f} gives "
                f"{aim['achieved']:.4f}.")
    return (f"Conformity {aim['wanted']:.4f} is out of reach for alpha in "
            f"[{AIM_ALPHA_RANGE[0]:g}, {AIM_ALPHA_RANGE[1]:g}] here; the closest is {aim['achieved']:.4f}, "
            f"at alpha = {aim['alpha']:.4f}.")


def aimed_alpha(readouts: dict | None) -> tuple[float, str]:
    """(alpha, sentence) of a frame rendered at an aimed alpha, for the slider and the note."""
    aim = (readouts or {}).get("aim")
    if not aim:
        raise RequestError("This frame was not aimed at a conformity.")
    return aim["alpha"], aim_markdown(aim)


def wanted_conformity(pipe, value) -> float | None:
    """The target conformity of a request: None (not aiming), or a finite number with stats."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RequestError(f"target_conformity must be a number, got {value!r}")
    wanted = _float(value, "target_conformity")
    if not math.isfinite(wanted):
        raise RequestError(f"target_conformity must be a finite number, got {value!r}")
    if pipe.stats is None:
        raise RequestError(f"aiming at a conformity needs image statistics for this model, and there are "
                           f"none ({pipe.stats_note}); leave target_conformity empty")
    return wanted


def frame_caption(entry: dict) -> str:
    """Gallery caption of a manifest entry (or readouts dict): theta, alpha, conformity."""
    c = "" if entry.get("frame_conformity") is None else f" C={entry['frame_conformity']:.3f}"
    return f"θ={entry['theta']:.2f} α={entry['alpha']:.2f}{c}"


def sequence_outputs(manifest: dict, out_dir: Path) -> dict:
    """Paths of what `render_sequence` wrote (None where absent) and the gallery items."""
    out_dir = Path(out_dir)
    outputs = manifest.get("outputs", {})

    def path(key):
        meta = outputs.get(key) or {}
        name = meta.get("file")
        return str(out_dir / name) if name and (out_dir / name).is_file() else None

    gallery = [(str(out_dir / e["file"]), frame_caption(e)) for e in manifest["frames"]]
    return {"gallery": gallery, "plot": path("plot"), "gif": path("gif"), "mp4": path("mp4"),
            "zip": path("zip")}


def model_markdown(info: dict, defaults: dict | None = None) -> str:
    """Which model and which statistics are in use, with their provenance."""
    lines = [f"**Model**: `{info['model']}` ({info['pipeline_class']}, {info['kind']}), encoder "
             f"`{info['encoder']}` ({info['embedding_dim']}-d), on {info['device']} in {info['dtype']}."]
    stats = info.get("stats")
    if stats is None:
        lines.append(f"**Statistics**: none ({info.get('stats_note')}). Plain SLERP (alpha = 0) "
                     "works; alpha != 0 and conformity need the image-modality mean.")
    else:
        prov = stats.get("provenance") or {}
        lines.append(f"**Statistics**: {stats['describe']}.")
        details = ", ".join(f"{k}: {prov[k]}" for k in ("dataset", "encoder", "image_count",
                                                        "date", "source") if prov.get(k))
        if details:
            lines.append(f"Provenance: {details}. Checksum `{stats['checksum'][:16]}`.")
    ref = info.get("reference")
    if ref:
        ref_stats = (ref.get("stats") or {}).get("describe", "no stats")
        lines.append(f"**Reference space**: `{ref.get('space')}`, statistics: {ref_stats}.")
    if defaults:
        lines.append("Defaults: " + ", ".join(f"{k} {v}" for k, v in defaults.items()) + ".")
    return "  \n".join(lines)


# -- failures --------------------------------------------------------------------------
def user_message(exc: BaseException) -> str:
    """A plain message for any failure; details of unexpected ones stay in the server log."""
    if isinstance(exc, ImageInputError):
        return f"The image {exc.problem}."
    if isinstance(exc, (RequestError, GenerationError, RenderError)):
        return str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return ("The GPU ran out of memory. Try preview quality, fewer frames or a smaller "
                "batch limit (advanced settings).")
    if isinstance(exc, ValueError):
        return str(exc)
    logger.exception("unexpected failure in the app")
    return (f"Something went wrong while rendering ({type(exc).__name__}). Please try again; "
            "if it keeps failing, the server log has the details.")


# -- files of a sequence ------------------------------------------------------------------
def new_workdir(root: Path = WORK_ROOT) -> Path:
    """A fresh folder for one request's files (Gradio copies what it returns to its cache)."""
    path = root / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def cleanup_workdirs(root: Path = WORK_ROOT, max_age_s: float = 3600.0) -> int:
    """Delete request folders older than ``max_age_s``; returns how many were removed."""
    if not root.is_dir():
        return 0
    removed, now = 0, time.time()
    for child in root.iterdir():
        try:
            if child.is_dir() and now - child.stat().st_mtime > max_age_s:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


# -- the studio: requests in, frames and files out ----------------------------------------
def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None


def _no_decorator(duration: int):
    return lambda fn: fn


class Studio:
    """What the app's events do, without Gradio: check a request, render, lay out the result.

    ``gpu(duration)`` decorates the two functions that run the model (`spaces.GPU` on a
    ZeroGPU Space; by default nothing). Sessions are plain dicts {"source": InputEntry,
    "target": InputEntry} the app keeps per browser session.
    """

    def __init__(self, pipe, config: StudioConfig | None = None, gpu=_no_decorator):
        self.pipe = pipe
        self.config = config or StudioConfig()
        self.run_frame = gpu(60)(self._run_frame)
        self.run_sequence = gpu(240)(self._run_sequence)

    # -- model work --------------------------------------------------------------------
    def _embed_pair(self, source, target, session: dict):
        return (embed_input(self.pipe, source, "source image", session.get("source")),
                embed_input(self.pipe, target, "target image", session.get("target")))

    def _run_frame(self, source, target, session: dict, theta, alpha, seed, kwargs, wanted=None):
        """Embed the inputs (reusing this session's entries) and render one frame; with
        ``wanted``, at the alpha that gives that conformity (instead of ``alpha``)."""
        src, tgt = self._embed_pair(source, target, session)
        aim = None
        if wanted is not None:
            aim = self.pipe.alpha_for_conformity(src.embedding, tgt.embedding, theta, wanted)
            alpha = aim.alpha
        frames = self.pipe.generate(src.embedding, tgt.embedding, [theta], [alpha], seed, **kwargs)
        if aim is not None:
            frames[0].aim = aim.as_dict()
        return frames[0], src, tgt

    def _run_sequence(self, source, target, session: dict, thetas, alphas, grid, seed, kwargs, fps,
                      out_dir, progress=None):
        """Embed the inputs and render a sequence with its files (`vslerp render`'s code)."""
        from vslerp_app.render import render_sequence

        src, tgt = self._embed_pair(source, target, session)
        manifest = render_sequence(self.pipe, src.embedding, tgt.embedding, thetas, alphas, seed,
                                   out_dir, grid=grid, gif=True, mp4=True, zip=True, fps=fps,
                                   contact=False, plot=True, progress=progress, **kwargs)
        return manifest, src, tgt

    # -- requests ----------------------------------------------------------------------
    def frame_request(self, source, target, theta, alpha, seed, quality, steps, super_res_steps,
                      preview_steps, guidance_scale, max_batch, target_conformity=None):
        """(pairs, seed, generate kwargs) of a one-frame request, or RequestError.

        With a ``target_conformity`` the alpha is aimed at it when the frame is rendered:
        kwargs then hold it under "target_conformity" (`frame` takes it out).
        """
        kwargs = generate_kwargs(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch)
        pairs = [(_float(theta, "theta"), _float(alpha, "alpha"))]
        wanted = wanted_conformity(self.pipe, target_conformity)
        if wanted is not None:
            pairs = [(pairs[0][0], 0.0)]  # the alpha given is replaced by the aimed one
        seed = check_request(self.pipe, source, target, pairs, seed, kwargs)
        if wanted is not None:
            kwargs["target_conformity"] = wanted
        return pairs, seed, kwargs

    def aim_request(self, *request):
        """The gate of the app's Aim button: a conformity typed in, and a frame request the
        engine takes. ``request`` as frame_request, target_conformity last. The alpha itself
        is found where the frame renders (`frame`), so the model runs in one GPU call."""
        if wanted_conformity(self.pipe, request[-1]) is None:
            raise RequestError("Type the conformity to aim at first (e.g. 0.8).")
        return self.frame_request(*request)

    def sequence_request(self, source, target, sweep, theta, alpha, theta_start, theta_stop,
                         theta_frames, alpha_start, alpha_stop, alpha_frames, seed, quality, steps,
                         super_res_steps, preview_steps, guidance_scale, max_batch, fps,
                         target_conformity=None):
        """(thetas, alphas, grid, seed, generate kwargs, fps) of a sequence request, or RequestError.

        With a ``target_conformity`` (a theta sweep only) every frame's alpha is aimed at it:
        alphas is None and kwargs hold "conformity" for `render_sequence`.
        """
        kwargs = generate_kwargs(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch)
        wanted = wanted_conformity(self.pipe, target_conformity)
        if wanted is not None and sweep != "theta":
            raise RequestError(f"target_conformity sets each frame's alpha, so it goes with sweep='theta', "
                               f"not {sweep!r}")
        thetas, alphas, grid = sweep_values(
            sweep, _float(theta, "theta"), 0.0 if wanted is not None else _float(alpha, "alpha"),
            _float(theta_start, "theta_start"), _float(theta_stop, "theta_stop"), theta_frames,
            _float(alpha_start, "alpha_start"), _float(alpha_stop, "alpha_stop"), alpha_frames)
        seed = check_request(self.pipe, source, target, sweep_pairs(thetas, alphas, grid), seed, kwargs,
                             max_frames=self.config.max_sequence_frames)
        if wanted is not None:
            alphas, kwargs["conformity"] = None, wanted
        return thetas, alphas, grid, seed, kwargs, _float(fps, "fps")

    # -- whole requests ----------------------------------------------------------------
    def frame(self, session, *request):
        """One frame at (theta, alpha): (image, readouts, new session). ``request`` as frame_request."""
        pairs, seed, kwargs = self.frame_request(*request)
        wanted = kwargs.pop("target_conformity", None)
        session = session if isinstance(session, dict) else {}
        start = time.perf_counter()
        frame, src, tgt = self.run_frame(request[0], request[1], session, *pairs[0], seed, kwargs, wanted)
        readouts = frame_readouts(frame, src, tgt, self.pipe.model, time.perf_counter() - start)
        return frame.image, readouts, {"source": src, "target": tgt}

    def sequence(self, session, *request, progress=None):
        """A sweep: (gallery, plot, mp4, gif, zip, new session). ``request`` as sequence_request."""
        thetas, alphas, grid, seed, kwargs, fps = self.sequence_request(*request)
        session = session if isinstance(session, dict) else {}
        cleanup_workdirs()
        out_dir = new_workdir()
        manifest, src, tgt = self.run_sequence(request[0], request[1], session, thetas, alphas, grid,
                                               seed, kwargs, fps, out_dir, progress)
        files = sequence_outputs(manifest, out_dir)
        return (files["gallery"], files["plot"], files["mp4"], files["gif"], files["zip"],
                {"source": src, "target": tgt})
