"""Text for the studio's page: readouts in plain words, gallery captions, the model panel,
and the plain-words message of any failure (no Gradio; `vslerp_app.service` re-exports these)."""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path

import numpy as np
import torch

from pipelines import GenerationError, is_out_of_memory
from vslerp_app import smoothness
from vslerp_app.engine import AIM_ALPHA_RANGE
from vslerp_app.files import RenderError
from vslerp_app.images import ImageInputError
from vslerp_app.requests import RequestError
from vslerp_app.stats import CONFORMITY_LABELS

__all__ = ["DISK_FULL", "aim_markdown", "aimed_alpha", "at_an_end", "files_message", "frame_caption",
           "frame_readouts", "json_safe", "model_markdown", "path_caption", "readouts_markdown",
           "sequence_outputs", "source_replaced_markdown", "user_message", "without_server_paths"]

logger = logging.getLogger("vslerp_app.service")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def frame_readouts(frame, source, target, model: str,
                   seconds: float | None = None) -> dict:
    """The numbers of one frame, with the source's and target's (`service.InputEntry`) beside them."""
    out = frame.readouts()
    out["size"] = list(frame.image.size)
    out["source"] = source.readouts.as_dict()
    out["target"] = target.readouts.as_dict()
    out["model"] = model
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
    return json_safe(out)


def _num(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _placed(value, source, target, digits: int) -> str:
    """The frame's value placed against the source's and the target's."""
    if value is None:
        return "n/a"
    text = f"**{value:.{digits}f}**"
    if source is None or target is None:
        return text
    lo, hi = sorted((source, target))
    if value < lo:
        where = "below both the source and the target"
    elif value > hi:
        where = "above both the source and the target"
    else:
        where = "between the source and the target"
    return f"{text}, {where} ({_num(source, digits)} and {_num(target, digits)})"


def _readout_line(r: dict, key: str, digits: int) -> str:
    """The frame's value of ``key``, placed between the source's and the target's."""
    src, tgt = r.get("source") or {}, r.get("target") or {}
    return _placed(r.get(f"frame_{key}"), src.get(key), tgt.get(key), digits)


def readouts_markdown(r: dict | None, stats_note: str = "", population: int | None = None) -> str:
    """What a person reads under the frame: the numbers, and what they mean.

    One rule for decimals: theta, alpha and conformity with 3, log-likelihood with 1.
    ``population``: how many images the statistics were computed from ("more typical than
    all 5000").
    """
    if not r:
        return "Add a source and a target image, then move a slider or press **Generate**."
    kind = r.get("conformity_kind")
    head = (f"**theta = {r['theta']:.3f}, alpha = {r['alpha']:.3f}**, seed {r['seed']}"
            f"{' (preview)' if r.get('preview') else ''}")
    if kind is None:
        return (f"{head}. Conformity is not available: no image-modality statistics for this "
                f"model ({stats_note or 'none found'}).")
    label = r.get("conformity_label") or CONFORMITY_LABELS.get(kind, kind)
    lines = [
        head,
        f"**{label[:1].upper()}{label[1:]}**: how typical an image is among the reference images; "
        f"higher is more typical, lower more unusual. This frame: {_readout_line(r, 'conformity', 3)}. "
        f"The interpolated embedding it was made from: {_num(r.get('conformity'))}.",
    ]
    if r.get("frame_log_likelihood") is not None:
        lines.append(
            "**Whitened log-likelihood** (up to a constant): how probable the image is under the "
            "reference images' Gaussian; higher is more likely. "
            f"This frame: {_readout_line(r, 'log_likelihood', 1)}.")
    lines += _percentile_lines(r, population)  # both on the reference images' scale, when carried
    if r.get("aim"):
        lines.append(aim_markdown(r["aim"], r.get("theta")))
    ref = r.get("reference")
    if ref:
        line = (f"Reference space `{ref.get('space')}`: frame conformity "
                f"{_num(ref.get('frame_conformity'))} ({ref.get('conformity_kind')})")
        if ref.get("frame_log_likelihood") is not None:
            line += f", log-likelihood {_num(ref['frame_log_likelihood'], 1)}"
        lines.append(line + ".")
    if r.get("seconds") is not None:
        lines.append(("From the frame cache (rendered earlier in " if r.get("cached") else "Rendered in ")
                     + f"{r['seconds']:.2f} s{')' if r.get('cached') else ''}.")
    return "  \n".join(lines)


def _compared(percent: float, population: int | None, adjective: str) -> str:
    """A percentile in words: "more typical than 73%", "more typical than all 96", "less typical
    than all 96"; never a rounded "100%" or "0%" for a value inside the population's range."""
    everyone = f"all {population}" if population else "all"
    if percent >= 100 or percent <= 0:
        return f"{'more' if percent >= 100 else 'less'} {adjective} than {everyone}"
    digits = 0 if 0.5 <= percent < 99.5 else 1
    return f"more {adjective} than {percent:.{digits}f}%"


def _percentile_lines(r: dict, population: int | None = None) -> list[str]:
    """The population's scale, when the stats carry it: "more typical than 73% of ..."."""
    lines = []
    c, f = r.get("conformity_percentile"), r.get("frame_conformity_percentile")
    if c is not None or f is not None:
        parts = [f"the frame is {_compared(f, population, 'typical')}" if f is not None else None,
                 f"its embedding {_compared(c, population, 'typical')}" if c is not None else None]
        lines.append("On the reference images' scale: " + ", ".join(p for p in parts if p)
                     + " of the images the statistics were computed from.")
    ll = r.get("frame_log_likelihood_percentile")
    if ll is not None:
        lines.append(f"The frame is {_compared(ll, population, 'likely')} of those images (whitened CLIP).")
    return lines


def at_an_end(theta) -> str | None:
    """What the frame is at theta 0 or 1 (the source or the target, whatever alpha), else None."""
    if theta is None or float(theta) not in (0.0, 1.0):
        return None
    end = "source" if float(theta) == 0 else "target"
    return f"at theta = {float(theta):g} the frame is the {end} itself"


def aim_markdown(aim: dict, theta: float | None = None) -> str:
    """One sentence on an aimed alpha: the wanted conformity, the achieved one, and whether reached
    (3 decimals, as every readout)."""
    if aim.get("reachable"):
        return (f"Aimed at conformity {aim['wanted']:.3f}: alpha = {aim['alpha']:.3f} gives "
                f"{aim['achieved']:.3f}.")
    end = at_an_end(theta)
    if end is not None:
        return (f"Conformity {aim['wanted']:.3f} is out of reach: {end}, so alpha has no effect there "
                f"(its conformity is {aim['achieved']:.3f}). Aim at a theta between 0 and 1.")
    return (f"Conformity {aim['wanted']:.3f} is out of reach for alpha in "
            f"[{AIM_ALPHA_RANGE[0]:g}, {AIM_ALPHA_RANGE[1]:g}] here; the closest is {aim['achieved']:.3f}, "
            f"at alpha = {aim['alpha']:.3f}.")


def aimed_alpha(readouts: dict | None) -> tuple[float, str]:
    """(alpha, sentence) of a frame rendered at an aimed alpha, for the slider and the note."""
    readouts = readouts or {}
    aim = readouts.get("aim")
    if not aim:
        raise RequestError("This frame was not aimed at a conformity.")
    return round(aim["alpha"], 3), aim_markdown(aim, readouts.get("theta"))  # 3 decimals, as the readouts


def source_replaced_markdown(readouts: dict | None) -> str:
    """The readout once the frame has become the source: the old comparisons no longer hold."""
    c = (readouts or {}).get("frame_conformity")
    what = "" if c is None else f" (its conformity {c:.3f} is now the source's)"
    return (f"**This frame is now the source**{what}. Move a slider or press **Generate** to render "
            "from it; the readouts then compare with the new source.")


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
            "zip": path("zip"), "smoothness": smoothness.markdown(manifest.get("smoothness"))}


