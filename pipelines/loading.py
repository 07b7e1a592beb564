"""Load an unCLIP pipeline (a preset from the hub, or a local directory) on current diffusers.

`load_model` is the one way in: a preset name (its hub repositories, from the local cache
or downloaded, only the files the preset names) or a local directory in the hub layout.
The family whose layout the directory holds (`pipelines.families`) checks it is complete
and loads it; here is only what every family shares: the hub, device and dtype, quiet
libraries, and the mean a model carries.

Current diffusers keeps the Karlo pipeline under ``diffusers.pipelines.deprecated.unclip``.
A Karlo repository saved by an older diffusers (the real
kakaobrain/karlo-v1-alpha-image-variations) names the library "unclip" for ``text_proj``,
which today's diffusers refuses to import; one saved by today's diffusers names
``["diffusers", "UnCLIPTextProjModel"]``, a class the top-level ``diffusers`` module no longer
exports, so plain ``DiffusionPipeline.from_pretrained`` fails on both. Here every component
diffusers can resolve is loaded by diffusers' own machinery; any other one of a class we know
is loaded with that class's ``from_pretrained(path, subfolder=name)`` and put in place.

`carried_mean` reads the mean of the image embeddings a model carries (Stable unCLIP's
``image_normalizer.mean``, an unCLIP prior's ``clip_mean``) straight from the weights file,
or from the repository its preset names (one tensor read over HTTP ranges, not the file).

Start-up is quiet: `library_output` silences diffusers' and transformers' warnings and
progress bars while a model loads (the deprecation warning for the Karlo pipeline, which we
load on purpose, and the "Loading weights" bars); `set_verbose(True)` (`vslerp --verbose`)
lets them through. Errors always show.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.families import FAMILIES, Family, family_named, family_of, supported_pipelines
from pipelines.families.ip_adapter import SPEC_PREFIX, resolve_spec
from pipelines.presets import PRESETS, HubFiles, ModelPreset, get_preset

__all__ = [
    "SUPPORTED_PIPELINES",
    "LoadedModel",
    "HubUnreachableError",
    "ModelLoadError",
    "PipelineDirectoryError",
    "carried_mean",
    "check_components",
    "download_repository",
    "dtype_kwarg",
    "hub_snapshot",
    "library_output",
    "load_diffusers_pipeline",
    "load_model",
    "pick_device_dtype",
    "read_embedded_mean",
    "read_model_index",
    "resolve_model_path",
    "set_verbose",
    "weight_files",
]

logger = logging.getLogger(__name__)

# The single-repository pipelines the families read: diffusers class name -> family name.
SUPPORTED_PIPELINES = supported_pipelines()

# Components whose model_index entry current diffusers may not resolve: class name -> module.
_KNOWN_CLASSES = {
    "UnCLIPTextProjModel": "diffusers.pipelines.deprecated.unclip.text_proj",
    "StableUnCLIPImageNormalizer": "diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer",
}

# Where a model keeps the mean of the image embeddings it was trained on: (folder, tensor).
_EMBEDDED_MEANS = tuple(loc for f in FAMILIES.values() for loc in f.mean_locations)

_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
           "fp64": torch.float64, "float64": torch.float64}


class ModelLoadError(RuntimeError):
    """The model could not be found, downloaded or loaded; the message says what to do."""


class HubUnreachableError(ModelLoadError):
    """A preset is not in the local hub cache and the hub cannot be reached (or refused)."""


class PipelineDirectoryError(ValueError):
    """The directory is not a loadable unCLIP pipeline; the message says why."""


@dataclass
class LoadedModel:
    """A model of one family, ready on its device, and what we know of it.

    Attributes:
        pipe: the stock diffusers pipeline (`family.pipe`).
        kind: the family's name ("karlo", "stable-unclip", "kandinsky-2-2").
        preset: the preset loaded, or the defaults of its family for a local directory.
        from_preset: True when a preset name was loaded (so `preset.encoder` names the encoder).
        model: what was asked for (a preset name or a directory).
        model_dir: the local directory the weights were read from.
        device, dtype: where and in which precision the weights live.
        offload: model CPU offload is on (CUDA only).
    """

    pipe: object
    kind: str
    preset: ModelPreset
    from_preset: bool
    model: str
    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    offload: bool = False
    family: Family | None = None

    @property
    def encoder_name(self) -> str:
        return self.preset.encoder if self.from_preset else f"image encoder of {self.model}"


# -- what the libraries print -------------------------------------------------------------
_verbose = False


def set_verbose(verbose: bool) -> None:
    """Show (True) or hide (False, the default) the libraries' warnings and bars in `library_output`."""
    global _verbose
    _verbose = bool(verbose)


