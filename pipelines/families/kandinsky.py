"""Kandinsky 2.2: a latent unCLIP decoder driven by raw CLIP ViT-bigG/14 image embeddings (1280 values).

Two hub repositories make one model here: the image encoder, its image processor and the
prior's `clip_mean` come from kandinsky-community/kandinsky-2-2-prior; the decoder (UNet,
DDPM scheduler, MoVQ) from kandinsky-community/kandinsky-2-2-decoder. A local model is a
directory holding both repositories as the subfolders ``prior/`` and ``decoder/``, each in
its hub layout (`huggingface-cli download REPO --local-dir M/prior` writes one).

Guidance follows diffusers' Kandinsky 2.2 image-variation recipe
(`KandinskyV22PriorPipeline.interpolate`): the negative embedding is the prior pipeline's
`get_zero_embed`, the image encoder's embedding of an all-zero pixel tensor (the
normalised mean colour), not a zero vector: the decoder was trained with that as its
unconditional input. It is computed once per load, in float32.

Frames render with the stock `KandinskyV22Pipeline`; with strength < 1 with the stock
`KandinskyV22Img2ImgPipeline` on the same components, every row starting from the source
image's MoVQ latents (the same for every frame) noised on the one noise path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipelines.families.base import Family, RenderSettings, read_index

__all__ = ["Kandinsky22", "PRIOR_FOLDER", "DECODER_FOLDER"]

PRIOR_FOLDER, DECODER_FOLDER = "prior", "decoder"
PRIOR_CLASS, DECODER_CLASS = "KandinskyV22PriorPipeline", "KandinskyV22Pipeline"
MAX_SIDE = 1024  # the decoder was fine-tuned up to 1024 px; larger frames repeat content


def _variant(folder: Path, dtype: torch.dtype) -> str | None:
    """"fp16" when half-precision weights sit in ``folder`` and a half dtype is asked for, or
    when they are the only weights there (a CUDA download, now loaded in float32)."""
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    fp16 = any(".fp16." in f.name for f in weights)
    plain = any(".fp16." not in f.name for f in weights)
    return "fp16" if fp16 and (dtype in (torch.float16, torch.bfloat16) or not plain) else None


class Kandinsky22(Family):
    """Kandinsky 2.2's decoder with the prior repository's image encoder."""

    name = "kandinsky-2-2"
    default_preset = "kandinsky-2-2"
    takes_strength = True
    mean_locations = ((f"{PRIOR_FOLDER}/prior", "clip_mean"),)

    def __init__(self, pipe, feature_extractor, image_encoder):
        super().__init__(pipe)
        self._feature_extractor = feature_extractor
        self._image_encoder = image_encoder
        self._img2img = None
        self.negative = None  # the zero image's embedding, (1, d) float32, set by load

    # -- finding and loading ---------------------------------------------------------------
    @classmethod
    def recognises(cls, path: Path) -> bool:
        prior, decoder = read_index(path / PRIOR_FOLDER), read_index(path / DECODER_FOLDER)
        return (prior is not None and decoder is not None
                and prior.get("_class_name") == PRIOR_CLASS
                and decoder.get("_class_name") == DECODER_CLASS)

    @classmethod
    def check_complete(cls, path: Path) -> None:
        from pipelines.loading import ModelLoadError

        needed = [f"{PRIOR_FOLDER}/image_encoder", f"{PRIOR_FOLDER}/image_processor",
                  f"{DECODER_FOLDER}/unet", f"{DECODER_FOLDER}/movq", f"{DECODER_FOLDER}/scheduler"]
        missing = [name for name in needed if not (path / name).is_dir()]
        if missing:
            raise ModelLoadError(f"{path} is incomplete: no folder for {', '.join(missing)} "
                                 "(an interrupted download? delete it and download again)")

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype) -> Kandinsky22:
        from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from pipelines.loading import dtype_kwarg

        prior, decoder = path / PRIOR_FOLDER, path / DECODER_FOLDER
        kw = dtype_kwarg(dtype)
        pipe = KandinskyV22Pipeline(
            unet=UNet2DConditionModel.from_pretrained(
                decoder, subfolder="unet", variant=_variant(decoder / "unet", dtype), **kw),
            scheduler=DDPMScheduler.from_pretrained(decoder, subfolder="scheduler"),
            movq=VQModel.from_pretrained(decoder, subfolder="movq",
                                         variant=_variant(decoder / "movq", dtype), **kw))
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            prior, subfolder="image_encoder", variant=_variant(prior / "image_encoder", dtype),
            dtype=dtype).eval()
        model = cls(pipe, CLIPImageProcessor.from_pretrained(prior, subfolder="image_processor"),
                    encoder)
        model.negative = model.zero_image_embedding()
        return model

    @torch.no_grad()
    def zero_image_embedding(self) -> torch.Tensor:
        """diffusers' `get_zero_embed`: the encoder's embedding of all-zero pixels, (1, d) float32."""
        side = self._image_encoder.config.image_size
        param = next(self._image_encoder.parameters())
        pixels = torch.zeros(1, 3, side, side, device=param.device, dtype=torch.float32)
        encoder = self._image_encoder.float()
        try:
            return encoder(pixels).image_embeds.float().cpu()
        finally:
            encoder.to(param.dtype)

    # -- where it runs ---------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> None:
        super().to(device, dtype)
        self._image_encoder.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})

    def enable_offload(self, device: torch.device) -> None:
        self.pipe.enable_model_cpu_offload(device=device)
        self._image_encoder.to(device)  # small beside the UNet, and used for every readout

    @property
    def feature_extractor(self):
        return self._feature_extractor

    @property
    def image_encoder(self):
        return self._image_encoder

    # -- denoising -------------------------------------------------------------------------
    @property
    def movq_factor(self) -> int:
        """Pixels per latent cell: a side must be a multiple of its square to come out as asked."""
        return int(self.pipe.movq_scale_factor)

    def directory_preset(self, preset):
        """A frame at the UNet's own sample size; a preview half its side."""
        from dataclasses import replace

        step = self.movq_factor ** 2
        side = self.pipe.unet.config.sample_size * self.movq_factor
        return replace(preset, resolution=side, preview_resolution=max(step, side // 2 // step * step))

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.unet]

    def default_settings(self, preset, preview: bool) -> RenderSettings:
        full = preset.resolution
        step = self.movq_factor ** 2
        side = max(step, preset.preview_resolution // step * step) if preview else full
        return RenderSettings(steps=preset.preview_steps if preview else preset.steps,
                              super_res_steps=0, guidance_scale=preset.guidance_scale,
                              noise_level=0, resolution=side, preview=preview)

    def settings_problem(self, settings: RenderSettings) -> str | None:
        width, height = settings.size
        step = self.movq_factor ** 2
        if min(width, height) < step or width % step or height % step or max(width, height) > MAX_SIDE:
            return (f"resolution must be a multiple of {step} (the MoVQ's {self.movq_factor}x"
                    f"{self.movq_factor} latent cells) between {step} and {MAX_SIDE} a side, "
                    f"got {settings.resolution}")
        return super().settings_problem(settings)

    def steps_per_batch(self, settings: RenderSettings) -> int:
        if settings.strength < 1.0:  # img2img runs only the last int(steps x strength) steps
            return min(int(settings.steps * settings.strength), settings.steps)
        return settings.steps

    def denoise(self, embeddings, settings, generators, source=None) -> np.ndarray:
        width, height = settings.size
        negative = self.negative.to(embeddings.device, embeddings.dtype).expand(embeddings.shape[0], -1)
        common = dict(image_embeds=embeddings, negative_image_embeds=negative, height=height,
                      width=width, num_inference_steps=settings.steps,
                      guidance_scale=settings.guidance_scale, generator=generators, output_type="np")
        if settings.strength >= 1.0:
            return self.pipe(**common).images
        if source is None:
            raise ValueError("strength < 1 starts from the source image's latents: give the image")
        # KandinskyV22Img2ImgPipeline (diffusers 0.42.1) uses height and width only in
        # `image_processor.preprocess(i, width, height)`, whose arguments are (height, width):
        # passed swapped here, a non-square frame comes out width x height as asked.
        common.update(height=width, width=height)
        return self._img2img_pipe()(image=[source.convert("RGB")] * embeddings.shape[0],
                                    strength=settings.strength, **common).images

    def _img2img_pipe(self):
        """The stock img2img pipeline on the same components (no weights copied)."""
        if self._img2img is None:
            from diffusers import KandinskyV22Img2ImgPipeline

            self._img2img = KandinskyV22Img2ImgPipeline(**self.pipe.components)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img
