"""Reference-space readouts: conformity and likelihood of frames under any open_clip model.

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

Stats of a reference space are computed with
``vslerp stats --reference SPEC --images DIR --out FILE`` and found, when not given
explicitly, in the repository's ``stats/`` folder under `reference_stats_filename(SPEC)`.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch

from vslerp_app.stats import ModalityStats, StatsError

__all__ = ["PREFIX", "CONFIG_ENV", "DEFAULT_DATASET", "ReferenceSpaceError", "OpenClipEncoder",
           "ReferenceReadout", "parse_reference", "register_model_config",
           "reference_stats_filename", "reference_stats_path"]

logger = logging.getLogger(__name__)

PREFIX = "open_clip:"
CONFIG_ENV = "VSLERP_OPEN_CLIP_CONFIG"
DEFAULT_DATASET = "coco-val2017"
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


def reference_stats_filename(spec: str, dataset: str = DEFAULT_DATASET) -> str:
    """The file name stats of ``spec`` are registered under in ``stats/``.

    ``open_clip:ViT-B-32/openai`` -> ``open_clip-ViT-B-32-openai-coco-val2017.safetensors``:
    every run of characters other than letters, digits, ``.``, ``_`` and ``-`` becomes ``-``.
    """
    parse_reference(spec)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{spec}-{dataset}").strip("-.")
    return f"{stem}.safetensors"


def reference_stats_path(spec: str, dataset: str = DEFAULT_DATASET) -> Path:
    """Where the registered stats of ``spec`` live (``stats/`` or ``$VSLERP_STATS_DIR``)."""
    from pipelines.factory import STATS_DIR

    return Path(STATS_DIR) / reference_stats_filename(spec, dataset)


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


# -- readouts ----------------------------------------------------------------------------
class ReferenceReadout:
    """Per-frame readouts in a reference CLIP space: an encoder and its image stats.

    `readouts(images)` gives, per image, a dict with:
        space: the spec (``open_clip:MODEL/PRETRAINED``).
        frame_conformity: conformity of the image's raw embedding against the stats'
            image set (Eq. 10, exact when the stats carry ``mean_unit``; else Eq. 11).
        conformity_kind: "exact" or "estimated".
        estimated_conformity: Eq. 11, a cos(m, v) + b, always (comparable with the paper).
        frame_log_likelihood: whitened-CLIP log-likelihood up to a constant, None when the
            stats have no whitening matrix.
    """

    def __init__(self, encoder: OpenClipEncoder, stats: ModalityStats, *, batch_size: int = 16):
        stats.validate(encoder.dim, f"stats for {encoder.name}")
        if stats.modality != "image":
            raise ReferenceSpaceError(f"stats for {encoder.name} are {stats.modality}-modality "
                                      "stats; frame readouts need image stats")
        stats_encoder = stats.provenance.get("encoder")
        self.stats_mismatch = bool(stats_encoder) and stats_encoder != encoder.name
        if self.stats_mismatch:
            logger.warning("stats (%s) were computed with %s, not %s: readouts may be meaningless",
                           stats.provenance.get("source", "given"), stats_encoder, encoder.name)
        self.encoder = encoder
        self.stats = stats
        self.batch_size = batch_size

    @property
    def space(self) -> str:
        return self.encoder.name

    @classmethod
    def load(cls, spec: str, stats=None, device=None) -> ReferenceReadout:
        """Build the encoder of ``spec`` and pair it with stats.

        Args:
            spec: ``open_clip:MODEL/PRETRAINED``.
            stats: a stats file or `ModalityStats`; default: the file registered in
                ``stats/`` under `reference_stats_filename(spec)`.
            device: where the encoder runs (default: CUDA if available).
        """
        model_name, pretrained = parse_reference(spec)
        if stats is None:
            path = reference_stats_path(spec)
            if not path.is_file():
                raise ReferenceSpaceError(
                    f"no stats for the reference space {spec}: none given and {path} does not "
                    f"exist. Compute them over a representative image set (the papers: MS-COCO "
                    f"val2017) with `vslerp stats --reference {spec} --images DIR --out {path}` "
                    "(add --captions FILE for text stats too), or pass the file with "
                    "--reference-stats FILE")
            stats = path
        encoder = OpenClipEncoder(model_name, pretrained, device, spec=spec)
        if not isinstance(stats, ModalityStats):
            try:
                stats = ModalityStats.load(stats, expected_dim=encoder.dim)
            except StatsError as e:
                raise ReferenceSpaceError(f"stats for {spec}: {e}") from None
        return cls(encoder, stats)

    def readouts(self, images: Sequence[PIL.Image.Image]) -> list[dict]:
        """One dict per image (see the class docstring); images encoded in batches."""
        out = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self.readouts_of_embeddings(self.encoder.encode(images[i:i + self.batch_size])))
        return out

    def readouts_of_embeddings(self, embeddings: torch.Tensor) -> list[dict]:
        """The readouts of raw embeddings of this space, (N, d) or (d,)."""
        emb = embeddings.detach().float().cpu()
        if emb.ndim == 1:
            emb = emb.unsqueeze(0)
        s = self.stats
        conf = s.conformity(emb)
        est = s.estimated_conformity(emb)
        ll = s.log_likelihood(emb)
        return [{"space": self.space,
                 "frame_conformity": float(conf[i]),
                 "conformity_kind": s.conformity_kind,
                 "estimated_conformity": float(est[i]),
                 "frame_log_likelihood": None if ll is None else float(ll[i])}
                for i in range(emb.shape[0])]

    def info(self) -> dict:
        """What the space is and where its stats come from (for the UI, manifests, logs)."""
        s = self.stats
        return {
            "space": self.space,
            "model": self.encoder.model_name,
            "pretrained": self.encoder.pretrained,
            "embedding_dim": s.dim,
            "device": str(self.encoder.device),
            "stats": {
                "describe": s.describe(),
                "conformity_kind": s.conformity_kind,
                "likelihood": s.whitening is not None,
                "a": s.a, "b": s.b, "pearson": s.pearson, "n": s.n,
                "provenance": s.provenance,
                "checksum": s.checksum(),
                "encoder_mismatch": self.stats_mismatch,
            },
        }