@contextlib.contextmanager
def library_output():
    """Inside: diffusers' and transformers' warnings and progress bars off, unless `set_verbose(True)`.

    Errors still show. Used around loading (and writing) a model, whose every start would
    otherwise print diffusers' deprecation warning for UnCLIPImageVariationPipeline and a
    "Loading weights" bar per component.
    """
    if _verbose:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            (lib.enable_progress_bar if bars else lib.disable_progress_bar)()


# -- model_index.json ----------------------------------------------------------------------
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


def _check_class(path: Path, index: dict) -> None:
    class_name = index.get("_class_name")
    if class_name not in SUPPORTED_PIPELINES:
        raise PipelineDirectoryError(f"{path} holds a {class_name!r} pipeline; supported: "
                                     f"{', '.join(SUPPORTED_PIPELINES)}, or a Kandinsky 2.2 "
                                     "directory holding prior/ and decoder/")


def _family_for(path: Path) -> type[Family]:
    """The family whose layout ``path`` holds; else why not (PipelineDirectoryError)."""
    family = family_of(path)
    if family is None:
        _check_class(path, read_model_index(path))  # says what is wrong with it
    return family


def _components(index: dict) -> dict[str, tuple[str, str]]:
    """name -> (library, class) of every component model_index.json names."""
    return {name: tuple(entry) for name, entry in index.items()
            if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2
            and entry[0] is not None}


def check_components(model_dir: Path) -> None:
    """Every component model_index.json names has its folder (else: an incomplete download)."""
    index = read_model_index(model_dir)
    missing = [name for name in _components(index) if not (model_dir / name).is_dir()]
    if missing:
        raise ModelLoadError(f"{model_dir} is incomplete: no folder for {', '.join(missing)} "
                             "(an interrupted download? delete it and download again)")


# -- diffusers -----------------------------------------------------------------------------
def dtype_kwarg(dtype: torch.dtype) -> dict:
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


def load_diffusers_pipeline(path: str | os.PathLike, *, torch_dtype: torch.dtype = torch.float32,
                            index: dict | None = None):
    """Load a local unCLIP pipeline directory in the hub layout (old or current model_index).

    Args:
        path: a directory with model_index.json naming UnCLIPImageVariationPipeline (Karlo)
            or StableUnCLIPImg2ImgPipeline (Stable unCLIP).
        torch_dtype: dtype of the weights.
        index: the parsed model_index.json, when the caller has read it already.

    Returns:
        The stock diffusers pipeline, on the CPU.

    Raises:
        PipelineDirectoryError (a ValueError): no such directory, no model_index.json, an
            unsupported pipeline class, or a component of a class no library provides.
    """
    path = Path(path)
    index = read_model_index(path) if index is None else index
    _check_class(path, index)
    pipeline_cls = _pipeline_class(index["_class_name"])
    dtype_kw = dtype_kwarg(torch_dtype)

    own: dict[str, object] = {}
    for name, (library, component_class) in _components(index).items():
        if _diffusers_resolves(library, component_class):
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


# -- the hub -------------------------------------------------------------------------------
def hub_snapshot(hub_id: str) -> Path | None:
    """The repository's snapshot in the local hub cache, or None (nothing is downloaded)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not in the cache
        return None


HUB_PROBE_TIMEOUT_S = 5.0


def _probe_hub() -> None:
    """Refuse within seconds when the hub cannot be reached (huggingface_hub retries for ~25 s).

    A TCP connection to the endpoint's host; skipped behind a proxy, which may be the only
    way out.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy",
                                                                     "HTTP_PROXY", "http_proxy")):
        return
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise HubUnreachableError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                                  f"({e.strerror or type(e).__name__})") from None


_SKIPPED_FORMATS = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]


def _variant_of(file: str) -> str:
    """The variant infix of a weights file ("fp16", "non_ema"), "" for the unsuffixed one."""
    parts = file.rsplit("/", 1)[-1].split(".")
    return parts[1] if len(parts) > 2 else ""


def weight_files(files: list[str], wanted: HubFiles, half: bool) -> list[str]:
    """The files of ``files`` (a repository listing) a model needs: ``wanted``'s own files, and
    in each of its folders the configurations and one weights format.

    Per folder: the fp16 variant when ``half`` and the repository has one, else the
    unsuffixed safetensors, else the unsuffixed pickled ``.bin``.
    """
    chosen = [f for f in wanted.files if f in files]
    for folder in wanted.folders:
        inside = [f for f in files if f.startswith(f"{folder}/") and f.count("/") == folder.count("/") + 1]
        chosen += [f for f in inside if f.endswith((".json", ".txt"))]
        weights = [f for f in inside if f.endswith((".safetensors", ".bin"))]
        fp16 = [f for f in weights if _variant_of(f).startswith("fp16")]
        plain = [f for f in weights if not _variant_of(f)]  # not .fp16., not .non_ema.
        safetensors = [f for f in plain if f.endswith(".safetensors")]
        chosen += (fp16 if half and fp16 else safetensors or [f for f in plain if f.endswith(".bin")])
    return chosen


