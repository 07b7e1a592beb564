"""`load_pipeline`: a preset name or a local directory in, a ready `VSLERPPipeline` out.

Stats are resolved in the order of DESIGN.md: an explicit file; the file registered for
the preset in the repository's `stats/`; `vslerp-stats.safetensors` in the model
directory; statistics the model carries (Stable unCLIP's image_normalizer mean, a Karlo
prior's clip_mean, or the preset's declared source of them).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from pipelines.engine import VSLERPPipeline
from pipelines.loading import load_diffusers_pipeline, read_embedded_mean
from pipelines.presets import DEFAULT_MODEL, KIND_DEFAULTS, PRESETS, ModelPreset, get_preset
from vslerp_app.stats import STATS_FILENAME, ModalityStats, StatsError

__all__ = ["load_pipeline", "preset_status", "resolve_model_path", "resolve_stats", "STATS_DIR"]

logger = logging.getLogger(__name__)

# Stats registered for presets live in the repository's stats/ folder; VSLERP_STATS_DIR
# points elsewhere (an installed package has no repository beside it).
STATS_DIR = Path(os.environ.get("VSLERP_STATS_DIR", Path(__file__).resolve().parent.parent / "stats"))

_KINDS = {"UnCLIPImageVariationPipeline": "karlo", "StableUnCLIPImg2ImgPipeline": "stable-unclip"}


class ModelLoadError(RuntimeError):
    """The model could not be found, downloaded or loaded; the message says what to do."""


def _download(hub_id: str) -> Path:
    """Download a hub repository's diffusers files (not its single-file checkpoints)."""
    from huggingface_hub import HfApi, snapshot_download

    try:  # already in the local cache (offline use, a Space's preload_from_hub)
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:
        pass
    try:
        files = HfApi().list_repo_files(hub_id)
        # Prefer safetensors; skip the original single-file .ckpt and duplicate formats.
        ignore = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*fp16*"]
        if any(f.endswith(".safetensors") for f in files if "/" in f):
            ignore.append("*.bin")
        return Path(snapshot_download(hub_id, ignore_patterns=ignore))
    except Exception as e:
        raise ModelLoadError(
            f"could not download {hub_id} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the network (or HF_HUB_OFFLINE), or pass a local directory in the hub "
            "layout as the model") from None


def preset_status(name: str) -> dict:
    """A preset's settings and where it stands here: its hub snapshot and its stats file."""
    from dataclasses import asdict

    from huggingface_hub import snapshot_download

    preset = get_preset(name)
    try:
        local = snapshot_download(preset.hub_id, local_files_only=True)
    except Exception:  # not in the cache: the first load_pipeline downloads it
        local = None
    stats_path = STATS_DIR / preset.stats_file if preset.stats_file else None
    return {**asdict(preset), "default": name == DEFAULT_MODEL, "local_snapshot": local,
            "stats_path": None if stats_path is None else str(stats_path),
            "stats_present": stats_path is not None and stats_path.is_file()}


