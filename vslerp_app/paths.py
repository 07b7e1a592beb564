"""Paths through keyframes: which segment and which local theta every frame of a path gets.

A path runs through K >= 2 keyframes. Segment k is a vSLERP (Eq. 12) from keyframe k to
keyframe k + 1 with its own alpha; an open path has S = K - 1 segments, a loop adds the
segment from the last keyframe back to the first (S = K). A path of N frames spends
T = N - 1 steps (open: both ends are frames) or T = N steps (loop: the first frame is not
repeated at the end, so the video repeats without a seam) over its segments:

- "uniform": keyframe k is frame round(k T / S) (halves up), so when S divides T every
  segment has T / S steps (3 keyframes, 5 frames: A, A-B, B, B-C, C; a loop of 3, 6
  frames: A, A-B, B, B-C, C, C-A) and otherwise segments differ by one step at most;
- "angle": steps are allotted in proportion to each segment's angle on its vSLERP arc, the
  angle between v_k - alpha m and v_{k+1} - alpha m (largest remainders, so every segment
  is within one step of proportional), and inside a segment each frame's theta is chosen
  so that the direction of its Eq. 12 embedding about the centre alpha m turns by equal
  angles (`even_angle_theta`; SLERP of vectors of unequal length does not: its first and
  last steps differ by about (|p1| / |p0|)^2): the motion has one speed along the whole
  path. A hold (equal neighbouring keyframes, angle 0) gets no steps.
- "perceptual": as "angle", with each segment's length and its inner spacing read off a
  measured curve of distance against theta (`MeasuredCurve`, from a preview pass that
  re-encodes frames on a dense theta grid), so neighbouring frames are equally far apart
  as measured.

Within a segment of n steps the j-th frame sits at the fraction j / n of the segment (j =
0 .. n - 1, plus 1 for an open path's last frame), eased in and out when asked (smoothstep
3t^2 - 2t^3); uniform spacing uses the fraction as theta. Everything here is pure: numbers
in, numbers out (the angles come from `vslerp_app.geometry.arc_angle`).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image

from vslerp_app import specs

__all__ = ["FRAMES_PER_SEGMENT", "MIN_KEYFRAMES", "SPACINGS", "MeasuredCurve", "PathPlan", "PathPoint",
           "angle_steps", "check_path", "check_values", "default_frames", "ease_in_out", "even_angle_theta",
           "keyframe_list", "plan_path", "segment_alphas", "segment_count", "uniform_steps"]

SPACINGS = ("uniform", "angle", "perceptual")
MIN_KEYFRAMES = 2
FRAMES_PER_SEGMENT = 8  # the default: 8 frames a segment (an open path adds its last frame)


def keyframe_list(images, name: str = "images") -> list:
    """The keyframes as a list; one path, image or embedding alone is refused, not split up."""
    if isinstance(images, (str, bytes, os.PathLike, PIL.Image.Image)) or getattr(images, "ndim", 2) < 2:
        raise specs.SpecError(f"{name} must be a list of 2 or more keyframes, not one "
                              f"{type(images).__name__} (a list of images, paths or embeddings)")
    return list(images)


@dataclass(frozen=True)
class PathPoint:
    """One frame of a path.

    Attributes:
        index: the frame's number on the path.
        segment: segment k runs from keyframe k to keyframe (k + 1) % K (counted from 0).
        theta: the local theta within the segment, in [0, 1] (eased when asked).
        alpha: the segment's alpha.
        keyframe: the keyframe this frame shows exactly (theta 0, or 1 at an open end), else None.
    """

    index: int
    segment: int
    theta: float
    alpha: float
    keyframe: int | None = None


@dataclass(frozen=True)
class MeasuredCurve:
    """The distance travelled along one segment, measured at increasing thetas.

    Attributes:
        thetas: the segment's thetas where frames were measured, increasing from 0 to 1.
        distances: the distance travelled from theta 0 to each of them (0 first,
            non-decreasing): the running sum of neighbouring frames' distances.
    """

    thetas: tuple[float, ...]
    distances: tuple[float, ...]

    def __post_init__(self):
        t, d = np.asarray(self.thetas, float), np.asarray(self.distances, float)
        if (t.ndim != 1 or t.shape != d.shape or len(t) < 2 or t[0] != 0 or t[-1] != 1
                or np.any(np.diff(t) <= 0)):
            raise ValueError(f"a measured curve needs increasing thetas from 0 to 1, got {self.thetas}")
        if not np.all(np.isfinite(d)) or d[0] != 0 or np.any(np.diff(d) < 0):
            raise ValueError(f"measured distances must start at 0 and not decrease, got {self.distances}")

    @classmethod
    def from_steps(cls, thetas: Sequence[float], steps: Sequence[float]) -> MeasuredCurve:
        """The curve of neighbouring distances ``steps`` (len(thetas) - 1 of them, each >= 0)."""
        return cls(tuple(float(t) for t in thetas), tuple(np.concatenate([[0.0], np.cumsum(steps)]).tolist()))

    @property
    def length(self) -> float:
        return float(self.distances[-1])

    def theta_at(self, fraction: float) -> float:
        """The theta at which ``fraction`` of the segment's measured length is travelled
        (linear between the measured thetas; a segment of no length: theta = fraction)."""
        if fraction in (0.0, 1.0) or self.length <= 0:
            return float(fraction)
        return float(np.interp(fraction * self.length, self.distances, self.thetas))

    def describe(self) -> dict:
        return {"thetas": list(self.thetas), "distances": list(self.distances), "length": self.length}


@dataclass
class PathPlan:
    """Where every frame of a path sits.

    Attributes:
        keyframes: K, the number of keyframes.
        loop, spacing, ease: as asked.
        alphas: one alpha per segment.
        angles: each segment's angle on its vSLERP arc, radians (None when not measured).
        steps: the steps (frame intervals) allotted to each segment; they sum to N - 1 (open) or N (loop).
        keyframe_frames: the frame showing each keyframe (equal keyframes of a hold may share one).
        points: one `PathPoint` per frame, in order.
        ratios: each segment's |v_k - alpha m| / |v_{k+1} - alpha m| (None when not measured);
            spacing="angle" evens the turn inside a segment with it (`even_angle_theta`).
        curves: spacing="perceptual": each segment's `MeasuredCurve` (None otherwise).
    """

    keyframes: int
    loop: bool
    spacing: str
    ease: bool
    alphas: list[float]
    angles: list[float] | None
    steps: list[int]
    keyframe_frames: list[int]
    points: list[PathPoint]
    ratios: list[float] | None = None
    curves: list[MeasuredCurve] | None = None

    @property
    def frames(self) -> int:
        return len(self.points)

    def describe(self) -> dict:
        """The path's settings and layout as a JSON-ready dict (for manifests and APIs)."""
        return {"keyframes": self.keyframes, "segments": len(self.alphas), "frames": self.frames,
                "loop": self.loop, "spacing": self.spacing, "ease": self.ease, "alphas": self.alphas,
                "angles": self.angles, "ratios": self.ratios, "steps": self.steps,
                "keyframe_frames": self.keyframe_frames,
                **({} if self.curves is None else {"measured": [c.describe() for c in self.curves]})}