def download_repository(hub_id: str, wanted: HubFiles | None = None, half: bool = False) -> Path:
    """A hub repository's snapshot: from the local cache, else downloaded.

    With ``wanted``, only the files `weight_files` picks (the local cache is used when they
    are all in it); without, every diffusers file (not single-file checkpoints, one format).
    """
    from huggingface_hub import HfApi, snapshot_download

    local = hub_snapshot(hub_id)  # offline use, a Space's preload_from_hub
    if local is not None and (wanted is None or all((local / f).exists() for f in wanted.files)
                              and all((local / d).is_dir() for d in wanted.folders)):
        return local
    _probe_hub()
    try:
        files = HfApi().list_repo_files(hub_id)
        if wanted is not None:
            return Path(snapshot_download(hub_id, allow_patterns=weight_files(files, wanted, half)))
        # Prefer safetensors; skip the original single-file .ckpt and duplicate formats.
        ignore = [*_SKIPPED_FORMATS, "*fp16*"]
        if any(f.endswith(".safetensors") for f in files if "/" in f):
            ignore.append("*.bin")
        return Path(snapshot_download(hub_id, ignore_patterns=ignore))
    except Exception as e:
        raise HubUnreachableError(
            f"could not download {hub_id} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Check the network (or HF_HUB_OFFLINE), or pass a local directory in the hub "
            "layout as the model") from None


def linked_model_dir(name: str, parts: dict[str, Path]) -> Path:
    """A directory of symbolic links, folder -> repository snapshot, for a model of several
    repositories (Kandinsky 2.2's prior and decoder); kept beside the hub cache."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE).parent / "vslerp-models" / name
    root.mkdir(parents=True, exist_ok=True)
    for folder, target in parts.items():
        link = root / folder
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    return root


def fetch_preset(preset: ModelPreset, half: bool = False) -> Path:
    """A preset's model directory: one repository's snapshot, or links to several."""
    if not preset.downloads:
        return download_repository(preset.hub_id)
    parts = {w.into: download_repository(w.repo, w, half) for w in preset.downloads}
    return parts[""] if list(parts) == [""] else linked_model_dir(preset.name, parts)


def resolve_model_path(model: str | os.PathLike, half: bool = False) -> tuple[Path, ModelPreset | None]:
    """A local directory as given, or a preset's repositories from the hub cache/download."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, None
    if str(model).startswith(SPEC_PREFIX):  # a family on a base of the user's choosing
        return resolve_spec(str(model)[len(SPEC_PREFIX):], half)
    if str(model) in PRESETS:
        preset = get_preset(str(model))
        return fetch_preset(preset, half), preset
    if path.exists():
        raise ModelLoadError(f"{model} is a file, not a pipeline directory")
    raise ModelLoadError(f"model {str(model)!r} is neither a preset ({', '.join(PRESETS)}), "
                         f"{SPEC_PREFIX}BASE nor an existing directory")


