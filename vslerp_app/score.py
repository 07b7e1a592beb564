"""Score folders of images: conformity and likelihood of every image on the population's scale.

`vslerp score --model M --images DIR [--images DIR2 ...] --out OUT` runs `score_folders`:
every image under each folder is loaded as for generation (`vslerp_app.images.load_image`,
one preparation everywhere), encoded in batches by the model's CLIP image encoder (or a
reference space's, ``--reference open_clip:...``), and read out with the encoder's stats
exactly as the engine reads out an input image (`ModalityStats.readouts`): conformity
(Eq. 10, or the Eq. 11 estimate / cosine to the mean, labelled), the whitened
log-likelihood, and both as percentiles of the stats' own images. OUT receives:

    scores.csv, scores.json     one row per image (file, folder, values), sorted by folder
                                then file; the JSON adds each folder's summary (count, mean,
                                median, ...), skipped files, the stats used and, for two
                                folders or more, two-sample distances between every pair
    report.png                  per folder, histograms of conformity and log-likelihood over
                                the population's distribution; with two folders or more, the
                                folders overlaid, their means and medians marked
    <folder>.conformal.png      the most and the least conformal images of each folder (the
                                paper's Fig. 8)

Two-sample distances (per pair of folders, per readout): the Kolmogorov-Smirnov statistic
D = sup |F_a - F_b| (with its asymptotic p-value) and the Wasserstein-1 distance, the area
between the two empirical CDFs, in the readout's units.

Resumable: each scored image is appended to OUT/.scores-cache.jsonl keyed by its path,
size and modification time (and the stats' checksum and the encoder); a run over the same
folders reuses every image whose key still matches and encodes only the rest. Unreadable
files are skipped, counted and listed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from vslerp_app.files import OutputDir
from vslerp_app.folder_stats import IMAGE_SUFFIXES, find_images
from vslerp_app.images import ImageInputError, load_image
from vslerp_app.outputs import label_font
from vslerp_app.stats import ModalityStats, StatsError

__all__ = ["SCORE_FORMAT", "SEQUENCE_FORMAT", "ScoreReport", "extremes", "ks_statistic", "score_folders",
           "check_sequence", "score_sequences", "sequence_frames", "sequences_png", "wasserstein_1"]

logger = logging.getLogger(__name__)

SCORE_FORMAT = "vslerp-score/1"
CACHE_NAME = ".scores-cache.jsonl"
READOUTS = ("conformity", "log_likelihood")
VALUE_COLUMNS = ("conformity", "conformity_percentile", "log_likelihood", "log_likelihood_percentile")
SHEET_COUNT = 8  # images in each half (most, least conformal) of a folder's contact sheet
THUMB = 112


# -- two-sample distances -------------------------------------------------------------------
def ks_statistic(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(D, p): the two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| and its p-value
    (scipy.stats.ks_2samp: exact for small samples, the Kolmogorov distribution for large)."""
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(a, float), np.asarray(b, float))
    return float(result.statistic), float(result.pvalue)


