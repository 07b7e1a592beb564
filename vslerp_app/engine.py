"""The vSLERP engine: an unCLIP model driven by vSLERP-interpolated CLIP image embeddings.

`VSLERPEngine.generate` encodes each input image once (cached by content), interpolates
every frame's embedding with Eq. 12, has the runner denoise the distinct embeddings on one
shared noise path, and reads out per-frame conformity (Eq. 10/11) and whitened likelihood.
Build one with `vslerp_app.load_pipeline`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from pipelines import DEFAULT_MAX_BATCH, RenderSettings, UnclipRunner
from vslerp_app import geometry, paths, smoothness, specs
from vslerp_app.images import image_fingerprint, load_image
from vslerp_app.registry import full_stats_command
from vslerp_app.requests import AimAt, FrameRequest, Sampling
from vslerp_app.stats import ModalityStats, Readouts

__all__ = ["AIM_ALPHA_RANGE", "AimResult", "Frame", "VSLERPEngine", "aim_alpha", "embedding_digest"]

_EMBEDDING_CACHE_SIZE = 64
# Where `VSLERPEngine.alpha_for_conformity` looks for alpha unless told: the studio's range.
AIM_ALPHA_RANGE = specs.STUDIO_ALPHA_RANGE
# Samples of the conformity curve over the alpha range before brackets are refined: a step
# of 0.005 over [-3, 3]; two crossings closer than that could be missed.
_AIM_SAMPLES = 1201
# A refined |C(alpha) - wanted| at most this small counts as reached (a tangent touch); at
# theta 0 or 1 it is the tolerance against the end's own conformity (readouts of the same
# vector differ by ~1e-16 between a batch and a single one).
_AIM_TOUCH = 1e-9
# spacing="perceptual": each segment's preview pass renders thetas 0, 1/12, ..., 1.
MEASURE_SAMPLES = 12


# What a frame's own readouts add beside its embedding's (kind and label are the stats', shared).
_FRAME_KEYS = ("conformity", "log_likelihood", "conformity_percentile", "log_likelihood_percentile")


@dataclass
class Frame:
    """One generated frame and its readouts.

    Attributes:
        image: the frame (RGB PIL image).
        theta, alpha: where on the vSLERP path it sits (Eq. 12).
        seed: the seed of its noise path.
        preview: True for a preview-quality frame.
        embedding: the interpolated raw embedding (float32, CPU).
        frame_embedding: the re-encoded frame's raw embedding (float32, CPU).
        of_embedding, of_frame: the `Readouts` of the interpolated embedding and of the frame
            re-encoded (all None without stats); ``conformity``, ``frame_conformity``,
            ``log_likelihood``, ... read them.
        reference: readouts of the frame in a reference CLIP space (open_clip), when the
            pipeline has one: {"space", "frame_conformity", "conformity_kind",
            "frame_log_likelihood", ...}.
        aim: {"wanted", "achieved", "alpha", "reachable"} when alpha was chosen for a wanted
            conformity (`VSLERPEngine.alpha_for_conformity`), else None.
        segment: on a path (`VSLERPEngine.generate_path`), the segment the frame is on
            (from keyframe `segment` to the next, counted from 0); theta and alpha are then
            the segment's local theta and its alpha. None off a path.
        keyframe: on a path, the keyframe this frame shows exactly, else None.
    """

    image: PIL.Image.Image
    theta: float
    alpha: float
    seed: int
    preview: bool = False
    embedding: torch.Tensor | None = None
    frame_embedding: torch.Tensor | None = None
    of_embedding: Readouts = field(default_factory=Readouts)
    of_frame: Readouts = field(default_factory=Readouts)
    reference: dict | None = None
    aim: dict | None = None
    segment: int | None = None
    keyframe: int | None = None

    conformity = property(lambda self: self.of_embedding.conformity,
                          doc="conformity of the interpolated embedding (None without stats)")
    frame_conformity = property(lambda self: self.of_frame.conformity,
                                doc="conformity of the generated frame, re-encoded (None without stats)")
    conformity_kind = property(lambda self: self.of_embedding.conformity_kind)
    conformity_label = property(lambda self: self.of_embedding.conformity_label)
    log_likelihood = property(lambda self: self.of_embedding.log_likelihood)
    frame_log_likelihood = property(lambda self: self.of_frame.log_likelihood)
    conformity_percentile = property(lambda self: self.of_embedding.conformity_percentile)
    log_likelihood_percentile = property(lambda self: self.of_embedding.log_likelihood_percentile)
    frame_conformity_percentile = property(lambda self: self.of_frame.conformity_percentile)
    frame_log_likelihood_percentile = property(lambda self: self.of_frame.log_likelihood_percentile)

    def place(self) -> dict:
        """Where a frame on a path sits, {"segment", "keyframe"}, for manifests and APIs ({} off a path)."""
        return {} if self.segment is None else {"segment": self.segment, "keyframe": self.keyframe}

    def readouts(self) -> dict:
        """The numbers of this frame as a JSON-ready dict (for manifests and APIs)."""
        out = {"theta": self.theta, "alpha": self.alpha, "seed": self.seed, "preview": self.preview,
               **self.of_embedding.as_dict(), **self.of_frame.as_dict("frame_", _FRAME_KEYS),
               "reference": self.reference}
        if self.aim is not None:
            out["aim"] = dict(self.aim)
        return out


@dataclass(frozen=True)
class AimResult:
    """The alpha chosen for a wanted conformity at one theta (no denoising involved).

    Attributes:
        theta: where on the path.
        wanted: the conformity asked for.
        achieved: the conformity of the Eq. 12 embedding at ``alpha`` (equal to ``wanted``
            to ~1e-12 when reachable; the closest value the alpha range allows otherwise).
        alpha: the alpha nearest 0 that achieves it.
        reachable: whether ``wanted`` is reached within the alpha range.
        alpha_range: the range searched.
    """

    theta: float
    wanted: float
    achieved: float
    alpha: float
    reachable: bool
    alpha_range: tuple[float, float] = AIM_ALPHA_RANGE

    def as_dict(self) -> dict:
        """{"wanted", "achieved", "alpha", "reachable"}: what manifests and the API report."""
        return {"wanted": self.wanted, "achieved": self.achieved, "alpha": self.alpha,
                "reachable": self.reachable}


def _bisect(g: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float, g_lo: float) -> float:
    """A root of g in [lo, hi], where g(lo) and g(hi) differ in sign; to float64 resolution."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        g_mid = float(g(torch.tensor([mid], dtype=torch.float64))[0])
        if g_mid == 0:
            return mid
        if (g_mid < 0) == (g_lo < 0):
            lo, g_lo = mid, g_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _golden_min(h: Callable[[torch.Tensor], torch.Tensor], lo: float, hi: float) -> float:
    """The minimiser of a unimodal h on [lo, hi] by golden-section search (float64)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(120):
        if b - a <= 1e-13 * max(1.0, abs(a) + abs(b)):
            break
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        hc, hd = (float(v) for v in h(torch.tensor([c, d], dtype=torch.float64)))
        if hc <= hd:
            b = d
        else:
            a = c
    candidates = torch.tensor([lo, 0.5 * (a + b), hi], dtype=torch.float64)
    return float(candidates[int(torch.argmin(h(candidates)))])


def aim_alpha(curve: Callable[[torch.Tensor], torch.Tensor], wanted: float,
              alpha_range: tuple[float, float] = AIM_ALPHA_RANGE,
              samples: int = _AIM_SAMPLES, theta: float | None = None) -> tuple[float, float, bool]:
    """(alpha, achieved, reachable): the alpha nearest 0 in ``alpha_range`` with curve(alpha)
    = wanted, or, if none, the one (nearest 0) whose value is closest to it.

    ``curve`` maps a float64 tensor of alphas to their values. The curve is sampled densely
    (0 included), every sign change of curve - wanted is bisected to float64 resolution, and
    without one the closest sample is refined by golden-section search.

    At ``theta`` 0 or 1 Eq. 12 returns the end itself whatever alpha is, so the curve is flat
    and any "root" would be rounding: alpha is 0, achieved the end's conformity, reachable
    when ``wanted`` is within 1e-9 of it.
    """
    if theta in (0.0, 1.0):
        achieved = float(curve(torch.zeros(1, dtype=torch.float64))[0])
        return 0.0, achieved, abs(achieved - wanted) <= _AIM_TOUCH
    lo, hi = alpha_range
    grid = torch.linspace(lo, hi, samples, dtype=torch.float64)
    if lo <= 0 <= hi:
        grid = torch.unique(torch.cat([grid, torch.zeros(1, dtype=torch.float64)]))  # sorted

    def g(a: torch.Tensor) -> torch.Tensor:
        return curve(a) - wanted

    values = g(grid)
    roots = [float(grid[i]) for i in torch.nonzero(values == 0).flatten().tolist()]
    crossing = torch.nonzero(values[:-1] * values[1:] < 0).flatten().tolist()
    roots += [_bisect(g, float(grid[i]), float(grid[i + 1]), float(values[i])) for i in crossing]
    if roots:
        alpha = min(roots, key=lambda r: (abs(r), r))
        return alpha, float(curve(torch.tensor([alpha], dtype=torch.float64))[0]), True
    gap = values.abs()
    near = torch.nonzero(gap <= gap.min() * (1 + 1e-12)).flatten()
    i = int(near[torch.argmin(grid[near].abs())])
    alpha = _golden_min(lambda a: g(a).abs(), float(grid[max(i - 1, 0)]),
                        float(grid[min(i + 1, len(grid) - 1)]))
    if abs(float(g(torch.tensor([alpha], dtype=torch.float64))[0])) >= float(gap[i]):
        alpha = float(grid[i])  # the refinement found nothing closer (a flat curve): keep the sample
    achieved = float(curve(torch.tensor([alpha], dtype=torch.float64))[0])
    return alpha, achieved, abs(achieved - wanted) <= _AIM_TOUCH


def embedding_digest(embedding: torch.Tensor) -> str:
    """A digest of a float32 CPU embedding: equal digests, equal frames (one noise path), denoised once."""
    return hashlib.sha1(embedding.numpy().tobytes()).hexdigest()


def _values(values, name: str) -> float | list[float]:
    """A scalar (a number, a 0-d array or tensor, a one-value SPEC) -> float; a SPEC string
    ("0:1:9", "0,0.5,1", as `render_sequence` takes), a sequence or a 1-D array -> floats."""
    if isinstance(values, str):
        parsed = specs.as_values(values, name)
        return parsed[0] if len(parsed) == 1 else parsed
    if isinstance(values, numbers.Real) or getattr(values, "ndim", None) == 0:
        return float(values)
    if hasattr(values, "tolist"):  # numpy arrays, torch tensors
        values = values.tolist()
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise specs.SpecError(f"bad {name}: expected a number, a SPEC string or a list of numbers, "
                              f"got {values!r}") from None
    if not values:
        raise specs.SpecError(f"{name} is empty")
    return values


def _count(values: list) -> str:
    return f"{len(values)} value{'' if len(values) == 1 else 's'}"


def pair_up(thetas, alphas) -> list[tuple[float, float]]:
    """(theta, alpha) per frame: equal-length sequences, or one of them a scalar."""
    t_list, a_list = _values(thetas, "thetas"), _values(alphas, "alphas")
    if isinstance(t_list, float) and isinstance(a_list, float):
        return [(t_list, a_list)]
    if isinstance(t_list, float):
        t_list = [t_list] * len(a_list)
    if isinstance(a_list, float):
        a_list = [a_list] * len(t_list)
    if len(t_list) != len(a_list):
        raise specs.SpecError(f"thetas ({_count(t_list)}) and alphas ({_count(a_list)}) "
                              "must have equal length, or one of them be a scalar")
    return list(zip(t_list, a_list, strict=True))


def _check_alpha_range(alpha_range) -> tuple[float, float]:
    try:
        lo, hi = (float(a) for a in alpha_range)
    except (TypeError, ValueError):
        raise specs.SpecError(f"alpha_range must be two numbers (low, high), got {alpha_range!r}") from None
    specs.check_alpha(lo)
    specs.check_alpha(hi)
    if not lo < hi:
        raise specs.SpecError(f"alpha_range must have low < high, got ({lo:g}, {hi:g})")
    return lo, hi


class VSLERPEngine:
    """An unCLIP model (Karlo, Stable unCLIP, Kandinsky 2.2, ...) driven by vSLERP embeddings.

    Build it with `vslerp_app.load_pipeline`. Attributes: `runner` (the
    `pipelines.UnclipRunner`), `stats` (image-modality stats or None), `stats_note` (where
    they came from, or why there are none), `model` (what was asked for), `max_batch`
    (default frames per batch), `reference` (a `ReferenceReadout` or None); and, from the
    loaded model, `diffusers_pipe`, `kind`, `preset`, `device`, `dtype`, `offload`, `encoder`.
    """

    def __init__(self, runner: UnclipRunner, *, stats: ModalityStats | None, stats_note: str,
                 max_batch: int = DEFAULT_MAX_BATCH, reference=None):
        self.runner = runner
        self.stats = stats
        self.stats_note = stats_note
        self.max_batch = specs.check_max_batch(max_batch)
        self.reference = reference
        self._embedding_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- what is loaded ----------------------------------------------------------------
    diffusers_pipe = property(lambda self: self.runner.diffusers_pipe, doc="the stock diffusers pipeline")
    kind = property(lambda self: self.runner.kind, doc='the model family: "karlo", "stable-unclip", ...')
    preset = property(lambda self: self.runner.loaded.preset, doc="the preset (defaults)")
    model = property(lambda self: self.runner.loaded.model, doc="what was asked for")
    device = property(lambda self: self.runner.loaded.device)
    dtype = property(lambda self: self.runner.loaded.dtype)
    offload = property(lambda self: self.runner.loaded.offload)
    encoder = property(lambda self: self.runner.encoder, doc="the model's CLIP image encoder")
    min_steps = property(lambda self: self.runner.min_steps, doc="fewest steps per stage the model takes")
    takes_strength = property(lambda self: self.runner.takes_strength,
                              doc="whether frames may start from the source image's latents (strength < 1)")

    @property
    def embedding_dim(self) -> int:
        return self.encoder.dim

    def default_settings(self, preview: bool = False) -> RenderSettings:
        """The preset's settings, with sizes read off the loaded model."""
        return self.runner.default_settings(preview)

    def settings_for(self, preview: bool = False, **overrides) -> RenderSettings:
        """The preset's settings for this quality, with every override that is not None."""
        return self.runner.settings_for(preview, **overrides)

    def info(self) -> dict:
        """What is loaded, for the UI, manifests and logs."""
        return {
            "model": self.model,
            "kind": self.kind,
            "pipeline_class": type(self.diffusers_pipe).__name__,
            "encoder": self.encoder.name,
            "embedding_dim": self.embedding_dim,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "offload": self.offload,
            "stats": None if self.stats is None else {
                "describe": self.stats.describe(),
                "conformity_kind": self.stats.conformity_kind,
                "conformity_label": self.stats.conformity_label,
                "likelihood": self.stats.whitening is not None,
                "percentiles": self.stats.has_population,
                "provenance": self.stats.provenance,
                "checksum": self.stats.checksum(),
            },
            "stats_note": self.stats_note,
            "reference": None if self.reference is None else self.reference.info(),
        }

    # -- encoding ----------------------------------------------------------------------
    def encode(self, image, *, cache: bool = True) -> torch.Tensor:
        """Raw embedding (d,) of one input image (path, bytes, PIL, array) or an embedding.

        Images are normalised by `vslerp_app.images.load_image`. With ``cache`` they are
        kept by content in this engine's cache, shared by every caller of the process; the
        studio passes False and keeps each session's embeddings in that session instead.
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
        if not cache:
            return self.encoder.encode([img])[0]
        key = image_fingerprint(img)
        if key not in self._embedding_cache:
            self._embedding_cache[key] = self.encoder.encode([img])[0]
            if len(self._embedding_cache) > _EMBEDDING_CACHE_SIZE:
                self._embedding_cache.popitem(last=False)
        self._embedding_cache.move_to_end(key)
        return self._embedding_cache[key]

    def readouts(self, embedding: torch.Tensor) -> Readouts:
        """Conformity (and likelihood) of one raw embedding by this engine's stats; all None without."""
        return Readouts() if self.stats is None else self.stats.readouts(embedding)

    @contextlib.contextmanager
    def callback_on_step(self, callback: Callable[[int, int], None] | None) -> Iterator[None]:
        """Within the block, ``callback(step, total)`` runs after each denoising step of this
        thread's renders (as diffusers' ``callback_on_step_end``; `UnclipRunner.on_step`). None: nothing."""
        if callback is None:
            yield
            return
        with self.runner.on_step(callback):
            yield

    # -- validation --------------------------------------------------------------------
    def check_inputs(self, pairs: list[tuple[float, float]], seed: int,
                     settings: RenderSettings, max_batch: int) -> None:
        """Raise SpecError (a ValueError) with the offending value for anything out of range."""
        for theta, alpha in pairs:
            specs.check_theta(theta)
            self.check_alpha(alpha)
        specs.check_seed(seed)
        specs.check_settings(settings, kind=self.kind, min_steps=self.runner.min_steps)
        problem = self.runner.settings_problem(settings)
        if problem is not None:
            raise specs.SpecError(problem)
        specs.check_max_batch(max_batch)

    def settings_of(self, sampling: Sampling) -> RenderSettings:
        """The effective settings of a `Sampling` record on this model."""
        return self.settings_for(sampling.preview, **sampling.overrides())

    def check_frames(self, pairs: list[tuple[float, float]], seed: int, sampling: Sampling) -> RenderSettings:
        """`check_inputs` for a request's frames and `Sampling` (the request records call it when
        parsed against this engine); the effective settings."""
        settings = self.settings_of(sampling)
        batch = self.max_batch if sampling.max_batch is None else sampling.max_batch  # 0 is refused
        self.check_inputs(pairs, seed, settings, batch)
        return settings

    def trusted_settings(self, request, pairs) -> RenderSettings:
        """The settings of a request record with these frames (theta, alpha or `AimAt`), checked
        unless the record was parsed against this engine (validated once, at the edge)."""
        if request.checked_by is self:
            return self.settings_of(request.sampling)
        return self.check_frames([(t, 0.0 if isinstance(a, AimAt) else a) for t, a in pairs], request.seed,
                                 request.sampling)

    def check_alpha(self, alpha: float) -> None:
        """alpha in range, and the image-modality mean at hand when alpha != 0 (SpecError)."""
        specs.check_alpha(alpha)
        if alpha != 0 and self.stats is None:
            raise specs.SpecError(
                f"alpha={alpha} needs the image-modality mean of this model's encoder, and "
                f"no stats were found ({self.stats_note}). Make them with `{full_stats_command(self.model)}` "
                "(or from a folder: `vslerp stats --images DIR --out FILE`, then stats=FILE / --stats FILE), "
                "or use alpha=0 (plain SLERP)")

    # -- generation --------------------------------------------------------------------
    def interpolate(self, source, target, thetas, alphas) -> tuple[list[tuple[float, float]], torch.Tensor]:
        """((theta, alpha) per frame, their Eq. 12 embeddings as float32 (N, d)).

        The embeddings are computed in float64 from the encoded inputs and the stats' mean.
        """
        pairs = pair_up(thetas, alphas)
        return pairs, self._interpolated(self.encode(source), self.encode(target), pairs)

    def _interpolated(self, v_source: torch.Tensor, v_target: torch.Tensor, pairs) -> torch.Tensor:
        t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        a = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        mean = None if self.stats is None else self.stats.mean.double()
        return geometry.vslerp(v_source.double(), v_target.double(), t, a, mean).float()

    # -- aiming at a conformity ----------------------------------------------------------
    def alpha_for_conformity(self, source, target, theta: float, conformity: float,
                             alpha_range: tuple[float, float] | None = None) -> AimResult:
        """The alpha whose Eq. 12 embedding at ``theta`` has conformity ``conformity``.

        The embedding alone decides (no denoising): the conformity readout of this
        pipeline's stats (exact Eq. 10, or its Eq. 11 estimate / cosine to the mean) along
        alpha is sampled over ``alpha_range`` (default `AIM_ALPHA_RANGE`, the app's slider),
        sign changes are bisected in float64. Several alphas: the one nearest 0. None: the
        alpha giving the closest value, with ``reachable`` False.

        Args:
            source, target: images (path, bytes, PIL, array) or raw embeddings.
            theta: position from source (0) to target (1).
            conformity: the wanted conformity.
            alpha_range: (low, high) to search.
        """
        return self.alphas_for_conformity(source, target, [theta], [conformity], alpha_range)[0]

    def alphas_for_conformity(self, source, target, thetas, conformities,
                              alpha_range: tuple[float, float] | None = None) -> list[AimResult]:
        """`alpha_for_conformity` for each (theta, conformity) pair (paired as in `generate`)."""
        if self.stats is None:
            raise specs.SpecError(
                f"aiming at a conformity needs this model's image statistics, and none were found "
                f"({self.stats_note}); make them with `{full_stats_command(self.model)}` (or from a "
                "folder: `vslerp stats --images DIR --out FILE`, then stats=FILE / --stats FILE)")
        alpha_range = _check_alpha_range(AIM_ALPHA_RANGE if alpha_range is None else alpha_range)
        pairs = pair_up(thetas, conformities)
        v0, v1 = self.encode(source).double(), self.encode(target).double()
        mean = self.stats.mean.double()
        results = []
        for theta, wanted in pairs:
            specs.check_theta(theta)
            if not math.isfinite(wanted):
                raise specs.SpecError(f"conformity must be a finite number, got {wanted}")

            def curve(alphas: torch.Tensor, theta=theta) -> torch.Tensor:
                return self.stats.conformity(geometry.vslerp(v0, v1, theta, alphas, mean))

            alpha, achieved, reachable = aim_alpha(curve, wanted, alpha_range, theta=theta)
            results.append(AimResult(theta=theta, wanted=wanted, achieved=achieved, alpha=alpha,
                                     reachable=reachable, alpha_range=alpha_range))
        return results

    def generate(self, source, target, thetas, alphas=0.0, seed: int = 0, *,
                 preview: bool = False, steps: int | None = None,
                 super_res_steps: int | None = None, guidance_scale: float | None = None,
                 noise_level: int | None = None, resolution: int | tuple[int, int] | None = None,
                 strength: float | None = None, adapter_scale: float | None = None,
                 prompt: str | None = None, max_batch: int | None = None,
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
                preset's defaults (resolution: a side, or (width, height) where the model
                renders any size, e.g. Kandinsky 2.2).
            strength: below 1, every frame starts from the source image's own latents noised
                to this level (img2img: the source's layout kept); 1 (the default) starts
                from noise. Needs the source as an image and a model that takes it.
            adapter_scale, prompt: IP-Adapter's image conditioning scale (1: the image
                alone) and a text prompt steering every frame (default: the preset's).
            max_batch: most frames denoised at once (default: the pipeline's). On CUDA out
                of memory the batch is split for this call and generation goes on.
            callback: called as callback(frames_done, frames_total) after each batch.
        Returns:
            One `Frame` per pair, in order.
        """
        # 1. Settings and checks (a Python caller's values: nothing was parsed before)
        sampling = Sampling.from_options(preview, steps, super_res_steps=super_res_steps,
                                         guidance_scale=guidance_scale, noise_level=noise_level,
                                         resolution=resolution, strength=strength,
                                         adapter_scale=adapter_scale, prompt=prompt, max_batch=max_batch)
        pairs = pair_up(thetas, alphas)
        settings = self.check_frames(pairs, seed, sampling)
        return self.render_pairs(source, target, pairs, int(seed), settings, sampling.max_batch, callback)

    def render_frame(self, request: FrameRequest, source=None, target=None,
                     callback: Callable[[int, int], None] | None = None) -> Frame:
        """The frame of a `FrameRequest`, its alpha aimed first when it is an `AimAt` (``frame.aim``).

        A request parsed against this engine is trusted (validated once, at the edge); any other
        is checked here. ``source`` and ``target`` replace the request's images by their raw
        embeddings (a studio session's); with strength < 1 the frame still starts from the
        request's source image.
        """
        source = request.source if source is None else source
        target = request.target if target is None else target
        pairs = [(request.theta, request.alpha)]
        settings = self.trusted_settings(request, pairs)
        pairs, aims = self.resolve_aims(source, target, pairs)
        return self.render_pairs(source, target, pairs, request.seed, settings, request.sampling.max_batch,
                              callback, aims, start=request.source)[0]

    def resolve_aims(self, source, target, pairs) -> tuple[list[tuple[float, float]], list[AimResult] | None]:
        """(theta, alpha) per frame with every `AimAt` replaced by the alpha that reaches it, and
        each frame's `AimResult` (None when nothing was aimed)."""
        aimed = [i for i, (_, a) in enumerate(pairs) if isinstance(a, AimAt)]
        if not aimed:
            return list(pairs), None
        found = self.alphas_for_conformity(source, target, [pairs[i][0] for i in aimed],
                                           [pairs[i][1].conformity for i in aimed])
        aims: list[AimResult | None] = [None] * len(pairs)
        for i, aim in zip(aimed, found, strict=True):
            aims[i] = aim
        return [(t, a if aims[i] is None else aims[i].alpha) for i, (t, a) in enumerate(pairs)], aims

    def render_pairs(self, source, target, pairs, seed: int, settings: RenderSettings, max_batch: int | None,
                     callback=None, aims=None, start=None) -> list[Frame]:
        """`generate` with its values already checked (`check_frames`, `trusted_settings`): encode,
        interpolate (Eq. 12), denoise, read out. ``aims`` (one `AimResult` or None per frame) go
        into ``frame.aim``; ``start``: the image strength < 1 starts from (default ``source``)."""
        start_image = self._start_image(source if start is None else start, settings)
        v_source, v_target = self.encode(source), self.encode(target)
        frames = self._render_frames(pairs, self._interpolated(v_source, v_target, pairs), seed, settings,
                                     max_batch or self.max_batch, callback, start_image)
        for frame, aim in zip(frames, aims or [None] * len(frames), strict=True):
            frame.aim = None if aim is None else aim.as_dict()
        return frames

    @staticmethod
    def _start_image(source, settings: RenderSettings) -> PIL.Image.Image | None:
        """The image every frame starts from when strength < 1 (its latents), else None."""
        if settings.strength >= 1.0:
            return None
        if isinstance(source, torch.Tensor):
            raise specs.SpecError(f"strength={settings.strength:g} starts every frame from the source "
                                  "image's latents: give the source as an image, not an embedding")
        return load_image(source)

    def _render_frames(self, pairs, embeddings, seed, settings, max_batch, callback,
                       start_image=None) -> list[Frame]:
        """One `Frame` per (theta, alpha) pair and embedding; equal embeddings are denoised once."""
        # 3. Denoise the distinct embeddings (equal embeddings give equal frames)
        keys = [embedding_digest(e) for e in embeddings]
        first_index = {}
        for i, key in enumerate(keys):
            first_index.setdefault(key, i)
        unique = torch.stack([embeddings[i] for i in first_index.values()])
        images = self.runner.render(unique, seed, settings, max_batch, callback, start_image)
        image_of = dict(zip(first_index, images, strict=True))

        # 4. Readouts: the interpolated embedding and the generated frame, re-encoded
        frame_embedding_of = dict(zip(first_index, self.encoder.encode_batched(images, max_batch),
                                      strict=True))
        reference_of = {}
        if self.reference is not None:
            reference_of = dict(zip(first_index, self.reference.readouts(images), strict=True))
        return [self._frame(image_of[key], theta, alpha, seed, settings.preview, emb,
                            frame_embedding_of[key], reference_of.get(key))
                for (theta, alpha), key, emb in zip(pairs, keys, embeddings, strict=True)]

    def _frame(self, image, theta, alpha, seed, preview, emb, frame_emb, reference) -> Frame:
        return Frame(image=image.copy(), theta=theta, alpha=alpha, seed=seed, preview=preview, embedding=emb,
                     frame_embedding=frame_emb, of_embedding=self.readouts(emb),
                     of_frame=self.readouts(frame_emb), reference=reference)

    # -- paths through keyframes ---------------------------------------------------------
    def encode_keyframes(self, images) -> torch.Tensor:
        """Raw embeddings (K, d) of 2+ keyframes; one that cannot be used is named by its position."""
        images = paths.keyframe_list(images)
        if len(images) < paths.MIN_KEYFRAMES:
            raise specs.SpecError(f"a path needs at least {paths.MIN_KEYFRAMES} keyframes, got {len(images)}")
        vectors = []
        for i, image in enumerate(images):
            try:
                vectors.append(self.encode(image))
            except ValueError as e:  # an unreadable image, a wrong-sized embedding
                raise specs.SpecError(f"keyframe {i + 1} of {len(images)}: {e}") from None
        return torch.stack(vectors)

    def plan_path(self, images, frames: int | None = None, alphas=0.0, *, loop: bool = False,
                  spacing: str = "uniform", ease: bool = False, seed: int = 0,
                  measure: dict | None = None) -> paths.PathPlan:
        """Where each frame of a path through ``images`` sits (`vslerp_app.paths.plan_path`).

        The keyframes are encoded (cached by content) to measure each segment's angle on
        its vSLERP arc, which spacing="angle" allots the frames by. spacing="perceptual"
        renders a preview pass first (`measure_segments`, with ``seed`` and the options in
        ``measure``). Other arguments as in `generate_path`.
        """
        images = paths.keyframe_list(images)
        segments = paths.segment_count(len(images), loop)
        frames = paths.default_frames(len(images), loop) if frames is None else frames
        paths.check_path(len(images), frames, loop, spacing)
        alpha_values = paths.segment_alphas(specs.as_values(alphas, "alpha"), segments)
        for alpha in alpha_values:
            self.check_alpha(alpha)
        vectors = self.encode_keyframes(images).double()
        mean = None if self.stats is None else self.stats.mean.double()
        ends = [(vectors[k], vectors[(k + 1) % len(images)]) for k in range(segments)]
        angles = [float(geometry.arc_angle(v0, v1, alpha, mean))
                  for (v0, v1), alpha in zip(ends, alpha_values, strict=True)]
        centres = [0.0 if mean is None else alpha * mean for alpha in alpha_values]
        ratios = [float((v0 - c).norm() / (v1 - c).norm()) for (v0, v1), c in zip(ends, centres, strict=True)]
        curves = (self.measure_segments(images, alpha_values, loop=loop, seed=seed, **(measure or {}))
                  if spacing == "perceptual" else None)
        return paths.plan_path(len(images), frames, alpha_values, loop=loop, spacing=spacing, ease=ease,
                               angles=angles, ratios=ratios, curves=curves)

    def measure_segments(self, images, alphas, *, loop: bool = False, seed: int = 0,
                         samples: int = MEASURE_SAMPLES, **options) -> list[paths.MeasuredCurve]:
        """The perceived distance along every segment of a path, measured by a preview pass.

        Each segment is rendered at ``samples`` + 1 evenly spaced thetas (preview quality, the
        path's seed), every frame re-encoded, and the angles between neighbouring frames
        summed into a `paths.MeasuredCurve` (shared frames, such as the keyframes, are
        denoised once). Angles, not cosine distances: along a smooth path 1 - cos grows with
        the square of the step, so only angles add up to a length; frames equally far apart
        in angle are equally far apart in cosine distance too. ``alphas``: one per segment;
        ``options`` as in `generate` (preview on).
        """
        segments = paths.segment_count(len(images), loop)
        thetas = [j / samples for j in range(samples + 1)]
        points = [paths.PathPoint(0, k, t, float(alphas[k])) for k in range(segments) for t in thetas]
        frames = self.generate_path_points(images, points, seed, **{"preview": True, **options})
        curves = []
        for k in range(segments):
            mine = torch.stack([f.frame_embedding for f in frames[k * len(thetas):(k + 1) * len(thetas)]])
            angles = np.arccos(np.clip(1.0 - smoothness.cosine_steps(mine), -1.0, 1.0))
            curves.append(paths.MeasuredCurve.from_steps(thetas, angles))
        return curves

    def path_embeddings(self, vectors: torch.Tensor, points: list[paths.PathPoint]) -> torch.Tensor:
        """The Eq. 12 embedding (float32, computed in float64) of each path point; vectors (K, d)."""
        k = vectors.shape[0]
        for p in points:
            if not 0 <= p.segment < k:
                raise ValueError(f"segment {p.segment} is not on a path of {k} keyframes")
        segments = [p.segment for p in points]
        v0, v1 = vectors[segments].double(), vectors[[(s + 1) % k for s in segments]].double()
        t = torch.tensor([p.theta for p in points], dtype=torch.float64)
        a = torch.tensor([p.alpha for p in points], dtype=torch.float64)
        mean = None if self.stats is None else self.stats.mean.double()
        return geometry.vslerp(v0, v1, t, a, mean).float()

    def generate_path_points(self, images, points: list[paths.PathPoint], seed: int = 0, *,
                             preview: bool = False, steps: int | None = None,
                             super_res_steps: int | None = None, guidance_scale: float | None = None,
                             noise_level: int | None = None,
                             resolution: int | tuple[int, int] | None = None,
                             strength: float | None = None, adapter_scale: float | None = None,
                             prompt: str | None = None, max_batch: int | None = None,
                             callback: Callable[[int, int], None] | None = None) -> list[Frame]:
        """Render the given points of a path (from `plan_path`) on one noise path.

        A frame equals the same point rendered in any other call with the same seed, so a
        path may be rendered piece by piece (`vslerp_app.render.render_path` does). Equal
        embeddings (a keyframe, a hold, a segment walked back) are denoised once per call.
        Options as in `generate`; with strength < 1 every frame starts from the first
        keyframe's latents.
        """
        sampling = Sampling.from_options(preview, steps, super_res_steps=super_res_steps,
                                         guidance_scale=guidance_scale, noise_level=noise_level,
                                         resolution=resolution, strength=strength,
                                         adapter_scale=adapter_scale, prompt=prompt, max_batch=max_batch)
        settings = self.check_frames([(p.theta, p.alpha) for p in points], seed, sampling)
        return self.path_frames(images, points, int(seed), settings, sampling.max_batch or self.max_batch,
                                callback)

    def path_frames(self, images, points: list[paths.PathPoint], seed: int, settings: RenderSettings,
                    max_batch: int, callback: Callable[[int, int], None] | None = None) -> list[Frame]:
        """`generate_path_points` with settings already checked (`check_frames`): a parsed request's."""
        pairs = [(p.theta, p.alpha) for p in points]
        embeddings = self.path_embeddings(self.encode_keyframes(images), points)
        start_image = self._start_image(paths.keyframe_list(images)[0], settings)
        frames = self._render_frames(pairs, embeddings, seed, settings, max_batch, callback, start_image)
        for frame, point in zip(frames, points, strict=True):
            frame.segment, frame.keyframe = point.segment, point.keyframe
        return frames

    def generate_path(self, images, frames: int | None = None, alphas=0.0, seed: int = 0, *,
                      loop: bool = False, spacing: str = "uniform", ease: bool = False,
                      **options) -> list[Frame]:
        """Render a path through 2+ keyframes on one noise path: one `Frame` per path frame.

        Args:
            images: the keyframes, in order (paths, bytes, PIL images, arrays or raw
                embeddings). Equal neighbours are allowed: a hold.
            frames: the path's frame count N (default: 8 a segment, plus the last frame of
                an open path). An open path includes both ends; a loop does not repeat its
                first frame. With uniform spacing keyframe k is frame round(k(N-1)/S)
                (loop: round(kN/S)), S the number of segments.
            alphas: one alpha for every segment, or one per segment (a list or a SPEC).
            seed: the one noise path of the whole path: a keyframe's frame is the same frame
                whichever segment it closes or opens, and equal to the keyframe rendered
                alone at theta 0.
            loop: add the segment from the last keyframe back to the first.
            spacing: "uniform" (the same frames per segment), "angle" (frames in
                proportion to each segment's angle on its vSLERP arc, turning by equal angles
                inside it: one speed throughout) or "perceptual" (a preview pass measures the
                distance between re-encoded frames along every segment, and the frames are
                placed so that neighbours are equally far apart as measured).
            ease: ease in and out of each keyframe (smoothstep on theta within a segment).
            options: preview, steps, super_res_steps, guidance_scale, noise_level,
                resolution, strength, adapter_scale, prompt, max_batch, callback, as in
                `generate`.
        Returns:
            One `Frame` per path frame, in order; theta and alpha are the segment's local
            theta and its alpha, and `segment` and `keyframe` say where the frame sits.
        """
        images = paths.keyframe_list(images)
        measure = {k: v for k, v in options.items() if k in ("max_batch", "guidance_scale")}
        plan = self.plan_path(images, frames, alphas, loop=loop, spacing=spacing, ease=ease, seed=seed,
                              measure=measure)
        return self.generate_path_points(images, plan.points, seed, **options)
