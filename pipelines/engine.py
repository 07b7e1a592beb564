"""The vSLERP engine: an unCLIP pipeline driven by vSLERP-interpolated CLIP image embeddings.

`VSLERPPipeline.generate` encodes each input image once, interpolates every frame's
embedding with Eq. 12, denoises the distinct embeddings in batches on one shared noise
path, and reads out per-frame conformity (Eq. 10/11) and whitened likelihood.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipelines.presets import ModelPreset
from vslerp_app import geometry
from vslerp_app.images import image_fingerprint, load_image
from vslerp_app.stats import ModalityStats

__all__ = ["Frame", "ClipImageEncoder", "VSLERPPipeline", "GenerationError", "RenderSettings"]

logger = logging.getLogger(__name__)

ALPHA_LIMIT = 10.0  # the paper finds -2..2 useful; beyond +-10 frames are noise
MAX_STEPS = 1000
_EMBEDDING_CACHE_SIZE = 64


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


@dataclass
class Frame:
    """One generated frame and its readouts.

    Attributes:
        image: the frame (RGB PIL image).
        theta, alpha: where on the vSLERP path it sits (Eq. 12).
        seed: the seed of its noise path.
        conformity: conformity of the interpolated embedding (None without stats).
        frame_conformity: conformity of the generated frame, re-encoded (None without stats).
        conformity_kind: "exact" (Eq. 10) or "estimated" (Eq. 11), None without stats.
        log_likelihood, frame_log_likelihood: whitened-CLIP log-likelihood (up to a
            constant) of the embedding and of the re-encoded frame, None without whitening.
        preview: True for a preview-quality frame.
        embedding: the interpolated raw embedding (float32, CPU).
        frame_embedding: the re-encoded frame's raw embedding (float32, CPU).
        reference: readouts of the frame in a reference CLIP space (open_clip), when the
            pipeline has one: {"space", "frame_conformity", "conformity_kind",
            "frame_log_likelihood"}.
    """

    image: PIL.Image.Image
    theta: float
    alpha: float
    seed: int
    conformity: float | None = None
    frame_conformity: float | None = None
    conformity_kind: str | None = None
    log_likelihood: float | None = None
    frame_log_likelihood: float | None = None
    preview: bool = False
    embedding: torch.Tensor | None = None
    frame_embedding: torch.Tensor | None = None
    reference: dict | None = None

    def readouts(self) -> dict:
        """The numbers of this frame as a JSON-ready dict (for manifests and APIs)."""
        return {
            "theta": self.theta,
            "alpha": self.alpha,
            "seed": self.seed,
            "preview": self.preview,
            "conformity": self.conformity,
            "frame_conformity": self.frame_conformity,
            "conformity_kind": self.conformity_kind,
            "log_likelihood": self.log_likelihood,
            "frame_log_likelihood": self.frame_log_likelihood,
            "reference": self.reference,
        }


class ClipImageEncoder:
    """A CLIP vision tower with projection: PIL images in, raw (unnormalised) embeddings out."""

    def __init__(self, feature_extractor, image_encoder, name: str = "clip"):
        self.feature_extractor = feature_extractor
        self.image_encoder = image_encoder
        self.name = name

    @property
    def dim(self) -> int:
        return int(self.image_encoder.config.projection_dim)

    @torch.no_grad()
    def encode(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Raw image embeddings, float32 on the CPU, shape (N, d)."""
        param = next(self.image_encoder.parameters())
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        out = self.image_encoder(pixels.to(param.device, param.dtype)).image_embeds
        return out.float().cpu()


def _as_list(values, name: str) -> list[float] | None:
    """A scalar -> None (broadcast later); a sequence or 1-D tensor -> list of floats."""
    if isinstance(values, (int, float)) or (isinstance(values, torch.Tensor) and values.ndim == 0):
        return None
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty")
    return [float(v) for v in values]