def wasserstein_1(a: Sequence[float], b: Sequence[float]) -> float:
    """The Wasserstein-1 (earth mover's) distance of two samples: the integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    knots = np.sort(np.concatenate([a, b]))
    widths = np.diff(knots)
    cdf_a = np.searchsorted(a, knots[:-1], "right") / len(a)
    cdf_b = np.searchsorted(b, knots[:-1], "right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


# -- the cache that makes a run resumable ----------------------------------------------------
def _file_key(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class _Cache:
    """Scores already computed, by file key; new ones appended a batch at a time."""

    path: Path
    identity: dict  # the encoder and the stats checksum the values belong to
    entries: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, identity: dict) -> _Cache:
        cache = cls(out / CACHE_NAME, identity)
        try:
            lines = cache.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: its image is scored again
                continue
            if isinstance(entry, dict) and entry.get("identity") == identity and "key" in entry:
                cache.entries[json.dumps(entry["key"], sort_keys=True)] = entry
        return cache

    def get(self, key: dict) -> dict | None:
        return self.entries.get(json.dumps(key, sort_keys=True))

    def add(self, new: list[dict]) -> None:
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for entry in new:
                entry = {"identity": self.identity, **entry}
                f.write(json.dumps(entry) + "\n")
                self.entries[json.dumps(entry["key"], sort_keys=True)] = entry
            f.flush()
            os.fsync(f.fileno())


# -- scoring -----------------------------------------------------------------------------------
@dataclass
class ScoreReport:
    """What `score_folders` computed and wrote.

    Attributes:
        rows: one dict per image (file, folder, path, values), sorted by folder then file.
        folders: per folder: count, skipped, and summaries of each readout.
        comparisons: per pair of folders and readout: KS statistic, its p-value, Wasserstein-1.
        skipped: (path, reason) of every unreadable file.
        encoded, reused: images encoded in this run, and taken from the cache of a previous one.
        files: what was written, by role.
        summary: the whole of scores.json.
    """

    rows: list[dict]
    folders: list[dict]
    comparisons: list[dict]
    skipped: list[tuple[str, str]]
    encoded: int
    reused: int
    files: dict[str, str]
    summary: dict


def _load_batches(paths: list[Path], batch_size: int, skipped: list) -> Iterator[tuple[list, list]]:
    """(paths, images) in batches; unreadable files go to ``skipped`` as (path, reason)."""
    batch: tuple[list, list] = ([], [])
    for path in paths:
        try:
            image = load_image(path)
        except ImageInputError as e:
            skipped.append((str(path), str(e)))
            continue
        batch[0].append(path)
        batch[1].append(image)
        if len(batch[0]) == batch_size:
            yield batch
            batch = ([], [])
    if batch[0]:
        yield batch


def _values(stats: ModalityStats, embeddings: torch.Tensor) -> list[dict]:
    """The engine's readouts (`ModalityStats.readouts`) of each raw embedding."""
    return [stats.readouts(e) for e in embeddings]


def _score_pending(encoder, stats: ModalityStats, pending: list[Path], cache: _Cache,
                   batch_size: int, skipped: list) -> int:
    """Encode and read out the files not in the cache; append each batch to it. Returns the count."""
    encoded = 0
    with tqdm(total=len(pending), desc=f"scoring with {encoder.name}", unit="img") as bar:
        for paths, images in _load_batches(pending, batch_size, skipped):
            values = _values(stats, encoder.encode(images))
            cache.add([{"key": _file_key(p), "values": {k: v[k] for k in READOUTS}}
                       for p, v in zip(paths, values, strict=True)])
            encoded += len(paths)
            bar.update(len(paths))
            bar.set_postfix(skipped=len(skipped))
        bar.update(len(pending) - bar.n)
    return encoded


def _row(stats: ModalityStats, folder: str, root: Path, path: Path, values: dict) -> dict:
    c, ll = values["conformity"], values["log_likelihood"]
    return {"file": path.relative_to(root).as_posix(), "folder": folder, "path": str(path),
            "conformity": c, "conformity_percentile": stats.conformity_percentile(c),
            "log_likelihood": ll, "log_likelihood_percentile": stats.log_likelihood_percentile(ll)}


def _collect(encoder, stats: ModalityStats, folders: Sequence[str], cache: _Cache,
             batch_size: int) -> tuple[list[dict], list[tuple[str, str]], int, int]:
    """(rows, skipped, encoded, reused) over every folder."""
    listed = [(folder, Path(folder), find_images(folder)) for folder in folders]
    pending = [p for _, _, paths in listed for p in paths if cache.get(_file_key(p)) is None]
    skipped: list[tuple[str, str]] = []
    encoded = _score_pending(encoder, stats, list(dict.fromkeys(pending)), cache, batch_size, skipped)
    rows, reused = [], 0
    pending_set = set(pending)
    for folder, root, paths in listed:
        for path in paths:
            entry = cache.get(_file_key(path))
            if entry is None:  # unreadable: in skipped
                continue
            reused += path not in pending_set
            rows.append(_row(stats, folder, root, path, entry["values"]))
    rows.sort(key=lambda r: (r["folder"], r["file"]))
    return rows, skipped, encoded, reused


# -- summaries -------------------------------------------------------------------------------
def _describe(values: list[float]) -> dict | None:
    if not values:
        return None
    x = np.asarray(values, float)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std()),
            "min": float(x.min()), "max": float(x.max())}


