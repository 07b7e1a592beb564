"""IP-Adapter on Stable Diffusion 1.5 or SDXL: any such checkpoint driven by raw CLIP ViT-H/14 embeddings.

h94/IP-Adapter's non-"plus" adapters feed the projected image embedding of OpenCLIP
ViT-H/14 (`CLIPVisionModelWithProjection.image_embeds`, 1024 values, unnormalised) through a
small projection into extra cross-attention layers of the base UNet. Passing our Eq. 12
embeddings as the pipeline's ``ip_adapter_image_embeds`` gives vSLERP on every SD 1.5 or
SDXL fine-tune. The "plus" and FaceID adapters read the encoder's hidden states or a face
model instead: not this space, not supported.

A model directory holds two parts (a preset's are links to hub snapshots, as for
Kandinsky 2.2):

- ``base/``: the base pipeline in the diffusers layout (`StableDiffusionPipeline` or
  `StableDiffusionXLPipeline`), or ``base.safetensors``: a single-file checkpoint
  (`from_single_file`);
- ``IP-Adapter/``: h94/IP-Adapter's layout, ``models/ip-adapter_sd15.safetensors`` (SD 1.5)
  or ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` (SDXL), and the ViT-H encoder in
  ``models/image_encoder`` for both (``sdxl_models/image_encoder`` is ViT-bigG, for the other
  SDXL adapters). diffusers' `load_ip_adapter` loads the weights and the encoder, and makes
  a `CLIPImageProcessor` of the encoder's input size.

`--model ip-adapter:BASE` makes such a directory for BASE (a hub id, a local diffusers
directory or a single-file ``.safetensors``), downloading only the files it needs.

Guidance as diffusers does for these adapters (`StableDiffusionPipeline.encode_image`):
the negative image embedding is all zeros, concatenated before the batch. The text prompt
(empty by default) and the adapter scale (1.0, diffusers' "conditioned on the image prompt
only") are settings. With strength < 1 the stock Img2Img pipeline on the same components
starts every row from the source image's VAE latents, noised on the one noise path.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from pipelines.families.base import Family, RenderSettings, read_index

__all__ = ["ADAPTER_FOLDER", "BASE_FILE", "BASE_FOLDER", "SPEC_PREFIX", "IpAdapter", "adapter_layout",
           "resolve_spec"]

SPEC_PREFIX = "ip-adapter:"
BASE_FOLDER, BASE_FILE, ADAPTER_FOLDER = "base", "base.safetensors", "IP-Adapter"
SD15, SDXL = "StableDiffusionPipeline", "StableDiffusionXLPipeline"
# The preset of each base: its downloads name the base's components a frame needs (no safety
# checker) and h94/IP-Adapter's files (the adapter weights; the ViT-H encoder folder).
PRESET_OF = {SD15: "ip-adapter-sd15", SDXL: "ip-adapter-sdxl"}
MAX_SIDE = 2048
# A key only SDXL single-file checkpoints have (its second text encoder), one only SD 1.x's.
_SDXL_KEY = "conditioner.embedders.1.model."
_SD1_KEY = "cond_stage_model.transformer."


def _downloads(pipeline_class: str):
    """(the base's HubFiles, h94/IP-Adapter's HubFiles) of the preset for ``pipeline_class``."""
    from pipelines.presets import get_preset

    base, adapter = get_preset(PRESET_OF[pipeline_class]).downloads
    return base, adapter


def adapter_layout(pipeline_class: str) -> tuple[str, str, str]:
    """(subfolder, weights file, encoder folder) of the adapter for ``pipeline_class`` inside
    h94/IP-Adapter: ("models", "ip-adapter_sd15.safetensors", "models/image_encoder") for SD 1.5."""
    adapter = _downloads(pipeline_class)[1]
    subfolder, weights = adapter.files[0].split("/")
    return subfolder, weights, adapter.folders[0]


def single_file_class(file: Path) -> str:
    """SD15 or SDXL for a single-file checkpoint, told by its key names (ModelLoadError else)."""
    from safetensors import safe_open

    from pipelines.loading import ModelLoadError

    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:
        raise ModelLoadError(f"{file} is not a readable .safetensors checkpoint ({e})") from None
    if any(k.startswith(_SDXL_KEY) for k in keys):
        return SDXL
    if any(k.startswith(_SD1_KEY) for k in keys):
        return SD15
    raise ModelLoadError(f"{file} is not a Stable Diffusion 1.5 or SDXL single-file checkpoint "
                         f"(no {_SD1_KEY}* or {_SDXL_KEY}* weights)")


def _from_single_file(pipeline_cls: type, file: Path, parts: dict):
    """diffusers' `from_single_file`; its failures (it reads the architecture's configuration
    from the hub the first time) as a ModelLoadError naming the file."""
    from pipelines.loading import ModelLoadError

    try:
        return pipeline_cls.from_single_file(str(file), **parts)
    except Exception as e:
        raise ModelLoadError(f"could not load the single-file checkpoint {file.resolve()} "
                             f"({type(e).__name__}: {str(e)[:300]}); diffusers reads its "
                             "architecture's configuration from the Hugging Face hub the first "
                             "time: check the network, or convert it to a diffusers directory") from None


class _RowwiseImageEmbeds:
    """Pipeline mixin: ``ip_adapter_image_embeds`` hold one row per prompt, used as given.

    Adapted from diffusers 0.42.1, whose pipelines repeat the given embeddings once per
    prompt (`prepare_ip_adapter_image_embeds(..., batch_size * num_images_per_prompt, ...)`):
    B rows become B x B, and the attention processor's ``view(batch_size, -1, ...)`` then
    gives every row all B embeddings' tokens, the same for every frame. Here row i (and its
    negative, row i of the first half under guidance) conditions frame i alone.
    """

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device,
                                        num_images_per_prompt, do_classifier_free_guidance):
        return [embeds.to(device=device) for embeds in ip_adapter_image_embeds]


def _rowwise(pipeline_cls: type) -> type:
    """``pipeline_cls`` with `_RowwiseImageEmbeds`."""
    return type(f"Rowwise{pipeline_cls.__name__}", (_RowwiseImageEmbeds, pipeline_cls), {})


class IpAdapter(Family):
    """A Stable Diffusion 1.5 or SDXL base with h94's ViT-H IP-Adapter."""

    name = "ip-adapter"
    default_preset = "ip-adapter-sd15"
    takes_strength = True

    def __init__(self, pipe):
        super().__init__(pipe)
        self._img2img = None

    # -- finding and loading ---------------------------------------------------------------
    @classmethod
    def base_class(cls, path: Path) -> str | None:
        """SD15 or SDXL: the base pipeline ``path`` holds, or None."""
        if (path / BASE_FILE).is_file():
            return single_file_class(path / BASE_FILE)
        index = read_index(path / BASE_FOLDER)
        cls_name = None if index is None else index.get("_class_name")
        return cls_name if cls_name in PRESET_OF else None

    @classmethod
    def recognises(cls, path: Path) -> bool:
        has_base = (path / BASE_FILE).is_file() or read_index(path / BASE_FOLDER) is not None
        return has_base and (path / ADAPTER_FOLDER).is_dir()

    @classmethod
    def check_complete(cls, path: Path) -> None:
        from pipelines.loading import ModelLoadError

        base = cls.base_class(path)
        if base is None:
            index = read_index(path / BASE_FOLDER) or {}
            raise ModelLoadError(f"{path / BASE_FOLDER} holds a {index.get('_class_name')!r} pipeline; "
                                 f"IP-Adapter needs a {SD15} or {SDXL} base")
        subfolder, weights, encoder = adapter_layout(base)
        needed = [f"{ADAPTER_FOLDER}/{subfolder}/{weights}", f"{ADAPTER_FOLDER}/{encoder}"]
        missing = [name for name in needed if not (path / name).exists()]
        if missing:
            raise ModelLoadError(f"{path} is incomplete: no {', '.join(missing)} "
                                 f"(h94/IP-Adapter's layout; an interrupted download?)")
        if (path / BASE_FOLDER).is_dir():  # (a single file is whole or unreadable)
            needed = _downloads(base)[0].folders
            missing = [c for c in needed if not (path / BASE_FOLDER / c).is_dir()]
            if missing:
                raise ModelLoadError(f"{path / BASE_FOLDER} is incomplete: no folder for "
                                     f"{', '.join(missing)} (an interrupted download?)")

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype) -> IpAdapter:
        import diffusers

        from pipelines.loading import dtype_kwarg

        base = cls.base_class(path)
        pipeline_cls = _rowwise(getattr(diffusers, base))
        no_checker = {"safety_checker": None, "requires_safety_checker": False} if base == SD15 else {}
        parts = dict(feature_extractor=None, image_encoder=None, **no_checker, **dtype_kwarg(dtype))
        if (path / BASE_FILE).is_file():
            pipe = _from_single_file(pipeline_cls, path / BASE_FILE, parts)
        else:
            half = dtype in (torch.float16, torch.bfloat16)
            variant = "fp16" if half and any((path / BASE_FOLDER).glob("*/*.fp16.*")) else None
            pipe = pipeline_cls.from_pretrained(path / BASE_FOLDER, variant=variant, **parts)
        subfolder, weights, encoder = adapter_layout(base)
        # diffusers reads an encoder folder holding a "/" from the repository's root, so
        # "models/image_encoder" is ViT-H/14 beside either adapter (SDXL's own
        # sdxl_models/image_encoder is ViT-bigG).
        pipe.load_ip_adapter(str(path / ADAPTER_FOLDER), subfolder=subfolder, weight_name=weights,
                             image_encoder_folder=encoder)
        pipe.image_encoder.eval()
        return cls(pipe)

    # -- settings --------------------------------------------------------------------------
    @property
    def is_sdxl(self) -> bool:
        from diffusers import StableDiffusionXLPipeline

        return isinstance(self.pipe, StableDiffusionXLPipeline)

    def directory_preset(self, preset):
        """The base's preset (SD 1.5 or SDXL), a frame at the UNet's own sample size and a
        preview half its side."""
        from pipelines.presets import get_preset

        preset = get_preset(PRESET_OF[SDXL if self.is_sdxl else SD15])
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return replace(preset, resolution=side, preview_resolution=max(8, side // 2 // 8 * 8))

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.unet]

    def default_settings(self, preset, preview: bool) -> RenderSettings:
        side = max(8, preset.preview_resolution // 8 * 8) if preview else preset.resolution
        return RenderSettings(steps=preset.preview_steps if preview else preset.steps,
                              super_res_steps=0, guidance_scale=preset.guidance_scale,
                              noise_level=0, resolution=side, preview=preview,
                              adapter_scale=preset.adapter_scale, prompt=preset.prompt)

    def settings_problem(self, settings: RenderSettings) -> str | None:
        width, height = settings.size
        if min(width, height) < 8 or width % 8 or height % 8 or max(width, height) > MAX_SIDE:
            return (f"resolution must be a multiple of 8 between 8 and {MAX_SIDE} a side, "
                    f"got {settings.resolution}")
        if not 0.0 <= settings.adapter_scale <= 2.0:
            return f"adapter_scale must be in [0, 2], got {settings.adapter_scale}"
        if not isinstance(settings.prompt, str):
            return f"prompt must be text, got {settings.prompt!r}"
        return super().settings_problem(settings)

    def steps_per_batch(self, settings: RenderSettings) -> int:
        """UNet calls of one batch: the scheduler's timesteps (PNDM, SD 1.5's, takes one more
        than asked), the last int(steps x strength) of them for img2img."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(settings.steps)
        calls = len(scheduler.timesteps)
        if settings.strength < 1.0:
            skipped = settings.steps - min(int(settings.steps * settings.strength), settings.steps)
            calls -= skipped * scheduler.order
        return calls

    # -- denoising -------------------------------------------------------------------------
    def denoise(self, embeddings, settings, generators, source=None) -> np.ndarray:
        width, height = settings.size
        rows = embeddings.shape[0]
        image_embeds = embeddings[:, None, :]  # (B, one image, d)
        if settings.guidance_scale > 1.0:  # diffusers' negative for these adapters: zeros, first
            image_embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds])
        self.pipe.set_ip_adapter_scale(settings.adapter_scale)
        common = dict(prompt=[settings.prompt] * rows, ip_adapter_image_embeds=[image_embeds],
                      num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                      generator=generators, output_type="np")
        if settings.strength >= 1.0:
            return self.pipe(height=height, width=width, **common).images
        if source is None:
            raise ValueError("strength < 1 starts from the source image's latents: give the image")
        # The Img2Img pipelines render at the source's size: the source is resized to the frame.
        start = source.convert("RGB").resize((width, height), PIL.Image.Resampling.LANCZOS)
        return self._img2img_pipe()(image=[start] * rows, strength=settings.strength, **common).images

    def _img2img_pipe(self):
        """The stock Img2Img pipeline on the same components (no weights copied; the adapter's
        attention processors live in the shared UNet)."""
        if self._img2img is None:
            import diffusers

            extra = {} if self.is_sdxl else {"requires_safety_checker": False}
            cls = _rowwise(getattr(diffusers, "StableDiffusionXLImg2ImgPipeline" if self.is_sdxl
                                   else "StableDiffusionImg2ImgPipeline"))
            self._img2img = cls(**self.pipe.components, **extra)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


# -- `ip-adapter:BASE` -----------------------------------------------------------------------
def _base_class_of(base: str) -> tuple[str, Path | None]:
    """(SD15 or SDXL, the local base if it is one) of BASE: a file, a directory or a hub id."""
    from pipelines.loading import ModelLoadError, download_repository
    from pipelines.presets import HubFiles

    path = Path(base).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelLoadError(f"{base} is a file but not a .safetensors checkpoint "
                                 "(pickled .ckpt files are not loaded)")
        return single_file_class(path), path
    if path.is_dir():
        index = read_index(path)
    else:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", base):
            raise ModelLoadError(f"ip-adapter base {base!r} is neither a file, a directory nor "
                                 "a hub id (owner/name)")
        index = read_index(download_repository(base, HubFiles(base, ())))
    cls_name = None if index is None else index.get("_class_name")
    if cls_name not in PRESET_OF:
        raise ModelLoadError(f"ip-adapter base {base!r} holds "
                             f"{'no model_index.json' if index is None else repr(cls_name)}; "
                             f"IP-Adapter needs a {SD15} or {SDXL} base")
    return cls_name, path if path.is_dir() else None


def resolve_spec(base: str, half: bool = False):
    """(model directory, preset) of ``ip-adapter:BASE``: links to the base (a hub snapshot of
    only the components a frame needs, a local directory or a single file) and to h94's
    adapter weights and encoder."""
    from pipelines.loading import ModelLoadError, download_repository, linked_model_dir
    from pipelines.presets import get_preset

    if not base:
        raise ModelLoadError("ip-adapter: names no base; use ip-adapter:BASE (a hub id, a diffusers "
                         "directory or a .safetensors file)")
    pipeline_class, local = _base_class_of(base)
    base_files, adapter = _downloads(pipeline_class)
    base_files = replace(base_files, repo=base)
    # The base's preset (its settings, and its statistics: they are the encoder's, whatever
    # the base) with this base's files.
    family_preset = get_preset(PRESET_OF[pipeline_class])
    preset = replace(family_preset, hub_id=base, downloads=() if local else (base_files, adapter),
                     description=f"IP-Adapter on {base} ({family_preset.name}'s settings)")
    if local is None:
        parts = {BASE_FOLDER: download_repository(base, base_files, half)}
    else:
        parts = {BASE_FILE if local.is_file() else BASE_FOLDER: local.resolve()}
    parts[ADAPTER_FOLDER] = download_repository(adapter.repo, adapter, half)
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", f"ip-adapter--{base}").strip("-")
    return linked_model_dir(name, parts), preset
