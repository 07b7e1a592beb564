"""Paths through keyframes: the plan (pure), the engine, files on disk, the command line, jobs.

The plan is checked against the numbering the README states (open paths include both ends;
a loop does not repeat its first frame), uneven counts, the angle allotment (within one
frame of proportional) and easing. On the tiny Karlo fixture: frame counts, keyframe frames
equal to the keyframe rendered alone at theta 0, each equal frame denoised once, the
manifest, resume after a stop and after a SIGKILL, refusals one line at a time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from test_cli_render import kill_after_the_first_frame

from pipelines.fixtures import fixture_images
from vslerp_app import geometry, load_pipeline, paths
from vslerp_app.jobs import read_jobs
from vslerp_app.render import RenderError, check_path_request, iter_render_path, render_path
from vslerp_app.specs import SpecError

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(preview=True, steps=2)  # Karlo's 32 px decoder alone, 2 steps: a path in seconds
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def _layout(plan: paths.PathPlan) -> list[tuple[int, float]]:
    return [(p.segment, p.theta) for p in plan.points]


# -- the plan, pure ----------------------------------------------------------------------------
def test_the_issue_examples_open_and_loop():
    # 3 keyframes, 5 frames: A, A-B, B, B-C, C
    plan = paths.plan_path(3, 5)
    assert _layout(plan) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (1, 1.0)]
    assert [p.keyframe for p in plan.points] == [0, None, 1, None, 2]
    assert plan.keyframe_frames == [0, 2, 4]
    # 3 keyframes, a loop of 6: A, A-B, B, B-C, C, C-A (the first frame is not repeated)
    plan = paths.plan_path(3, 6, loop=True)
    assert _layout(plan) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5)]
    assert [p.keyframe for p in plan.points] == [0, None, 1, None, 2, None]
    assert plan.keyframe_frames == [0, 2, 4]


@pytest.mark.parametrize("loop", [False, True])
def test_uniform_numbering_for_every_count(loop):
    """Keyframe k is frame round(k T / S), halves up (T = N - 1 open, N loop); every frame's theta
    is its distance from the keyframe before it over the segment's steps."""
    for keyframes in range(2, 7):
        segments = keyframes if loop else keyframes - 1
        for frames in range(segments + (0 if loop else 1), 40):
            plan = paths.plan_path(keyframes, frames, loop=loop)
            total = frames if loop else frames - 1
            assert plan.frames == frames == len(plan.points)
            assert [p.index for p in plan.points] == list(range(frames))
            expected = [math.floor(Fraction(k * total, segments) + Fraction(1, 2)) for k in range(keyframes)]
            assert plan.keyframe_frames == [e % frames if loop else e for e in expected]
            assert sum(plan.steps) == total and max(plan.steps) - min(plan.steps) <= 1
            if total % segments == 0:
                assert plan.steps == [total // segments] * segments
            for p in plan.points:
                start = expected[p.segment]
                assert p.theta == (p.index - start) / plan.steps[p.segment]
                assert (p.keyframe is not None) == (p.theta in (0.0, 1.0))
            if loop:  # seamless: the last frame is not a copy of the first
                assert plan.points[-1].theta < 1 and plan.points[-1].segment == segments - 1
            else:
                assert (plan.points[-1].segment, plan.points[-1].theta) == (segments - 1, 1.0)


def test_uneven_counts_round_half_up_and_differ_by_one_step():
    # 3 keyframes, 6 frames: 5 steps over 2 segments; B at round(2.5) = frame 3
    plan = paths.plan_path(3, 6)
    assert plan.steps == [3, 2] and plan.keyframe_frames == [0, 3, 5]
    assert _layout(plan) == [(0, 0.0), (0, 1 / 3), (0, 2 / 3), (1, 0.0), (1, 0.5), (1, 1.0)]
    # a loop of 3 keyframes, 7 frames: B at round(7/3) = 2, C at round(14/3) = 5
    plan = paths.plan_path(3, 7, loop=True)
    assert plan.steps == [2, 3, 2] and plan.keyframe_frames == [0, 2, 5]


def test_angle_spacing_is_within_one_frame_of_proportional():
    rng = np.random.default_rng(0)
    for _ in range(500):
        segments = int(rng.integers(1, 9))
        angles = rng.uniform(0, 3, segments) * (rng.uniform(size=segments) > 0.2)
        total = int(rng.integers(segments, 200))
        steps = paths.angle_steps(total, angles)
        assert sum(steps) == total
        if angles.sum() > 0:
            proportional = total * angles / angles.sum()
            assert np.all(np.abs(np.array(steps) - proportional) < 1 + 1e-9), (angles, total, steps)
            assert all(s == 0 for s, a in zip(steps, angles, strict=True) if a == 0)  # a hold takes no time


def test_angle_spacing_gives_a_short_segment_a_spare_step_and_falls_back_to_uniform():
    # quotas 2.4, 0.3, 0.3: floors 2, 0, 0; the spare step goes to a segment that would get none
    assert paths.angle_steps(3, [8, 1, 1]) == [2, 1, 0]
    assert paths.angle_steps(6, [0, 0, 0]) == [2, 2, 2]  # every keyframe the same
    plan = paths.plan_path(4, 9, spacing="angle", angles=[1.0, 0.0, 2.0])
    assert plan.steps == [3, 0, 5] and plan.keyframe_frames == [0, 3, 3, 8]
    assert [p.segment for p in plan.points] == [0, 0, 0, 2, 2, 2, 2, 2, 2]


def test_ease_in_out():
    ts = np.linspace(0, 1, 101)
    eased = [paths.ease_in_out(t) for t in ts]
    assert eased[0] == 0.0 and eased[-1] == 1.0 and paths.ease_in_out(0.5) == 0.5
    assert np.all(np.diff(eased) > 0)
    assert np.allclose(eased, 1 - np.array(eased[::-1]), atol=1e-15)
    assert paths.ease_in_out(0.1) < 0.1 and paths.ease_in_out(0.9) > 0.9  # slow near the keyframes
    plan = paths.plan_path(2, 5, ease=True)
    assert [p.theta for p in plan.points] == [0.0, paths.ease_in_out(0.25), 0.5, paths.ease_in_out(0.75), 1.0]


# -- even turning inside a segment (spacing="angle") ----------------------------------------------
def _slerp64(p0: np.ndarray, p1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """SLERP in float64 numpy, written from the formula: (sin((1-t)W) p0 + sin(tW) p1) / sin W."""
    w = math.acos(float(np.clip(p0 @ p1 / (np.linalg.norm(p0) * np.linalg.norm(p1)), -1, 1)))
    t = np.asarray(t, float)[:, None]
    return (np.sin((1 - t) * w) * p0 + np.sin(t * w) * p1) / math.sin(w)


def _turns(q: np.ndarray, closed: bool = False) -> np.ndarray:
    """Angles between the directions of neighbouring rows of q (and last to first when closed)."""
    u = q / np.linalg.norm(q, axis=1, keepdims=True)
    nxt = np.roll(u, -1, axis=0) if closed else u[1:]
    u = u if closed else u[:-1]
    return np.arccos(np.clip(np.sum(u * nxt, axis=1), -1, 1))


def _clip_like(rng, count: int, radii, d: int = 768) -> tuple[np.ndarray, np.ndarray]:
    """(keyframes (count, d), mean): CLIP-like raw vectors on a shell of the given radii about
    a mean that lies well away from the origin (the double-ellipsoid picture)."""
    mean = rng.normal(size=d)
    mean *= 10 / np.linalg.norm(mean)
    offsets = rng.normal(size=(count, d))
    offsets *= np.asarray(radii, float)[:, None] / np.linalg.norm(offsets, axis=1, keepdims=True)
    return mean + offsets, mean


def test_even_angle_theta_turns_by_equal_angles_against_a_float64_reference():
    """Frames at even_angle_theta's thetas, computed by an independent float64 SLERP at d = 768,
    turn about the centre by equal angles (within 1%; in fact to ~1e-10) for unequal norms, while
    theta = j / n does not: its first and last steps differ by about (|p1| / |p0|)^2."""
    rng = np.random.default_rng(24)
    for _ in range(200):
        v, mean = _clip_like(rng, 2, rng.uniform(2, 12, 2))
        alpha = float(rng.uniform(-3, 3))
        p0, p1 = v[0] - alpha * mean, v[1] - alpha * mean
        angle = math.acos(float(p0 @ p1 / (np.linalg.norm(p0) * np.linalg.norm(p1))))
        ratio = float(np.linalg.norm(p0) / np.linalg.norm(p1))
        n = int(rng.integers(2, 40))
        thetas = [paths.even_angle_theta(j / n, angle, ratio) for j in range(n + 1)]
        assert thetas[0] == 0.0 and thetas[-1] == 1.0 and np.all(np.diff(thetas) > 0)
        turns = _turns(_slerp64(p0, p1, thetas))
        assert turns.max() / turns.min() < 1.01
        np.testing.assert_allclose(turns, angle / n, rtol=1e-8)
        naive = _turns(_slerp64(p0, p1, np.linspace(0, 1, 201)))
        assert naive[0] / naive[-1] == pytest.approx((1 / ratio) ** 2, rel=0.05)
    # equal norms: theta = phi / W
    assert paths.even_angle_theta(0.3, 1.0, 1.0) == pytest.approx(0.3, rel=1e-15)
    assert paths.even_angle_theta(0.3, 0.0, 2.0) == 0.3  # no turn, or no rotation plane: linear
    assert paths.even_angle_theta(0.3, math.pi, 2.0) == 0.3


def _path_turns(plan: paths.PathPlan, v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each step's turn of the direction about the segment's centre, over the whole path."""
    k = len(v)
    turns = []
    for a, b in zip(plan.points, plan.points[1:] + ([plan.points[0]] if plan.loop else []), strict=False):
        centre = a.alpha * mean
        end = b.theta if b.segment == a.segment and b.theta > 0 else 1.0  # b opens the next segment
        q = _slerp64(v[a.segment] - centre, v[(a.segment + 1) % k] - centre, [a.theta, end])
        turns.append(_turns(q)[0])
    return np.array(turns)


@pytest.mark.parametrize("loop", [False, True])
def test_angle_spacing_evens_every_step_of_a_61_frame_path(loop, capsys):
    """A 61-frame path through CLIP-like keyframes of unequal norms (d = 768, alpha 1): with the
    turn evened inside each segment, steps inside a segment are equal and the largest is within
    one step's rounding of the smallest (segments get whole steps); theta = j / n was ~1.4 times."""
    rng = np.random.default_rng(7)
    v, mean = _clip_like(rng, 3, [1.0, 0.83, 1.2])
    segments = 3 if loop else 2
    p = [v[k] - mean for k in range(3)]
    ends = [(p[k], p[(k + 1) % 3]) for k in range(segments)]
    angles = [math.acos(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))) for a, b in ends]
    ratios = [float(np.linalg.norm(a) / np.linalg.norm(b)) for a, b in ends]
    before = paths.plan_path(3, 61, [1.0], loop=loop, spacing="angle", angles=angles)  # no ratios: j / n
    after = paths.plan_path(3, 61, [1.0], loop=loop, spacing="angle", angles=angles, ratios=ratios)
    assert after.steps == before.steps and after.ratios == pytest.approx(ratios)
    spread_before = _path_turns(before, v, mean)
    spread_after = _path_turns(after, v, mean)
    with capsys.disabled():
        print(f"\n61 frames, alpha 1, loop={loop}: largest/smallest step "
              f"{spread_before.max() / spread_before.min():.3f} before, "
              f"{spread_after.max() / spread_after.min():.4f} after")
    assert spread_before.max() / spread_before.min() > 1.3
    # between segments, whole steps: within one step of proportional
    assert spread_after.max() / spread_after.min() < 1 + 1 / min(after.steps) + 1e-9
    for s in range(segments):  # inside a segment: equal to 1%
        inside = spread_after[[i for i, pt in enumerate(after.points[:len(spread_after)]) if pt.segment == s]]
        assert inside.max() / inside.min() < 1.01


# -- perceptual spacing: frames placed by a measured distance curve ------------------------------------
def test_perceptual_spacing_places_frames_equally_far_apart_along_the_measured_curves():
    """Segments measured at 13 thetas (distance 2 theta^2 on the first, sin(pi theta / 2) on the
    second, nothing on a hold): steps go by measured length, and inside a segment every
    neighbour pair is equally far apart on the measured curve, and nearly so on the true one."""
    grid = np.linspace(0, 1, 13)
    truth = [lambda t: 2 * t ** 2, lambda t: np.sin(np.pi * t / 2), lambda t: 0 * t]
    curves = [paths.MeasuredCurve.from_steps(grid, np.diff(f(grid))) for f in truth]
    assert [c.length for c in curves] == pytest.approx([2.0, 1.0, 0.0])
    plan = paths.plan_path(4, 31, [1.0], spacing="perceptual", curves=curves)
    assert plan.steps == [20, 10, 0] and plan.curves == curves
    for k, f in enumerate(truth[:2]):
        thetas = [p.theta for p in plan.points if p.segment == k] + [1.0]
        measured = np.interp(thetas, grid, curves[k].distances)
        np.testing.assert_allclose(np.diff(measured), curves[k].length / plan.steps[k], rtol=1e-9)
        true_steps = np.diff(f(np.array(thetas)))
        assert true_steps.max() / true_steps.min() < 1.25  # linear between 13 samples
        uniform = np.diff(f(np.linspace(0, 1, plan.steps[k] + 1)))
        assert uniform.max() / uniform.min() > 1.5  # what theta = j / n would have done
    described = plan.describe()["measured"]
    assert described[0]["thetas"] == grid.tolist() and described[0]["length"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="needs the measured curves"):
        paths.plan_path(3, 9, [1.0], spacing="perceptual")
    with pytest.raises(ValueError, match="must start at 0 and not decrease"):
        paths.MeasuredCurve((0.0, 0.5, 1.0), (0.0, 0.3, 0.2))
    with pytest.raises(ValueError, match="increasing thetas from 0 to 1"):
        paths.MeasuredCurve((0.0, 0.5), (0.0, 0.3))


@pytest.mark.parametrize("call, words", [
    (lambda: paths.plan_path(1, 5), "at least 2 keyframes, got 1"),
    (lambda: paths.plan_path(3, 2), "an open path through 3 keyframes needs at least 3 frames"),
    (lambda: paths.plan_path(3, 2, loop=True), "a loop through 3 keyframes needs at least 3 frames"),
    (lambda: paths.plan_path(3, 5, spacing="speed"), "spacing must be one of uniform, angle, perceptual"),
    (lambda: paths.plan_path(3, 5.0), "frames must be a whole number"),
    (lambda: paths.plan_path(3, 5, [0, 1, 2]), "alpha has 3 values for a path of 2 segments"),
    (lambda: paths.check_values(3, 97, 0, max_frames=96), "frames must be at most 96, got 97"),
    (lambda: paths.check_values(3, None, "0,11"), "alpha must be in"),
])
def test_refusals_name_the_problem(call, words):
    with pytest.raises(SpecError) as info:
        call()
    assert words in str(info.value)


def test_check_values_defaults_and_alphas_per_segment():
    assert paths.check_values(3, None, 1.5) == (17, [1.5, 1.5])
    assert paths.check_values(3, None, "0,2", loop=False) == (17, [0.0, 2.0])
    assert paths.check_values(3, None, "0:2:3", loop=True) == (24, [0.0, 1.0, 2.0])


def test_arc_angle_against_float64_arccos():
    gen = torch.Generator().manual_seed(0)
    v0, v1, m = (torch.randn(5, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    m = m[0]
    alphas = torch.tensor([0.0, 0.5, 1.0, -2.0, 3.0], dtype=torch.float64)
    got = geometry.arc_angle(v0, v1, alphas, m)
    for i, a in enumerate(alphas):
        p0, p1 = v0[i] - a * m, v1[i] - a * m
        expected = math.acos(float(p0 @ p1 / (p0.norm() * p1.norm())))
        assert float(got[i]) == pytest.approx(expected, rel=1e-12)
        assert float(geometry.arc_angle(v0[i].float(), v1[i].float(), float(a), m.float())) == \
            pytest.approx(expected, rel=1e-5)
    assert float(geometry.arc_angle(v0[0], v0[0])) == 0.0
    assert float(geometry.arc_angle(v0[0], -v0[0])) == pytest.approx(math.pi)
    with pytest.raises(ValueError, match="needs the image-modality mean"):
        geometry.arc_angle(v0[0], v1[0], 1.0, None)


# -- the engine on the tiny fixture --------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(karlo_dir):
    return load_pipeline(karlo_dir, device="cpu")


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory):
    root = tmp_path_factory.mktemp("path-keyframes")
    out = []
    for name, img in zip("abc", fixture_images(3, seed=11), strict=True):
        img.save(root / f"{name}.png")
        out.append(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return out


def _denoised_rows(pipe, monkeypatch) -> list[int]:
    """Spy on the runner: the number of embeddings denoised by each call."""
    rows: list[int] = []
    real = pipe.runner.render

    def spy(embeddings, *args, **kwargs):
        rows.append(embeddings.shape[0])
        return real(embeddings, *args, **kwargs)

    monkeypatch.setattr(pipe.runner, "render", spy)
    return rows


def _px(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _close(a, b) -> None:
    """Equal up to float noise, as in tests/test_render.py: a frame alone matches its row in a
    batch to ~1e-6, but on the random-weight fixture a pixel on the edge of a clamp in
    super-resolution may differ by a few levels: one uint8 step everywhere, a few on 3 pixels."""
    diff = np.abs(_px(a) - _px(b))
    assert (diff > 1).sum() <= 3 and diff.max() <= 8


def test_generate_path_frame_counts_and_places(pipe, keyframes, monkeypatch):
    rows = _denoised_rows(pipe, monkeypatch)
    frames = pipe.generate_path(keyframes, frames=5, alphas=[1.0, -0.5], seed=3, **FAST)
    assert [(f.segment, f.theta, f.alpha, f.keyframe) for f in frames] == [
        (0, 0.0, 1.0, 0), (0, 0.5, 1.0, None), (1, 0.0, -0.5, 1), (1, 0.5, -0.5, None), (1, 1.0, -0.5, 2)]
    assert rows == [5] and all(f.seed == 3 for f in frames)
    loop = pipe.generate_path(keyframes, frames=6, alphas=1.0, seed=3, loop=True, **FAST)
    assert [(f.segment, f.theta, f.keyframe) for f in loop] == [
        (0, 0.0, 0), (0, 0.5, None), (1, 0.0, 1), (1, 0.5, None), (2, 0.0, 2), (2, 0.5, None)]
    assert loop[0].place() == {"segment": 0, "keyframe": 0}
    # the loop's last frame is on its way back to A, not a copy of A
    assert not torch.equal(loop[-1].embedding, loop[0].embedding)
    # default: 8 frames a segment, plus the last frame of an open path
    assert len(pipe.plan_path(keyframes).points) == 17
    assert len(pipe.plan_path(keyframes, loop=True).points) == 24


def test_keyframe_frames_equal_the_keyframe_rendered_alone_at_theta_0(pipe, keyframes):
    frames = pipe.generate_path(keyframes, frames=7, alphas=[1.5, -1.0, 0.5], seed=5, loop=True,
                                steps=2, super_res_steps=2)
    shown = {f.keyframe: f for f in frames if f.keyframe is not None}
    assert sorted(shown) == [0, 1, 2]
    for k, image in enumerate(keyframes):
        (alone,) = pipe.generate(image, image, 0.0, 0.0, seed=5, steps=2, super_res_steps=2)
        torch.testing.assert_close(shown[k].embedding, pipe.encode(image), rtol=0, atol=0)
        _close(shown[k].image, alone.image)
    # the same keyframe closing one segment or opening the next is one frame
    open_path = pipe.generate_path(keyframes, frames=3, seed=5, steps=2, super_res_steps=2)
    _close(open_path[1].image, shown[1].image)
    _close(open_path[2].image, shown[2].image)


def test_equal_frames_are_denoised_once(pipe, keyframes, monkeypatch):
    a, b, _ = keyframes
    rows = _denoised_rows(pipe, monkeypatch)
    # A hold (B, B): the frames of segment 1 and keyframe 2 are all B.
    frames = pipe.generate_path([a, b, b], frames=7, seed=2, **FAST)
    assert rows == [4]
    for f in frames[3:]:
        assert np.array_equal(_px(f.image), _px(frames[3].image))
    # A loop there and back: the way back passes the frames of the way there.
    rows.clear()
    pingpong = pipe.generate_path([a, b], frames=8, alphas=1.0, seed=2, loop=True, **FAST)
    assert rows == [5]
    for j in range(1, 4):
        assert np.array_equal(_px(pingpong[j].image), _px(pingpong[8 - j].image))


def test_angle_spacing_follows_the_measured_angles(pipe, keyframes):
    a, b, c = keyframes
    alphas = [1.0, -1.0, 2.0]
    plan = pipe.plan_path([a, b, a, c], frames=31, alphas=alphas, spacing="angle")
    m = pipe.stats.mean.double()
    v = [pipe.encode(x).double() for x in (a, b, a, c)]
    for k, alpha in enumerate(alphas):  # the angle between v_k - alpha m and v_{k+1} - alpha m
        p0, p1 = v[k] - alpha * m, v[k + 1] - alpha * m
        assert plan.angles[k] == pytest.approx(math.acos(float(p0 @ p1 / (p0.norm() * p1.norm()))), rel=1e-9)
    proportional = 30 * np.array(plan.angles) / sum(plan.angles)
    assert sum(plan.steps) == 30 and np.all(np.abs(np.array(plan.steps) - proportional) < 1)
    uniform = pipe.plan_path([a, b, a, c], frames=31, alphas=alphas)
    assert uniform.steps == [10, 10, 10] and uniform.angles == plan.angles
    # the frames the engine renders turn about their segment's centre by equal angles
    emb = pipe.path_embeddings(torch.stack([pipe.encode(x) for x in (a, b, a, c)]), plan.points).double()
    for k, alpha in enumerate(alphas):
        rows = sorted({i for i, p in enumerate(plan.points) if p.segment == k}
                      | {plan.keyframe_frames[k + 1]})
        turns = _turns((emb[rows] - alpha * m).numpy())
        assert turns.max() / turns.min() < 1.01
        assert turns.sum() == pytest.approx(plan.angles[k], rel=1e-5)


def test_perceptual_spacing_measures_a_preview_pass_and_inverts_it(pipe, keyframes, tmp_path):
    """The curves sum the angles between the preview frames at the grid's thetas, re-encoded
    (checked against those frames rendered on their own); the frames' thetas invert the curves;
    the manifest keeps both, and the preview pass's cost."""
    a, b, _ = keyframes
    curves = pipe.measure_segments([a, b], [1.0], seed=2, samples=4)
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    shots = pipe.generate_path_points([a, b], [paths.PathPoint(i, 0, t, 1.0) for i, t in enumerate(grid)], 2,
                                      preview=True)
    u = torch.stack([f.frame_embedding for f in shots]).double()
    u = u / u.norm(dim=1, keepdim=True)
    expected = np.concatenate([[0], np.cumsum(np.arccos((u[:-1] * u[1:]).sum(1).clamp(-1, 1).numpy()))])
    assert list(curves[0].thetas) == grid
    np.testing.assert_allclose(curves[0].distances, expected, rtol=1e-5, atol=1e-12)
    m = render_path(pipe, [a, b], tmp_path / "even", frames=7, alphas=1.0, seed=2, spacing="perceptual",
                    plot=False, contact=False, **FAST)
    layout = m["path"]
    assert layout["spacing"] == "perceptual" and layout["measure_seconds"] > 0
    (measured,) = layout["measured"]
    assert measured["thetas"] == [j / 12 for j in range(13)]
    fractions = np.interp(layout["thetas"], measured["thetas"], measured["distances"]) / measured["length"]
    np.testing.assert_allclose(fractions, np.linspace(0, 1, 7), atol=1e-9)
    assert [f["theta"] for f in m["frames"]] == layout["thetas"] == [p[1] for p in m["settings"]["frames"]]


def test_keyframe_refusals(pipe, keyframes):
    a, b, c = keyframes
    broken = a.parent / "broken.png"
    with pytest.raises(SpecError, match="at least 2 keyframes, got 1"):
        pipe.generate_path([a], frames=3)
    for one in (a, str(a), Image.open(a), pipe.encode(a)):  # one keyframe alone is not split up
        with pytest.raises(SpecError, match="images must be a list of 2 or more keyframes"):
            pipe.generate_path(one, frames=3)
    with pytest.raises(SpecError, match=r"keyframe 2 of 3: 'broken.png' is (truncated|not an image)"):
        pipe.generate_path([a, broken, c], frames=3)
    with pytest.raises(SpecError, match="keyframe 3 of 3: 'missing.png' does not exist"):
        pipe.generate_path([a, b, a.parent / "missing.png"], frames=3)
    with pytest.raises(SpecError, match="keyframe 1 of 2: embedding has 5 values"):
        pipe.generate_path([torch.zeros(5), b], frames=3)
    with pytest.raises(SpecError, match="theta must be in"):
        pipe.generate_path_points([a, b], [paths.PathPoint(0, 0, 1.5, 0.0)])
    # raw embeddings work as keyframes, PIL images too
    frames = pipe.generate_path([pipe.encode(a), Image.open(b)], frames=2, seed=1, **FAST)
    assert [f.keyframe for f in frames] == [0, 1]


# -- files: render_path ------------------------------------------------------------------------------
def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "frames").glob("*.png"))}


def test_render_path_files_and_manifest(pipe, keyframes, tmp_path):
    out = tmp_path / "loop"
    m = render_path(pipe, keyframes, out, frames=6, alphas="1,0,-1", seed=4, loop=True, ease=True,
                    gif=True, max_batch=2, **FAST)
    assert m["status"] == "complete" and m["frame_count"] == 6 == len(m["frames"])
    assert m["path"] == {"keyframes": 3, "segments": 3, "frames": 6, "loop": True, "spacing": "uniform",
                         "ease": True, "alphas": [1.0, 0.0, -1.0], "angles": m["path"]["angles"],
                         "ratios": m["path"]["ratios"], "steps": [2, 2, 2], "keyframe_frames": [0, 2, 4]}
    assert [(e["index"], e["segment"], e["keyframe"], e["theta"], e["alpha"]) for e in m["frames"]] == [
        (0, 0, 0, 0.0, 1.0), (1, 0, None, 0.5, 1.0), (2, 1, 1, 0.0, 0.0), (3, 1, None, 0.5, 0.0),
        (4, 2, 2, 0.0, -1.0), (5, 2, None, 0.5, -1.0)]
    s = m["settings"]
    assert (s["loop"], s["spacing"], s["ease"], s["seed"]) == (True, "uniform", True, 4)
    assert s["alphas"] == [1, 0, -1]
    assert s["keyframes"] == [d["sha256"] for d in m["inputs"]["keyframes"]]
    assert m["runs"][0]["frames_rendered"] == 6 and m["runs"][0]["frames_denoised"] == 6
    gif = Image.open(out / "sequence.gif")
    assert sum(1 for _ in ImageSequence.Iterator(gif)) == 6
    assert (out / "contact_sheet.png").is_file() and (out / "conformity.png").is_file()
    # the same frames as the engine's, and a re-run keeps every one of them
    frames = pipe.generate_path(keyframes, frames=6, alphas=[1, 0, -1], seed=4, loop=True, ease=True, **FAST)
    for entry, frame in zip(m["frames"], frames, strict=True):
        _close(Image.open(out / entry["file"]), frame.image)
        assert entry["frame_conformity"] == pytest.approx(frame.frame_conformity, abs=1e-5)
    before = _mtimes(out)
    again = render_path(pipe, keyframes, out, frames=6, alphas="1,0,-1", seed=4, loop=True, ease=True,
                        gif=True, max_batch=2, **FAST)
    assert again["runs"][-1]["frames_rendered"] == 0 and _mtimes(out) == before
    assert again["fingerprint"] == m["fingerprint"]


def test_equal_frames_are_rendered_once_across_chunks(pipe, keyframes, tmp_path, monkeypatch):
    a, b, c = keyframes
    rows = _denoised_rows(pipe, monkeypatch)
    m = render_path(pipe, [a, b, b, c], tmp_path / "hold", frames=10, seed=1, max_batch=2, **FAST)
    # 9 steps over 3 segments: A, ., ., B, B, B, B, ., ., C: B four times, in different chunks
    assert m["runs"][0]["frames_denoised"] == 7 == sum(rows) and max(rows) <= 2
    pixels = [np.asarray(Image.open(tmp_path / "hold" / e["file"])).tobytes() for e in m["frames"]]
    assert len({pixels[i] for i in (3, 4, 5, 6)}) == 1 and len(set(pixels)) == 7


def test_a_stopped_path_render_resumes_and_changes_are_refused(pipe, keyframes, tmp_path):
    out = tmp_path / "stopped"
    args = dict(frames=5, alphas=0.5, seed=8, spacing="angle", max_batch=2, **FAST)
    events = iter_render_path(pipe, keyframes, out, **args)
    first = next(events)
    assert (first.done, first.total) == (2, 5)
    events.close()
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"
    before = _mtimes(out)
    seen = [(e.done, e.manifest is not None) for e in iter_render_path(pipe, keyframes, out, **args)]
    assert seen == [(4, False), (5, False), (5, True)]
    assert {k: v for k, v in _mtimes(out).items() if k in before} == before
    for change, words in [(dict(loop=True), "loop false -> true"), (dict(seed=9), "seed 8 -> 9"),
                          (dict(alphas=1.0), "alpha 0.5,0.5 -> 1,1"), (dict(frames=6), "frame_count 5 -> 6"),
                          (dict(ease=True), "ease false -> true")]:
        with pytest.raises(RenderError, match=words):
            render_path(pipe, keyframes, out, **{**args, **change})
    with pytest.raises(RenderError, match="keyframes"):
        render_path(pipe, keyframes[::-1], out, **args)


def test_check_path_request_before_any_model(keyframes):
    a, b, c = keyframes
    frames, alphas, loaded = check_path_request([a, b, c], None, "0,1", 3)
    assert frames == 17 and alphas == [0.0, 1.0] and [d["kind"] for _, d in loaded] == ["image"] * 3
    with pytest.raises(ValueError, match="keyframe 2 of 3: 'broken.png'"):
        check_path_request([a, a.parent / "broken.png", c], 5, 0, 3)
    with pytest.raises(SpecError, match="a list of images"):
        check_path_request(str(a), 5, 0, 3)
    with pytest.raises(SpecError, match="fps"):
        check_path_request([a, b], 5, 0, 3, fps=0)


# -- jobs --------------------------------------------------------------------------------------------
def test_jobs_lines_may_hold_keyframes(keyframes, tmp_path):
    a, b, c = (p.name for p in keyframes)
    path = keyframes[0].parent / "jobs.jsonl"
    lines = [{"keyframes": [a, b, c], "frames": 6, "loop": True, "alpha": "0,1,2", "name": "loop"},
             {"source": a, "target": b, "theta": "0:1:3"}]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    checked = read_jobs(path, default_seed=7)
    jobs = checked.jobs
    assert checked.refused == []
    assert jobs[0].path == {"keyframes": [str(keyframes[0].parent / n) for n in (a, b, c)], "frames": 6,
                            "loop": True, "spacing": "uniform", "ease": False}
    assert (jobs[0].seed, jobs[0].alpha, jobs[1].path) == (7, "0,1,2", None)
    # Each bad path line is refused with its line and reason; the good line beside it stays a job.
    cases = [({"keyframes": [a]}, "at least 2 keyframes"),
             ({"keyframes": [a, "nope.png"]}, "keyframe 2 of 2"),
             ({"keyframes": a}, "keyframes must be a list of image paths"),
             ({"keyframes": [a, 3]}, "keyframe 2 must be an image path"),
             ({"keyframes": [a, b], "theta": 0.5}, "unknown key"),
             ({"keyframes": [a, b, c], "alpha": "0,1,2"}, "alpha has 3 values for a path of 2 segments"),
             ({"keyframes": [a, b], "loop": "yes"}, "loop must be true or false")]
    for line, words in cases:
        path.write_text(json.dumps(lines[1]) + "\n" + json.dumps(line))
        checked = read_jobs(path)
        assert [j.line for j in checked.jobs] == [1]
        assert [r.line for r in checked.refused] == [2]
        assert words in checked.refused[0].reason, (words, checked.refused[0].reason)


# -- the command line ------------------------------------------------------------------------------
def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "vslerp_app", "render", *map(str, args)]


