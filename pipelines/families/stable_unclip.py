"""Stable unCLIP 2.1 (stabilityai/stable-diffusion-2-1-unclip and -small): latent diffusion at 768 px.

The stock `StableUnCLIPImg2ImgPipeline` renders from ``image_embeds`` (an empty prompt);
a preview renders smaller with fewer steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipelines.families.base import Family, RenderSettings

__all__ = ["StableUnclip"]


class StableUnclip(Family):
    """Stable unCLIP image variations (ViT-H/14 or ViT-L/14 embeddings)."""

    name = "stable-unclip"
    default_preset = "stable-unclip-h"
    pipeline_classes = ("StableUnCLIPImg2ImgPipeline",)
    mean_locations = (("image_normalizer", "mean"),)

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype) -> StableUnclip:
        from pipelines.loading import load_diffusers_pipeline

        return cls(load_diffusers_pipeline(path, torch_dtype=dtype))

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.unet]

    def default_settings(self, preset, preview: bool) -> RenderSettings:
        full = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        preview_side = max(8, full * preset.preview_resolution // preset.resolution // 8 * 8)
        return RenderSettings(steps=preset.preview_steps if preview else preset.steps,
                              super_res_steps=0, guidance_scale=preset.guidance_scale,
                              noise_level=preset.noise_level,
                              resolution=preview_side if preview else full, preview=preview)

    def settings_problem(self, settings: RenderSettings) -> str | None:
        width, height = settings.size
        if min(width, height) < 8 or width % 8 or height % 8:
            return f"resolution must be a positive multiple of 8, got {settings.resolution}"
        return super().settings_problem(settings)

    def denoise(self, embeddings, settings, generators, source=None) -> np.ndarray:
        width, height = settings.size
        return self.pipe(image_embeds=embeddings, prompt=[""] * embeddings.shape[0],
                         height=height, width=width, num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance_scale, noise_level=settings.noise_level,
                         generator=generators, output_type="np").images
