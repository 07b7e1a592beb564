"""`load_pipeline`: a preset name or a local directory in, a ready `VSLERPEngine` out.

Stats are resolved in this order (the contract of `load_pipeline`): an explicit file; the
file registered for the preset in the repository's `stats/`; the user's cache, by encoder
(what `vslerp stats --dataset` writes); `vslerp-stats.safetensors` in the model directory;
the mean the model carries (Stable unCLIP's image_normalizer, an unCLIP prior's clip_mean
such as Kandinsky 2.2's, or the preset's declared source of it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

from pipelines import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MODEL,
    LoadedModel,
    UnclipRunner,
    carried_mean,
    get_preset,
    hub_snapshot,
)
from pipelines import load_model as _load_model
from vslerp_app.engine import VSLERPEngine
from vslerp_app.registry import full_stats_command, preset_stats_path, user_stats_path
from vslerp_app.stats import CONFORMITY_LABELS, STATS_FILENAME, ModalityStats, StatsError

__all__ = ["load_pipeline", "preset_status", "resolve_stats"]

logger = logging.getLogger(__name__)


def preset_status(name: str) -> dict:
    """A preset's settings and where it stands here: its hub snapshot, its stats file, and what
    its conformity readout is (``conformity_kind``, ``conformity_label``, ``percentiles``)."""
    preset = get_preset(name)
    local = hub_snapshot(preset.hub_id)
    stats_path = _present_stats_path(name, preset.encoder)
    present = stats_path is not None and stats_path.is_file()
    # Without a stats file a preset reads out the cosine to the mean its preset names (Eq. 11
    # uncalibrated); whether a model carries a mean of its own is known only once loaded.
    kind, percentiles = ("cosine" if preset.mean_source else None), False
    label = CONFORMITY_LABELS["cosine"] + ("" if preset.mean_source else ", if the model carries a mean")
    if present:
        try:
            stats = ModalityStats.load(stats_path, expected_dim=preset.embedding_dim)
            kind, percentiles = stats.conformity_kind, stats.has_population
            label = stats.conformity_label
        except StatsError as e:
            logger.warning("unusable stats file: %s", e)
            present = False
    return {**asdict(preset), "default": name == DEFAULT_MODEL,
            "local_snapshot": None if local is None else str(local),
            "stats_path": None if stats_path is None else str(stats_path),
            "user_stats_path": str(user_stats_path(preset.encoder)),
            "stats_present": present, "conformity_kind": kind,
            "conformity_label": label, "percentiles": percentiles,
            "full_stats_command": None if kind == "exact" else full_stats_command(name)}


def _present_stats_path(name: str, encoder: str):
    """The preset's registered file if present, else the user cache's file for its encoder if
    present, else the registered path (which may not exist yet)."""
    registered = preset_stats_path(name)
    if registered is not None and registered.is_file():
        return registered
    cached = user_stats_path(encoder)
    return cached if cached.is_file() else registered


def _carried_stats(loaded: LoadedModel) -> tuple[ModalityStats | None, str]:
    """Mean-only stats from the mean the model carries (or its preset names); else (None, why)."""
    mean, source = carried_mean(loaded)
    if mean is None:
        return None, source
    if source.endswith("(embedded mean)"):
        return (ModalityStats.from_mean(mean, source=source, model_id=str(loaded.model_dir)),
                "embedded in the model")
    return ModalityStats.from_mean(mean, source=source, encoder=loaded.preset.encoder), f"mean from {source}"


def resolve_stats(loaded: LoadedModel, dim: int,
                  stats: str | os.PathLike | ModalityStats | None = None):
    """(ModalityStats or None, a note saying where they came from or why there are none)."""
    if isinstance(stats, ModalityStats):
        stats.validate(dim)
        return stats, "given"
    if stats is not None:  # an explicit path: its errors are the user's to see
        return ModalityStats.load(stats, expected_dim=dim), f"from {stats}"
    candidates = [user_stats_path(loaded.encoder_name), loaded.model_dir / STATS_FILENAME]
    if loaded.from_preset:
        candidates.insert(0, preset_stats_path(loaded.preset.name))
    for path in candidates:
        if path is not None and path.is_file():
            try:
                return ModalityStats.load(path, expected_dim=dim), f"from {path}"
            except StatsError as e:
                logger.warning("ignoring unusable stats: %s", e)
    found, note = _carried_stats(loaded)
    if found is not None:
        found.validate(dim, f"mean for {loaded.model_dir}")
    return found, note


def load_pipeline(model: str | os.PathLike, device=None, dtype=None, stats=None, *,
                  offload: bool = False, max_batch: int = DEFAULT_MAX_BATCH, reference: str | None = None,
                  reference_stats=None) -> VSLERPEngine:
    """Load an unCLIP pipeline wrapped for vSLERP.

    Args:
        model: a preset name (`karlo`, `stable-unclip-h`, `stable-unclip-l`,
            `kandinsky-2-2`) or a local directory in the hub layout (old or current
            model_index.json; Kandinsky 2.2: the prior and decoder repositories as
            ``prior/`` and ``decoder/``).
        device: "cuda", "cpu", ... (default: CUDA if available).
        dtype: torch dtype or "fp16"/"bf16"/"fp32" (default: fp16 on CUDA, fp32 on CPU).
        stats: a stats file (or ModalityStats) overriding the lookup order.
        offload: model CPU offload for small GPUs: weights stay in CPU memory and each
            component moves to the GPU while it runs (less GPU memory, slower; CUDA only).
        max_batch: most frames denoised at once.
        reference: a reference CLIP space for extra readouts, "open_clip:MODEL/PRETRAINED".
        reference_stats: that space's stats file (default: the one registered in stats/).
    """
    runner = UnclipRunner(_load_model(model, device, dtype, offload=offload))
    found, note = resolve_stats(runner.loaded, runner.encoder.dim, stats)
    readout = None
    if reference is not None:
        from vslerp_app.reference import ReferenceReadout

        readout = ReferenceReadout.load(reference, stats=reference_stats, device=runner.loaded.device)
    return VSLERPEngine(runner, stats=found, stats_note=note, max_batch=max_batch, reference=readout)

