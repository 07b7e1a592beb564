"""Requests parsed once at the edge: frozen, typed records passed down whole.

The studio's handlers, the CLI and a jobs line turn what they were given (Gradio's values,
command-line text, JSON) into one of these records with its ``parse`` classmethod, which
refuses anything wrong with a `RequestError` naming the value. Below the edge nothing
re-reads a positional tuple: the service, the engine and the render take the record
(whisper's ``DecodingOptions`` is the model; `pipelines.RenderSettings` is its sibling).

- `Sampling`: how frames are denoised (quality, steps, guidance, batch limit, strength, ...);
  a preview of any request is ``replace(request, sampling=request.sampling.as_preview())``.
- `AimAt`: an alpha chosen where the frame renders, so the frame's embedding has a wanted
  conformity. A request's alpha is a number or an `AimAt`, under one name.
- `FrameRequest`, `SweepRequest`, `PathRequest`: one frame, a sweep (or grid), a path
  through keyframes.

Parsed against an engine, a record remembers it (`checked_by`, not part of its value): that
engine trusts it and checks it no more. A changed copy (``dataclasses.replace``) or a record
built directly is checked by the engine it reaches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from vslerp_app import paths
from vslerp_app.outputs import DEFAULT_FPS
from vslerp_app.specs import (
    ALPHA_LIMIT,
    MAX_COUNT,
    STUDIO_ALPHA_RANGE,
    SpecError,
    as_values,
    check_fps,
    check_max_batch,
    check_range,
    check_seed,
    combine,
    linspace,
)

__all__ = ["MAX_KEYFRAMES", "MAX_SEQUENCE_FRAMES", "QUALITIES", "SWEEP_MODES", "AimAt", "FrameRequest",
           "PathRequest", "RequestError", "Sampling", "SweepRequest", "sweep_pairs", "sweep_values"]

MAX_SEQUENCE_FRAMES = 96  # the paper's demo grid: 6 thetas x 16 alphas; `app.py --max-sequence-frames`
MAX_KEYFRAMES = 8  # the keyframe strip holds up to 8 images
SWEEP_MODES = ("theta", "alpha", "grid")
QUALITIES = ("full", "preview")


class RequestError(SpecError):
    """A request the user can fix (a missing image, a value out of range); plain message."""


# -- values as the edge sends them ----------------------------------------------------------
def _empty(value) -> bool:
    """An emptied box: Gradio sends None (a number box) or blank text."""
    return value is None or (isinstance(value, str) and not value.strip())


def _as_int(value, name: str) -> int:
    if _empty(value):
        raise RequestError(f"{name} is empty: type a whole number.")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def _float(value, name: str) -> float:
    if _empty(value):
        raise RequestError(f"{name} is empty: type a number.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}")
    return value


def _text(value, name: str) -> str | None:
    """Text as typed (None when not given); anything else refused by name."""
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{name} must be text, got {value!r}")
    return value


def _optional_int(value, name: str) -> int | None:
    return None if value is None else _as_int(value, name)


def check_studio_alphas(alphas, name: str = "alpha") -> None:
    """Every alpha in the studio's range, the alpha slider's: one rule for frames, sweeps and paths."""
    lo, hi = STUDIO_ALPHA_RANGE
    for a in alphas:
        if math.isfinite(a) and not lo <= a <= hi:
            raise RequestError(f"{name} must be between {lo:g} and {hi:g} here, got {a:.10g} "
                               f"(the vslerp render command takes up to ±{ALPHA_LIMIT:g}).")


# -- the records ------------------------------------------------------------------------------
class _Checked:
    """A request record that remembers the engine that checked it (`checked_by`), but not when
    pickled: ZeroGPU pickles a GPU function's arguments to its worker, whose engine checks again."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "checked_by": None}