def _run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=ENV)


@pytest.mark.parametrize("args, words", [
    (["--keyframes", "a.png"], "a path needs at least 2 keyframes, got 1"),
    (["--keyframes", "a.png", "broken.png", "c.png"], "keyframe 2 of 3: 'broken.png'"),
    (["--keyframes", "a.png", "b.png", "c.png", "--frames", "2"], "needs at least 3 frames"),
    (["--keyframes", "a.png", "b.png", "--alpha", "0,1"], "alpha has 2 values for a path of 1 segment:"),
    (["--keyframes", "a.png", "b.png", "--source", "a.png"], "drop --source"),
    (["--keyframes", "a.png", "b.png", "--grid"], "drop --grid"),
    (["--source", "a.png", "--target", "b.png", "--theta", "0", "--loop"], "--loop shapes a path"),
    (["--source", "a.png", "--target", "b.png", "--theta", "0", "--loop", "--ease"], "--ease shape a path"),
])
def test_cli_refusals_are_one_line(karlo_dir, keyframes, tmp_path, args, words):
    folder = keyframes[0].parent
    args = [folder / a if a.endswith(".png") else a for a in args]
    proc = _run(_cli("--model", karlo_dir, "--out", tmp_path / "o", *args))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("vslerp render: error: ") and len(line.splitlines()) == 1
    assert words in proc.stderr
    assert not (tmp_path / "o" / "frames").exists() or not list((tmp_path / "o" / "frames").iterdir())


