"""Image and text statistics of a reference space, and the report beside them.

`vslerp stats --reference SPEC --images DIR --out FILE [--captions CAPTIONS]` runs
`reference_stats`: image-modality stats over the folder (streamed, like every stats
run), text-modality stats over the captions through the same model's text tower
(``<stem>.text.safetensors`` beside FILE), and a report (``<stem>.report.json`` and
``<stem>.report.png``) with what the papers measure per modality: the fitted a, b of
Eq. 11 and the Pearson of C against C_hat, the norms of the mean and of sigma and their
ratio (Double-Ellipsoid: ViT-B/32 on MS-COCO gives 0.94 for images, 1.03 for texts), the
thin shell of the mean-subtracted norms, and the modality gap between the two means.

Member conformity (Eq. 10 of each member against the rest of its set) needs the final
mean of unit vectors, which a streaming pass knows only at the end, so the unit vectors
are kept (float16, N x d: 5 MB for MS-COCO val's 5k images at d = 512, 26 MB for its 25k
captions) with each raw norm (float32); histograms and the mean-subtracted norms come
from them. a, b and Pearson in the report are the streaming closed-form fit stored in
the stats files (float64 sums); the member values from the float16 copies agree to ~1e-3.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vslerp_app import geometry
from vslerp_app.folder_stats import FolderStatsResult, folder_stats
from vslerp_app.stats import ModalityStats, StatsAccumulator, StatsError

__all__ = ["EmbeddingRecorder", "ReferenceStatsResult", "read_captions", "reference_stats",
           "text_stats", "modality_summary", "write_report", "sibling_paths"]

logger = logging.getLogger(__name__)


def sibling_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Files written beside the image stats file ``out``: text stats and the report."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors") if out.name.endswith(".safetensors") else out.stem
    return {"image": out,
            "text": out.with_name(f"{stem}.text.safetensors"),
            "report_json": out.with_name(f"{stem}.report.json"),
            "report_png": out.with_name(f"{stem}.report.png")}


# -- keeping what the report needs -------------------------------------------------------
@dataclass
class EmbeddingRecorder:
    """Keeps unit vectors (float16) and raw norms of everything encoded, plus sum |v|^2.

    Wraps an encoder for `folder_stats` (``name`` and ``encode`` pass through), or is fed
    directly with `add`.
    """

    encoder: object = None
    units: list[torch.Tensor] = field(default_factory=list)
    norms: list[torch.Tensor] = field(default_factory=list)
    sum_sq: float = 0.0

    @property
    def name(self) -> str:
        return self.encoder.name

    def encode(self, images) -> torch.Tensor:
        emb = self.encoder.encode(images)
        self.add(emb)
        return emb

    def add(self, emb: torch.Tensor) -> None:
        x = emb.detach().double().cpu()
        norms = torch.linalg.vector_norm(x, dim=1)
        self.units.append((x / norms.clamp_min(1e-300).unsqueeze(1)).to(torch.float16))
        self.norms.append(norms.float())
        self.sum_sq += float((norms * norms).sum())

    def unit_vectors(self) -> torch.Tensor:
        return torch.cat(self.units).float()

    def raw_norms(self) -> torch.Tensor:
        return torch.cat(self.norms).double()


# -- captions ----------------------------------------------------------------------------
def read_captions(path: str | os.PathLike) -> list[str]:
    """Captions from a text file (one per line, blank lines skipped) or a COCO captions
    JSON (``annotations[].caption``, as ``captions_val2017.json``)."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{path}: no such captions file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise StatsError(f"{path}: not valid JSON ({e}); give one caption per line or a "
                             "COCO captions JSON") from None
        items = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise StatsError(f"{path}: a COCO captions JSON needs an 'annotations' list")
        captions = [str(a["caption"]) if isinstance(a, dict) and "caption" in a else a
                    for a in items]
        bad = [c for c in captions if not isinstance(c, str)]
        if bad:
            raise StatsError(f"{path}: {len(bad)} annotation(s) without a 'caption' string")
    else:
        captions = text.splitlines()
    captions = [" ".join(c.split()) for c in captions]
    captions = [c for c in captions if c]
    if len(captions) < 2:
        raise StatsError(f"{path}: {len(captions)} caption(s); statistics need at least 2")
    return captions


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def text_stats(encoder, captions: Sequence[str], *, batch_size: int = 256,
               recorder: EmbeddingRecorder | None = None, **provenance) -> ModalityStats:
    """Text-modality stats of ``encoder.encode_text`` over captions (streamed in batches)."""
    from tqdm.auto import tqdm

    acc = StatsAccumulator()
    with tqdm(total=len(captions), desc=f"captions with {encoder.name}", unit="cap") as bar:
        for batch in _batches(list(captions), batch_size):
            emb = encoder.encode_text(batch)
            acc.update(emb)
            if recorder is not None:
                recorder.add(emb)
            bar.update(len(batch))
    return acc.finalize(modality="text", encoder=encoder.name, **provenance)