@dataclass(frozen=True)
class AimAt:
    """An alpha found where the frame renders: the one nearest 0 whose Eq. 12 embedding has
    this conformity (`VSLERPEngine.alphas_for_conformity`)."""

    conformity: float

    @classmethod
    def parse(cls, engine, value, name: str = "target_conformity") -> AimAt | None:
        """None (not aiming: an empty box), or a finite conformity in [-1, 1] the engine's stats read."""
        if _empty(value):
            return None
        if isinstance(value, bool):
            raise RequestError(f"{name} must be a number, got {value!r}")
        wanted = _float(value, name)
        if not math.isfinite(wanted):
            raise RequestError(f"{name} must be a finite number, got {value!r}")
        if not -1 <= wanted <= 1:  # conformity (Eq. 10) and the cosine to the mean lie in [-1, 1]
            raise RequestError(f"{name} must be between -1 and 1, got {wanted:g}.")
        if engine is not None and engine.stats is None:
            raise RequestError(f"aiming at a conformity needs image statistics for this model, and there "
                               f"are none ({engine.stats_note}); leave {name} empty")
        return cls(wanted)


@dataclass(frozen=True)
class Sampling:
    """How frames are denoised; None leaves the model preset's default.

    ``steps`` and ``super_res_steps`` are a full frame's, ``preview_steps`` a preview's
    (Karlo previews stop after the 64 px decoder: no super-resolution steps), so a preview
    of a request is ``as_preview()``. ``max_batch``: most frames denoised at once.
    ``strength`` below 1 starts from the source image's latents (families that take it).
    """

    preview: bool = False
    steps: int | None = None
    super_res_steps: int | None = None
    preview_steps: int | None = None
    guidance_scale: float | None = None
    max_batch: int | None = None
    strength: float | None = None
    noise_level: int | None = None
    resolution: int | tuple[int, int] | None = None
    adapter_scale: float | None = None
    prompt: str | None = None

    @classmethod
    def parse(cls, quality, steps=None, super_res_steps=None, preview_steps=None, guidance_scale=None,
              max_batch=None, strength=None, adapter_scale=None, prompt=None) -> Sampling:
        """The studio's settings (quality "full" or "preview"), each refused by name when not a number
        (the prompt when not text); an empty box leaves the model's default."""
        if quality not in QUALITIES:
            raise RequestError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
        if guidance_scale is not None:
            try:
                guidance_scale = float(guidance_scale)
            except (TypeError, ValueError):
                raise RequestError(f"guidance_scale must be a number, got {guidance_scale!r}") from None
        return cls(preview=quality == "preview", steps=_optional_int(steps, "steps"),
                   super_res_steps=_optional_int(super_res_steps, "super_res_steps"),
                   preview_steps=_optional_int(preview_steps, "preview_steps"), guidance_scale=guidance_scale,
                   max_batch=_optional_int(max_batch, "max_batch"),
                   strength=None if _empty(strength) else _float(strength, "strength"),
                   adapter_scale=None if _empty(adapter_scale) else _float(adapter_scale, "adapter_scale"),
                   prompt=_text(prompt, "prompt"))

    @classmethod
    def from_options(cls, preview: bool = False, steps=None, **options) -> Sampling:
        """The record of `VSLERPEngine.generate`'s keyword options, where ``steps`` is the
        steps of the quality asked for (a preview's with ``preview``)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(sorted(unknown))}")
        return cls(preview=bool(preview), **{"preview_steps" if preview else "steps": steps}, **options)

    def as_preview(self) -> Sampling:
        return dataclasses.replace(self, preview=True)

    def overrides(self) -> dict:
        """The settings this record sets for its quality (`VSLERPEngine.settings_for`), None left out."""
        values = {"steps": self.preview_steps if self.preview else self.steps,
                  "super_res_steps": None if self.preview else self.super_res_steps,
                  "guidance_scale": self.guidance_scale, "noise_level": self.noise_level,
                  "resolution": self.resolution, "strength": self.strength,
                  "adapter_scale": self.adapter_scale, "prompt": self.prompt}
        return {k: v for k, v in values.items() if v is not None}


def _checked(record, engine, pairs, seed: int):
    """``record`` after the engine's own checks of its frames and settings (when one is given)."""
    if engine is not None:
        try:
            engine.check_frames([(t, 0.0 if isinstance(a, AimAt) else a) for t, a in pairs], seed,
                                record.sampling)
        except ValueError as e:
            raise RequestError(str(e)) from None
        object.__setattr__(record, "checked_by", engine)
    return record


