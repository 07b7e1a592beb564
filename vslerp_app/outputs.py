"""What a render writes besides its frames: contact sheet, conformity plot, GIF, MP4, ZIP.

`write_outputs` (re)builds each asked-for output when the frames changed, when it is
missing, or when it was made with other settings (the fps of a video), and records it in
the manifest's ``outputs``; the ZIP is written last, after the manifest it contains.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from vslerp_app.files import OutputDir, RenderError
from vslerp_app.manifest import MANIFEST_NAME

__all__ = ["CONTACT_SHEET_NAME", "DEFAULT_FPS", "GIF_NAME", "MP4_NAME", "OutputRequest", "PLOT_NAME",
           "ZIP_NAME", "contact_sheet", "conformity_plot", "write_outputs", "write_video"]

CONTACT_SHEET_NAME = "contact_sheet.png"
PLOT_NAME = "conformity.png"
GIF_NAME = "sequence.gif"
MP4_NAME = "sequence.mp4"
ZIP_NAME = "sequence.zip"
DEFAULT_FPS = 4.0
THUMB_SIDE = 192  # contact sheet tiles: frames scaled to this longer side


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
    if "segment" in entry:  # a path: the local theta of a segment
        lines[0] = f"seg {entry['segment']}  " + lines[0]
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
        if any("segment" in e for e in entries):  # a path: theta starts over in every segment
            x_of, xlabel = (lambda e: e["index"]), "path frame"
        elif not grid and thetas_vary and not alphas_vary:
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


def write_video(path: str, frames: list[np.ndarray], fps: float, kind: str) -> None:
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


@dataclass
class OutputRequest:
    """Which derived outputs a render writes (the frames and manifest are always written)."""

    contact: bool = True
    plot: bool = True
    gif: bool = False
    mp4: bool = False
    zip: bool = False
    fps: float = DEFAULT_FPS


@dataclass
class _Derived:
    """State of one `write_outputs` call: the frames, loaded once when first needed."""

    out: OutputDir
    entries: list[dict]
    meta: dict
    changed: bool
    _images: list[PIL.Image.Image] | None = field(default=None, repr=False)

    def images(self) -> list[PIL.Image.Image]:
        if self._images is None:
            self._images = _load_frames(self.out.path, self.entries)
        return self._images

    def wanted(self, key: str, name: str, extra: dict | None = None) -> bool:
        meta = self.meta.get(key)
        return (self.changed or not isinstance(meta, dict) or meta.get("file") != name
                or not (self.out.path / name).is_file()
                or any(meta.get(k) != v for k, v in (extra or {}).items()))


def _write_videos(d: _Derived, ask: OutputRequest) -> None:
    for key, name, enabled in (("gif", GIF_NAME, ask.gif), ("mp4", MP4_NAME, ask.mp4)):
        if not (enabled and d.wanted(key, name, {"fps": ask.fps})):
            continue
        arrays = _even(d.images()) if key == "mp4" else [np.asarray(f) for f in d.images()]
        try:
            d.out.write(name, lambda tmp, a=arrays, k=key: write_video(tmp, a, ask.fps, k))
        except RenderError:
            raise
        except Exception as e:
            reason = " ".join(str(e).split())[:300]
            raise RenderError(f"cannot write {d.out.path / name}: {reason}") from None
        d.meta[key] = {"file": name, "fps": ask.fps, "frames": len(d.entries),
                       "size": list(arrays[0].shape[1::-1])}


def write_outputs(out: OutputDir, entries: list[dict], outputs_meta: dict, ask: OutputRequest, *,
                  changed: bool, columns: int, plot_args: tuple,
                  save_manifest: Callable[[], dict]) -> dict:
    """Write the asked-for outputs of a finished render; return the final manifest.

    Args:
        out: the render's folder.
        entries: the manifest entries of every frame, in order.
        outputs_meta: the manifest's ``outputs`` (updated in place).
        ask: which outputs to write.
        changed: frames were rendered in this run (every output is rebuilt).
        columns: contact sheet columns.
        plot_args: (thetas, alphas, grid, title) of the conformity plot.
        save_manifest: writes the manifest (status complete) and returns it; called once
            every other output is in place, before the ZIP that contains it.
    """
    d = _Derived(out=out, entries=entries, meta=outputs_meta, changed=changed)
    if ask.contact and d.wanted("contact_sheet", CONTACT_SHEET_NAME):
        buf = io.BytesIO()
        contact_sheet(d.images(), entries, columns).save(buf, format="PNG")
        out.write(CONTACT_SHEET_NAME, buf.getvalue())
        outputs_meta["contact_sheet"] = {"file": CONTACT_SHEET_NAME}
    if ask.plot and d.wanted("plot", PLOT_NAME):
        png = conformity_plot(entries, *plot_args)
        if png is None:
            outputs_meta["plot"] = {"file": None, "note": "no conformity readouts (no stats)"}
        else:
            out.write(PLOT_NAME, png)
            outputs_meta["plot"] = {"file": PLOT_NAME}
    _write_videos(d, ask)
    if ask.zip:
        outputs_meta["zip"] = {"file": ZIP_NAME}
    final = save_manifest()
    if ask.zip:
        out.write(ZIP_NAME, lambda tmp: _write_zip(tmp, out.path, entries))
    return final


def _write_zip(tmp: str, out_dir: Path, entries: list[dict]) -> None:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for e in entries:
            zf.write(out_dir / e["file"], e["file"])
        zf.write(out_dir / MANIFEST_NAME, MANIFEST_NAME)
