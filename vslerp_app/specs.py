"""Every limit and every sweep, in one place: SPECs, linspace, the seed rule, range checks.

A SPEC is `0.5`, `0,0.25,1` or `start:stop:count`. `parse_spec` turns one into a list of
floats (through the one `linspace`); `combine` pairs theta and alpha values into frames, as
a sweep (equal lengths, or one single value broadcast) or as a grid (theta major: all alphas
of the first theta, then the next theta). The checks (`check_theta`, `check_alpha`,
`check_seed`, `check_settings`, ...) are the engine's, the render's, the CLI's and the app's:
they all raise `SpecError` (a ValueError) with a message that names the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ALPHA_ADVICE", "ALPHA_LIMIT", "FPS_RANGE", "GUIDANCE_RANGE", "MAX_COUNT", "MAX_STEPS",
    "NOISE_LEVEL_RANGE", "SEED_LIMIT", "STUDIO_ALPHA_RANGE", "THETA_RANGE", "SpecError", "as_values",
    "check_alpha", "check_fps", "check_max_batch", "check_range", "check_seed", "check_settings",
    "check_theta", "combine", "linspace", "parse_spec",
]

THETA_RANGE = (0.0, 1.0)
ALPHA_LIMIT = 10.0  # the paper finds -2..2 useful; beyond +-10 frames are noise
# The studio's alpha range (its slider, sweeps, paths, aiming); scripts go to +-ALPHA_LIMIT.
STUDIO_ALPHA_RANGE = (-3.0, 3.0)
# The one piece of advice on alpha, with where each number comes from (the studio's header, the
# README, `vslerp render --help`).
ALPHA_ADVICE = ("alpha from -2 to 2 gives visually appealing images (the paper); the authors' demo "
                "sweeps -1 to 3 in 16 steps (`--alpha -1:3:16`); the studio's slider runs "
                f"{STUDIO_ALPHA_RANGE[0]:g} to {STUDIO_ALPHA_RANGE[1]:g} and `vslerp render` takes up "
                f"to ±{ALPHA_LIMIT:g}")
MAX_STEPS = 1000
GUIDANCE_RANGE = (0.0, 50.0)
NOISE_LEVEL_RANGE = (0, 1000)
SEED_LIMIT = 2**63  # seeds are whole numbers in [0, 2^63): what torch.Generator takes
FPS_RANGE = (0.0, 120.0)  # (exclusive, inclusive]
MAX_COUNT = 100_000


class SpecError(ValueError):
    """A SPEC that does not parse, or a value out of range; the message names the problem."""


# -- values ----------------------------------------------------------------------------------
def linspace(start: float, stop: float, count: int) -> list[float]:
    """``count`` values evenly spaced from start to stop, both ends included exactly."""
    if count == 1:
        return [float(start)]
    step = (stop - start) / (count - 1)
    values = [float(start + i * step) for i in range(count)]
    values[-1] = float(stop)  # exactly the endpoint, no rounding drift
    return values


def _number(text: str, name: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"bad {name} SPEC {spec!r}: {text.strip()!r} is not a number "
                        "(use a number, a comma list like 0,0.5,1 or start:stop:count)") from None
    if not math.isfinite(value):
        raise SpecError(f"bad {name} SPEC {spec!r}: {text.strip()!r} is not a finite number")
    return value


def _parse_range(text: str, name: str) -> list[float]:
    parts = text.split(":")
    if len(parts) != 3:
        raise SpecError(f"bad {name} SPEC {text!r}: a range is start:stop:count")
    start, stop = _number(parts[0], name, text), _number(parts[1], name, text)
    try:
        count = int(parts[2])
    except ValueError:
        raise SpecError(f"bad {name} SPEC {text!r}: count {parts[2].strip()!r} "
                        "is not a whole number") from None
    if not 1 <= count <= MAX_COUNT:
        raise SpecError(f"bad {name} SPEC {text!r}: count must be in [1, {MAX_COUNT}], got {count}")
    return linspace(start, stop, count)


def parse_spec(spec: str | float | int, name: str = "value") -> list[float]:
    """One SPEC to its values.

    `0.5` -> [0.5]; `0,0.25,1` -> [0.0, 0.25, 1.0]; `start:stop:count` -> `linspace(start,
    stop, count)` (`0:1:5` -> 0, 0.25, 0.5, 0.75, 1).
    """
    if isinstance(spec, bool):
        raise SpecError(f"bad {name} SPEC {spec!r}: not a number")
    if isinstance(spec, (int, float)):
        return [_number(str(spec), name, str(spec))]
    text = str(spec).strip()
    if not text:
        raise SpecError(f"bad {name} SPEC: empty")
    if ":" in text:
        return _parse_range(text, name)
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise SpecError(f"bad {name} SPEC {text!r}: empty item in the comma list")
    return [_number(item, name, text) for item in items]


def as_values(values, name: str) -> list[float]:
    """A SPEC string, a number, or a sequence of numbers to a list of floats."""
    if isinstance(values, (str, int, float)):
        return parse_spec(values, name)
    if hasattr(values, "tolist"):  # numpy arrays, torch tensors
        values = values.tolist()
        if not isinstance(values, list):
            values = [values]
    if not isinstance(values, Sequence) or isinstance(values, bytes):
        raise SpecError(f"bad {name}: expected a SPEC string, a number or a list of numbers, "
                        f"got {type(values).__name__}")
    if not values:
        raise SpecError(f"bad {name}: empty list")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"bad {name}: {v!r} is not a number")
        out.extend(parse_spec(v, name))
    return out


def combine(thetas: Sequence[float], alphas: Sequence[float],
            grid: bool = False, other: str = "alpha") -> list[tuple[float, float]]:
    """(theta, alpha) per frame.

    Sweep: equal lengths pair up element-wise, or a single value is broadcast against the
    other list. Grid: every theta with every alpha, theta major. ``other`` names the second
    list in errors ("conformity" when the alphas are aimed at conformities).
    """
    thetas, alphas = list(thetas), list(alphas)
    if not thetas or not alphas:
        raise SpecError(f"theta and {other} need at least one value each")
    if grid:
        return [(t, a) for t in thetas for a in alphas]
    if len(thetas) == 1:
        thetas = thetas * len(alphas)
    if len(alphas) == 1:
        alphas = alphas * len(thetas)
    if len(thetas) != len(alphas):
        raise SpecError(f"theta has {len(thetas)} values and {other} {len(alphas)}: a sweep needs "
                        "equal lengths or a single value on one side"
                        + (" (or use --grid)" if other == "alpha" else ""))
    return list(zip(thetas, alphas, strict=True))


# -- checks ------------------------------------------------------------------------------------
def _in_range(value, name: str, lo, hi) -> None:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise SpecError(f"{name} must be in [{lo:g}, {hi:g}], got {value}")


def check_theta(theta: float) -> None:
    """theta in [0, 1] (finite)."""
    _in_range(theta, "theta", *THETA_RANGE)


def check_alpha(alpha: float) -> None:
    """|alpha| <= ALPHA_LIMIT (finite)."""
    _in_range(alpha, "alpha", -ALPHA_LIMIT, ALPHA_LIMIT)


def check_range(thetas: Sequence[float], alphas: Sequence[float]) -> None:
    """Every theta in [0, 1] and every |alpha| <= ALPHA_LIMIT, or SpecError naming the value."""
    for t in thetas:
        check_theta(t)
    for a in alphas:
        check_alpha(a)


def check_seed(seed) -> int:
    """The seed rule: a whole number in [0, 2^63); returned as an int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise SpecError(f"seed must be a whole number in [0, 2^63), got {seed!r}")
    return int(seed)