def _need_image(image, role: str) -> None:
    if image is None:
        raise RequestError(f"Add a {role} first (upload, paste or webcam), or click an example.")


@dataclass(frozen=True)
class FrameRequest(_Checked):
    """One frame at (theta, alpha) of the source-to-target arc (Eq. 12), on the noise path of ``seed``."""

    source: object
    target: object
    theta: float
    alpha: float | AimAt
    seed: int
    sampling: Sampling = Sampling()
    checked_by: object = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def parse(cls, engine, *, source, target, theta, alpha, seed, quality="full", steps=None,
              super_res_steps=None, preview_steps=None, guidance_scale=None, max_batch=None, strength=None,
              adapter_scale=None, prompt=None, target_conformity=None) -> FrameRequest:
        """A frame request from the studio's values, or RequestError naming the bad one.

        With a ``target_conformity`` the alpha given is replaced by an aim at it.
        """
        sampling = Sampling.parse(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch,
                                  strength, adapter_scale, prompt)
        theta, alpha = _float(theta, "theta"), _float(alpha, "alpha")
        aim = AimAt.parse(engine, target_conformity)
        _need_image(source, "source image")
        _need_image(target, "target image")
        seed = _as_int(seed, "seed")
        if aim is None:
            check_studio_alphas([alpha])
        request = cls(source, target, theta, alpha if aim is None else aim, seed, sampling)
        return _checked(request, engine, [(theta, request.alpha)], seed)


def sweep_values(mode: str, theta: float, alpha: float, theta_start: float, theta_stop: float,
                 theta_count, alpha_start: float, alpha_stop: float,
                 alpha_count) -> tuple[list[float], list[float], bool]:
    """(thetas, alphas, grid) of the studio's sweep form, as `SweepRequest` takes them.

    mode "theta": theta_count thetas from theta_start to theta_stop at the fixed alpha;
    "alpha": alpha_count alphas at the fixed theta; "grid": every theta with every alpha
    (theta major, as the render command's --grid).
    """
    if mode not in SWEEP_MODES:
        raise RequestError(f"sweep must be one of {', '.join(SWEEP_MODES)}, got {mode!r}")
    if mode == "theta":
        return _sweep_linspace(theta_start, theta_stop, theta_count, "theta"), [float(alpha)], False
    # The alpha ends are checked by name here, where a sweep uses them (a theta sweep does not).
    check_studio_alphas([alpha_start], "alpha_start")
    check_studio_alphas([alpha_stop], "alpha_stop")
    if mode == "alpha":
        return [float(theta)], _sweep_linspace(alpha_start, alpha_stop, alpha_count, "alpha"), False
    return (_sweep_linspace(theta_start, theta_stop, theta_count, "theta"),
            _sweep_linspace(alpha_start, alpha_stop, alpha_count, "alpha"), True)


def sweep_pairs(thetas: list[float], alphas: list[float], grid: bool) -> list[tuple[float, float]]:
    """(theta, alpha) of every frame, in the order the render writes them."""
    return combine(thetas, alphas, grid)


def _sweep_linspace(start, stop, count, name) -> list[float]:
    count = _as_int(count, f"{name} frames")
    if not 1 <= count <= MAX_SEQUENCE_FRAMES:
        raise RequestError(f"{name} frames must be between 1 and {MAX_SEQUENCE_FRAMES}, got {count}")
    return linspace(float(start), float(stop), count)