def segment_count(keyframes: int, loop: bool) -> int:
    """S: K - 1 segments for an open path, K for a loop."""
    return keyframes if loop else keyframes - 1


def default_frames(keyframes: int, loop: bool) -> int:
    """FRAMES_PER_SEGMENT frames a segment, plus the last frame of an open path."""
    segments = segment_count(keyframes, loop)
    return FRAMES_PER_SEGMENT * segments + (0 if loop else 1)


def check_path(keyframes: int, frames: int, loop: bool = False, spacing: str = "uniform",
               max_frames: int = specs.MAX_COUNT) -> int:
    """The frame count, if K keyframes, N frames, loop and spacing make a path; else SpecError."""
    if keyframes < MIN_KEYFRAMES:
        raise specs.SpecError(f"a path needs at least {MIN_KEYFRAMES} keyframes, got {keyframes}")
    if spacing not in SPACINGS:
        raise specs.SpecError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)):
        raise specs.SpecError(f"frames must be a whole number, got {frames!r}")
    # Every keyframe gets its own frame: one per segment, plus the last one of an open path.
    least = segment_count(keyframes, loop) + (0 if loop else 1)
    if frames < least:
        kind = "a loop" if loop else "an open path"
        raise specs.SpecError(f"{kind} through {keyframes} keyframes needs at least {least} frames "
                              f"(one for each keyframe), got {frames}")
    if frames > max_frames:
        raise specs.SpecError(f"frames must be at most {max_frames}, got {frames}")
    return int(frames)


