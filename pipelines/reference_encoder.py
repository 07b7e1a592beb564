"""A reference CLIP space: any open_clip model, raw embeddings of images and captions.

The generator's own encoder (ViT-L/14 for Karlo, ViT-H/14 for Stable unCLIP) gives one
readout; a *reference* space gives numbers that are comparable across generators and
with the papers (OpenAI ViT-B/32 on MS-COCO). A reference space is named
``open_clip:MODEL/PRETRAINED``, for example ``open_clip:ViT-B-32/openai``:

- ``MODEL`` is an open_clip architecture (``open_clip.list_models()``), or a schema name
  open_clip understands (``hf-hub:ORG/REPO``, ``local-dir:PATH``; these carry their own
  weights and take no ``/PRETRAINED``).
- ``PRETRAINED`` is a pretrained tag of that architecture
  (``open_clip.list_pretrained_tags_by_model(MODEL)``) or a local checkpoint file
  (``open_clip:ViT-B-32//abs/path/weights.pt``). Weights come from the user's cache, or
  are downloaded by open_clip as usual. ``none`` (or leaving it out, for architectures
  without any pretrained tag) builds random weights, drawn from a fixed seed so every
  process builds the same model: for tests only.

Custom architectures: set ``VSLERP_OPEN_CLIP_CONFIG`` to one or more open_clip model
config JSON files or folders of them (separated by ``os.pathsep``); each ``NAME.json``
(with ``embed_dim``, ``vision_cfg``, ``text_cfg``) becomes the architecture ``NAME``.
From Python, `register_model_config(path)` does the same.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch

__all__ = ["PREFIX", "CONFIG_ENV", "ReferenceSpaceError", "OpenClipEncoder", "parse_reference",
           "register_model_config"]

logger = logging.getLogger(__name__)

PREFIX = "open_clip:"
CONFIG_ENV = "VSLERP_OPEN_CLIP_CONFIG"
_RANDOM_TAGS = ("none", "random")
RANDOM_INIT_SEED = 0
_SCHEMAS = ("hf-hub:", "local-dir:")
_HOW_TO_LIST = ("valid names: python -c \"import open_clip; print(open_clip.list_models())\"; "
                "architectures with their pretrained tags: python -c \"import open_clip; "
                "print(open_clip.list_pretrained())\"")


class ReferenceSpaceError(ValueError):
    """A reference space cannot be parsed, built, downloaded or paired with stats."""


# -- names -------------------------------------------------------------------------------
def parse_reference(spec: str) -> tuple[str, str | None]:
    """``"open_clip:ViT-B-32/openai"`` -> ``("ViT-B-32", "openai")``; pretrained may be None.

    The model part ends at the first ``/`` (so a checkpoint path may follow:
    ``open_clip:ViT-B-32//data/weights.pt``); ``hf-hub:`` and ``local-dir:`` names are
    taken whole (their weights come with them).
    """
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise ReferenceSpaceError(
            f"reference space {spec!r} must look like '{PREFIX}MODEL/PRETRAINED', for example "
            f"'{PREFIX}ViT-B-32/openai' (only open_clip models are supported)")
    rest = spec[len(PREFIX):].strip()
    if rest.startswith(_SCHEMAS):
        schema = next(s for s in _SCHEMAS if rest.startswith(s))
        if not rest[len(schema):].strip("/"):
            raise ReferenceSpaceError(f"reference space {spec!r}: nothing after {schema!r}")
        return rest, None
    model, _, pretrained = rest.partition("/")
    model, pretrained = model.strip(), pretrained.strip()
    if not model:
        raise ReferenceSpaceError(
            f"reference space {spec!r} names no model; use '{PREFIX}MODEL/PRETRAINED', for "
            f"example '{PREFIX}ViT-B-32/openai' ({_HOW_TO_LIST})")
    return model, pretrained or None




# -- open_clip ---------------------------------------------------------------------------
_registered_env: str | None = None


def register_model_config(path: str | os.PathLike) -> list[str]:
    """Register open_clip model config(s): a ``NAME.json`` file or a folder of them.

    Returns the architecture names the path adds (the file stems).
    """
    import open_clip

    path = Path(path).expanduser()
    if not path.exists():
        raise ReferenceSpaceError(f"open_clip model config {path}: no such file or folder")
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    before = set(open_clip.list_models())
    open_clip.add_model_config(path)
    names = [f.stem for f in files if f.stem in open_clip.list_models()]
    if not names:
        raise ReferenceSpaceError(
            f"open_clip model config {path}: no usable config (a NAME.json with embed_dim, "
            "vision_cfg and text_cfg)")
    logger.debug("registered open_clip configs %s (new: %s)", names, set(names) - before)
    return names


def _register_env_configs() -> None:
    """Register the configs named by $VSLERP_OPEN_CLIP_CONFIG (once per value)."""
    global _registered_env
    value = os.environ.get(CONFIG_ENV, "").strip()
    if not value or value == _registered_env:
        return
    for part in value.split(os.pathsep):
        if part.strip():
            register_model_config(part.strip())
    _registered_env = value


class _QuietOpenClip(logging.Filter):
    """Drops open_clip's own root-logger messages (it logs errors it then raises)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_open_clip():
    root = logging.getLogger()
    quiet = _QuietOpenClip()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _close(word: str, choices: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=5, cutoff=0.5)
    if not matches:
        matches = [c for c in choices if word.lower() in c.lower()][:5]
    return f"did you mean {', '.join(matches)}? " if matches else ""


def _check_names(model: str, pretrained: str | None, spec: str) -> tuple[str | None, bool]:
    """Validate against open_clip's registries; (pretrained to pass, force_quick_gelu)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if model.startswith(_SCHEMAS):
        return None, False
    if open_clip.get_model_config(model) is None:
        raise ReferenceSpaceError(
            f"open_clip does not know the model {model!r} (from {spec!r}); "
            f"{_close(model, open_clip.list_models())}{_HOW_TO_LIST}. Custom architectures: "
            f"set {CONFIG_ENV} to a NAME.json open_clip config file")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained is None:
        if tags:
            raise ReferenceSpaceError(
                f"{spec!r} names no pretrained weights, and random {model} weights give "
                f"meaningless readouts; pick one: "
                + ", ".join(f"{PREFIX}{model}/{t}" for t in tags[:8])
                + (", ..." if len(tags) > 8 else "")
                + f" (all: open_clip.list_pretrained_tags_by_model({model!r})), or "
                  f"{PREFIX}{model}/none for random weights (tests only)")
        return None, False
    if pretrained.lower() in _RANDOM_TAGS:
        return None, False
    cfg = get_pretrained_cfg(model, pretrained)
    if cfg:
        quick = bool(cfg.get("quick_gelu", False)) and not open_clip.get_model_config(model).get(
            "quick_gelu", False)
        return pretrained, quick
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser()), False
    raise ReferenceSpaceError(
        f"{pretrained!r} is neither a pretrained tag of open_clip's {model} nor an existing "
        f"checkpoint file (from {spec!r}); {_close(pretrained, tags)}"
        f"tags of {model}: {', '.join(tags) if tags else 'none'} "
        f"(open_clip.list_pretrained_tags_by_model({model!r}); {_HOW_TO_LIST})")


def _first_line(exc: BaseException, limit: int = 500) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class OpenClipEncoder:
    """An open_clip model: PIL images (and captions) in, RAW embeddings out.

    Raw means the projection output before L2 normalisation
    (``encode_image(x, normalize=False)``): the geometry of the papers lives there.
    Images go through open_clip's own validation transform (resize, centre crop,
    normalise) for the model. The model runs in float32 and eval mode.

    Attributes:
        name: the full spec, ``open_clip:MODEL/PRETRAINED``.
        model_name, pretrained: as parsed (pretrained None for random or schema weights).
        device: where the model runs.
    """

    def __init__(self, model_name: str, pretrained: str | None = None, device=None,
                 *, spec: str | None = None):
        import open_clip

        _register_env_configs()
        self.name = spec or f"{PREFIX}{model_name}" + (f"/{pretrained}" if pretrained else "")
        self.model_name = model_name
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = device
        to_load, quick_gelu = _check_names(model_name, pretrained, self.name)
        self.pretrained = to_load
        try:
            # Random weights (no checkpoint) are drawn from a fixed seed, without touching
            # the global RNG: the same spec gives the same model in every process.
            with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=to_load, device=device, force_quick_gelu=quick_gelu)
        except ReferenceSpaceError:
            raise
        except Exception as e:
            if to_load is None and not model_name.startswith("hf-hub:"):
                raise ReferenceSpaceError(f"could not build open_clip model {model_name} "
                                          f"({self.name}): {_first_line(e)}") from None
            cause = _first_line(e)
            what = f"pretrained weights {to_load!r}" if to_load else "its config and weights"
            verb = "download" if "download" in cause.lower() or "hub" in cause.lower() else "load"
            local = (f"a local checkpoint also works: {PREFIX}{model_name}//path/to/weights.pt"
                     if not model_name.startswith(_SCHEMAS) else
                     f"a local copy also works: {PREFIX}local-dir:/path/with/open_clip_config.json")
            raise ReferenceSpaceError(
                f"could not {verb} {what} of the open_clip model {model_name} for {self.name}: "
                f"{cause} -- open_clip downloads weights on first use into the Hugging Face cache "
                "(~/.cache/huggingface, or $HF_HOME): check the network and HF_HUB_OFFLINE, or "
                f"fill the cache once on a connected machine; {local}"
            ) from None
        if to_load is None and not model_name.startswith(_SCHEMAS):
            logger.warning("%s: random open_clip weights (no pretrained weights named); "
                           "readouts are for testing only", self.name)
        self.model = model.eval()
        self.preprocess = preprocess
        self._tokenizer = None
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Embedding dimension (the model's ``embed_dim``)."""
        if self._dim is None:
            proj = getattr(self.model.visual, "output_dim", None)
            if not isinstance(proj, int):  # towers without it: measure once
                proj = self.encode([PIL.Image.new("RGB", (8, 8))]).shape[1]
            self._dim = int(proj)
        return self._dim

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    @torch.no_grad()
    def encode(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Raw image embeddings, float32 on the CPU, shape (N, d)."""
        if not len(images):
            raise ValueError("no images to encode")
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return self.model.encode_image(pixels, normalize=False).float().cpu()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text embeddings through the same model's text tower, float32 CPU, (N, d)."""
        if not len(texts):
            raise ValueError("no texts to encode")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=False).float().cpu()