def _folder_summaries(rows: list[dict], folders: Sequence[str], skipped: list) -> list[dict]:
    out = []
    for folder in folders:
        mine = [r for r in rows if r["folder"] == folder]
        root = Path(folder).resolve()
        own_skipped = [p for p, _ in skipped if Path(p).resolve().is_relative_to(root)]
        entry = {"folder": folder, "count": len(mine), "skipped": len(own_skipped)}
        for key in (*READOUTS, "conformity_percentile", "log_likelihood_percentile"):
            entry[key] = _describe([r[key] for r in mine if r[key] is not None])
        out.append(entry)
    return out


def _comparisons(rows: list[dict], folders: Sequence[str]) -> list[dict]:
    out = []
    for i, a in enumerate(folders):
        for b in folders[i + 1:]:
            pair = {"a": a, "b": b}
            for key in READOUTS:
                xa = [r[key] for r in rows if r["folder"] == a and r[key] is not None]
                xb = [r[key] for r in rows if r["folder"] == b and r[key] is not None]
                if not xa or not xb:
                    pair[key] = None
                    continue
                d, p = ks_statistic(xa, xb)
                pair[key] = {"ks_statistic": d, "ks_pvalue": p, "wasserstein_1": wasserstein_1(xa, xb),
                             "mean_difference": float(np.mean(xa) - np.mean(xb)),
                             "median_difference": float(np.median(xa) - np.median(xb))}
            out.append(pair)
    return out


def _stats_info(stats: ModalityStats, space: str) -> dict:
    return {"space": space, "describe": stats.describe(), "checksum": stats.checksum(),
            "conformity_kind": stats.conformity_kind, "conformity_label": stats.conformity_label,
            "n": stats.n, "likelihood": stats.whitening is not None, "percentiles": stats.has_population,
            "provenance": stats.provenance}


# -- files -----------------------------------------------------------------------------------
def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "folder", *VALUE_COLUMNS])
    for r in rows:
        writer.writerow([r["file"], r["folder"], *("" if r[k] is None else repr(float(r[k]))
                                                    for k in VALUE_COLUMNS)])
    return buf.getvalue().encode("utf-8")


