"""The runner: a batch of raw CLIP image embeddings in, frames out, all on one noise path.

`UnclipRunner` wraps a loaded model of any family (`pipelines.families`) and owns what
every family shares to turn embeddings into pixels reliably:

- one noise path: one CPU generator per batch row, all seeded alike, so the stock
  schedulers (which draw noise per row) give equal embeddings equal frames, wherever they
  sit in a batch;
- the NaN retry: non-finite pixels in half precision are rendered again in float32, and
  never returned;
- the out-of-memory split: a batch that does not fit is halved for this call only;
- the default settings of the preset, with sizes read off the loaded model by its family;
- a per-step hook (`UnclipRunner.on_step`): a plain callback after each denoising step,
  for UIs that show a frame's progress (the stock Karlo pipeline takes no step callback,
  so the hook watches the family's denoising networks' forward calls).

What differs between families (how to denoise, what a preview is) is the family's.
Every call leaves the runner as it was: batch limits are per call, and the float32 retry
puts the weights back in their dtype under a lock that serialises all model work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image
import torch

from pipelines.encoders import ClipImageEncoder
from pipelines.families import RenderSettings
from pipelines.loading import LoadedModel

__all__ = ["GenerationError", "RenderSettings", "UnclipRunner", "is_out_of_memory"]

logger = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """Generation could not produce a valid frame (NaN output, out of memory for one frame)."""


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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA, MPS and CPU allocators word it so)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class UnclipRunner:
    """Denoises raw image embeddings with a loaded model of any family, on one noise path.

    Attributes:
        loaded: the `LoadedModel` (family, pipe, kind, preset, device, dtype, ...).
        family: the loaded model's `pipelines.families.Family`.
        encoder: the model's own CLIP image encoder.
        min_steps: fewest steps per stage the family's schedulers accept.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.family = loaded.family
        self.encoder = ClipImageEncoder(self.family.feature_extractor, self.family.image_encoder,
                                        name=loaded.encoder_name)
        self.min_steps = self.family.min_steps
        self._lock = threading.RLock()  # one model job at a time (and the dtype flip inside it)
        self._step_counters: dict[int, _StepCounter] = {}  # thread id -> its on_step callback
        self._step_hooks: list = []

    @property
    def diffusers_pipe(self):
        """The stock diffusers pipeline the family drives."""
        return self.loaded.pipe

    @property
    def kind(self) -> str:
        return self.family.name

    @property
    def takes_strength(self) -> bool:
        """Whether frames may start from the source image's latents (strength < 1)."""
        return self.family.takes_strength

    # -- settings ------------------------------------------------------------------------
    def default_settings(self, preview: bool = False) -> RenderSettings:
        """The preset's settings, with sizes read off the loaded model."""
        return self.family.default_settings(self.loaded.preset, preview)

    def settings_for(self, preview: bool = False, **overrides) -> RenderSettings:
        """The preset's settings for this quality, with every override that is not None."""
        return dataclasses.replace(self.default_settings(preview),
                                   **{k: v for k, v in overrides.items() if v is not None})

    def settings_problem(self, settings: RenderSettings) -> str | None:
        """Why the loaded family cannot run ``settings`` (a sentence echoing the value), or None."""
        return self.family.settings_problem(settings)

    # -- the step hook ---------------------------------------------------------------------
    @contextlib.contextmanager
    def on_step(self, callback: Callable[[int, int], None]) -> Iterator[None]:
        """Within the block, ``callback(step, total)`` runs after each denoising step.

        ``total`` is the steps of one batch (Karlo: decoder plus super-resolution steps; a
        preview: the decoder's; with strength < 1: the steps run) and ``step`` counts from 1
        for each batch. Only renders in the calling thread report here, so two callers never
        see each other's steps.
        """
        self._install_step_hooks()
        key = threading.get_ident()
        self._step_counters[key] = _StepCounter(callback)
        try:
            yield
        finally:
            self._step_counters.pop(key, None)

    def _install_step_hooks(self) -> None:
        # One forward call of a denoising network is one step (guidance batches both halves).
        with self._lock:
            if self._step_hooks:
                return
            for module in self.family.denoisers():
                self._step_hooks.append(module.register_forward_hook(self._after_denoiser_call))

    def _after_denoiser_call(self, module, args, output) -> None:
        counter = self._step_counters.get(threading.get_ident())
        if counter is not None:
            counter.step()

    # -- rendering -----------------------------------------------------------------------
    def render(self, embeddings: torch.Tensor, seed: int, settings: RenderSettings, max_batch: int,
               callback: Callable[[int, int], None] | None = None,
               source: PIL.Image.Image | None = None) -> list[PIL.Image.Image]:
        """One frame per row of ``embeddings`` (N, d), in batches of at most ``max_batch``.

        A CUDA out-of-memory error halves the batch and goes on (for this call only); a
        single frame that does not fit raises GenerationError. ``callback(done, total)``
        runs after each batch. ``source``: the image whose latents every frame starts from
        when ``settings.strength`` < 1.
        """
        images: list[PIL.Image.Image] = []
        total = embeddings.shape[0]
        pending = list(embeddings.split(max_batch))
        while pending:
            batch = pending.pop(0)
            try:
                pixels = self._render_checked(batch, seed, settings, source)
            except Exception as e:
                if not is_out_of_memory(e):
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

    def _render_checked(self, embeddings: torch.Tensor, seed: int, settings, source) -> np.ndarray:
        """uint8 (B, H, W, 3); NaN/inf output is retried in float32, never returned."""
        with self._lock:
            out = self._run(embeddings, seed, settings, self.loaded.dtype, source)
            if not np.isfinite(out).all() and self.loaded.dtype != torch.float32:
                logger.warning("non-finite output in %s, retrying in float32", self.loaded.dtype)
                self.family.to(dtype=torch.float32)
                try:
                    out = self._run(embeddings, seed, settings, torch.float32, source)
                finally:
                    self.family.to(dtype=self.loaded.dtype)
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
             dtype: torch.dtype, source) -> np.ndarray:
        """Float pixels in [0, 1] (NaN kept), shape (B, H, W, 3)."""
        emb = embeddings.to(self.loaded.device, dtype)
        counter = self._step_counters.get(threading.get_ident())
        if counter is not None:
            counter.start(self.family.steps_per_batch(settings))
        return self.family.denoise(emb, settings, self.generators(emb.shape[0], seed), source)