def check_max_batch(max_batch) -> int:
    """Frames denoised at once: a whole number >= 1."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise SpecError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
    return int(max_batch)


def check_fps(fps) -> float:
    """GIF/MP4 frames per second in (0, 120]."""
    lo, hi = FPS_RANGE
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or not lo < fps <= hi:
        raise SpecError(f"fps must be in ({lo:g}, {hi:g}], got {fps!r}")
    return float(fps)


def check_settings(settings, *, kind: str, min_steps: int = 1) -> None:
    """Sampling settings (`pipelines.RenderSettings`) a model of ``kind`` can run."""
    stages = [("steps", settings.steps)]
    if kind == "karlo" and not settings.preview:
        stages.append(("super_res_steps", settings.super_res_steps))
    for name, value in stages:
        if not 1 <= value <= MAX_STEPS:
            raise SpecError(f"{name} must be in [1, {MAX_STEPS}], got {value}")
        if value < min_steps:  # Karlo's UnCLIPScheduler divides by (steps - 1)
            raise SpecError(f"{name} must be at least {min_steps} for this model (its scheduler "
                            f"needs {min_steps} timesteps), got {value}")
    _in_range(settings.guidance_scale, "guidance_scale", *GUIDANCE_RANGE)
    _in_range(settings.noise_level, "noise_level", *NOISE_LEVEL_RANGE)
    # Sizes a model can render are its family's to say (`UnclipRunner.settings_problem`).