def _pair_up(thetas, alphas) -> list[tuple[float, float]]:
    """(theta, alpha) per frame: equal-length sequences, or one of them a scalar."""
    t_list, a_list = _as_list(thetas, "thetas"), _as_list(alphas, "alphas")
    if t_list is None and a_list is None:
        return [(float(thetas), float(alphas))]
    if t_list is None:
        t_list = [float(thetas)] * len(a_list)
    if a_list is None:
        a_list = [float(alphas)] * len(t_list)
    if len(t_list) != len(a_list):
        raise ValueError(f"thetas ({len(t_list)} values) and alphas ({len(a_list)} values) "
                         "must have equal length, or one of them be a scalar")
    return list(zip(t_list, a_list, strict=True))


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class VSLERPPipeline:
    """A diffusers unCLIP pipeline (Karlo or Stable unCLIP) driven by vSLERP embeddings.

    Build it with `pipelines.load_pipeline`. Attributes: `pipe` (the diffusers pipeline),
    `kind`, `preset` (defaults), `stats` (image-modality stats or None), `stats_note`
    (where they came from, or why there are none), `model` (what was asked for),
    `device`, `dtype`, `max_batch`.
    """

    def __init__(self, pipe, *, kind: str, preset: ModelPreset, stats: ModalityStats | None,
                 stats_note: str, model: str, device: torch.device, dtype: torch.dtype,
                 max_batch: int = 8, reference=None, encoder_name: str | None = None,
                 offload: bool = False):
        self.pipe = pipe
        self.kind = kind
        self.preset = preset
        self.stats = stats
        self.stats_note = stats_note
        self.model = model
        self.device = device
        self.dtype = dtype
        self.max_batch = max_batch
        self.offload = offload  # model CPU offload (set up by load_pipeline)
        # A `pipelines.reference.ReferenceReadout` (open_clip space) or None.
        self.reference = reference
        self.encoder = ClipImageEncoder(pipe.feature_extractor, pipe.image_encoder,
                                        name=encoder_name or f"image encoder of {model}")
        self._embedding_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.pipe.set_progress_bar_config(disable=True)

    # -- information -----------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.encoder.dim

    def default_settings(self, preview: bool = False) -> RenderSettings:
        """The preset's settings, with sizes read off the loaded model."""
        p = self.preset
        if self.kind == "karlo":
            resolution = (self.pipe.decoder.config.sample_size if preview
                          else self.pipe.super_res_first.config.sample_size)
        else:
            full = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
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

    def info(self) -> dict:
        """What is loaded, for the UI, manifests and logs."""
        return {
            "model": self.model,
            "kind": self.kind,
            "pipeline_class": type(self.pipe).__name__,
            "encoder": self.encoder.name,
            "embedding_dim": self.embedding_dim,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "offload": self.offload,
            "stats": None if self.stats is None else {
                "describe": self.stats.describe(),
                "conformity_kind": self.stats.conformity_kind,
                "likelihood": self.stats.whitening is not None,
                "provenance": self.stats.provenance,
                "checksum": self.stats.checksum(),
            },
            "stats_note": self.stats_note,
            "reference": None if self.reference is None else self.reference.info(),
        }

    # -- encoding --------------------------------------------------------------------
    def encode(self, image) -> torch.Tensor:
        """Raw embedding (d,) of one input image (path, bytes, PIL, array) or an embedding.

        Images are normalised by `vslerp_app.images.load_image` and cached by content.
        """
        if isinstance(image, torch.Tensor):
            emb = image.detach().float().cpu().flatten()
            if emb.shape[0] != self.embedding_dim:
                raise ValueError(f"embedding has {emb.shape[0]} values, the encoder makes "
                                 f"{self.embedding_dim}")
            if not torch.isfinite(emb).all():
                raise ValueError("embedding has non-finite values")
            return emb
        img = load_image(image)
        key = image_fingerprint(img)
        if key not in self._embedding_cache:
            self._embedding_cache[key] = self.encoder.encode([img])[0]
            if len(self._embedding_cache) > _EMBEDDING_CACHE_SIZE:
                self._embedding_cache.popitem(last=False)
        self._embedding_cache.move_to_end(key)
        return self._embedding_cache[key]

    # -- validation ------------------------------------------------------------------
    def check_inputs(self, pairs: list[tuple[float, float]], seed: int,
                     settings: RenderSettings, max_batch: int) -> None:
        """Raise ValueError with the offending value for anything out of range."""
        for theta, alpha in pairs:
            if not math.isfinite(theta) or not 0.0 <= theta <= 1.0:
                raise ValueError(f"theta must be in [0, 1], got {theta}")
            if not math.isfinite(alpha) or abs(alpha) > ALPHA_LIMIT:
                raise ValueError(f"alpha must be in [-{ALPHA_LIMIT:g}, {ALPHA_LIMIT:g}], got {alpha}")
            if alpha != 0 and self.stats is None:
                raise ValueError(
                    f"alpha={alpha} needs the image-modality mean of this model's encoder, and "
                    f"no stats were found ({self.stats_note}). Compute them with `vslerp stats "
                    f"--model {self.model} --images DIR --out FILE` and pass stats=FILE "
                    "(--stats FILE), or use alpha=0 (plain SLERP)")
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
        if not 1 <= settings.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {settings.steps}")
        if not settings.preview and self.kind == "karlo" and not 1 <= settings.super_res_steps <= MAX_STEPS:
            raise ValueError(f"super_res_steps must be in [1, {MAX_STEPS}], "
                             f"got {settings.super_res_steps}")
        # Karlo's UnCLIPScheduler divides by (steps - 1): one step is a ZeroDivisionError.
        if self.kind == "karlo":
            for name, value in (("steps", settings.steps),
                                ("super_res_steps", None if settings.preview else settings.super_res_steps)):
                if value == 1:
                    raise ValueError(f"{name} must be at least 2 for Karlo (its scheduler needs "
                                     f"two timesteps), got {value}")
        if not math.isfinite(settings.guidance_scale) or not 0 <= settings.guidance_scale <= 50:
            raise ValueError(f"guidance_scale must be in [0, 50], got {settings.guidance_scale}")
        if not 0 <= settings.noise_level <= 1000:
            raise ValueError(f"noise_level must be in [0, 1000], got {settings.noise_level}")
        if self.kind == "stable-unclip" and (settings.resolution % 8 or settings.resolution < 8):
            raise ValueError(f"resolution must be a positive multiple of 8, got {settings.resolution}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")

    # -- generation ------------------------------------------------------------------
    def generate(self, source, target, thetas, alphas=0.0, seed: int = 0, *,
                 preview: bool = False, steps: int | None = None,
                 super_res_steps: int | None = None, guidance_scale: float | None = None,
                 noise_level: int | None = None, resolution: int | None = None,
                 max_batch: int | None = None,
                 callback: Callable[[int, int], None] | None = None) -> list[Frame]:
        """Render one frame per (theta, alpha) pair on one shared noise path.

        Args:
            source: the source image (path, bytes, PIL image, array) or its raw embedding.
            target: the target image or embedding.
            thetas: position(s) from source (0) to target (1): a scalar or a sequence.
            alphas: centre(s) of rotation along the image mean (Eq. 12); a scalar or a
                sequence of the same length as thetas.
            seed: the noise path; every frame of the call shares it, so equal embeddings
                give equal frames and a frame rendered alone equals it inside a sequence.
            preview: a cheap frame for slider drags (Karlo: the 64 px decoder only, fewer
                steps; Stable unCLIP: half resolution, fewer steps).
            steps, super_res_steps, guidance_scale, noise_level, resolution: override the
                preset's defaults.
            max_batch: most frames denoised at once (default: the pipeline's). On CUDA out
                of memory the batch is split and generation goes on.
            callback: called as callback(frames_done, frames_total) after each batch.
        Returns:
            One `Frame` per pair, in order.
        """
        # 1. Settings and checks
        settings = self.settings_for(preview, steps=steps, super_res_steps=super_res_steps,
                                     guidance_scale=guidance_scale, noise_level=noise_level,
                                     resolution=resolution)
        pairs = _pair_up(thetas, alphas)
        max_batch = max_batch or self.max_batch
        self.check_inputs(pairs, seed, settings, max_batch)
        seed = int(seed)

        # 2. Encode each input image once (cached by content)
        v_source, v_target = self.encode(source), self.encode(target)

        # 3. Interpolate every frame's embedding, Eq. 12
        t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        a = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        mean = None if self.stats is None else self.stats.mean.double()
        embeddings = geometry.vslerp(v_source.double(), v_target.double(), t, a, mean).float()

        # 4. Denoise the distinct embeddings (equal embeddings give equal frames)
        keys = [hashlib.sha1(e.numpy().tobytes()).hexdigest() for e in embeddings]
        unique = list(dict.fromkeys(keys))
        first_index = {k: keys.index(k) for k in unique}
        unique_embeddings = torch.stack([embeddings[first_index[k]] for k in unique])
        images = self._denoise(unique_embeddings, seed, settings, max_batch, callback)
        image_of = dict(zip(unique, images, strict=True))

        # 5. Readouts: the interpolated embedding and the generated frame, re-encoded
        frame_embeddings = self._encode_batched(images, max_batch)
        frame_embedding_of = dict(zip(unique, frame_embeddings, strict=True))
        reference_of = {}
        if self.reference is not None:
            reference_of = dict(zip(unique, self.reference.readouts(images), strict=True))
        frames = []
        for (theta, alpha), key, emb in zip(pairs, keys, embeddings, strict=True):
            frame = self._frame(image_of[key], theta, alpha, seed, settings.preview,
                                emb, frame_embedding_of[key])
            frame.reference = reference_of.get(key)
            frames.append(frame)
        return frames

    def _frame(self, image, theta, alpha, seed, preview, emb, frame_emb) -> Frame:
        frame = Frame(image=image.copy(), theta=theta, alpha=alpha, seed=seed, preview=preview,
                      embedding=emb, frame_embedding=frame_emb)
        if self.stats is not None:
            of_embedding, of_frame = self.stats.readouts(emb), self.stats.readouts(frame_emb)
            frame.conformity_kind = of_embedding["conformity_kind"]
            frame.conformity, frame.frame_conformity = of_embedding["conformity"], of_frame["conformity"]
            frame.log_likelihood = of_embedding["log_likelihood"]
            frame.frame_log_likelihood = of_frame["log_likelihood"]
        return frame

    def _encode_batched(self, images: list[PIL.Image.Image], max_batch: int) -> list[torch.Tensor]:
        out = []
        for i in range(0, len(images), max_batch):
            out.extend(self.encoder.encode(images[i:i + max_batch]))
        return out

    def _denoise(self, embeddings: torch.Tensor, seed: int, settings: RenderSettings,
                 max_batch: int, callback) -> list[PIL.Image.Image]:
        """Batches of at most max_batch rows; a CUDA out-of-memory splits the batch."""
        images: list[PIL.Image.Image] = []
        total = embeddings.shape[0]
        bar = tqdm(total=total, desc="frames", unit="frame", leave=False)
        pending = list(embeddings.split(max_batch))
        while pending:
            batch = pending.pop(0)
            try:
                pixels = self._run_checked(batch, seed, settings)
            except Exception as e:
                if not _is_oom(e):
                    raise
                if batch.shape[0] == 1:
                    raise GenerationError(
                        f"one frame does not fit in {self.device} memory ({e}); try preview "
                        "mode, fewer pixels, or --offload (load_pipeline(..., offload=True))") from None
                half = batch.shape[0] // 2
                logger.warning("out of memory at batch %d, splitting", batch.shape[0])
                self.max_batch = max(1, half)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending[:0] = [batch[:half], batch[half:]]
                continue
            images.extend(PIL.Image.fromarray(p) for p in pixels)
            bar.update(batch.shape[0])
            if callback is not None:
                callback(len(images), total)
        bar.close()
        return images

    def _run_checked(self, embeddings: torch.Tensor, seed: int, settings) -> np.ndarray:
        """uint8 (B, H, W, 3); NaN/inf output is retried in float32, never returned."""
        out = self._run(embeddings, seed, settings)
        if np.isfinite(out).all():
            return _to_uint8(out)
        if self.dtype != torch.float32:
            logger.warning("non-finite output in %s, retrying in float32", self.dtype)
            self.pipe.to(dtype=torch.float32)
            try:
                out = self._run(embeddings, seed, settings)
            finally:
                self.pipe.to(dtype=self.dtype)
            if np.isfinite(out).all():
                return _to_uint8(out)
        raise GenerationError(
            "the model produced NaN or infinite pixels even in float32; the weights or the "
            "embeddings are broken (no black frame is returned)")

    def _generators(self, n: int, seed: int) -> list[torch.Generator]:
        # One generator per row, all seeded alike: the stock schedulers draw noise per
        # row from its own generator, so every frame follows the same noise path.
        return [torch.Generator("cpu").manual_seed(seed) for _ in range(n)]

    @torch.no_grad()
    def _run(self, embeddings: torch.Tensor, seed: int, settings: RenderSettings) -> np.ndarray:
        """Float pixels in [0, 1] (NaN kept), shape (B, H, W, 3)."""
        emb = embeddings.to(self.device, self.dtype)
        generators = self._generators(emb.shape[0], seed)
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


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


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