# -- device and precision --------------------------------------------------------------------
def pick_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """The device (default: CUDA if available) and dtype (default: fp16 on CUDA, fp32 on CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def load_model(model: str | os.PathLike, device=None, dtype=None, *,
               offload: bool = False) -> LoadedModel:
    """Load a model of any family onto its device.

    Args:
        model: a preset name (`karlo`, `stable-unclip-h`, `stable-unclip-l`, `kandinsky-2-2`,
            `ip-adapter-sd15`, `ip-adapter-sdxl`), ``ip-adapter:BASE`` (BASE: an SD 1.5 or
            SDXL hub id, diffusers directory or single-file .safetensors) or a local directory
            in the hub layout (old or current model_index.json; for Kandinsky 2.2 a directory
            holding the prior and decoder repositories; for IP-Adapter ``base/`` and
            ``IP-Adapter/``).
        device: "cuda", "cpu", ... (default: CUDA if available).
        dtype: torch dtype or "fp16"/"bf16"/"fp32" (default: fp16 on CUDA, fp32 on CPU).
        offload: model CPU offload for small GPUs: weights stay in CPU memory and each
            component moves to the GPU while it runs (less GPU memory, slower; CUDA only).
    """
    device, dtype = pick_device_dtype(device, dtype)
    if str(model) in PRESETS and not Path(model).expanduser().is_dir():
        family_named(get_preset(str(model)).kind).check_precision(device, dtype)
    model_dir, preset = resolve_model_path(model, half=dtype in (torch.float16, torch.bfloat16))
    try:
        family_cls = _family_for(model_dir)
    except PipelineDirectoryError as e:
        raise ModelLoadError(str(e)) from None
    family_cls.check_precision(device, dtype)
    family_cls.check_complete(model_dir)
    with library_output():
        family = family_cls.load(model_dir, dtype)
    if offload and device.type != "cuda":
        logger.warning("offload applies to CUDA devices only; the model runs on %s without it", device)
        offload = False
    if offload:  # each component moves to the GPU only while it runs
        family.enable_offload(device)
    else:
        family.to(device)
    family.quiet()
    return LoadedModel(pipe=family.pipe, kind=family.name,
                       preset=preset or family.directory_preset(get_preset(family.default_preset)),
                       from_preset=preset is not None, model=str(model), model_dir=model_dir,
                       device=device, dtype=dtype, offload=offload, family=family)


# -- the mean a model carries ----------------------------------------------------------------
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
    """The image-embedding mean a model directory carries, as a 1-D float32 tensor, or None.

    Looks where each family keeps it (`Family.mean_locations`): ``image_normalizer/``
    (StableUnCLIPImageNormalizer ``mean``), ``prior/`` (a Karlo prior's ``clip_mean``) and
    ``prior/prior/`` (Kandinsky 2.2's PriorTransformer ``clip_mean``; only that tensor is
    read from the weights file). Missing, unreadable,
    all-zero (Stable unCLIP -h ships zeros) or non-finite means give None: "no mean".
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
        mean = _usable(mean)
        if mean is not None:
            return mean
    return None


def _usable(mean: torch.Tensor | None) -> torch.Tensor | None:
    """A finite, non-zero mean as a 1-D float32 CPU tensor; else None ("no mean")."""
    if mean is None:
        return None
    mean = mean.detach().float().flatten().cpu()
    if mean.numel() == 0 or not bool(torch.isfinite(mean).all()) or not bool(mean.abs().sum() > 0):
        return None
    return mean


def read_safetensors_tensor(f, key: str) -> torch.Tensor | None:
    """Tensor ``key`` of a safetensors file opened for binary reading, read piece by piece.

    The format is an 8-byte little-endian header length, a JSON header of each tensor's
    dtype, shape and byte offsets, then the data: three reads fetch one tensor, whatever the
    file's size (over HTTP ranges, a few kB).
    """
    import struct

    (length,) = struct.unpack("<Q", f.read(8))
    entry = json.loads(f.read(length)).get(key)
    if entry is None:
        return None
    begin, end = entry["data_offsets"]
    f.seek(8 + length + begin)
    raw = f.read(end - begin)
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    return torch.frombuffer(bytearray(raw), dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])


def read_remote_tensor(repo: str, folder: str, key: str) -> torch.Tensor | None:
    """One tensor of a hub repository's safetensors file in ``folder``, read by HTTP ranges
    (Kandinsky 2.2's prior weights are gigabytes; its ``clip_mean`` is 1280 values)."""
    from huggingface_hub import HfFileSystem

    _probe_hub()
    fs = HfFileSystem()
    names = sorted(p for p in fs.ls(f"{repo}/{folder}", detail=False) if p.endswith(".safetensors"))
    if not names:
        return None
    name = next((n for n in names if ".fp16." not in n), names[0])  # full precision first
    with fs.open(name, "rb", block_size=0) as f:
        return read_safetensors_tensor(f, key)


def _key_of(folder: str) -> str:
    return next(key for f, key in _EMBEDDED_MEANS if f.split("/")[-1] == folder.split("/")[-1])


def carried_mean(loaded: LoadedModel) -> tuple[torch.Tensor | None, str]:
    """(the image-embedding mean the model carries or its preset names, where it came from).

    The model's own directory first; then the repository its preset names as the source of
    that mean: its snapshot in the local hub cache, else the one tensor read over the
    network (a few kB). (None, why) when there is none.
    """
    mean = read_embedded_mean(loaded.model_dir)
    if mean is not None:
        return mean, f"{loaded.model_dir} (embedded mean)"
    source = loaded.preset.mean_source if loaded.from_preset else None
    if source is not None:
        repo, folder = source
        local = hub_snapshot(repo)
        file = _weights_file(local / folder) if local is not None and (local / folder).is_dir() else None
        try:
            mean = _usable(_read_tensor(file, _key_of(folder)) if file is not None
                           else read_remote_tensor(repo, folder, _key_of(folder)))
        except Exception as e:
            return None, f"could not download the mean from {repo}/{folder}: {e}"
        if mean is not None:
            return mean, f"{repo}/{folder}"
    return None, "the model carries no usable mean (missing, all zeros or non-finite)"
