"""Load a local unCLIP pipeline directory (hub layout, old or current) on current diffusers.

Current diffusers keeps the Karlo pipeline under ``diffusers.pipelines.deprecated.unclip``.
A Karlo repository saved by an older diffusers (the real
kakaobrain/karlo-v1-alpha-image-variations) names the library "unclip" for ``text_proj``,
which today's diffusers refuses to import; one saved by today's diffusers names
``["diffusers", "UnCLIPTextProjModel"]``, a class the top-level ``diffusers`` module no longer
exports, so plain ``DiffusionPipeline.from_pretrained`` fails on both. Here every component
diffusers can resolve is loaded by diffusers' own machinery; any other one of a class we know
is loaded with that class's ``from_pretrained(path, subfolder=name)`` and put in place.

``read_embedded_mean`` reads the image-embedding statistics a model carries (Stable
unCLIP's ``image_normalizer.mean``, an unCLIP prior's ``clip_mean``) straight from the
weights file.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

__all__ = [
    "SUPPORTED_PIPELINES",
    "PipelineDirectoryError",
    "load_diffusers_pipeline",
    "read_embedded_mean",
    "read_model_index",
]

SUPPORTED_PIPELINES = ("UnCLIPImageVariationPipeline", "StableUnCLIPImg2ImgPipeline")

# Components whose model_index entry current diffusers may not resolve: class name -> module.
_KNOWN_CLASSES = {
    "UnCLIPTextProjModel": "diffusers.pipelines.deprecated.unclip.text_proj",
    "StableUnCLIPImageNormalizer": "diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer",
}

# Where a model keeps the mean of the image embeddings it was trained on: (folder, tensor).
_EMBEDDED_MEANS = (("image_normalizer", "mean"), ("prior", "clip_mean"))


class PipelineDirectoryError(ValueError):
    """The directory is not a loadable unCLIP pipeline; the message says why."""


def read_model_index(path: str | os.PathLike) -> dict:
    """The parsed model_index.json of a local pipeline directory (clear errors otherwise)."""
    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise PipelineDirectoryError(f"not a diffusers pipeline directory: {path} "
                                     "(no such directory)")
    if not index.is_file():
        raise PipelineDirectoryError(f"not a diffusers pipeline directory: {path} "
                                     "(no model_index.json)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PipelineDirectoryError(f"unreadable model_index.json in {path}: {e}") from None
    if not isinstance(data, dict):
        raise PipelineDirectoryError(f"malformed model_index.json in {path}: not a JSON object")
    return data


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` on diffusers that has it (``torch_dtype`` is deprecated there), else torch_dtype."""
    try:
        from diffusers.utils import deprecation_utils

        if hasattr(deprecation_utils, "_resolve_dtype"):
            return {"dtype": dtype}
    except ImportError:
        pass
    return {"torch_dtype": dtype}


def _diffusers_resolves(library: str, class_name: str) -> bool:
    """Whether diffusers' from_pretrained can find ``class_name`` for this library name."""
    from diffusers import pipelines

    if library in ("diffusers", "transformers"):
        try:
            module = importlib.import_module(library)
        except ImportError:
            return False
        return getattr(module, class_name, None) is not None
    submodule = getattr(pipelines, library, None)
    return submodule is not None and getattr(submodule, class_name, None) is not None


def _class_for(class_name: str):
    module_name = _KNOWN_CLASSES.get(class_name)
    if module_name is None:
        return None
    return getattr(importlib.import_module(module_name), class_name, None)


def _pipeline_class(class_name: str):
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:  # a diffusers that no longer exports the deprecated Karlo pipeline
        from diffusers.pipelines.deprecated import unclip

        cls = getattr(unclip, class_name)
    return cls


def load_diffusers_pipeline(path: str | os.PathLike, *, torch_dtype: torch.dtype = torch.float32):
    """Load a local unCLIP pipeline directory in the hub layout (old or current model_index).

    Args:
        path: a directory with model_index.json naming UnCLIPImageVariationPipeline (Karlo)
            or StableUnCLIPImg2ImgPipeline (Stable unCLIP).
        torch_dtype: dtype of the weights.

    Returns:
        The stock diffusers pipeline, on the CPU.

    Raises:
        PipelineDirectoryError (a ValueError): no such directory, no model_index.json, an
            unsupported pipeline class, or a component of a class no library provides.
    """
    path = Path(path)
    index = read_model_index(path)
    class_name = index.get("_class_name")
    if class_name not in SUPPORTED_PIPELINES:
        raise PipelineDirectoryError(f"{path} holds a {class_name!r} pipeline; supported: "
                                     f"{', '.join(SUPPORTED_PIPELINES)}")
    pipeline_cls = _pipeline_class(class_name)
    dtype_kw = _dtype_kwarg(torch_dtype)

    own: dict[str, object] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, component_class = entry
        if library is None or _diffusers_resolves(library, component_class):
            continue
        cls = _class_for(component_class)
        if cls is None:
            raise PipelineDirectoryError(
                f"{path}: component {name!r} is a {component_class} from library {library!r}, "
                "which this diffusers cannot load and which vSLERP Studio does not know")
        own[name] = cls.from_pretrained(str(path), subfolder=name, **dtype_kw)

    # Components diffusers cannot resolve are skipped there (passed as None) and set after:
    # passing them as objects would still make diffusers import the library they name.
    pipe = pipeline_cls.from_pretrained(str(path), **dtype_kw, **dict.fromkeys(own))
    if own:
        pipe.register_modules(**own)
    return pipe


def _weights_file(folder: Path) -> Path | None:
    """The component's weights: safetensors preferred, the unsuffixed (non-variant) name first."""
    for pattern in ("diffusion_pytorch_model.safetensors", "*.safetensors",
                    "diffusion_pytorch_model.bin", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _read_tensor(file: Path, key: str) -> torch.Tensor | None:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(key) if key in f.keys() else None
    state = torch.load(file, map_location="cpu", weights_only=True)
    value = state.get(key) if isinstance(state, dict) else None
    return value if isinstance(value, torch.Tensor) else None


def read_embedded_mean(path: str | os.PathLike) -> torch.Tensor | None:
    """The image-embedding mean a model carries, as a 1-D float32 tensor, or None.

    Looks in ``image_normalizer/`` (StableUnCLIPImageNormalizer ``mean``) and ``prior/``
    (the unCLIP prior's ``clip_mean``, a PriorTransformer parameter). Missing, unreadable,
    all-zero (Stable unCLIP -h ships zeros) or non-finite means give None: "no statistics".
    """
    path = Path(path)
    for folder, key in _EMBEDDED_MEANS:
        file = _weights_file(path / folder) if (path / folder).is_dir() else None
        if file is None:
            continue
        try:
            mean = _read_tensor(file, key)
        except Exception:  # a corrupt or foreign weights file carries no usable mean
            mean = None
        if mean is None:
            continue
        mean = mean.detach().float().flatten().cpu()
        if mean.numel() == 0 or not bool(torch.isfinite(mean).all()):
            continue
        if not bool(mean.abs().sum() > 0):
            continue
        return mean
    return None
