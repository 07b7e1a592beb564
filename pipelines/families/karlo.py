"""Karlo (kakaobrain/karlo-v1-alpha-image-variations): a 64 px pixel decoder and 256 px super-resolution.

The stock `UnCLIPImageVariationPipeline` renders a full frame; a preview is its 64 px
decoder stage alone (`decoder_only`), which the stock pipeline cannot stop after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.families.base import Family, RenderSettings

__all__ = ["Karlo", "decoder_only"]


class Karlo(Family):
    """The Karlo image-variation pipeline (ViT-L/14 embeddings, 768 values)."""

    name = "karlo"
    default_preset = "karlo"
    pipeline_classes = ("UnCLIPImageVariationPipeline",)
    min_steps = 2  # its UnCLIPScheduler divides by (steps - 1)
    mean_locations = (("prior", "clip_mean"),)  # a Karlo repository with its prior (text-to-image)

    @classmethod
    def check_precision(cls, device: torch.device, dtype: torch.dtype) -> None:
        from pipelines.loading import ModelLoadError

        if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
            # Found on a full frame only, after the decoder: refuse before loading anything.
            raise ModelLoadError(
                f"Karlo cannot run in {str(dtype).removeprefix('torch.')} on the CPU: PyTorch has no "
                "half-precision CPU kernel for the antialiased bicubic resize of its super-resolution "
                "stage. Use fp32 (the CPU default) or a CUDA device")

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype) -> Karlo:
        from pipelines.loading import load_diffusers_pipeline

        return cls(load_diffusers_pipeline(path, torch_dtype=dtype))

    def denoisers(self) -> list[torch.nn.Module]:
        return [self.pipe.decoder, self.pipe.super_res_first, self.pipe.super_res_last]

    def default_settings(self, preset, preview: bool) -> RenderSettings:
        side = (self.pipe.decoder.config.sample_size if preview
                else self.pipe.super_res_first.config.sample_size)
        return RenderSettings(steps=preset.preview_steps if preview else preset.steps,
                              super_res_steps=0 if preview else preset.super_res_steps,
                              guidance_scale=preset.guidance_scale, noise_level=preset.noise_level,
                              resolution=side, preview=preview)

    def steps_per_batch(self, settings: RenderSettings) -> int:
        return settings.steps + (0 if settings.preview else settings.super_res_steps)

    def denoise(self, embeddings, settings, generators, source=None) -> np.ndarray:
        if settings.preview:
            return decoder_only(self.pipe, embeddings, settings, generators)
        return self.pipe(image_embeddings=embeddings, decoder_num_inference_steps=settings.steps,
                         super_res_num_inference_steps=settings.super_res_steps,
                         decoder_guidance_scale=settings.guidance_scale,
                         generator=generators, output_type="np").images


def decoder_only(pipe, image_embeddings, settings: RenderSettings, generators) -> np.ndarray:
    """Karlo's 64 px decoder stage alone (the stock pipeline always runs super-resolution).

    Adapted from `UnCLIPImageVariationPipeline.__call__` in diffusers 0.42.1
    (src/diffusers/pipelines/deprecated/unclip/pipeline_unclip_image_variation.py, lines
    279-348: prompt encoding, text_proj, the decoder loop, the clamp): the same calls in the
    same order, so the noise path matches a full frame's first stage.
    """
    batch = image_embeddings.shape[0]
    device = image_embeddings.device
    guided = settings.guidance_scale > 1.0
    prompt_embeds, text_states, text_mask = pipe._encode_prompt([""] * batch, device, 1, guided)
    text_states, additive_embeddings = pipe.text_proj(
        image_embeddings=image_embeddings, prompt_embeds=prompt_embeds,
        text_encoder_hidden_states=text_states, do_classifier_free_guidance=guided)
    mask = F.pad(text_mask, (pipe.text_proj.clip_extra_context_tokens, 0), value=True)
    scheduler = pipe.decoder_scheduler
    scheduler.set_timesteps(settings.steps, device=device)
    timesteps = scheduler.timesteps
    size = pipe.decoder.config.sample_size
    latents = pipe.prepare_latents((batch, pipe.decoder.config.in_channels, size, size),
                                   text_states.dtype, device, generators, None, scheduler)
    for i, t in enumerate(timesteps):
        model_input = torch.cat([latents] * 2) if guided else latents
        noise_pred = pipe.decoder(sample=model_input, timestep=t, encoder_hidden_states=text_states,
                                  class_labels=additive_embeddings, attention_mask=mask).sample
        if guided:
            uncond, text = noise_pred.chunk(2)
            uncond, _ = uncond.split(model_input.shape[1], dim=1)
            text, variance = text.split(model_input.shape[1], dim=1)
            noise_pred = torch.cat([uncond + settings.guidance_scale * (text - uncond), variance], 1)
        prev = None if i + 1 == len(timesteps) else timesteps[i + 1]
        latents = scheduler.step(noise_pred, t, latents, prev_timestep=prev,
                                 generator=generators).prev_sample
    image = latents.clamp(-1, 1) * 0.5 + 0.5
    return image.permute(0, 2, 3, 1).float().cpu().numpy()