def without_server_paths(info: dict) -> dict:
    """``info`` (`VSLERPEngine.info`) with the server's paths cut to the names the operator
    gave (the model folder's name, the stats file's name): the page shows no server paths."""
    def source(stats) -> str | None:
        return ((stats or {}).get("provenance") or {}).get("source")

    paths = [info.get("model"), source(info.get("stats")), source((info.get("reference") or {}).get("stats"))]
    local = sorted({p for p in paths if isinstance(p, str) and Path(p).is_absolute()}, key=len, reverse=True)

    def cut(value):
        if isinstance(value, str):
            for p in local:
                value = value.replace(p, Path(p).name)
            return value
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [cut(v) for v in value]
        return value

    return cut(info)


def model_markdown(info: dict, defaults: dict | None = None) -> str:
    """Which model and which statistics are in use, with their provenance (names, not the
    server's paths: `without_server_paths`)."""
    info = without_server_paths(info)
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
    if stats is None or stats.get("conformity_kind") != "exact":
        from vslerp_app.registry import full_stats_command

        lines.append(f"Full statistics (exact conformity, likelihood, percentiles) for this model: "
                     f"`{full_stats_command(info['model'])}`.")
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
    if isinstance(exc, RenderError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL):
        return files_message(exc)
    if isinstance(exc, (RequestError, GenerationError)):
        return str(exc)
    if is_out_of_memory(exc):
        return ("The GPU ran out of memory. Try preview quality, fewer frames or a smaller "
                "batch limit (advanced settings).")
    if isinstance(exc, ValueError):
        return str(exc)
    logger.exception("unexpected failure in the app")
    return (f"Something went wrong while rendering ({type(exc).__name__}). Please try again; "
            "if it keeps failing, the server log has the details.")


def files_message(exc: BaseException) -> str:
    """A failure to write a request's files, without the server's paths or the CLI's advice."""
    logger.warning("writing a request's files failed: %s", exc)
    text = str(exc).lower()
    if "no space left" in text or "disk full" in text or "quota" in text:
        return ("The server ran out of disk space while writing this sequence; nothing was kept. "
                "Try fewer frames, or try again later.")
    return "The server could not write this sequence's files; nothing was kept. Please try again later."


def path_caption(entry: dict, keyframes: int) -> str:
    """Gallery caption of a path frame: the keyframe it shows (numbered from 1 as in the strip),
    or its segment with the local theta and alpha; then the frame's conformity. A keyframe's
    frame is the keyframe whatever the segment's alpha, so its caption leaves theta and alpha out."""
    c = "" if entry.get("frame_conformity") is None else f" C={entry['frame_conformity']:.3f}"
    if entry.get("keyframe") is not None:
        return f"key {entry['keyframe'] + 1}{c}"
    k = entry["segment"]
    return f"{k + 1}→{(k + 1) % keyframes + 1} θ={entry['theta']:.2f} α={entry['alpha']:.2f}{c}"
