"""Frame sequences to disk: frames, manifest, contact sheet, plot, GIF/MP4/ZIP; resumable.

`render_sequence(pipe_or_model, source, target, thetas, alphas, seed, out_dir)` renders one
vSLERP sequence (a sweep, or a grid of theta x alpha) into ``out_dir``:

    out_dir/frames/0000.png ...   one PNG per frame
    out_dir/manifest.json         settings, fingerprint, per-frame readouts, versions, timings
    out_dir/contact_sheet.png     the frames tiled, captioned with theta/alpha/conformity
    out_dir/conformity.png        conformity (and likelihood) along the sweep
    out_dir/sequence.gif|.mp4|.zip  when asked

Safety: every file is written to a temporary file in the same directory and renamed into
place (`atomic_write`), so a killed run never leaves a truncated file. Frames are rendered in
chunks of ``max_batch`` and each chunk's frames and the manifest are written as soon as it
finishes. The manifest pins a fingerprint of the settings (model, the inputs' content hashes,
theta/alpha values, seed, steps, ...): running the same command again skips every frame
already on disk and valid (decodes and matches its manifest entry) without rewriting it, and
a different setting in the same directory is refused instead of mixing frames.

`run_jobs` renders many sequences from a JSON-lines file, split over processes with
accelerate's `PartialState.split_between_processes` (`accelerate launch -m vslerp_app render
--jobs ...`; on CPU, `torchrun --nproc_per_node N -m vslerp_app render --jobs ...`).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import logging
import math
import os
import platform
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.PngImagePlugin

from vslerp_app.specs import SpecError, as_values, check_range, combine

__all__ = [
    "RenderError",
    "atomic_write",
    "render_sequence",
    "read_jobs",
    "run_jobs",
    "Job",
    "MANIFEST_NAME",
    "FRAMES_DIR",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FRAMES_DIR = "frames"
CONTACT_SHEET_NAME = "contact_sheet.png"
PLOT_NAME = "conformity.png"
GIF_NAME = "sequence.gif"
MP4_NAME = "sequence.mp4"
ZIP_NAME = "sequence.zip"
JOBS_SUMMARY_NAME = "jobs.json"
MANIFEST_FORMAT = "vslerp-render/1"
DEFAULT_FPS = 4.0
TMP_MARK = ".partial"  # temporary files: .<name>.<random>.partial<ext>
_UMASK = os.umask(0o022)
os.umask(_UMASK)
THUMB_SIDE = 192  # contact sheet tiles: frames scaled to this longer side


class RenderError(RuntimeError):
    """A render that cannot go on (output not writable, settings changed, bad jobs file).

    The message is one line a user can act on.
    """


# -- atomic files ----------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None]) -> None:
    """Write ``path`` all at once: a temporary file in the same directory, then os.replace.

    ``data`` is the file's bytes, or a function that writes the file at the temporary
    path it is given (for writers that want a path, like ffmpeg). On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TMP_MARK}{path.suffix}",
                               dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual mode
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _remove_partials(directory: Path) -> int:
    """Delete temporary files a killed run left behind; return how many."""
    removed = 0
    if directory.is_dir():
        for p in directory.glob(f".*{TMP_MARK}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


def _describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device (disk full)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)


# -- inputs ----------------------------------------------------------------------------
def _load_input(src, role: str):
    """(PIL image or embedding tensor, description for the manifest), or ValueError."""
    from vslerp_app.images import ImageInputError, image_fingerprint, load_image

    if type(src).__name__ == "Tensor":  # a raw embedding (torch, imported lazily)
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