@dataclass(frozen=True)
class SweepRequest(_Checked):
    """A sequence: thetas with alphas (a sweep, paired, or a theta-major ``grid``), one seed.

    ``alphas`` are numbers, or `AimAt`s paired with the thetas (each frame's alpha aimed).
    """

    source: object
    target: object
    thetas: tuple[float, ...]
    alphas: tuple[float | AimAt, ...]
    seed: int
    sampling: Sampling = Sampling()
    grid: bool = False
    fps: float = DEFAULT_FPS
    checked_by: object = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def parse(cls, engine, *, source, target, thetas, alphas=None, seed, sampling: Sampling = Sampling(),
              grid=False, fps=DEFAULT_FPS, conformity=None, max_frames: int | None = None) -> SweepRequest:
        """A sweep from SPECs, numbers or lists (`vslerp render`'s, a jobs line's, the studio's), or
        RequestError. ``conformity`` (instead of alphas): the conformities aimed at, paired with
        the thetas. Without an ``engine``, only what needs no model is checked."""
        _need_image(source, "source image")
        _need_image(target, "target image")
        try:
            theta_values = as_values(thetas, "theta")
            if conformity is not None:
                alpha_values = _aims(alphas, conformity, grid)
            else:
                alpha_values = as_values("0" if alphas is None else alphas, "alpha")
            check_range(theta_values, [a for a in alpha_values if not isinstance(a, AimAt)])
            seed, fps = check_seed(seed), check_fps(fps)
            if sampling.max_batch is not None:
                check_max_batch(sampling.max_batch)
            pairs = combine(theta_values, alpha_values, grid,
                            other="alpha" if conformity is None else "conformity")
        except RequestError:
            raise
        except SpecError as e:
            raise RequestError(str(e)) from None
        if max_frames is not None and len(pairs) > max_frames:
            raise RequestError(f"a sequence has at most {max_frames} frames here, "
                               f"this one would have {len(pairs)}; lower the frame counts")
        request = cls(source, target, tuple(theta_values), tuple(alpha_values), seed, sampling, bool(grid),
                      fps)
        return _checked(request, engine, pairs, seed)

    @classmethod
    def parse_studio(cls, engine, *, source, target, sweep, theta, alpha, theta_start, theta_stop,
                     theta_frames, alpha_start, alpha_stop, alpha_frames, seed, sampling: Sampling, fps,
                     target_conformity=None, max_frames: int = MAX_SEQUENCE_FRAMES) -> SweepRequest:
        """The studio's sweep form (`sweep_values`); refusals in the studio's words. With a
        ``target_conformity`` (a theta sweep only) every frame's alpha is aimed at it."""
        aim = AimAt.parse(engine, target_conformity)
        if aim is not None and sweep != "theta":
            raise RequestError(f"target_conformity sets each frame's alpha, so it goes with sweep='theta', "
                               f"not {sweep!r}")
        thetas, alphas, grid = sweep_values(
            sweep, _float(theta, "theta"), 0.0 if aim is not None else _float(alpha, "alpha"),
            _float(theta_start, "theta_start"), _float(theta_stop, "theta_stop"), theta_frames,
            _float(alpha_start, "alpha_start"), _float(alpha_stop, "alpha_stop"), alpha_frames)
        _need_image(source, "source image")
        _need_image(target, "target image")
        seed = _as_int(seed, "seed")
        count = len(thetas) * len(alphas) if grid else max(len(thetas), len(alphas))
        if count > max_frames:
            raise RequestError(f"a sequence has at most {max_frames} frames here, "
                               f"this one would have {count}; lower the frame counts")
        check_studio_alphas(alphas)
        fps = _float(fps, "fps")
        return cls.parse(engine, source=source, target=target, thetas=thetas,
                         alphas=None if aim is not None else alphas, seed=seed, sampling=sampling, grid=grid,
                         fps=fps, conformity=None if aim is None else [aim.conformity])

    def with_inputs(self, source, target) -> SweepRequest:
        """The same request with other source and target (their embeddings): as checked as this one."""
        return _kept_check(self, dataclasses.replace(self, source=source, target=target))

    def pairs(self) -> list[tuple[float, float | AimAt]]:
        """(theta, alpha or aim) per frame, in the order the render writes them."""
        return combine(self.thetas, self.alphas, self.grid)


def _aims(alphas, conformity, grid: bool) -> list[AimAt]:
    if alphas is not None:
        raise SpecError("give alphas or a conformity to aim at, not both (--alpha or --conformity)")
    if grid:
        raise SpecError("a conformity is aimed at per theta: it pairs with theta as a sweep, not --grid")
    # Without stats the engine refuses an aim where it is resolved, saying how to make them.
    return [AimAt(c) for c in as_values(conformity, "conformity")]


