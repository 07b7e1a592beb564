"""What a render writes besides its frames: contact sheet, conformity plot, GIF, MP4, ZIP.

`write_outputs` (re)builds each asked-for output when the frames changed, when it is
missing, or when it was made with other settings (the fps of a video), and records it in
the manifest's ``outputs`` once it is on disk. The ZIP (frames, manifest and every other
output) is rebuilt on every run that asks for it, after the manifest it contains.
`DEFAULT_FPS` is the one GIF/MP4 default of the CLI, the app and the Python API.
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
from vslerp_app.manifest import FRAMES_DIR, MANIFEST_NAME

__all__ = ["CONTACT_SHEET_NAME", "DEFAULT_FPS", "GIF_NAME", "MP4_NAME", "OutputRequest", "PLOT_NAME",
           "ZIP_NAME", "add_step_strip", "contact_sheet", "conformity_figure", "conformity_plot",
           "drop_missing_outputs", "plot_with_steps", "sheet_columns", "write_outputs", "write_video"]

CONTACT_SHEET_NAME = "contact_sheet.png"
PLOT_NAME = "conformity.png"
GIF_NAME = "sequence.gif"
MP4_NAME = "sequence.mp4"
ZIP_NAME = "sequence.zip"
# 4 frames per second: a GIF stores each frame's delay in hundredths of a second, so 4 fps
# (25/100 s) plays exactly as the MP4 does; 6 fps would be 17/100 s (5.9 fps) in the GIF.
DEFAULT_FPS = 4.0
THUMB_SIDE = 192  # contact sheet tiles: frames scaled to this longer side
# The conformity plots are drawn for the page: 500 px wide (PLOT_WIDTH_IN at PLOT_DPI), shown at
# that size on a desktop and scaled to the ~300 px a phone's page gives them; their smallest
# text, PLOT_FONT_PT, is then 17 px on a desktop and 10 px on a phone.
PLOT_DPI = 100
PLOT_WIDTH_IN = 5.0
PLOT_FONT_PT = 12


def _load_frames(out_dir: Path, entries: list[dict]) -> list[PIL.Image.Image]:
    frames = []
    for e in entries:
        with PIL.Image.open(out_dir / e["file"]) as im:
            frames.append(im.convert("RGB"))
    return frames


def label_font(size: int):
    """Pillow's default font at ``size`` pixels (fixed size where Pillow has no FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _caption(entry: dict) -> list[str]:
    lines = [f"theta {entry['theta']:.3g}  alpha {entry['alpha']:.3g}"]
    if entry.get("keyframe") is not None:  # a path's keyframe, numbered from 1 as in the app
        lines[0] = f"keyframe {entry['keyframe'] + 1}"
    elif "segment" in entry:  # a path: the local theta of a segment
        lines[0] = f"segment {entry['segment'] + 1}  " + lines[0]
    if entry.get("frame_conformity") is not None:
        lines.append(f"conformity {entry['conformity']:.3f} / frame {entry['frame_conformity']:.3f}")
    return lines