# -- manifest helpers -----------------------------------------------------------------
def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("vslerp-studio", "torch", "diffusers", "transformers", "accelerate", "numpy",
                 "pillow", "safetensors", "imageio", "imageio-ffmpeg", "matplotlib", "open_clip_torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(old: dict, new: dict, keys=None) -> list[str]:
    keys = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{k} {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys
            if old.get(k) != new.get(k)]


def _model_id(model) -> str:
    text = str(model)
    return os.path.realpath(text) if os.path.isdir(text) else text


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RenderError(f"{path} is unreadable ({e}); delete it (and {out_dir / FRAMES_DIR}) "
                          "to start this render over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RenderError(f"{path} is not a vslerp render manifest; use another --out directory")
    return manifest


def _refuse_if_changed(old: dict | None, settings: dict, out_dir: Path, keys=None) -> None:
    if old is None:
        return
    old_settings = old.get("settings", {})
    diffs = _differences(old_settings, settings, keys)
    if diffs:
        raise RenderError(
            f"{out_dir} holds a render with other settings ({'; '.join(diffs)}); refusing to "
            "mix frames: use another --out directory, or delete this one to start over")


def _frame_valid(out_dir: Path, entry: dict) -> bool:
    """The frame file exists, matches its manifest entry's checksum and size, and decodes."""
    path = out_dir / entry.get("file", "")
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return False
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            return list(im.size) == [entry.get("width"), entry.get("height")]
    except Exception:
        return False


def _png_bytes(image: PIL.Image.Image, text: dict) -> bytes:
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("vslerp", json.dumps(text, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- derived outputs --------------------------------------------------------------------
def _load_frames(out_dir: Path, entries: list[dict]) -> list[PIL.Image.Image]:
    frames = []
    for e in entries:
        with PIL.Image.open(out_dir / e["file"]) as im:
            frames.append(im.convert("RGB"))
    return frames


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _caption(entry: dict) -> list[str]:
    lines = [f"theta {entry['theta']:.3g}  alpha {entry['alpha']:.3g}"]
    if entry.get("frame_conformity") is not None:
        lines.append(f"conformity {entry['conformity']:.3f} / frame {entry['frame_conformity']:.3f}")
    return lines


def contact_sheet(frames: list[PIL.Image.Image], entries: list[dict], columns: int) -> PIL.Image.Image:
    """The frames tiled in ``columns`` columns, each captioned with theta, alpha, conformity."""
    from PIL import ImageDraw

    w, h = frames[0].size
    scale = THUMB_SIDE / max(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font_size = 11
    font = _font(font_size)
    n_lines = max(len(_caption(e)) for e in entries)
    cap_h = n_lines * (font_size + 3) + 4
    cell_w = max(tw, 150) + 8
    cell_h = th + cap_h + 8
    rows = math.ceil(len(frames) / columns)
    sheet = PIL.Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (frame, entry) in enumerate(zip(frames, entries, strict=True)):
        r, c = divmod(i, columns)
        x0, y0 = c * cell_w + 4, r * cell_h + 4
        resample = PIL.Image.Resampling.NEAREST if tw > w else PIL.Image.Resampling.LANCZOS
        thumb = frame if (tw, th) == frame.size else frame.resize((tw, th), resample)
        sheet.paste(thumb, (x0 + (cell_w - 8 - tw) // 2, y0))
        for k, line in enumerate(_caption(entry)):
            draw.text((x0, y0 + th + 2 + k * (font_size + 3)), line, fill="black", font=font)
    return sheet


def conformity_plot(entries: list[dict], thetas: list[float], alphas: list[float], grid: bool,
                    title: str) -> bytes | None:
    """PNG bytes of conformity (and likelihood) along the sweep; None without readouts."""
    if all(e.get("conformity") is None for e in entries):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_ll = any(e.get("frame_log_likelihood") is not None for e in entries)
    fig = Figure(figsize=(7, 6 if has_ll else 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if has_ll else 1, 1, sharex=True, squeeze=False)[:, 0]
    thetas_vary, alphas_vary = len(set(thetas)) > 1, len(set(alphas)) > 1

    def series(subset: list[dict], x_of):
        return [x_of(e) for e in subset]

    if grid and len(alphas) <= 12:
        groups = [(f"alpha {a:g}", [e for e in entries if e["alpha"] == a]) for a in dict.fromkeys(alphas)]
        x_of, xlabel = (lambda e: e["theta"]), "theta"
    else:
        groups = [("", entries)]
        if not grid and thetas_vary and not alphas_vary:
            x_of, xlabel = (lambda e: e["theta"]), "theta"
        elif not grid and alphas_vary and not thetas_vary:
            x_of, xlabel = (lambda e: e["alpha"]), "alpha"
        else:
            x_of, xlabel = (lambda e: e["index"]), "frame"
    metrics = [(axes[0], "conformity", "frame_conformity", "conformity")]
    if has_ll:
        metrics.append((axes[1], "log_likelihood", "frame_log_likelihood", "log-likelihood (whitened)"))
    for ax, emb_key, frame_key, ylabel in metrics:
        for k, (label, subset) in enumerate(groups):
            color = f"C{k % 10}"
            prefix = f"{label}: " if label else ""
            xs = series(subset, x_of)
            if any(e.get(emb_key) is not None for e in subset):
                ax.plot(xs, [e.get(emb_key) for e in subset], "-o", color=color, markersize=3,
                        label=f"{prefix}embedding")
            if any(e.get(frame_key) is not None for e in subset):
                ax.plot(xs, [e.get(frame_key) for e in subset], "--s", color=color, markersize=3,
                        label=f"{prefix}frame (re-encoded)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel(xlabel)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _even(frames: list[PIL.Image.Image]) -> list[np.ndarray]:
    """RGB arrays padded (edge pixels repeated) to even width and height, as yuv420p needs."""
    out = []
    for f in frames:
        a = np.asarray(f.convert("RGB"))
        pad_h, pad_w = a.shape[0] % 2, a.shape[1] % 2
        if pad_h or pad_w:
            a = np.pad(a, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        out.append(np.ascontiguousarray(a))
    return out


def _write_video(path: str, frames: list[np.ndarray], fps: float, kind: str) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    if kind == "gif":
        # ffmpeg keeps every frame (Pillow's GIF writer merges identical neighbours, so a
        # GIF would have fewer frames than the sequence) and builds one optimal palette.
        kwargs = dict(codec="gif", pix_fmt_out="pal8", output_params=[
            "-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse", "-loop", "0", "-f", "gif"])
    else:
        kwargs = dict(codec="libx264", pix_fmt_out="yuv420p", quality=8,
                      output_params=["-movflags", "+faststart", "-f", "mp4"])
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, macro_block_size=1,
                                         ffmpeg_log_level="error", **kwargs)
    writer.send(None)
    try:
        for f in frames:
            writer.send(f)
    finally:
        writer.close()


# -- the render -------------------------------------------------------------------------
@dataclasses.dataclass
class _Outputs:
    out_dir: Path
    frames_written: int = 0

    def write(self, name: str, data) -> None:
        try:
            atomic_write(self.out_dir / name, data)
        except OSError as e:
            raise RenderError(
                f"cannot write {self.out_dir / name}: {_describe_os_error(e)}; the frames already "
                "written are intact, free space (or fix the directory) and run the same command "
                "again to finish") from None


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise SpecError(f"seed must be a whole number in [0, 2^63), got {seed!r}")
    return int(seed)


def render_sequence(pipe_or_model, source, target, thetas, alphas, seed: int, out_dir, *,
                    grid: bool = False, gif: bool = False, mp4: bool = False, zip: bool = False,
                    fps: float = DEFAULT_FPS, preview: bool = False, steps: int | None = None,
                    super_res_steps: int | None = None, guidance_scale: float | None = None,
                    noise_level: int | None = None, resolution: int | None = None,
                    max_batch: int | None = None, stats=None, device=None, dtype=None,
                    offload: bool = False, reference: str | None = None, reference_stats=None,
                    contact: bool = True, plot: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Render one vSLERP sequence into ``out_dir`` (resuming what is there); return the manifest.

    Args:
        pipe_or_model: a loaded `VSLERPPipeline`, or a preset name / model directory to load.
        source, target: the two images (path, bytes, PIL, array) or raw embeddings.
        thetas, alphas: SPEC strings (`0.5`, `0,0.5,1`, `0:1:5`), numbers or lists of numbers.
        seed: the shared noise path of every frame.
        out_dir: the output directory (created; a previous render of the same settings is
            resumed, one of other settings refused).
        grid: every theta with every alpha (theta major) instead of a sweep.
        gif, mp4, zip: also write sequence.gif / sequence.mp4 / sequence.zip (frames+manifest).
        fps: frames per second of the GIF/MP4.
        preview, steps, super_res_steps, guidance_scale, noise_level, resolution: sampling
            settings (default: the model preset's).
        max_batch: frames per generate call, i.e. per chunk written to disk.
        stats, device, dtype, offload: passed to `load_pipeline` when a model is given.
        reference, reference_stats: an open_clip reference space for extra readouts
            ("open_clip:MODEL/PRETRAINED") and its stats file, when a model is given.
        contact, plot: write contact_sheet.png / conformity.png.
        progress: called as progress(frames_done, frames_total) after each chunk.
    Returns:
        The manifest written to out_dir/manifest.json.
    """
    t_start = time.perf_counter()
    started = _now()
    # 1. Everything that can be checked without the model
    theta_values, alpha_values = as_values(thetas, "theta"), as_values(alphas, "alpha")
    check_range(theta_values, alpha_values)
    pairs = combine(theta_values, alpha_values, grid)
    seed = _check_seed(seed)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 120):
        raise SpecError(f"fps must be in (0, 120], got {fps!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise SpecError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
    src, src_info = _load_input(source, "source")
    tgt, tgt_info = _load_input(target, "target")
    out_dir = Path(out_dir)
    model_given = not hasattr(pipe_or_model, "generate")
    request = {
        "model": _model_id(pipe_or_model if model_given else pipe_or_model.model),
        "source": src_info["sha256"], "target": tgt_info["sha256"],
        "frames": [list(p) for p in pairs], "grid": bool(grid), "seed": seed, "preview": bool(preview),
        "reference": reference if model_given else (
            None if pipe_or_model.reference is None else pipe_or_model.reference.info()["space"]),
    }
    overrides = {"steps": steps, "super_res_steps": super_res_steps, "guidance_scale": guidance_scale,
                 "noise_level": noise_level, "resolution": resolution}
    old = _read_manifest(out_dir)
    # Refuse a changed request before spending time on loading the model.
    _refuse_if_changed(old, {**request, **{k: v for k, v in overrides.items() if v is not None}},
                       out_dir, keys=list(request) + [k for k, v in overrides.items() if v is not None])

    # 2. The output directory
    frames_dir = out_dir / FRAMES_DIR
    try:
        frames_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create output directory {frames_dir}: {_describe_os_error(e)}") from None
    if not os.access(frames_dir, os.W_OK):
        raise RenderError(f"output directory {frames_dir} is not writable")
    _remove_partials(out_dir)
    _remove_partials(frames_dir)

    # 3. The model, the effective settings and the fingerprint
    t_load = time.perf_counter()
    if model_given:
        from pipelines import load_pipeline

        pipe = load_pipeline(pipe_or_model, device=device, dtype=dtype, stats=stats, offload=offload,
                             max_batch=max_batch or 8, reference=reference,
                             reference_stats=reference_stats)
    else:
        pipe = pipe_or_model
    load_seconds = time.perf_counter() - t_load
    eff = pipe.settings_for(preview, **overrides)
    chunk = max_batch or pipe.max_batch
    pipe.check_inputs([tuple(p) for p in pairs], seed, eff, chunk)
    info = pipe.info()
    settings = {
        **request,
        "format": MANIFEST_FORMAT,
        "kind": pipe.kind,
        "dtype": info["dtype"],
        "thetas": theta_values,
        "alphas": alpha_values,
        "steps": eff.steps,
        "super_res_steps": eff.super_res_steps,
        "guidance_scale": eff.guidance_scale,
        "noise_level": eff.noise_level,
        "resolution": eff.resolution,
        "stats": None if info.get("stats") is None else info["stats"]["checksum"],
        "reference": None if info.get("reference") is None else _short(info["reference"]),
    }
    fingerprint = _fingerprint(settings)
    if old is not None and old.get("fingerprint") != fingerprint:
        _refuse_if_changed(old, settings, out_dir)
        raise RenderError(f"{out_dir} holds a render with another settings fingerprint; use another "
                          "--out directory, or delete this one to start over")

    # 4. Frames already done (valid on disk and in the manifest) are kept as they are
    n = len(pairs)
    entries: dict[int, dict] = {}
    if old is not None:
        for e in old.get("frames", []):
            idx = e.get("index")
            if isinstance(idx, int) and 0 <= idx < n and _frame_valid(out_dir, e):
                entries[idx] = e
            else:
                logger.warning("frame %s is missing or damaged, rendering it again", e.get("file"))
    reused = len(entries)
    runs = list(old.get("runs", [])) if old is not None else []
    outputs_meta = dict(old.get("outputs", {})) if old is not None else {}
    rank = _process_info()
    run = {"started": started, "frames_rendered": 0, "frames_reused": reused,
           "device": str(pipe.device), "host": socket.gethostname(), **rank}
    out = _Outputs(out_dir)
    title = (f"{Path(request['model']).name} ({pipe.kind}), seed {seed}, "
             f"{info['stats']['conformity_kind'] if info.get('stats') else 'no'} conformity")

    def manifest(status: str, render_seconds: float) -> dict:
        done = [entries[i] for i in sorted(entries)]
        frames_rendered = run["frames_rendered"]
        this_run = dict(run, seconds=round(time.perf_counter() - t_start, 3))
        return {
            "format": MANIFEST_FORMAT,
            "status": status,
            "fingerprint": fingerprint,
            "model": request["model"],
            "pipeline": info,
            "settings": settings,
            "inputs": {"source": src_info, "target": tgt_info},
            "grid": bool(grid),
            "shape": [len(theta_values), len(alpha_values)] if grid else [n],
            "frame_count": n,
            "frames_done": len(done),
            "frames": done,
            "outputs": outputs_meta,
            "versions": _library_versions(),
            "timings": {
                "load_seconds": round(load_seconds, 3),
                "render_seconds": round(render_seconds, 3),
                "seconds_per_frame": (round(render_seconds / frames_rendered, 4)
                                      if frames_rendered else None),
                "total_seconds": this_run["seconds"],
            },
            "runs": runs + [this_run],
            "created": old.get("created", started) if old is not None else started,
            "updated": _now(),
        }

    def save_manifest(status: str, render_seconds: float) -> dict:
        m = manifest(status, render_seconds)
        out.write(MANIFEST_NAME, json.dumps(m, indent=1).encode())
        return m

    # 5. Render the missing frames chunk by chunk; each chunk lands on disk as it finishes
    save_manifest("partial", 0.0)
    todo = [i for i in range(n) if i not in entries]
    render_seconds = 0.0
    for start in range(0, len(todo), chunk):
        idxs = todo[start:start + chunk]
        t0 = time.perf_counter()
        frames = pipe.generate(src, tgt, [pairs[i][0] for i in idxs], [pairs[i][1] for i in idxs],
                               seed, preview=eff.preview, steps=eff.steps,
                               super_res_steps=eff.super_res_steps, guidance_scale=eff.guidance_scale,
                               noise_level=eff.noise_level, resolution=eff.resolution, max_batch=chunk)
        render_seconds += time.perf_counter() - t0
        for i, frame in builtins.zip(idxs, frames, strict=True):  # `zip` is a parameter
            name = f"{FRAMES_DIR}/{i:04d}.png"
            data = _png_bytes(frame.image, {"theta": frame.theta, "alpha": frame.alpha, "seed": seed,
                                            "fingerprint": fingerprint})
            out.write(name, data)
            entries[i] = {"index": i, "file": name, **frame.readouts(),
                          "width": frame.image.width, "height": frame.image.height,
                          "sha256": hashlib.sha256(data).hexdigest()}
            run["frames_rendered"] += 1
        save_manifest("partial", render_seconds)
        if progress is not None:
            progress(len(entries), n)

    # 6. Derived outputs: rebuilt when frames changed, missing, or asked anew
    done = [entries[i] for i in range(n)]
    changed = run["frames_rendered"] > 0
    images = None

    def frames_images():
        nonlocal images
        if images is None:
            images = _load_frames(out_dir, done)
        return images

    def wanted(key: str, name: str, extra: dict | None = None) -> bool:
        meta = outputs_meta.get(key)
        return (changed or not isinstance(meta, dict) or meta.get("file") != name
                or not (out_dir / name).is_file() or any(meta.get(k) != v for k, v in (extra or {}).items()))

    if contact and wanted("contact_sheet", CONTACT_SHEET_NAME):
        columns = len(alpha_values) if grid else min(n, 8)
        buf = io.BytesIO()
        contact_sheet(frames_images(), done, columns).save(buf, format="PNG")
        out.write(CONTACT_SHEET_NAME, buf.getvalue())
        outputs_meta["contact_sheet"] = {"file": CONTACT_SHEET_NAME}
    if plot and wanted("plot", PLOT_NAME):
        png = conformity_plot(done, theta_values, alpha_values, grid, title)
        if png is None:
            outputs_meta["plot"] = {"file": None, "note": "no conformity readouts (no stats)"}
        else:
            out.write(PLOT_NAME, png)
            outputs_meta["plot"] = {"file": PLOT_NAME}
    for key, name, enabled in (("gif", GIF_NAME, gif), ("mp4", MP4_NAME, mp4)):
        if enabled and wanted(key, name, {"fps": fps}):
            arrays = _even(frames_images()) if key == "mp4" else [np.asarray(f) for f in frames_images()]
            try:
                out.write(name, lambda tmp, a=arrays, k=key: _write_video(tmp, a, fps, k))
            except RenderError:
                raise
            except Exception as e:
                reason = " ".join(str(e).split())[:300]
                raise RenderError(f"cannot write {out_dir / name}: {reason}") from None
            outputs_meta[key] = {"file": name, "fps": fps, "frames": n,
                                 "size": list(arrays[0].shape[1::-1])}
    if zip:
        outputs_meta["zip"] = {"file": ZIP_NAME}
    final = save_manifest("complete", render_seconds)
    if zip:
        def write_zip(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for e in done:
                    zf.write(out_dir / e["file"], e["file"])
                zf.write(out_dir / MANIFEST_NAME, MANIFEST_NAME)

        out.write(ZIP_NAME, write_zip)
    return final


def _process_info() -> dict:
    """This process's rank when launched by accelerate/torchrun (from the environment)."""
    env = os.environ
    return {"process_index": int(env.get("RANK", 0)), "num_processes": int(env.get("WORLD_SIZE", 1))}


# -- many pairs: jobs -------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    """One line of a jobs file: a sequence to render into out_dir/name."""

    index: int
    name: str
    source: str
    target: str
    theta: object
    alpha: object
    seed: int
    grid: bool
    line: int


_JOB_KEYS = {"source", "target", "theta", "alpha", "seed", "name", "grid"}


def read_jobs(path: str | os.PathLike, default_seed: int = 0, default_grid: bool = False) -> list[Job]:
    """Parse and check a JSON-lines jobs file (blank lines and # comments skipped).

    Each line: {"source": ..., "target": ..., "theta": SPEC, "alpha": SPEC (default 0),
    "seed": int (default ``default_seed``), "name": str (default: the job's index as 0000),
    "grid": bool (default ``default_grid``)}. Relative image paths are relative to the jobs file's folder.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RenderError(f"cannot read jobs file {path}: {_describe_os_error(e)}") from None
    jobs: list[Job] = []
    names: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise RenderError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise RenderError(f"{where}: each line must be a JSON object")
        unknown = set(obj) - _JOB_KEYS
        if unknown:
            raise RenderError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_JOB_KEYS))}")
        for key in ("source", "target", "theta"):
            if key not in obj:
                raise RenderError(f"{where}: missing {key!r}")
        index = len(jobs)
        name = obj.get("name", f"{index:04d}")
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
                or "\\" in name or name.startswith(".")):
            raise RenderError(f"{where}: name must be a plain folder name, got {name!r}")
        if name in names:
            raise RenderError(f"{where}: name {name!r} is already used by job {names[name]}")
        names[name] = index
        images = {}
        for key in ("source", "target"):
            value = obj[key]
            if not isinstance(value, str):
                raise RenderError(f"{where}: {key} must be an image path")
            p = Path(value).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise RenderError(f"{where}: {key} image {value!r} does not exist (looked for {p})")
            images[key] = str(p)
        grid = obj.get("grid", default_grid)
        if not isinstance(grid, bool):
            raise RenderError(f"{where}: grid must be true or false")
        seed = obj.get("seed", default_seed)
        try:
            thetas = as_values(obj["theta"], "theta")
            alphas = as_values(obj.get("alpha", 0.0), "alpha")
            check_range(thetas, alphas)
            combine(thetas, alphas, grid)
            seed = _check_seed(seed)
        except SpecError as e:
            raise RenderError(f"{where}: {e}") from None
        jobs.append(Job(index=index, name=name, source=images["source"], target=images["target"],
                        theta=obj["theta"], alpha=obj.get("alpha", 0.0), seed=seed, grid=grid,
                        line=lineno))
    if not jobs:
        raise RenderError(f"jobs file {path} has no jobs")
    return jobs


def run_jobs(model, jobs_file, out_dir, *, device=None, dtype=None, stats=None, offload: bool = False,
             reference: str | None = None, reference_stats=None,
             default_seed: int = 0, default_grid: bool = False, max_batch: int | None = None,
             log: Callable[[str], None] | None = None, **render_kwargs) -> dict:
    """Render every job of ``jobs_file`` into out_dir/<name>, split over processes.

    Under `accelerate launch` (or torchrun) the jobs are split with accelerate's
    `PartialState().split_between_processes`; each process loads the model once on its own
    device and renders its share. A job that fails is reported and the others go on. The
    main process writes out_dir/jobs.json (every job's status) once all are done.

    Returns {"process_index", "num_processes", "jobs": [this process's results], "failed": n,
    "summary": the jobs.json content on the main process, else None}.
    """
    import torch
    from accelerate import PartialState

    jobs = read_jobs(jobs_file, default_seed, default_grid)
    out_dir = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    state = PartialState(cpu=(device == "cpu" or not torch.cuda.is_available()))
    load_device = device or state.device
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create output directory {out_dir}: {_describe_os_error(e)}") from None

    from pipelines import load_pipeline

    results = []
    with state.split_between_processes(jobs) as mine:
        mine = list(mine)
        tag = f"[process {state.process_index}/{state.num_processes}]" if state.num_processes > 1 else ""
        log(f"{tag} {len(mine)} of {len(jobs)} jobs on {load_device}".strip())
        pipe = load_pipeline(model, device=load_device, dtype=dtype, stats=stats, offload=offload,
                             max_batch=max_batch or 8, reference=reference,
                             reference_stats=reference_stats) if mine else None
        for job in mine:
            job_dir = out_dir / job.name
            t0 = time.perf_counter()
            try:
                m = render_sequence(pipe, job.source, job.target, job.theta, job.alpha, job.seed,
                                    job_dir, grid=job.grid, max_batch=max_batch, **render_kwargs)
            except Exception as e:
                msg = " ".join(str(e).split())
                log(f"{tag} job {job.index} ({job.name}, line {job.line}) failed: {msg}".strip())
                results.append({"index": job.index, "name": job.name, "status": "failed", "error": msg})
                continue
            results.append({"index": job.index, "name": job.name, "status": m["status"],
                            "frames": m["frame_count"], "seconds": round(time.perf_counter() - t0, 3)})
            log(f"{tag} job {job.index} ({job.name}): {m['frame_count']} frames -> {job_dir}".strip())
    state.wait_for_everyone()
    summary = None
    if state.is_main_process:
        summary = _jobs_summary(jobs, out_dir, Path(jobs_file), model)
        _Outputs(out_dir).write(JOBS_SUMMARY_NAME, json.dumps(summary, indent=1).encode())
    state.wait_for_everyone()
    failed = sum(r["status"] != "complete" for r in results)
    if summary is not None:
        failed = max(failed, sum(j["status"] != "complete" for j in summary["jobs"]))
    result = {"process_index": state.process_index, "num_processes": state.num_processes,
              "jobs": results, "failed": failed, "summary": summary}
    if state.use_distributed:
        with contextlib.suppress(Exception):
            state.destroy_process_group()
    return result


def _jobs_summary(jobs: list[Job], out_dir: Path, jobs_file: Path, model) -> dict:
    rows = []
    for job in jobs:
        row = {"index": job.index, "name": job.name, "dir": job.name, "line": job.line}
        try:
            m = json.loads((out_dir / job.name / MANIFEST_NAME).read_text())
            last = m.get("runs", [{}])[-1]
            row.update(status=m.get("status"), frames=m.get("frame_count"),
                       frames_done=m.get("frames_done"), process_index=last.get("process_index"))
        except (OSError, ValueError):
            row.update(status="missing")
        rows.append(row)
    return {"format": "vslerp-jobs/1", "jobs_file": str(jobs_file), "model": str(model),
            "updated": _now(), "jobs": rows}