@dataclass(frozen=True)
class PathRequest(_Checked):
    """A path through 2 or more keyframes (open, or a ``loop``): ``frames`` frames (None: 8 a
    segment), one alpha per segment, one seed."""

    keyframes: tuple
    frames: int | None
    alphas: tuple[float, ...]
    seed: int
    sampling: Sampling = Sampling()
    loop: bool = False
    spacing: str = "uniform"
    ease: bool = False
    fps: float = DEFAULT_FPS
    checked_by: object = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def parse(cls, engine, *, keyframes: Sequence, frames=None, alphas=0.0, seed,
              sampling: Sampling = Sampling(), loop=False, spacing="uniform", ease=False, fps=DEFAULT_FPS,
              max_frames: int = MAX_COUNT) -> PathRequest:
        """A path from SPECs, numbers or lists, or RequestError (SpecError's wording). Without an
        ``engine``, only what needs no model is checked."""
        try:
            keyframes = paths.keyframe_list(keyframes, "keyframes")
            count, alpha_values = paths.check_values(len(keyframes), frames, alphas, loop=loop,
                                                     spacing=spacing, max_frames=max_frames)
            seed, fps = check_seed(seed), check_fps(fps)
            if sampling.max_batch is not None:
                check_max_batch(sampling.max_batch)
        except RequestError:
            raise
        except SpecError as e:
            raise RequestError(str(e)) from None
        request = cls(tuple(keyframes), count, tuple(alpha_values), seed, sampling, bool(loop), spacing,
                      bool(ease), fps)
        return _checked(request, engine, [(0.0, a) for a in alpha_values], seed)

    @classmethod
    def parse_studio(cls, engine, *, keyframes, frames, loop, spacing, ease, alpha, seed, sampling: Sampling,
                     fps, max_frames: int = MAX_SEQUENCE_FRAMES) -> PathRequest:
        """The studio's path form: the keyframe slots (None: unused), the frame count, the loop and
        ease boxes, alpha as text ("0, 1, 2"); refusals in the studio's words."""
        images = [k for k in keyframes or [] if k is not None]
        if len(images) < paths.MIN_KEYFRAMES:
            raise RequestError(f"A path needs at least {paths.MIN_KEYFRAMES} keyframes, got {len(images)}: "
                               "add images to the keyframe strip.")
        if len(images) > MAX_KEYFRAMES:
            raise RequestError(f"A path has at most {MAX_KEYFRAMES} keyframes, got {len(images)}.")
        loop, ease = _flag(loop, "loop"), _flag(ease, "ease")
        count = _as_int(frames, "frames")
        spec = _alpha_spec(alpha)
        seed, fps = _as_int(seed, "seed"), _float(fps, "fps")
        try:
            # The studio's alpha range first, so 3.5 and 12 get one rule and one message.
            check_studio_alphas(as_values(spec, "alpha"))
            count = paths.check_values(len(images), count, spec, loop=loop, spacing=spacing)[0]
        except RequestError:
            raise
        except SpecError as e:
            raise RequestError(str(e)) from None
        if count > max_frames:
            raise RequestError(f"a path has at most {max_frames} frames here, "
                               f"this one would have {count}; lower the frame count")
        return cls.parse(engine, keyframes=images, frames=count, alphas=spec, seed=seed, sampling=sampling,
                         loop=loop, spacing=spacing, ease=ease, fps=fps)

    def with_keyframes(self, keyframes) -> PathRequest:
        """The same request with other keyframes (their embeddings): as checked as this one."""
        return _kept_check(self, dataclasses.replace(self, keyframes=tuple(keyframes)))


def _kept_check(record, changed):
    """``changed`` (the same request, its images given as their embeddings) trusted as ``record`` was."""
    object.__setattr__(changed, "checked_by", record.checked_by)
    return changed


def _alpha_spec(value):
    """A path's alpha: a number, or text with one value or one per segment ("0, 1, 2")."""
    if _empty(value):
        raise RequestError("alpha is empty: type one value for every segment, or one per segment (0, 1, 2).")
    if isinstance(value, str):
        return value.replace(" ", "")
    return _float(value, "alpha")
