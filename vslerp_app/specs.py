"""Parameter SPECs for frame sequences: `0.5`, `0,0.25,1` or `start:stop:count`.

`parse_spec` turns one SPEC into a list of floats; `combine` pairs theta and alpha values
into frames, as a sweep (equal lengths, or one single value broadcast) or as a grid
(theta major: all alphas of the first theta, then the next theta).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["SpecError", "parse_spec", "as_values", "combine", "check_range", "THETA_RANGE", "ALPHA_LIMIT"]

THETA_RANGE = (0.0, 1.0)
ALPHA_LIMIT = 10.0  # the engine's limit (pipelines.engine.ALPHA_LIMIT); checked before loading
MAX_COUNT = 100_000


class SpecError(ValueError):
    """A SPEC that does not parse, or values out of range; the message names the problem."""


def _number(text: str, name: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"bad {name} SPEC {spec!r}: {text.strip()!r} is not a number "
                        "(use a number, a comma list like 0,0.5,1 or start:stop:count)") from None
    if not math.isfinite(value):
        raise SpecError(f"bad {name} SPEC {spec!r}: {text.strip()!r} is not a finite number")
    return value


def parse_spec(spec: str | float | int, name: str = "value") -> list[float]:
    """One SPEC to its values.

    `0.5` -> [0.5]; `0,0.25,1` -> [0.0, 0.25, 1.0]; `start:stop:count` -> `count` values
    evenly spaced from start to stop, both included (`0:1:5` -> 0, 0.25, 0.5, 0.75, 1).
    """
    if isinstance(spec, bool):
        raise SpecError(f"bad {name} SPEC {spec!r}: not a number")
    if isinstance(spec, (int, float)):
        return [_number(str(spec), name, str(spec))]
    text = str(spec).strip()
    if not text:
        raise SpecError(f"bad {name} SPEC: empty")
    if ":" in text:
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
        if count == 1:
            return [start]
        step = (stop - start) / (count - 1)
        values = [start + i * step for i in range(count)]
        values[-1] = stop  # exactly the endpoint, no rounding drift
        return values
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


def check_range(thetas: Sequence[float], alphas: Sequence[float]) -> None:
    """theta in [0, 1] and |alpha| <= ALPHA_LIMIT, or SpecError naming the value."""
    for t in thetas:
        if not THETA_RANGE[0] <= t <= THETA_RANGE[1]:
            raise SpecError(f"theta must be in [0, 1], got {t:g}")
    for a in alphas:
        if abs(a) > ALPHA_LIMIT:
            raise SpecError(f"alpha must be in [-{ALPHA_LIMIT:g}, {ALPHA_LIMIT:g}], got {a:g}")


def combine(thetas: Sequence[float], alphas: Sequence[float],
            grid: bool = False) -> list[tuple[float, float]]:
    """(theta, alpha) per frame.

    Sweep: equal lengths pair up element-wise, or a single value is broadcast against the
    other list. Grid: every theta with every alpha, theta major.
    """
    thetas, alphas = list(thetas), list(alphas)
    if not thetas or not alphas:
        raise SpecError("theta and alpha need at least one value each")
    if grid:
        return [(t, a) for t in thetas for a in alphas]
    if len(thetas) == 1:
        thetas = thetas * len(alphas)
    if len(alphas) == 1:
        alphas = alphas * len(thetas)
    if len(thetas) != len(alphas):
        raise SpecError(f"theta has {len(thetas)} values and alpha {len(alphas)}: a sweep needs "
                        "equal lengths or a single value on one side (or use --grid)")
    return list(zip(thetas, alphas, strict=True))