def _slug(folder: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).resolve().name or "folder").strip("-.") or "folder"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _thumb_cell(path: str, caption: list[str], font) -> PIL.Image.Image:
    from PIL import ImageDraw

    cell = PIL.Image.new("RGB", (THUMB + 8, THUMB + 34), "white")
    try:
        img = load_image(path)
        img.thumbnail((THUMB, THUMB), PIL.Image.Resampling.LANCZOS)
        cell.paste(img, (4 + (THUMB - img.width) // 2, 4 + (THUMB - img.height) // 2))
    except ImageInputError:
        pass
    draw = ImageDraw.Draw(cell)
    for k, line in enumerate(caption):
        draw.text((4, THUMB + 6 + 13 * k), line, fill="black", font=font)
    return cell


def _caption(row: dict) -> list[str]:
    pct = row["conformity_percentile"]
    first = f"C {row['conformity']:.3f}" + ("" if pct is None else f"  p{pct:.0f}")
    return [first, Path(row["file"]).name[:18]]


def extremes(rows: list[dict], count: int) -> tuple[list[dict], list[dict]]:
    """(the ``count`` most conformal rows, most first; the ``count`` least, least first), with
    no row in both: fewer than 2 ``count`` rows are split in two (the odd one to the top)."""
    ordered = sorted(rows, key=lambda r: r["conformity"], reverse=True)
    most = ordered[:min(count, math.ceil(len(ordered) / 2))]
    return most, ordered[len(most):][::-1][:count]


def contact_sheet(rows: list[dict], folder: str, count: int = SHEET_COUNT) -> PIL.Image.Image:
    """The ``count`` most conformal images of a folder's rows (top) and the least (bottom); a
    folder of fewer than 2 ``count`` images is split in two, so no image is in both rows."""
    from PIL import ImageDraw

    font = label_font(11)
    most, least = extremes(rows, count)
    halves = [("most conformal", most), ("least conformal", least)]
    cell_w, cell_h, head = THUMB + 8, THUMB + 34, 22
    width = max(1, len(most)) * cell_w
    sheet = PIL.Image.new("RGB", (max(width, 360), 2 * (head + cell_h) + head), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{folder}: {len(rows)} images", fill="black", font=label_font(13))
    y = head
    for title, chosen in halves:
        draw.text((4, y + 4), title, fill="black", font=font)
        for i, row in enumerate(chosen):
            sheet.paste(_thumb_cell(row["path"], _caption(row), font), (i * cell_w, y + head))
        y += head + cell_h
    return sheet


# -- the report picture ----------------------------------------------------------------------
_LABELS = {"conformity": "conformity", "log_likelihood": "whitened log-likelihood"}


def _population_density(quantiles: torch.Tensor, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(edges, density) of the population from its quantiles: equal-mass bins (1/bins each)."""
    q = quantiles.double().numpy()
    edges = q[np.linspace(0, len(q) - 1, bins + 1).round().astype(int)]
    widths = np.diff(edges)
    density = np.where(widths > 0, (1.0 / bins) / np.where(widths > 0, widths, 1.0), 0.0)
    return edges, density


def _draw_panel(ax, rows_by_folder: dict[str, list[float]], quantiles, key: str, n_pop) -> None:
    values = [v for vs in rows_by_folder.values() for v in vs]
    lo, hi = min(values), max(values)
    if quantiles is not None:
        edges, density = _population_density(quantiles)
        lo, hi = min(lo, float(edges[0])), max(hi, float(edges[-1]))
        ax.stairs(density, edges, fill=True, color="0.85", label=f"stats population (n={n_pop})")
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
    for k, (folder, vs) in enumerate(rows_by_folder.items()):
        colour = f"C{k % 10}"
        ax.hist(vs, bins=bins, density=True, histtype="step", lw=1.6, color=colour,
                label=f"{Path(folder).name or folder} (n={len(vs)})")
        ax.axvline(float(np.mean(vs)), color=colour, lw=1.0, ls="-")
        ax.axvline(float(np.median(vs)), color=colour, lw=1.0, ls=":")
    ax.set_xlabel(_LABELS[key])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best")


def report_png(rows: list[dict], folders: Sequence[str], stats: ModalityStats, comparisons: list[dict],
               title: str) -> bytes:
    """Per folder (a row each): conformity and log-likelihood histograms over the population's
    distribution, mean (solid) and median (dotted) marked; two folders or more: all overlaid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in READOUTS if any(r[k] is not None for r in rows)]
    quantiles = {"conformity": stats.conformity_quantiles, "log_likelihood": stats.log_likelihood_quantiles}
    panels = [[f] for f in folders if any(r["folder"] == f for r in rows)]
    if len(panels) > 1:
        panels.append([f for [f] in panels])
    fig = Figure(figsize=(4.2 * len(keys), 2.3 * len(panels) + 0.6), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), len(keys), squeeze=False)
    for i, group in enumerate(panels):
        for j, key in enumerate(keys):
            data = {f: [r[key] for r in rows if r["folder"] == f and r[key] is not None] for f in group}
            _draw_panel(axes[i][j], data, quantiles[key], key, stats.n)
            if len(group) > 1:
                axes[i][j].set_title(_comparison_title(comparisons, key), fontsize=8)
            else:
                vs = data[group[0]]
                axes[i][j].set_title(f"{Path(group[0]).name or group[0]}: mean {np.mean(vs):.4g}, "
                                     f"median {np.median(vs):.4g}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _comparison_title(comparisons: list[dict], key: str) -> str:
    parts = []
    for c in comparisons[:3]:
        if c.get(key):
            parts.append(f"{Path(c['a']).name} vs {Path(c['b']).name}: KS D={c[key]['ks_statistic']:.2f}, "
                         f"W1={c[key]['wasserstein_1']:.3g}")
    return "; ".join(parts) or "all folders"


# -- the whole run ---------------------------------------------------------------------------
def score_folders(encoder, stats: ModalityStats, folders: Sequence[str | os.PathLike],
                  out: str | os.PathLike, *, space: str | None = None, batch_size: int = 32,
                  sheet_count: int = SHEET_COUNT) -> ScoreReport:
    """Score every image under ``folders`` with ``encoder`` (``encode(list[PIL]) -> (N, d)``,
    ``name``) and its ``stats``; write the report into ``out`` (see the module docstring).

    Args:
        encoder: the model's CLIP image encoder (``engine.encoder``) or a reference encoder.
        stats: that encoder's image stats (with the population's scale for percentiles).
        folders: one or more folders of images (searched recursively).
        out: the output folder (created; a previous run's cache there is reused).
        space: what the scores are in, for the report (default: the encoder's name).
        batch_size: images encoded at once.
        sheet_count: images in each half of a folder's contact sheet.
    """
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]  # one folder
    folders = [str(f) for f in folders]
    if not folders:
        raise StatsError("no folder to score: give --images DIR at least once")
    for folder in folders:  # before anything is written
        if not Path(folder).is_dir():
            raise StatsError(f"{folder}: not a directory of images")
    if len(set(folders)) != len(folders):
        raise StatsError(f"a folder is given twice: {', '.join(folders)}")
    stats.validate(getattr(encoder, "dim", None), "stats")
    out_dir = OutputDir(Path(out))
    out_dir.path.mkdir(parents=True, exist_ok=True)
    space = space or encoder.name
    cache = _Cache.open(out_dir.path, {"encoder": encoder.name, "stats": stats.checksum()})
    rows, skipped, encoded, reused = _collect(encoder, stats, folders, cache, batch_size)
    if not rows:
        raise StatsError(f"no readable images in {', '.join(folders)} (looked for {sorted(IMAGE_SUFFIXES)})")
    summaries = _folder_summaries(rows, folders, skipped)
    comparisons = _comparisons(rows, folders)
    files = _write_files(out_dir, rows, folders, stats, comparisons, space, sheet_count)
    summary = {"format": SCORE_FORMAT, "stats": _stats_info(stats, space), "folders": summaries,
               "comparisons": comparisons,
               "two_sample_distances": "Kolmogorov-Smirnov statistic D = sup|F_a - F_b| (asymptotic "
                                       "p-value) and Wasserstein-1 = integral of |F_a - F_b|, "
                                       "in the readout's units",
               "skipped": [{"file": p, "reason": r} for p, r in skipped],
               "encoded": encoded, "reused": reused, "files": files,
               "rows": [{k: v for k, v in r.items() if k != "path"} for r in rows]}
    out_dir.write("scores.json", (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    files["json"] = "scores.json"
    return ScoreReport(rows=rows, folders=summaries, comparisons=comparisons, skipped=skipped,
                       encoded=encoded, reused=reused, files=files, summary=summary)


def _write_files(out_dir: OutputDir, rows, folders, stats, comparisons, space, sheet_count) -> dict:
    """scores.csv, report.png and one contact sheet per folder; their names by role."""
    out_dir.write("scores.csv", _csv_bytes(rows))
    title = (f"{space}: {stats.conformity_label}\ngrey: the stats' own {stats.n} images; "
             "lines: mean (solid), median (dotted)")
    if not stats.has_population:
        title = (f"{space}: {stats.conformity_label}\nthese stats carry no population distribution; "
                 "lines: mean (solid), median (dotted)")
    out_dir.write("report.png", report_png(rows, folders, stats, comparisons, title))
    files = {"csv": "scores.csv", "report": "report.png", "sheets": {}}
    taken: set = set()
    for folder in folders:
        mine = [r for r in rows if r["folder"] == folder]
        if mine:
            name = f"{_slug(folder, taken)}.conformal.png"
            buf = io.BytesIO()
            contact_sheet(mine, folder, sheet_count).save(buf, format="PNG")
            out_dir.write(name, buf.getvalue())
            files["sheets"][folder] = name
    return files


# -- sequences: how evenly and directly a morph moves (vslerp_app.smoothness) ------------------
SEQUENCE_FORMAT = "vslerp-score-sequences/1"
SEQUENCE_COLUMNS = ("sequence", "index", "file", "conformity", "conformity_percentile", "log_likelihood",
                    "log_likelihood_percentile", "step_to_next")


def _name_order(path: Path) -> list:
    """Sort key: the name with its runs of digits as numbers (frame2 before frame10)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def check_sequence(source: str | os.PathLike) -> None:
    """Refuse (StatsError, naming it) a source that is not a sequence of 2 frames or more, without
    decoding it: a folder's image files are counted, a video's frames counted by ffmpeg."""
    path = Path(source)
    if path.is_dir():
        count = sum(1 for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        import imageio_ffmpeg

        try:
            count = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
        except (RuntimeError, OSError) as e:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise StatsError(f"{path}: not a video ffmpeg can read ({reason})") from None
    else:
        raise StatsError(f"{path}: neither a folder of frames nor a video file")
    if count < 2:
        raise StatsError(f"sequence {path}: {count} frame{'' if count == 1 else 's'}; a sequence needs at "
                         f"least 2 (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files, or a video)")


def sequence_frames(source: str | os.PathLike) -> tuple[list[str], list[PIL.Image.Image]]:
    """(names, RGB frames) of a sequence: a folder's images in name order (not its subfolders),
    or a video's frames in order (any format ffmpeg reads); StatsError naming what is wrong."""
    path = Path(source)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_name_order)
        frames = []
        for p in files:
            try:
                frames.append(load_image(p))
            except ImageInputError as e:
                raise StatsError(f"sequence {path}: frame {p.name} cannot be read ({e})") from None
        names = [p.name for p in files]
    elif path.is_file():
        names, frames = _video_frames(path)
    else:
        raise StatsError(f"{path}: neither a folder of frames nor a video file")
    if len(frames) < 2:
        raise StatsError(f"sequence {path}: {len(frames)} frame{'' if len(frames) == 1 else 's'}; a sequence "
                         f"needs at least 2 (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return names, frames


def _video_frames(path: Path) -> tuple[list[str], list[PIL.Image.Image]]:
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [PIL.Image.frombytes("RGB", (w, h), bytes(buf)) for buf in reader]
    except (RuntimeError, OSError, StopIteration, KeyError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise StatsError(f"{path}: not a video ffmpeg can read ({reason})") from None
    return [f"{path.name}#{i:04d}" for i in range(len(frames))], frames


def _sequence_names(sources: Sequence[str]) -> list[str]:
    """A short, unique name per sequence: its folder's or file's name; with its parent folder
    when two share a name (runs/a/frames, runs/b/frames: a/frames, b/frames); else numbered."""
    parts = [Path(source).resolve().parts for source in sources]
    bases = [p[-1] for p in parts]
    names = [("/".join(p[-2:]) if bases.count(p[-1]) > 1 else p[-1]) for p in parts]
    unique: list[str] = []
    for name in names:
        candidate, k = name, 2
        while candidate in unique:
            candidate, k = f"{name} ({k})", k + 1
        unique.append(candidate)
    return unique


def _score_one(encoder, stats: ModalityStats, name: str, source: str, batch_size: int) -> dict:
    """Every frame's readouts and the sequence's smoothness (model space; LPIPS where present)."""
    from vslerp_app import smoothness

    files, frames = sequence_frames(source)
    embeddings = torch.cat([encoder.encode(frames[i:i + batch_size])
                            for i in range(0, len(frames), batch_size)]).float().cpu()
    measured = {"model": smoothness.describe_sequence(embeddings, space=encoder.name)}
    lpips = smoothness.lpips_steps(frames)
    if lpips is not None:
        measured["lpips"] = {"space": "lpips-alex", "distance": "lpips", **smoothness.measure(lpips)}
    steps = measured["model"]["steps"] + [None]
    rows = [{"sequence": name, "index": i, "file": f, **{k: v[k] for k in VALUE_COLUMNS}, "step_to_next": s}
            for i, (f, v, s) in enumerate(zip(files, _values(stats, embeddings), steps, strict=True))]
    return {"name": name, "source": str(source), "frames": len(frames), "smoothness": measured, "rows": rows}


def score_sequences(encoder, stats: ModalityStats, sources: Sequence[str | os.PathLike],
                    out: str | os.PathLike, *, space: str | None = None, batch_size: int = 32) -> dict:
    """Score morph sequences side by side: each frame's conformity and likelihood on the
    population's scale, and each sequence's smoothness (`vslerp_app.smoothness`: steps, path
    length, PPL, PDV, 1 - Gini, largest jump, directness from its first to its last frame).

    Args:
        encoder: the CLIP image encoder (``encode(list[PIL]) -> (N, d)``, ``name``).
        stats: its image stats.
        sources: folders of frames (images in name order, digits read as numbers) or video
            files (frames in order), one per sequence; from our renders or any other tool's.
        out: the output folder: sequences.csv (one row per frame), sequences.json (per
            sequence its smoothness and frames) and sequences.png (the sequences side by side).
    Returns:
        The content of sequences.json.
    """
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not sources:
        raise StatsError("no sequence to score: give --sequence DIR or --video FILE at least once")
    for source in sources:  # before anything is decoded or written
        check_sequence(source)
    stats.validate(getattr(encoder, "dim", None), "stats")
    scored = [_score_one(encoder, stats, name, source, batch_size)
              for name, source in zip(_sequence_names(sources), sources, strict=True)]
    out_dir = OutputDir(Path(out))
    out_dir.path.mkdir(parents=True, exist_ok=True)
    rows = [r for s in scored for r in s["rows"]]
    out_dir.write("sequences.csv", _sequence_csv(rows))
    title = f"{space or encoder.name}: {stats.conformity_label}"
    out_dir.write("sequences.png", sequences_png(scored, title))
    summary = {"format": SEQUENCE_FORMAT, "stats": _stats_info(stats, space or encoder.name),
               "sequences": scored, "files": {"csv": "sequences.csv", "json": "sequences.json",
                                               "plot": "sequences.png"}}
    out_dir.write("sequences.json", (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    return summary


def _sequence_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SEQUENCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r[k] is None else r[k]) for k in SEQUENCE_COLUMNS} for r in rows])
    return buf.getvalue().encode("utf-8")


def sequences_png(scored: list[dict], title: str) -> bytes:
    """Sequences side by side: conformity along each (0 = first frame, 1 = last), the step sizes
    with each largest jump marked, and a table of the smoothness measures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7.6), layout="constrained")
    ax_c, ax_s, ax_t = fig.subplots(3, 1, height_ratios=[1, 1, 0.25 + 0.12 * len(scored)])
    for k, s in enumerate(scored):
        n, color = s["frames"], f"C{k % 10}"
        pos = np.linspace(0, 1, n)
        ax_c.plot(pos, [math.nan if r["conformity"] is None else r["conformity"] for r in s["rows"]], "-o",
                  color=color, markersize=3, label=s["name"])
        m = s["smoothness"]["model"]
        mids = (pos[:-1] + pos[1:]) / 2
        ax_s.plot(mids, m["steps"], "-", color=color, lw=1.2, label=s["name"])
        jump = m["largest_jump"]
        ax_s.plot([mids[jump["step"]]], [jump["distance"]], "o", color=color, markersize=7, mfc="none", mew=2)
    ax_c.set_ylabel("conformity")
    ax_c.legend(fontsize=7, loc="best")
    ax_s.set_ylabel("step size (cosine)")
    ax_s.set_xlabel("position along the sequence (first frame 0, last frame 1); circles: largest jumps")
    for ax in (ax_c, ax_s):
        ax.grid(True, alpha=0.3)
    _measures_table(ax_t, scored)
    fig.suptitle(title, fontsize=9)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _measures_table(ax, scored: list[dict]) -> None:
    """The smoothness measures of each sequence as a table (one row per sequence)."""
    ax.axis("off")
    header = ["sequence", "frames", "1 − Gini", "PDV", "PPL", "path length", "largest jump",
              "directness"]
    cells = []
    for s in scored:
        m = s["smoothness"]["model"]
        j = m["largest_jump"]
        cells.append([s["name"][:28], str(s["frames"]), f"{m['smoothness']:.3f}", f"{m['pdv']:.3g}",
                      f"{m['ppl']:.3g}", f"{m['path_length']:.3g}",
                      f"{j['distance']:.3g} ({j['frames'][0]}→{j['frames'][1]})",
                      f"{100 * m['directness']['directness']:.0f}%"])
    table = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