def resolve_model_path(model: str | os.PathLike) -> tuple[Path, ModelPreset | None]:
    """A local directory as given, or a preset's repository from the hub cache/download."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, None
    if str(model) in PRESETS:
        preset = get_preset(str(model))
        return _download(preset.hub_id), preset
    if path.exists():
        raise ModelLoadError(f"{model} is a file, not a pipeline directory")
    raise ModelLoadError(f"model {str(model)!r} is neither a preset ({', '.join(PRESETS)}) "
                         "nor an existing directory")


def _embedded_stats(model_dir: Path, preset: ModelPreset | None, dim: int):
    """The mean a model carries, or one its preset declares; (stats, note) or (None, why)."""
    mean = read_embedded_mean(model_dir)
    if mean is not None:
        return ModalityStats.from_mean(mean, source=f"{model_dir} (embedded mean)",
                                       model_id=str(model_dir)), "embedded in the model"
    if preset is not None and preset.embedded_stats is not None:
        repo, subfolder = preset.embedded_stats
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(repo, allow_patterns=[f"{subfolder}/*"]))
            mean = read_embedded_mean(local)
        except Exception as e:
            return None, f"could not download the mean from {repo}/{subfolder}: {e}"
        if mean is not None:
            return (ModalityStats.from_mean(mean, source=f"{repo}/{subfolder}",
                                            encoder=preset.encoder),
                    f"mean from {repo}/{subfolder}")
    return None, "the model carries no usable mean (missing, all zeros or non-finite)"


def resolve_stats(model_dir: Path, preset: ModelPreset | None, dim: int,
                  stats: str | os.PathLike | ModalityStats | None = None):
    """(ModalityStats or None, a note saying where they came from or why there are none)."""
    if isinstance(stats, ModalityStats):
        stats.validate(dim)
        return stats, "given"
    if stats is not None:  # an explicit path: its errors are the user's to see
        return ModalityStats.load(stats, expected_dim=dim), f"from {stats}"
    candidates = []
    if preset is not None and preset.stats_file:
        candidates.append(STATS_DIR / preset.stats_file)
    candidates.append(model_dir / STATS_FILENAME)
    for path in candidates:
        if path.is_file():
            try:
                return ModalityStats.load(path, expected_dim=dim), f"from {path}"
            except StatsError as e:
                logger.warning("ignoring unusable stats: %s", e)
    found, note = _embedded_stats(model_dir, preset, dim)
    if found is not None:
        found.validate(dim, f"mean for {model_dir}")
    return found, note


def _pick_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
        dtype = names[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def _check_components(model_dir: Path) -> None:
    """Every component model_index.json names has its folder (else: an incomplete download)."""
    index = json.loads((model_dir / "model_index.json").read_text())
    missing = [name for name, spec in index.items()
               if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None
               and not (model_dir / name).is_dir()]
    if missing:
        raise ModelLoadError(f"{model_dir} is incomplete: no folder for {', '.join(missing)} "
                             "(an interrupted download? delete it and download again)")


def load_pipeline(model: str | os.PathLike, device=None, dtype=None, stats=None, *,
                  offload: bool = False, max_batch: int = 8, reference: str | None = None,
                  reference_stats=None) -> VSLERPPipeline:
    """Load an unCLIP pipeline wrapped for vSLERP.

    Args:
        model: a preset name (`karlo`, `stable-unclip-h`, `stable-unclip-l`) or a local
            directory in the hub layout (old or current model_index.json).
        device: "cuda", "cpu", ... (default: CUDA if available).
        dtype: torch dtype or "fp16"/"bf16"/"fp32" (default: fp16 on CUDA, fp32 on CPU).
        stats: a stats file (or ModalityStats) overriding the lookup order.
        offload: model CPU offload for small GPUs: weights stay in CPU memory and each
            component moves to the GPU while it runs (less GPU memory, slower; CUDA only).
        max_batch: most frames denoised at once.
        reference: a reference CLIP space for extra readouts, "open_clip:MODEL/PRETRAINED".
        reference_stats: that space's stats file (default: the one registered in stats/).
    """
    device, dtype = _pick_device_dtype(device, dtype)
    model_dir, preset = resolve_model_path(model)
    index = model_dir / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{model_dir} has no model_index.json: not a diffusers pipeline")
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in _KINDS:
        raise ModelLoadError(f"{model_dir} holds a {class_name}; supported: {', '.join(_KINDS)}")
    kind = _KINDS[class_name]
    if kind == "karlo" and device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        # Found on a full frame only, after the decoder: refuse before loading anything.
        raise ModelLoadError(
            f"Karlo cannot run in {str(dtype).removeprefix('torch.')} on the CPU: PyTorch has no "
            "half-precision CPU kernel for the antialiased bicubic resize of its super-resolution "
            "stage. Use fp32 (the CPU default) or a CUDA device")
    _check_components(model_dir)
    pipe = load_diffusers_pipeline(model_dir, torch_dtype=dtype)
    if offload and device.type != "cuda":
        logger.warning("offload applies to CUDA devices only; the model runs on %s without it", device)
        offload = False
    if offload:  # each component moves to the GPU only while it runs
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    dim = int(pipe.image_encoder.config.projection_dim)
    found, note = resolve_stats(model_dir, preset, dim, stats)
    readout = None
    if reference is not None:
        from pipelines.reference import ReferenceReadout

        readout = ReferenceReadout.load(reference, stats=reference_stats, device=device)
    return VSLERPPipeline(pipe, kind=kind, preset=preset or KIND_DEFAULTS[kind], stats=found,
                          stats_note=note, model=str(model), device=device, dtype=dtype,
                          max_batch=max_batch, reference=readout, offload=offload,
                          encoder_name=preset.encoder if preset is not None else None)