# -- the report --------------------------------------------------------------------------
def modality_summary(stats: ModalityStats, recorder: EmbeddingRecorder) -> tuple[dict, dict]:
    """(numbers for the report, per-member arrays for the plot) of one modality."""
    units = recorder.unit_vectors().double()
    norms = recorder.raw_norms()
    n = units.shape[0]
    if n != stats.n:
        raise StatsError(f"recorded {n} embeddings but the stats count {stats.n}")
    mean = stats.mean.double()
    mean_norm = float(torch.linalg.vector_norm(mean))
    # trace(Sigma) = (sum |v|^2 - n |m|^2) / (n - 1): sigma is the per-coordinate std vector
    sigma_norm = math.sqrt(max(recorder.sum_sq - n * mean_norm ** 2, 0.0) / (n - 1))
    members = geometry.member_conformity(units, stats.mean_unit.double(), n)
    cos_m = units @ (mean / mean_norm)
    estimated = stats.a * cos_m + stats.b
    # |v - m|^2 = |v|^2 - 2 |v| <u, m> + |m|^2
    centred = (norms ** 2 - 2 * norms * (units @ mean) + mean_norm ** 2).clamp_min(0).sqrt()
    summary = {
        "n": n,
        "a": stats.a,
        "b": stats.b,
        "pearson": stats.pearson,
        "mean_norm": mean_norm,
        "sigma_norm": sigma_norm,
        "mean_to_sigma": mean_norm / sigma_norm if sigma_norm > 0 else None,
        "raw_norm": {"mean": float(norms.mean()), "std": float(norms.std())},
        "centred_norm": {"mean": float(centred.mean()), "variance": float(centred.var())},
        "member_conformity": {"mean": float(members.mean()), "std": float(members.std()),
                              "min": float(members.min()), "max": float(members.max())},
        "pearson_members_float16": _pearson(members, estimated),
    }
    return summary, {"conformity": members.float(), "estimated": estimated.float()}


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    return float((x * y).sum()) / denom if denom > 0 else None


def modality_gap(image: ModalityStats, text: ModalityStats) -> dict:
    """Distance and cosine between the image and the text means (raw, and of unit means)."""
    mi, mt = image.mean.double(), text.mean.double()
    gap = {"mean_distance": float(torch.linalg.vector_norm(mi - mt)),
           "mean_cosine": float(geometry.cosine(mi, mt))}
    if image.mean_unit is not None and text.mean_unit is not None:
        gap["unit_mean_distance"] = float(torch.linalg.vector_norm(
            image.mean_unit.double() - text.mean_unit.double()))
    return gap


def write_report(paths: dict[str, Path], space: str, summaries: dict[str, dict],
                 arrays: dict[str, dict], gap: dict | None, extra: dict) -> None:
    """``<stem>.report.json`` and ``<stem>.report.png`` (histograms; C against C_hat)."""
    files = {"image_stats": paths["image"].name,
             "text_stats": paths["text"].name if "text" in summaries else None,
             "plot": paths["report_png"].name}
    report = {"space": space, **extra, "modalities": summaries, "modality_gap": gap, "files": files}
    paths["report_json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colours = {"image": "tab:blue", "text": "tab:orange"}
    fig, (ax_hist, ax_fit) = plt.subplots(1, 2, figsize=(11, 4.2))
    lo = min(float(a["conformity"].min()) for a in arrays.values())
    hi = max(float(a["conformity"].max()) for a in arrays.values())
    n_max = max(len(a["conformity"]) for a in arrays.values())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, min(60, max(10, n_max // 10)) + 1)
    for modality, arr in arrays.items():
        c = arr["conformity"].numpy()
        s = summaries[modality]
        ax_hist.hist(c, bins=bins, density=True, alpha=0.6, color=colours[modality],
                     label=f"{modality} (n={s['n']}, mean {s['member_conformity']['mean']:.3f})")
        pearson = "n/a" if s["pearson"] is None else f"{s['pearson']:.4f}"
        ax_fit.scatter(arr["estimated"].numpy(), c, s=4, alpha=0.5, color=colours[modality],
                       label=f"{modality}: a={s['a']:.3f} b={s['b']:.3f} r={pearson}")
    ax_hist.set(title="member conformity C (Eq. 10)", xlabel="conformity", ylabel="density")
    ax_hist.legend(fontsize=8)
    ax_fit.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax_fit.set(title="C against C_hat = a cos(m, v) + b (Eq. 11)", xlabel="C_hat", ylabel="C")
    ax_fit.legend(fontsize=8)
    fig.suptitle(space, fontsize=10)
    fig.tight_layout()
    fig.savefig(paths["report_png"], dpi=110)
    plt.close(fig)


# -- the whole run -----------------------------------------------------------------------
@dataclass
class ReferenceStatsResult:
    image: FolderStatsResult
    text: ModalityStats | None
    paths: dict[str, Path]
    report: dict


def reference_stats(encoder, images: str | os.PathLike, out: str | os.PathLike, *,
                    captions: str | os.PathLike | None = None, batch_size: int = 64,
                    dataset: str | None = None) -> ReferenceStatsResult:
    """Image stats (and text stats with captions) of an open_clip encoder, and the report.

    Writes ``out``; with captions also ``<stem>.text.safetensors``; always
    ``<stem>.report.json`` and ``<stem>.report.png``.
    """
    paths = sibling_paths(out)
    caption_list = read_captions(captions) if captions is not None else None
    recorder = EmbeddingRecorder(encoder)
    result = folder_stats(recorder, images, batch_size=batch_size, dataset=dataset)
    result.stats.save(paths["image"])
    summaries, arrays = {}, {}
    summaries["image"], arrays["image"] = modality_summary(result.stats, recorder)
    text, gap = None, None
    extra = {"dataset": result.stats.provenance.get("dataset"), "images_skipped": len(result.skipped)}
    if caption_list is not None:
        text_recorder = EmbeddingRecorder(encoder)
        text = text_stats(encoder, caption_list, batch_size=max(batch_size, 1),
                          recorder=text_recorder, dataset=extra["dataset"],
                          captions_file=Path(captions).name)
        text.save(paths["text"])
        summaries["text"], arrays["text"] = modality_summary(text, text_recorder)
        gap = modality_gap(result.stats, text)
        extra["captions_file"] = str(captions)
    write_report(paths, encoder.name, summaries, arrays, gap, extra)
    report = json.loads(paths["report_json"].read_text(encoding="utf-8"))
    return ReferenceStatsResult(image=result, text=text, paths=paths, report=report)