def test_cli_jobs_render_paths_beside_sweeps_and_refuse_a_bad_path_line(karlo_dir, keyframes, tmp_path):
    a, b, c = keyframes
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"keyframes": [str(a), str(b), str(c)], "frames": 6, "loop": True, "seed": 4, "name": "loop"},
             {"source": str(a), "target": str(b), "theta": "0,1", "name": "sweep"},
             {"keyframes": [str(a), str(tmp_path / "gone.png")], "name": "broken"}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "out"
    proc = _run(_cli("--model", karlo_dir, "--jobs", jobs, "--out", out, "--preview", "--steps", "2",
                     "--device", "cpu"))
    assert proc.returncode != 0, proc.stdout + proc.stderr  # one line was refused
    assert f"{jobs}:3: refused: keyframe 2 of 2" in proc.stderr
    summary = json.loads((out / "jobs.json").read_text())
    assert [(j["name"], j["status"], j.get("frames")) for j in summary["jobs"]] == [
        ("loop", "complete", 6), ("sweep", "complete", 2), ("broken", "refused", None)]
    manifest = json.loads((out / "loop" / "manifest.json").read_text())
    assert manifest["path"]["loop"] is True
    assert [e["segment"] for e in manifest["frames"]] == [0, 0, 1, 1, 2, 2]
    assert manifest["settings"]["seed"] == 4 and len(manifest["inputs"]["keyframes"]) == 3
    assert not (out / "broken").exists()