def check_values(keyframes: int, frames: int | None, alphas, *, loop: bool = False,
                 spacing: str = "uniform", max_frames: int = specs.MAX_COUNT) -> tuple[int, list[float]]:
    """(frame count, one alpha per segment) of a path request, or SpecError naming the problem.

    ``frames`` None is `default_frames`; ``alphas`` a SPEC, a number or a list: one value,
    or one per segment, each within the alpha range.
    """
    frames = default_frames(keyframes, loop) if frames is None else frames
    frames = check_path(keyframes, frames, loop, spacing, max_frames)
    values = specs.as_values(alphas, "alpha")
    for alpha in values:
        specs.check_alpha(alpha)
    return frames, segment_alphas(values, segment_count(keyframes, loop))


def segment_alphas(alphas: Sequence[float], segments: int) -> list[float]:
    """One alpha per segment: a single value for all, or exactly one per segment."""
    alphas = [float(a) for a in alphas]
    if len(alphas) == 1:
        return alphas * segments
    if len(alphas) != segments:
        raise specs.SpecError(f"alpha has {len(alphas)} values for a path of {segments} "
                              f"segment{'' if segments == 1 else 's'}: give one value for all, or one "
                              "per segment")
    return alphas


def uniform_steps(total: int, segments: int) -> list[int]:
    """Steps per segment when keyframe k sits at step round(k total / segments), halves up."""
    marks = [(2 * k * total + segments) // (2 * segments) for k in range(segments + 1)]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def angle_steps(total: int, angles: Sequence[float]) -> list[int]:
    """Steps per segment in proportion to its angle, each within one of proportional.

    Largest remainders: every segment gets floor(quota), and the steps left go to the
    largest fractional parts, segments that would get none going first (so a short
    segment is not skipped when a step is to spare). All angles 0 (every keyframe the
    same): uniform.
    """
    angles = [float(a) for a in angles]
    if any(not a >= 0 for a in angles):
        raise ValueError(f"angles must be >= 0, got {angles}")
    whole = sum(angles)
    if whole <= 0:
        return uniform_steps(total, len(angles))
    quotas = [total * a / whole for a in angles]
    steps = [int(q) for q in quotas]
    spare = total - sum(steps)
    order = sorted(range(len(angles)),
                   key=lambda k: (not (steps[k] == 0 and angles[k] > 0), -(quotas[k] - steps[k]), k))
    for k in order[:spare]:
        steps[k] += 1
    return steps


def ease_in_out(t: float) -> float:
    """Smoothstep 3t^2 - 2t^3: slow out of a keyframe, slow into the next; 0 and 1 stay exact."""
    return t * t * (3.0 - 2.0 * t)


def even_angle_theta(fraction: float, angle: float, ratio: float) -> float:
    """The theta at which SLERP(p0, p1, theta) has turned ``fraction`` of the angle between p0 and p1.

    SLERP of raw vectors interpolates lengths as well as directions, so its direction does
    not turn at a constant rate: writing SLERP = (A p0/|p0| + B p1/|p1|) / sin W with A =
    |p0| sin((1 - t) W), B = |p1| sin(t W), the direction has turned phi when B / A =
    sin(phi) / sin(W - phi) (the sine rule), which solves in closed form:

        t W = atan2(rho sin(phi) sin(W), sin(W - phi) + rho sin(phi) cos(W)),  rho = |p0| / |p1|.

    With rho = 1 this is t = phi / W. Where `vslerp_app.geometry.vslerp` falls back to linear
    interpolation (W near 0 or pi) and for lengths that are not positive, theta = fraction.

    Args:
        fraction: how much of the turn, in [0, 1] (0 and 1 are returned exactly).
        angle: W, the angle between p0 and p1 (radians; `geometry.arc_angle`).
        ratio: rho = |p0| / |p1|, the lengths about the centre of rotation.
    """
    if fraction in (0.0, 1.0) or not 1e-8 < angle < np.pi - 1e-4 or not 0 < ratio < np.inf:
        return float(fraction)
    phi = fraction * angle
    lean = ratio * np.sin(phi)
    turned = np.arctan2(lean * np.sin(angle), np.sin(angle - phi) + lean * np.cos(angle))
    return float(min(max(turned / angle, 0.0), 1.0))


def plan_path(keyframes: int, frames: int, alphas: Sequence[float] = (0.0,), *, loop: bool = False,
              spacing: str = "uniform", ease: bool = False, angles: Sequence[float] | None = None,
              ratios: Sequence[float] | None = None,
              curves: Sequence[MeasuredCurve] | None = None) -> PathPlan:
    """Where each of ``frames`` frames of a path through ``keyframes`` keyframes sits.

    ``alphas`` is one value or one per segment. One per segment: ``angles`` (radians) is
    needed for spacing="angle" and recorded when given; ``ratios`` (|p_k| / |p_{k+1}|
    about the centre) evens the turn inside each segment under spacing="angle"; ``curves``
    (`MeasuredCurve`) are needed for spacing="perceptual".
    """
    check_path(keyframes, frames, loop, spacing)
    segments = segment_count(keyframes, loop)
    alphas = segment_alphas(alphas, segments)
    for name, values in (("angles", angles), ("ratios", ratios), ("curves", curves)):
        if values is not None and len(values) != segments:
            raise ValueError(f"{len(values)} {name} for {segments} segments")
    total = frames if loop else frames - 1
    if spacing == "uniform":
        steps = uniform_steps(total, segments)
    elif spacing == "angle":
        if angles is None:
            raise ValueError('spacing="angle" needs the angles of the segments')
        steps = angle_steps(total, angles)
    else:
        if curves is None:
            raise ValueError('spacing="perceptual" needs the measured curves of the segments')
        steps = angle_steps(total, [c.length for c in curves])
    theta_of = _theta_map(spacing, angles, ratios, curves)
    marks = [sum(steps[:k]) for k in range(segments + 1)]
    points = [_point(f, marks, steps, alphas, ease, theta_of) for f in range(frames if loop else frames - 1)]
    if not loop:  # the last frame closes the last segment (which may be a hold of no steps)
        points.append(PathPoint(frames - 1, segments - 1, 1.0, alphas[-1], keyframes - 1))
    keyframe_frames = [marks[k] % frames if loop else marks[k] for k in range(keyframes)]
    return PathPlan(keyframes=keyframes, loop=loop, spacing=spacing, ease=ease, alphas=alphas,
                    angles=None if angles is None else [float(a) for a in angles], steps=steps,
                    keyframe_frames=keyframe_frames, points=points,
                    ratios=None if ratios is None else [float(r) for r in ratios],
                    curves=None if curves is None else list(curves))


def _theta_map(spacing, angles, ratios, curves):
    """(segment, fraction of the segment) -> theta, as the spacing places frames inside a segment."""
    if spacing == "perceptual":
        return lambda segment, fraction: curves[segment].theta_at(fraction)
    if spacing == "angle" and ratios is not None:
        return lambda segment, fraction: even_angle_theta(fraction, angles[segment], ratios[segment])
    return lambda segment, fraction: fraction


def _point(frame: int, marks: list[int], steps: list[int], alphas: list[float], ease: bool,
           theta_of) -> PathPoint:
    """Frame ``frame`` in the segment whose steps hold it (a segment of no steps holds none)."""
    # The last mark at or before the frame; a segment of no steps ends where it starts, so
    # the last such mark always opens a segment with steps.
    segment = min(bisect.bisect_right(marks, frame) - 1, len(steps) - 1)
    j = frame - marks[segment]
    fraction = j / steps[segment]
    if ease:
        fraction = ease_in_out(fraction)
    keyframe = segment if j == 0 else None
    return PathPoint(frame, segment, theta_of(segment, fraction), alphas[segment], keyframe)