def sheet_columns(count: int, widest: int = 8) -> int:
    """Contact sheet columns for ``count`` frames: one row up to ``widest``; beyond it, the widest
    of 3..widest columns that leaves the fewest empty cells in the last row (9 frames: 3 x 3)."""
    if count <= widest:
        return max(1, count)
    return min(range(3, widest + 1), key=lambda c: (-(-count // c) * c - count, -c))


def contact_sheet(frames: list[PIL.Image.Image], entries: list[dict], columns: int) -> PIL.Image.Image:
    """The frames tiled in ``columns`` columns, each captioned with theta, alpha, conformity."""
    from PIL import ImageDraw

    w, h = frames[0].size
    scale = THUMB_SIDE / max(w, h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font_size = 11
    font = label_font(font_size)
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


@dataclass(frozen=True)
class _Metric:
    """One readout drawn on a panel: the embedding's key, the frame's key, the inputs' key."""

    embedding: str
    frame: str
    reference: str
    label: str


_CONFORMITY = _Metric("conformity", "frame_conformity", "conformity", "conformity")
_LIKELIHOOD = _Metric("log_likelihood", "frame_log_likelihood", "log_likelihood", "log-likelihood (whitened)")
_REFERENCE_STYLE = {"source": dict(color="#d62728", ls=":"), "target": dict(color="#1f77b4", ls="-.")}


def conformity_figure(entries: list[dict], thetas: list[float], alphas: list[float], grid: bool,
                      title: str, references: dict | None = None):
    """The readouts of a render as a matplotlib Figure; None without conformity readouts.

    A sweep: conformity (and likelihood) of each frame's embedding and of the frame itself
    (re-encoded) along theta, along alpha, or frame by frame when both change. A grid: heat
    maps of conformity over the (theta, alpha) plane with a colour bar, and each readout
    against theta with one line per alpha, coloured by alpha. ``references`` maps "source"
    and "target" to the inputs' own readouts (`ModalityStats.readouts`); they are marked on
    every panel (labelled lines; on a heat map's colour bar).
    """
    if all(e.get("conformity") is None for e in entries):
        return None
    metrics = [_CONFORMITY]
    if any(e.get("frame_log_likelihood") is not None for e in entries):
        metrics.append(_LIKELIHOOD)
    refs = {role: r for role, r in (references or {}).items() if isinstance(r, dict)}
    from matplotlib import rc_context

    # Every text at PLOT_FONT_PT (texts take their size when drawn into the figure).
    sizes = {key: PLOT_FONT_PT for key in ("font.size", "axes.labelsize", "axes.titlesize", "xtick.labelsize",
                                            "ytick.labelsize", "legend.fontsize", "figure.titlesize")}
    with rc_context(sizes):
        if grid and len(thetas) > 1 and len(alphas) > 1:
            fig = _grid_figure(entries, thetas, alphas, metrics, refs)
        else:
            fig = _sweep_figure(entries, metrics, refs)
        fig.suptitle(title)
    return fig


def conformity_plot(entries: list[dict], thetas: list[float], alphas: list[float], grid: bool,
                    title: str, references: dict | None = None) -> bytes | None:
    """`conformity_figure` as PNG bytes (None without conformity readouts)."""
    fig = conformity_figure(entries, thetas, alphas, grid, title, references)
    if fig is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI)
    return buf.getvalue()


def _values(entries: list[dict], key: str) -> list[float]:
    return [math.nan if e.get(key) is None else float(e[key]) for e in entries]


def _reference_lines(ax, refs: dict, key: str) -> None:
    """The inputs' readouts (source and target, or a path's keyframes) as labelled horizontal lines."""
    for k, (role, readouts) in enumerate(refs.items()):
        if readouts.get(key) is not None:
            style = _REFERENCE_STYLE.get(role, dict(color=f"C{(k + 2) % 10}", ls="--"))  # C0, C1: the frames'
            name = role if role.startswith("keyframe") else f"{role} image"  # short: legends fit on a phone
            ax.axhline(readouts[key], lw=1.2, label=f"{name} ({readouts[key]:.3g})", **style)


def _sweep_axis(entries: list[dict]) -> tuple[list[float], str, list[str] | None]:
    """(x of each frame, x label, tick labels or None): theta or alpha if only it changes; theta
    when both change along a path of distinct thetas (an aimed render); else the frame index."""
    thetas, alphas = [e["theta"] for e in entries], [e["alpha"] for e in entries]
    if any("segment" in e for e in entries):  # a path: theta starts over in every segment
        return [float(e["index"]) for e in entries], "path frame", None
    if len(set(alphas)) == 1 and len(set(thetas)) > 1:
        return thetas, f"theta (alpha {alphas[0]:.4g})", None
    if len(set(thetas)) == 1 and len(set(alphas)) > 1:
        return alphas, f"alpha (theta {thetas[0]:g})", None
    ticks = ([f"θ {t:.3g}\nα {a:.3g}" for t, a in zip(thetas, alphas, strict=True)]
             if len(entries) <= 12 else None)
    if len(set(thetas)) == len(thetas) and thetas in (sorted(thetas), sorted(thetas, reverse=True)):
        return thetas, "theta (alpha changes along the path)", ticks
    return [float(e["index"]) for e in entries], "frame (theta and alpha change together)", ticks


def _sweep_figure(entries: list[dict], metrics: list[_Metric], refs: dict):
    xs, xlabel, ticks = _sweep_axis(entries)
    fig = _figure(1.0 + 3.6 * len(metrics))
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        ax.plot(xs, _values(entries, metric.embedding), "-o", color="0.2", markersize=3,
                label="embedding (Eq. 12)")
        ax.plot(xs, _values(entries, metric.frame), "--s", color="#ff7f0e", markersize=3,
                label="frame, re-encoded")
        aims = [e.get("aim") if isinstance(e.get("aim"), dict) else {} for e in entries]
        if metric is _CONFORMITY and any(aims):  # an aimed render: the conformity asked for
            ax.plot(xs, _values(aims, "wanted"), "x", color="#2ca02c", markersize=7, label="wanted (aimed)")
        _reference_lines(ax, refs, metric.reference)
        ax.set_ylabel(metric.label)
        ax.grid(True, alpha=0.3)
        # Below the panel (the figure is narrow): two columns of entries.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if ax is axes[-1] else -0.04), ncol=2,
                  frameon=False, handlelength=1.5, columnspacing=0.8)
    if ticks:
        axes[-1].set_xticks(xs, ticks)
    axes[-1].set_xlabel(xlabel)
    return fig


def _figure(height_in: float):
    """A figure drawn for the page, `PLOT_WIDTH_IN` wide (its texts: `conformity_figure`'s sizes)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(PLOT_WIDTH_IN, height_in), layout="constrained")


def _grid_matrix(entries: list[dict], key: str, rows: int, cols: int) -> np.ndarray:
    """rows x cols of one readout (theta major, as the grid's frame order); NaN where absent."""
    z = np.full((rows, cols), np.nan)
    for e in entries:
        if e.get(key) is not None:
            z[divmod(e["index"], cols)] = e[key]
    return z


def _tick_cells(count: int, most: int = 6) -> list[int]:
    """Which of ``count`` cells get a label: evenly spaced, the first and the last always, at
    most ``most`` when a step divides the range (16 cells: every third)."""
    if count <= most:
        return list(range(count))
    steps = [k for k in range(1, count) if (count - 1) % k == 0 and (count - 1) // k + 1 <= most]
    step = steps[0] if steps else math.ceil((count - 1) / (most - 1))
    cells = list(range(0, count, step))
    if cells[-1] != count - 1:  # the last cell labelled too, in place of a close neighbour
        cells[-1 if count - 1 - cells[-1] < step / 2 else len(cells):] = [count - 1]
    return cells


def _value_ticks(ax, axis: str, values: list[float]) -> None:
    """Label a heat map's cells with the values rendered there, rounded to the fewest decimals
    that still tell the labelled cells apart (linspace(-1, 3, 16): -1, -0.2, 0.6, 1.4, 2.2, 3)."""
    idx = _tick_cells(len(values))
    for decimals in range(0, 7):
        labels = [f"{round(values[i], decimals) + 0.0:g}" for i in idx]  # +0.0: no "-0"
        if len(set(labels)) == len(labels):
            break
    (ax.set_xticks if axis == "x" else ax.set_yticks)(idx, labels)


def _heat_maps(fig, cells, entries, thetas, alphas, metric: _Metric, refs: dict) -> None:
    """Embedding and frame readout over (theta, alpha), one colour scale; inputs on the colour bar."""
    from matplotlib.colors import Normalize

    maps = {key: _grid_matrix(entries, key, len(thetas), len(alphas))
            for key in (metric.embedding, metric.frame)}
    known = [v for z in maps.values() for v in z[np.isfinite(z)].tolist()]
    known += [r[metric.reference] for r in refs.values() if r.get(metric.reference) is not None]
    norm = Normalize(min(known), max(known)) if known else None
    image = None
    for k, (key, name) in enumerate(((metric.embedding, "embedding (Eq. 12)"),
                                     (metric.frame, "frame, re-encoded"))):
        ax = fig.add_subplot(cells[k])
        image = ax.imshow(maps[key], origin="lower", aspect="auto", cmap="viridis", norm=norm,
                          interpolation="nearest")
        ax.set_title(name)  # the colour bar names the readout: short titles leave room for its marks
        _value_ticks(ax, "x", alphas)
        _value_ticks(ax, "y", thetas)
        ax.set_xlabel("alpha")
        ax.set_ylabel("theta")
    bar = fig.colorbar(image, cax=fig.add_subplot(cells[2]))
    bar.set_label(metric.label)
    for role, readouts in refs.items():
        value = readouts.get(metric.reference)
        if value is not None:
            bar.ax.axhline(value, color="white" if role == "source" else "black", lw=2.5)
            bar.ax.axhline(value, lw=1.2, **_REFERENCE_STYLE.get(role, {}))
            bar.ax.annotate(f"{role} {value:.3g}", xy=(0, value), xycoords=("axes fraction", "data"),
                            xytext=(-3, 0), textcoords="offset points", ha="right", va="center",
                            color=_REFERENCE_STYLE.get(role, {}).get("color", "black"))


def _lines_per_alpha(fig, cell, bar_cell, entries, alphas, metric: _Metric, refs: dict) -> None:
    """The readout against theta, one line per alpha coloured by alpha (a colour bar, no legend per line)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    ax = fig.add_subplot(cell)
    cmap = "coolwarm"
    norm = Normalize(min(alphas), max(alphas)) if min(alphas) < max(alphas) else Normalize(alphas[0] - 1,
                                                                                          alphas[0] + 1)
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    for alpha in dict.fromkeys(alphas):
        row = sorted((e for e in entries if e["alpha"] == alpha), key=lambda e: e["theta"])
        xs, color = [e["theta"] for e in row], mappable.to_rgba(alpha)
        ax.plot(xs, _values(row, metric.embedding), "-", color=color, lw=1.3)
        ax.plot(xs, _values(row, metric.frame), "s", color=color, markersize=3, alpha=0.8)
    _reference_lines(ax, refs, metric.reference)
    handles = [Line2D([], [], color="0.3", ls="-", label="embedding (Eq. 12)"),
               Line2D([], [], color="0.3", ls="", marker="s", markersize=3, label="frame, re-encoded")]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, borderaxespad=0, frameon=False, handlelength=1.5,
              columnspacing=0.8)
    ax.set_xlabel("theta", labelpad=1)
    ax.set_ylabel(metric.label)
    ax.grid(True, alpha=0.3)
    fig.colorbar(mappable, cax=fig.add_subplot(bar_cell)).set_label("alpha")


def _grid_figure(entries, thetas, alphas, metrics: list[_Metric], refs: dict):
    """Heat maps of conformity over (theta, alpha), then each readout against theta per alpha:
    one panel a row, so each keeps the figure's width (and its labels their size) on a phone."""
    rows = 2 + len(metrics)
    fig = _figure(0.6 + 3.4 * rows)
    fig.set_layout_engine(None)
    # Columns: the panels, room for the labels of the inputs' marks, the colour bar.
    height = fig.get_figheight()
    spec = fig.add_gridspec(rows, 3, width_ratios=[1, 0.36, 0.06],
                            height_ratios=[1, 1] + [1.1] * len(metrics), hspace=0.6, wspace=0.04,
                            left=0.15, right=0.84, top=1 - 0.85 / height, bottom=0.95 / height)
    _heat_maps(fig, [spec[0, 0], spec[1, 0], spec[0:2, 2]], entries, thetas, alphas, _CONFORMITY, refs)
    for r, metric in enumerate(metrics, start=2):
        _lines_per_alpha(fig, spec[r, 0:2], spec[r, 2], entries, alphas, metric, refs)
    return fig


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


def _write_sheet_and_plot(d: _Derived, ask: OutputRequest, columns: int, plot_args: tuple,
                          steps: dict | None = None) -> None:
    if ask.contact and d.wanted("contact_sheet", CONTACT_SHEET_NAME):
        buf = io.BytesIO()
        contact_sheet(d.images(), d.entries, columns).save(buf, format="PNG")
        d.out.write(CONTACT_SHEET_NAME, buf.getvalue())
        d.meta["contact_sheet"] = {"file": CONTACT_SHEET_NAME}
    if ask.plot and d.wanted("plot", PLOT_NAME):
        png = plot_with_steps(d.entries, plot_args, steps)
        if png is None:
            d.meta["plot"] = {"file": None, "note": "no conformity readouts (no stats)"}
        else:
            d.out.write(PLOT_NAME, png)
            d.meta["plot"] = {"file": PLOT_NAME}


def drop_missing_outputs(outputs_meta: dict, out_dir: Path) -> None:
    """Forget outputs whose file is gone (deleted by hand): the manifest lists only files on disk."""
    for key, meta in list(outputs_meta.items()):
        if isinstance(meta, dict) and meta.get("file") and not (out_dir / meta["file"]).is_file():
            del outputs_meta[key]


def write_outputs(out: OutputDir, entries: list[dict], outputs_meta: dict, ask: OutputRequest, *,
                  changed: bool, columns: int, plot_args: tuple,
                  save_manifest: Callable[[], dict], steps: dict | None = None) -> dict:
    """Write the asked-for outputs of a finished render; return the final manifest.

    The manifest lists a file only once it is on disk and whole: the ZIP (which holds the
    manifest) is written after the manifest and listed in a second save, so a full disk while
    writing it leaves a manifest without it.

    Args:
        out: the render's folder.
        entries: the manifest entries of every frame, in order.
        outputs_meta: the manifest's ``outputs`` (updated in place).
        ask: which outputs to write.
        changed: frames were rendered in this run (every output is rebuilt).
        columns: contact sheet columns.
        plot_args: `conformity_plot`'s (thetas, alphas, grid, title[, references]).
        save_manifest: writes the manifest (status complete) and returns it.
        steps: the frames' step sizes in one space (`smoothness.describe_sequence`), drawn as a
            strip under the plot (`add_step_strip`).
    """
    d = _Derived(out=out, entries=entries, meta=outputs_meta, changed=changed)
    _write_sheet_and_plot(d, ask, columns, plot_args, steps)
    _write_videos(d, ask)
    if ask.zip:
        outputs_meta.pop("zip", None)  # the manifest inside the archive lists what is in it
    drop_missing_outputs(outputs_meta, out.path)
    final = save_manifest()
    if not ask.zip:
        return final
    members = _zip_members(out.path, entries, outputs_meta)
    out.write(ZIP_NAME, lambda tmp: _write_zip(tmp, out.path, members))
    outputs_meta["zip"] = {"file": ZIP_NAME, "frames": len(entries),
                           "files": [m for m in members if not m.startswith(f"{FRAMES_DIR}/")]}
    return save_manifest()


def _zip_members(out_dir: Path, entries: list[dict], outputs_meta: dict) -> list[str]:
    """What the ZIP holds: the manifest, every other output on disk, then the frames."""
    names = [MANIFEST_NAME]
    for key in ("contact_sheet", "plot", "gif", "mp4"):
        name = (outputs_meta.get(key) or {}).get("file")
        if name and (out_dir / name).is_file():
            names.append(name)
    return names + [e["file"] for e in entries]


def _write_zip(tmp: str, out_dir: Path, members: list[str]) -> None:
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in members:  # PNG, GIF and MP4 are compressed already; JSON is not
            compress = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            zf.write(out_dir / name, name, compress_type=compress)


# -- the step-size strip (vslerp_app.smoothness) under the readouts ------------------------------
STRIP_INCHES = 2.2  # the strip's height, added below the readout panels
JUMP_COLOR = "#dc143c"  # crimson: the largest jump, a colour no readout line uses


def _step_series(measured: dict) -> list[tuple[list[float], list[float]]]:
    """(x, step size) per line of frames: a sweep or a path, one line with a step between frames
    i and i + 1 at x = i + 0.5; a grid, one line per alpha column (theta changing), x = the row."""
    if "columns" in measured:
        return [(list(range(len(m["steps"]))), m["steps"]) for m in measured["columns"] if m["steps"]]
    steps = measured.get("steps") or []
    return [([i + 0.5 for i in range(len(steps))], steps)] if steps else []


def _make_room_below(fig, inches: float) -> None:
    """Grow ``fig`` by ``inches`` at the bottom, keeping every panel and text where it was drawn."""
    fig.draw_without_rendering()  # run the layout engine once, then freeze what it placed
    fig.set_layout_engine("none")
    width, height = fig.get_size_inches()
    grown = height + inches
    fig.set_size_inches(width, grown)
    for ax in fig.axes:
        box = ax.get_position()
        ax.set_position([box.x0, (box.y0 * height + inches) / grown, box.width, box.height * height / grown])
    for text in fig.texts:  # the suptitle, in figure fractions
        x, y = text.get_position()
        text.set_position((x, (y * height + inches) / grown))


def add_step_strip(fig, measured: dict) -> None:
    """A strip of the step sizes (neighbouring frames' distances) under the panels of ``fig``.

    ``measured`` is one space of a render's ``smoothness`` (`smoothness.describe_sequence`):
    a bar per step (for a grid, a line per alpha column), the largest jump in crimson and
    named, smoothness (1 - Gini) and PDV in the strip's title.
    """
    series = _step_series(measured)
    if not series:
        return
    _make_room_below(fig, STRIP_INCHES)
    height = fig.get_size_inches()[1]
    boxes = [ax.get_position() for ax in fig.axes if ax.get_position().width > 0.2]  # panels, not colour bars
    x0, x1 = (min(b.x0 for b in boxes), max(b.x1 for b in boxes)) if boxes else (0.08, 0.85)
    ax = fig.add_axes([x0, 0.5 / height, x1 - x0, (STRIP_INCHES - 1.1) / height])
    jump_at, jump = max(((x, v) for xs, steps in series for x, v in zip(xs, steps, strict=True)),
                        key=lambda p: p[1])
    if len(series) == 1:
        xs, steps = series[0]
        ax.bar(xs, steps, width=0.8, color=[JUMP_COLOR if x == jump_at else "0.45" for x in xs])
    else:
        for k, (xs, steps) in enumerate(series):
            ax.plot(xs, steps, "-", lw=1, color=f"C{k % 10}")
        ax.plot([jump_at], [jump], "o", color=JUMP_COLOR, markersize=6)
    ax.annotate(f"largest jump {jump:.3g}", xy=(jump_at, jump), xytext=(0, 3), textcoords="offset points",
                fontsize=7, color=JUMP_COLOR, ha="center", va="bottom")
    ax.set_ylim(0, jump * 1.35 if jump > 0 else 1)
    what = "step" if len(series) == 1 else "step along theta (one line per alpha)"
    ax.set_xlabel(f"{what}: between frames" if len(series) == 1 else what, fontsize=8, labelpad=1)
    ax.set_ylabel("step size", fontsize=8)
    ax.tick_params(labelsize=7)
    summary = measured if "steps" in measured else {}
    title = "Step sizes: cosine distance of neighbouring frames, re-encoded"
    if summary:
        title += f"; smoothness (1 − Gini) {summary['smoothness']:.3f}, PDV {summary['pdv']:.3g}"
    ax.set_title(f"{title}\n{measured.get('space')}", fontsize=8, loc="left", pad=12)
    ax.grid(True, axis="y", alpha=0.3)


def plot_with_steps(entries: list[dict], plot_args: tuple, measured: dict | None) -> bytes | None:
    """`conformity_figure` with the step-size strip under it, as PNG bytes; the strip alone
    without conformity readouts; None with neither."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = conformity_figure(entries, *plot_args)
    if measured and _step_series(measured):
        if fig is None:
            fig = Figure(figsize=(8, 0.4))
            fig.suptitle(plot_args[3], fontsize=9)
        add_step_strip(fig, measured)
    if fig is None:
        return None
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