def test_cli_loop_killed_midway_resumes(karlo_dir, keyframes, tmp_path):
    out = tmp_path / "killed"
    cmd = _cli("--model", karlo_dir, "--keyframes", *keyframes, "--loop", "--frames", "6", "--alpha", "0.5",
               "--seed", "3", "--out", out, "--max-batch", "1", "--gif", "--preview", "--steps", "2")
    assert kill_after_the_first_frame(cmd, out, ENV) == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and 1 <= manifest["frames_done"] < 6
    done_before = {e["file"] for e in manifest["frames"]}
    for name in done_before:
        Image.open(out / name).load()

    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 frames" in proc.stdout and "sequence.gif" in proc.stdout
    final = json.loads((out / "manifest.json").read_text())
    assert final["status"] == "complete" and final["runs"][-1]["frames_reused"] >= len(done_before)
    assert final["runs"][-1]["frames_rendered"] == 6 - final["runs"][-1]["frames_reused"]
    assert [e["segment"] for e in final["frames"]] == [0, 0, 1, 1, 2, 2]
    assert sum(1 for _ in ImageSequence.Iterator(Image.open(out / "sequence.gif"))) == 6


def _readme_path_commands() -> list[list[str]]:
    """The `vslerp render --keyframes` command lines of the README's path section, as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Paths through keyframes", 1)[1].split("\n## ", 1)[0]
    commands, current = [], ""
    for line in section.splitlines():
        if line.startswith("    vslerp render") or current:
            current += " " + line.strip().split("  #")[0].rstrip("\\").strip()
            if not line.rstrip().endswith("\\"):
                commands.append(current.split())
                current = ""
    return commands


def test_the_readme_path_commands_run(karlo_dir, keyframes, tmp_path):
    commands = _readme_path_commands()
    assert len(commands) == 3 and all("--keyframes" in c for c in commands)
    assert commands[2][commands[2].index("--spacing") + 1] == "perceptual"
    for name, source in zip(("cat.png", "dog.png", "car.png"), keyframes, strict=True):
        (tmp_path / name).write_bytes(source.read_bytes())
    for words in commands:
        words[words.index("--model") + 1] = str(karlo_dir)  # the tiny fixture in place of the download
        proc = subprocess.run([sys.executable, "-m", "vslerp_app", *words[1:], "--preview", "--steps", "2"],
                              capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((tmp_path / words[words.index("--out") + 1] / "manifest.json").read_text())
        assert manifest["frame_count"] == int(words[words.index("--frames") + 1])
        assert (tmp_path / words[words.index("--out") + 1] / "sequence.gif").is_file()
