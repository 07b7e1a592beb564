"""The runner: a batch of raw CLIP image embeddings in, frames out, all on one noise path.

`UnclipRunner` wraps a loaded stock pipeline (Karlo or Stable unCLIP) and owns what it
takes to turn embeddings into pixels reliably:

- one noise path: one CPU generator per batch row, all seeded alike, so the stock
  schedulers (which draw noise per row) give equal embeddings equal frames, wherever they
  sit in a batch;
- Karlo's decoder-only preview (the 64 px stage alone, the same calls as the stock
  pipeline's first half);
- the NaN retry: non-finite pixels in half precision are rendered again in float32, and
  never returned;
- the out-of-memory split: a batch that does not fit is halved for this call only;
- the default settings of the preset, with sizes read off the loaded model;
- a per-step hook (`UnclipRunner.on_step`): a plain callback after each denoising step,
  for UIs that show a frame's progress (the stock Karlo pipeline takes no step callback,
  so the hook watches the denoising networks' forward calls).

Every call leaves the runner as it was: batch limits are per call, and the float32 retry
puts the weights back in their dtype under a lock that serialises all model work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from pipelines.encoders import ClipImageEncoder
from pipelines.loading import LoadedModel

__all__ = ["GenerationError", "RenderSettings", "UnclipRunner"]

logger = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """Generation could not produce a valid frame (NaN output, out of memory for one frame)."""


@dataclass
class RenderSettings:
    """Sampling settings of one call; defaults come from the model preset.

    Attributes:
        steps: denoising steps (Karlo: the 64 px decoder).
        super_res_steps: Karlo's super-resolution steps (ignored by Stable unCLIP).
        guidance_scale: classifier-free guidance; 1.0 is off.
        noise_level: Stable unCLIP's embedding noise augmentation (ignored by Karlo).
        resolution: output side in pixels (Stable unCLIP; Karlo's sizes are fixed by its UNets).
        preview: stop after Karlo's 64 px decoder / render Stable unCLIP smaller with fewer steps.
    """

    steps: int
    super_res_steps: int
    guidance_scale: float
    noise_level: int
    resolution: int
    preview: bool = False


class _StepCounter:
    """The steps of one render call in one thread, reported to a plain callback."""

    def __init__(self, callback: Callable[[int, int], None]):
        self.callback = callback
        self.done, self.total = 0, 0

    def start(self, total: int) -> None:
        self.done, self.total = 0, total

    def step(self) -> None:
        self.done = min(self.done + 1, self.total)  # a float32 retry steps again: never past the end
        self.callback(self.done, self.total)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class UnclipRunner:
    """Denoises raw image embeddings with a loaded unCLIP pipeline, on one noise path.

    Attributes:
        loaded: the `LoadedModel` (pipe, kind, preset, device, dtype, ...).
        encoder: the pipeline's own CLIP image encoder.
        min_steps: fewest steps per stage the scheduler accepts (Karlo's divides by steps - 1).
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.encoder = ClipImageEncoder(loaded.pipe.feature_extractor, loaded.pipe.image_encoder,
                                        name=loaded.encoder_name)
        self.min_steps = 2 if loaded.kind == "karlo" else 1
        self._lock = threading.RLock()  # one model job at a time (and the dtype flip inside it)
        self._step_counters: dict[int, _StepCounter] = {}  # thread id -> its on_step callback
        self._step_hooks: list = []

    @property
    def pipe(self):
        return self.loaded.pipe

    @property
    def kind(self) -> str:
        return self.loaded.kind

    # -- settings ------------------------------------------------------------------------
    def default_settings(self, preview: bool = False) -> RenderSettings:
        """The preset's settings, with sizes read off the loaded model."""
        p, pipe = self.loaded.preset, self.pipe
        if self.kind == "karlo":
            resolution = (pipe.decoder.config.sample_size if preview
                          else pipe.super_res_first.config.sample_size)
        else:
            full = pipe.unet.config.sample_size * pipe.vae_scale_factor
            preview_side = full * p.preview_resolution // p.resolution // 8 * 8
            resolution = max(8, preview_side) if preview else full
        return RenderSettings(steps=p.preview_steps if preview else p.steps,
                              super_res_steps=0 if preview else p.super_res_steps,
                              guidance_scale=p.guidance_scale, noise_level=p.noise_level,
                              resolution=resolution, preview=preview)

    def settings_for(self, preview: bool = False, **overrides) -> RenderSettings:
        """The preset's settings for this quality, with every override that is not None."""
        return dataclasses.replace(self.default_settings(preview),
                                   **{k: v for k, v in overrides.items() if v is not None})

    # -- the step hook ---------------------------------------------------------------------
    @contextlib.contextmanager
    def on_step(self, callback: Callable[[int, int], None]) -> Iterator[None]:
        """Within the block, ``callback(step, total)`` runs after each denoising step.

        ``total`` is the steps of one batch (Karlo: decoder plus super-resolution steps; a
        preview: the decoder's) and ``step`` counts from 1 for each batch. Only renders in
        the calling thread report here, so two callers never see each other's steps.
        """
        self._install_step_hooks()
        key = threading.get_ident()
        self._step_counters[key] = _StepCounter(callback)
        try:
            yield
        finally:
            self._step_counters.pop(key, None)

    def _denoisers(self) -> list[torch.nn.Module]:
        names = ("decoder", "super_res_first", "super_res_last") if self.kind == "karlo" else ("unet",)
        return [getattr(self.pipe, name) for name in names]

    def _install_step_hooks(self) -> None:
        # One forward call of a denoising network is one step (guidance batches both halves).
        with self._lock:
            if self._step_hooks:
                return
            for module in self._denoisers():
                self._step_hooks.append(module.register_forward_hook(self._after_denoiser_call))

    def _after_denoiser_call(self, module, args, output) -> None:
        counter = self._step_counters.get(threading.get_ident())
        if counter is not None:
            counter.step()

    def _steps_per_batch(self, settings: RenderSettings) -> int:
        if self.kind == "karlo":
            return settings.steps + (0 if settings.preview else settings.super_res_steps)
        return settings.steps

    # -- rendering -----------------------------------------------------------------------
    def render(self, embeddings: torch.Tensor, seed: int, settings: RenderSettings, max_batch: int,
               callback: Callable[[int, int], None] | None = None) -> list[PIL.Image.Image]:
        """One frame per row of ``embeddings`` (N, d), in batches of at most ``max_batch``.

        A CUDA out-of-memory error halves the batch and goes on (for this call only); a
        single frame that does not fit raises GenerationError. ``callback(done, total)``
        runs after each batch.
        """
        images: list[PIL.Image.Image] = []
        total = embeddings.shape[0]
        pending = list(embeddings.split(max_batch))
        while pending:
            batch = pending.pop(0)
            try:
                pixels = self._render_checked(batch, seed, settings)
            except Exception as e:
                if not _is_oom(e):
                    raise
                pending[:0] = self._split_after_oom(batch, e)
                continue
            images.extend(PIL.Image.fromarray(p) for p in pixels)
            if callback is not None:
                callback(len(images), total)
        return images

    def _split_after_oom(self, batch: torch.Tensor, error: BaseException) -> list[torch.Tensor]:
        if batch.shape[0] == 1:
            raise GenerationError(
                f"one frame does not fit in {self.loaded.device} memory ({error}); try preview "
                "mode, fewer pixels, or --offload (load_pipeline(..., offload=True))") from None
        half = batch.shape[0] // 2
        logger.warning("out of memory at batch %d, splitting", batch.shape[0])
        if self.loaded.device.type == "cuda":
            torch.cuda.empty_cache()
        return [batch[:half], batch[half:]]

    def _render_checked(self, embeddings: torch.Tensor, seed: int, settings) -> np.ndarray:
        """uint8 (B, H, W, 3); NaN/inf output is retried in float32, never returned."""
        with self._lock:
            out = self._run(embeddings, seed, settings, self.loaded.dtype)
            if not np.isfinite(out).all() and self.loaded.dtype != torch.float32:
                logger.warning("non-finite output in %s, retrying in float32", self.loaded.dtype)
                self.pipe.to(dtype=torch.float32)
                try:
                    out = self._run(embeddings, seed, settings, torch.float32)
                finally:
                    self.pipe.to(dtype=self.loaded.dtype)
        if np.isfinite(out).all():
            return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8)
        raise GenerationError(
            "the model produced NaN or infinite pixels even in float32; the weights or the "
            "embeddings are broken (no black frame is returned)")

    @staticmethod
    def generators(n: int, seed: int) -> list[torch.Generator]:
        """One generator per row, all seeded alike: the stock schedulers draw noise per row
        from its own generator, so every frame follows the same noise path."""
        return [torch.Generator("cpu").manual_seed(seed) for _ in range(n)]

    @torch.no_grad()
    def _run(self, embeddings: torch.Tensor, seed: int, settings: RenderSettings,
             dtype: torch.dtype) -> np.ndarray:
        """Float pixels in [0, 1] (NaN kept), shape (B, H, W, 3)."""
        emb = embeddings.to(self.loaded.device, dtype)
        generators = self.generators(emb.shape[0], seed)
        counter = self._step_counters.get(threading.get_ident())
        if counter is not None:
            counter.start(self._steps_per_batch(settings))
        if self.kind == "karlo":
            if settings.preview:
                return _karlo_decoder_only(self.pipe, emb, settings, generators)
            return self.pipe(image_embeddings=emb, decoder_num_inference_steps=settings.steps,
                             super_res_num_inference_steps=settings.super_res_steps,
                             decoder_guidance_scale=settings.guidance_scale,
                             generator=generators, output_type="np").images
        return self.pipe(image_embeds=emb, prompt=[""] * emb.shape[0],
                         height=settings.resolution, width=settings.resolution,
                         num_inference_steps=settings.steps,
                         guidance_scale=settings.guidance_scale,
                         noise_level=settings.noise_level, generator=generators,
                         output_type="np").images


def _karlo_decoder_only(pipe, image_embeddings, settings: RenderSettings, generators):
    """Karlo's 64 px decoder stage alone (the stock pipeline always runs super-resolution).

    The same calls, in the same order, as the first half of
    `UnCLIPImageVariationPipeline.__call__`, so the noise path matches a full frame's.
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
