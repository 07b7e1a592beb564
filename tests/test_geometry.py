"""vslerp_app.geometry against an independent float64 numpy reference (PAPER.md Eq. 10-12).

The reference below never calls our module: SLERP with ONE angle
W = arccos(clip(<p0/|p0|, p1/|p1|>, -1, 1)) and vSLERP per Eq. 12. Inputs are raw
CLIP-like vectors: an offset mean m plus an anisotropic spread, ||m|| / ||sigma|| = 0.94
as measured for ViT-B/32 images. The largest relative errors seen per dtype are
collected in MAX_REL_ERR and printed by the last test (run with ``-s`` to see them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vslerp_app import geometry
from vslerp_app.geometry import (
    conformity,
    cosine,
    estimated_conformity,
    member_conformity,
    slerp,
    vslerp,
    whitened_log_likelihood,
)

CLIP_DIMS = (512, 768, 1024)
MEAN_TO_SPREAD = 0.94  # ||m|| / ||sigma||, ViT-B/32 images on MS-COCO (PAPER.md)

# Bounds asserted on ||ours - ref|| / ||ref||; the measured maxima are far below
# (see MAX_REL_ERR, printed at the end).
TOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
MAX_REL_ERR: dict[str, float] = {}


# --------------------------------------------------------------------------- reference
def ref_slerp(p0, p1, t, omega=None):
    """Float64 SLERP with a single angle between the two vectors (PAPER.md)."""
    p0 = np.asarray(p0, np.float64)
    p1 = np.asarray(p1, np.float64)
    if omega is None:
        c = np.dot(p0 / np.linalg.norm(p0), p1 / np.linalg.norm(p1))
        omega = math.acos(min(1.0, max(-1.0, float(c))))
    s = math.sin(omega)
    if s < 1e-300:  # the limit of the formula for W -> 0
        return (1.0 - t) * p0 + t * p1
    return math.sin((1.0 - t) * omega) / s * p0 + math.sin(t * omega) / s * p1


def ref_vslerp(v0, v1, t, alpha, m):
    """Eq. 12: SLERP(v0 - alpha m, v1 - alpha m, t) + alpha m, in float64."""
    c = alpha * np.asarray(m, np.float64)
    return ref_slerp(np.asarray(v0, np.float64) - c, np.asarray(v1, np.float64) - c, t) + c


def rel_err(ours, ref) -> float:
    ours = np.asarray(torch.as_tensor(ours).double().cpu().numpy())
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def record(dtype: torch.dtype, err: float) -> None:
    key = str(dtype).removeprefix("torch.")
    MAX_REL_ERR[key] = max(MAX_REL_ERR.get(key, 0.0), err)


def clip_like(rng: np.random.Generator, d: int, n: int, scale: float = 1.0):
    """n raw CLIP-like vectors and their mean: m + anisotropic spread, ||m||/||sigma|| = 0.94."""
    sigma = np.exp(rng.normal(0.0, 0.5, d))
    sigma /= np.linalg.norm(sigma)  # ||sigma|| = 1, so E||v - m||^2 = 1
    m = rng.normal(size=d)
    m *= MEAN_TO_SPREAD / np.linalg.norm(m)
    x = m + rng.normal(size=(n, d)) * sigma
    return x * scale, m * scale


# --------------------------------------------------------------------------- accuracy
@settings(max_examples=60, deadline=None, database=None)
@given(
    d=st.sampled_from(CLIP_DIMS),
    seed=st.integers(0, 2**32 - 1),
    theta=st.floats(0.0, 1.0),
    alpha=st.floats(-3.0, 3.0),
    log_scale=st.floats(-2.0, 2.0),
)
def test_vslerp_matches_float64_reference_property(d, seed, theta, alpha, log_scale):
    x, m = clip_like(np.random.default_rng(seed), d, 2, scale=10.0**log_scale)
    ref = ref_vslerp(x[0], x[1], theta, alpha, m)
    for dtype in (torch.float32, torch.float64):
        v0, v1, mean = (torch.from_numpy(a).to(dtype) for a in (x[0], x[1], m))
        # fp32 inputs are rounded: compare with the reference on the rounded values.
        ref_d = ref_vslerp(v0.double(), v1.double(), theta, alpha, mean.double())
        out = vslerp(v0, v1, theta, alpha, mean)
        assert out.dtype == dtype and out.shape == (d,)
        err = rel_err(out, ref_d)
        record(dtype, err)
        assert err < TOL[str(dtype).removeprefix("torch.")], (dtype, err)
    # Eq. 12 with alpha = 0 is plain SLERP: the public slerp agrees with the reference too.
    out = slerp(torch.from_numpy(x[0]), torch.from_numpy(x[1]), theta)
    assert rel_err(out, ref_slerp(x[0], x[1], theta)) < TOL["float64"]
    assert np.isfinite(ref).all()


@pytest.mark.parametrize("d", CLIP_DIMS)
def test_batched_vslerp_matches_reference_row_by_row(d):
    """A batch of random pairs, one theta and one alpha per row, every supported dtype."""
    rng = np.random.default_rng(d)
    b = 48
    x, m = clip_like(rng, d, 2 * b, scale=12.0)
    thetas = rng.uniform(0, 1, b)
    alphas = rng.uniform(-3, 3, b)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        v0 = torch.from_numpy(x[:b]).to(dtype)
        v1 = torch.from_numpy(x[b:]).to(dtype)
        mean = torch.from_numpy(m).to(dtype)
        out = vslerp(v0, v1, torch.from_numpy(thetas), torch.from_numpy(alphas), mean)
        assert out.dtype == dtype and out.shape == (b, d)
        assert torch.isfinite(out).all()
        key = str(dtype).removeprefix("torch.")
        for i in range(b):
            ref = ref_vslerp(v0[i].double(), v1[i].double(), thetas[i], alphas[i], mean.double())
            err = rel_err(out[i], ref)
            record(dtype, err)
            assert err < TOL[key], (dtype, i, err)


def test_half_precision_is_computed_in_float64_and_rounded_once():
    rng = np.random.default_rng(7)
    x, m = clip_like(rng, 768, 16, scale=20.0)
    theta = torch.from_numpy(rng.uniform(0, 1, 8))
    alpha = torch.from_numpy(rng.uniform(-3, 3, 8))
    for dtype in (torch.float16, torch.bfloat16):
        v0, v1, mean = (torch.from_numpy(a).to(dtype) for a in (x[:8], x[8:], m))
        out = vslerp(v0, v1, theta, alpha, mean)
        via_fp64 = vslerp(v0.double(), v1.double(), theta, alpha, mean.double()).to(dtype)
        assert out.dtype == dtype
        assert torch.equal(out, via_fp64)
        # Computing in the half dtype itself would be visibly worse than one final rounding.
        naive = ((1 - theta[:, None]) * v0.double() + theta[:, None] * v1.double()).to(dtype)
        assert not torch.equal(out, naive)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_precision_large_norm_does_not_overflow(dtype, tol):
    """norm 300 in 1024-d: the squared norm (9e4) exceeds the fp16 range (65504)."""
    rng = np.random.default_rng(3)
    x, m = clip_like(rng, 1024, 2)
    x *= 300.0 / np.linalg.norm(x, axis=1, keepdims=True)
    m *= 250.0 / np.linalg.norm(m)
    v0, v1, mean = (torch.from_numpy(a).to(dtype) for a in (x[0], x[1], m))
    assert not torch.isfinite((v0 * v0).sum()) or dtype == torch.bfloat16  # the trap being tested
    for theta, alpha in [(0.3, 0.0), (0.5, 1.0), (0.8, -2.0), (0.1, 3.0)]:
        out = vslerp(v0, v1, theta, alpha, mean)
        assert out.dtype == dtype and torch.isfinite(out).all()
        err = rel_err(out, ref_vslerp(v0.double(), v1.double(), theta, alpha, mean.double()))
        record(dtype, err)
        assert err < tol, (theta, alpha, err)
    assert torch.isfinite(conformity(v0, torch.from_numpy(m / np.linalg.norm(m)).to(dtype)))


def test_float64_stays_float64_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    x, m = clip_like(rng, 512, 2)
    for dtype in (torch.float64, torch.float32):
        v0, v1, mean = (torch.from_numpy(a).to(dtype) for a in (x[0], x[1], m))
        assert vslerp(v0, v1, 0.4, 1.5, mean).dtype == dtype
        assert slerp(v0, v1, 0.4).dtype == dtype


# --------------------------------------------------------------------------- endpoints and degenerate
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_endpoints_are_exact_for_any_alpha(dtype):
    rng = np.random.default_rng(11)
    x, m = clip_like(rng, 768, 12, scale=15.0)
    v0, v1, mean = (torch.from_numpy(a).to(dtype) for a in (x[:6], x[6:], m))
    alphas = torch.tensor([-3.0, -1.2, 0.0, 0.7, 1.0, 3.0])
    for alpha in list(alphas.tolist()) + [alphas]:
        assert torch.equal(vslerp(v0, v1, 0.0, alpha, mean), v0)
        assert torch.equal(vslerp(v0, v1, 1.0, alpha, mean), v1)
    # Per-row theta with endpoints mixed into a batch.
    thetas = torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.25])
    out = vslerp(v0, v1, thetas, alphas, mean)
    for i, t in enumerate(thetas.tolist()):
        if t == 0.0:
            assert torch.equal(out[i], v0[i])
        if t == 1.0:
            assert torch.equal(out[i], v1[i])
    # Single vectors.
    for alpha in (-2.5, 0.0, 2.0):
        assert torch.equal(vslerp(v0[0], v1[0], 0.0, alpha, mean), v0[0])
        assert torch.equal(vslerp(v0[0], v1[0], 1, alpha, mean), v1[0])
        assert torch.equal(vslerp(v0[0], v1[0], torch.tensor(1.0), alpha, mean), v1[0])
    assert torch.equal(slerp(v0[0], v1[0], 0.0), v0[0])
    assert torch.equal(slerp(v0[0], v1[0], 1.0), v1[0])


def test_alpha_zero_is_plain_slerp():
    rng = np.random.default_rng(5)
    x, m = clip_like(rng, 1024, 2, scale=8.0)
    v0, v1, mean = (torch.from_numpy(a) for a in (x[0], x[1], m))
    for theta in np.linspace(0, 1, 7):
        out = vslerp(v0, v1, float(theta), 0.0, mean)
        assert torch.equal(out, slerp(v0, v1, float(theta)))
        assert torch.equal(out, vslerp(v0, v1, float(theta), 0.0, None))
        assert rel_err(out, ref_slerp(x[0], x[1], theta)) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_identical_vectors_return_the_vector(dtype):
    rng = np.random.default_rng(2)
    x, m = clip_like(rng, 768, 1, scale=10.0)
    v, mean = torch.from_numpy(x[0]).to(dtype), torch.from_numpy(m).to(dtype)
    tol = {torch.float64: 1e-14, torch.float32: 1e-6, torch.float16: 1e-3}[dtype]
    thetas = torch.linspace(0, 1, 11)
    for alpha in (-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0):
        out = vslerp(v, v, thetas, alpha, mean)
        assert out.shape == (11, 768) and torch.isfinite(out).all()
        err = float((out.double() - v.double()).norm(dim=1).max() / v.double().norm())
        assert err < tol, (alpha, err)
    assert torch.isfinite(slerp(v, v, 0.5)).all()


def test_the_authors_elementwise_arccos_bug_is_not_reproduced():
    """Their demo took 768 element-wise angles; slerp(v, v, t) then returns ~1.35 v."""
    v = np.random.default_rng(0).normal(size=768) * 0.5
    u = v / np.linalg.norm(v)
    omega = np.arccos(u * u)  # the bug: no sum, one angle per element
    t = 0.5
    buggy = np.sin((1 - t) * omega) / np.sin(omega) * v + np.sin(t * omega) / np.sin(omega) * v
    assert np.linalg.norm(buggy) / np.linalg.norm(v) > 1.3  # what a buggy port would give
    for t in (0.25, 0.5, 0.75):
        ours = slerp(torch.from_numpy(v), torch.from_numpy(v), t).numpy()
        np.testing.assert_allclose(ours, v, rtol=1e-12, atol=1e-14)
        ours32 = slerp(torch.from_numpy(v).float(), torch.from_numpy(v).float(), t).double().numpy()
        np.testing.assert_allclose(ours32, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_parallel_and_antiparallel_fall_back_to_linear_interpolation(dtype, tol):
    """The rotation plane is undefined there: documented fallback (1-t) p0 + t p1, finite."""
    rng = np.random.default_rng(4)
    x, m = clip_like(rng, 512, 1, scale=5.0)
    v0, mean = torch.from_numpy(x[0]).to(dtype), torch.from_numpy(m).to(dtype)
    for alpha in (0.0, 1.0, -2.0):
        c = alpha * mean
        for factor in (3.0, -1.0, -0.5):  # parallel, antiparallel about the centre alpha m
            v1 = c + factor * (v0 - c)
            for theta in (0.0, 0.3, 0.5, 0.9, 1.0):
                out = vslerp(v0, v1, theta, alpha, mean)
                assert torch.isfinite(out).all()
                linear = (1 - theta) * (v0 - c).double() + theta * (v1 - c).double() + c.double()
                scale = float((v0 - c).double().norm() * max(1.0, abs(factor)) + c.double().norm())
                assert float((out.double() - linear).norm()) / scale < tol, (alpha, factor, theta)
            assert torch.equal(vslerp(v0, v1, 0.0, alpha, mean), v0)
            assert torch.equal(vslerp(v0, v1, 1.0, alpha, mean), v1)
    # At theta = 1/2 the antiparallel pair meets in the centre of rotation.
    out = slerp(v0, -v0, 0.5)
    assert float(out.double().norm()) < tol * float(v0.double().norm())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
@pytest.mark.parametrize("angle", [1e-7, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 1e-2, 0.1, 1.0, 2.0, 3.0])
def test_small_and_large_angles_match_reference(angle, dtype, tol):
    """Pairs at a known angle about alpha m, one 1.5x longer: finite and close to the reference."""
    rng = np.random.default_rng(int(angle * 1e7) % 2**31)
    d = 768
    x, m = clip_like(rng, d, 2, scale=10.0)
    alpha = 1.0
    p0 = x[0] - alpha * m
    q = x[1] - x[1] @ p0 / (p0 @ p0) * p0
    q *= np.linalg.norm(p0) / np.linalg.norm(q)
    p1 = 1.5 * (math.cos(angle) * p0 + math.sin(angle) * q)
    v1 = p1 + alpha * m
    v0_t, v1_t, m_t = (torch.from_numpy(a).to(dtype) for a in (x[0], v1, m))
    for theta in (0.0, 0.1, 0.5, 0.77, 1.0):
        out = vslerp(v0_t, v1_t, theta, alpha, m_t)
        assert torch.isfinite(out).all()
        # The reference on the (possibly rounded) inputs, with the angle they really make.
        ref = ref_vslerp(v0_t.double(), v1_t.double(), theta, alpha, m_t.double())
        ref_exact = ref_slerp(p0, p1, theta, omega=angle) + alpha * m
        if dtype == torch.float64:
            assert rel_err(ref, ref_exact) < 1e-9
        err = rel_err(out, ref)
        record(dtype, err)
        assert err < tol, (angle, theta, err)


def mp_vslerp(v0, v1, t, alpha, m, digits=40):
    """Eq. 12 in mpmath at ``digits`` significant digits, on the given (rounded) inputs."""
    import mpmath

    with mpmath.workdps(digits):
        c = [alpha * mpmath.mpf(float(x)) for x in m]
        p0 = [mpmath.mpf(float(x)) - ci for x, ci in zip(v0, c, strict=True)]
        p1 = [mpmath.mpf(float(x)) - ci for x, ci in zip(v1, c, strict=True)]
        n0 = mpmath.sqrt(mpmath.fsum(x * x for x in p0))
        n1 = mpmath.sqrt(mpmath.fsum(x * x for x in p1))
        diff = mpmath.sqrt(mpmath.fsum((a / n0 - b / n1) ** 2 for a, b in zip(p0, p1, strict=True)))
        w = 2 * mpmath.asin(diff / 2)  # accurate near pi, unlike acos of the dot product
        w0, w1 = mpmath.sin((1 - t) * w) / mpmath.sin(w), mpmath.sin(t * w) / mpmath.sin(w)
        return np.array([float(w0 * a + w1 * b + ci) for a, b, ci in zip(p0, p1, c, strict=True)])


@pytest.mark.parametrize("dtype, tol, max_jump", [(torch.float64, 1e-11, 1e-5), (torch.float32, 1e-7, 2e-3)])
def test_vslerp_is_continuous_near_antipodal_at_d768(dtype, tol, max_jump):
    """Pairs at pi - 0.99e-4 and pi - 1.01e-4 about alpha m: both follow Eq. 12 (an mpmath
    reference on the same inputs), so they differ by the small change of the angle, not by
    |v| (the straight-line fallback used to start at pi - 1e-4 in every dtype). In float32
    the inputs' own rounding (6e-8 / 1e-4) moves the plane by ~6e-4: that is the jump left."""
    rng = np.random.default_rng(12)
    x, m = clip_like(rng, 768, 2, scale=13.0)
    alpha = 1.0
    p0 = x[0] - alpha * m
    q = x[1] - x[1] @ p0 / (p0 @ p0) * p0
    q *= np.linalg.norm(p0) / np.linalg.norm(q)
    outs = {}
    for gap in (0.99e-4, 1.01e-4):
        w = math.pi - gap
        # Equal norms about the centre: with unequal ones Eq. 12 itself grows like
        # (|p0| - |p1|) / (pi - W) there, and there is no limit to be continuous with.
        v1 = math.cos(w) * p0 + math.sin(w) * q + alpha * m
        v0_t, v1_t, m_t = (torch.from_numpy(a).to(dtype) for a in (x[0], v1, m))
        for theta in (0.25, 0.5):
            out = vslerp(v0_t, v1_t, theta, alpha, m_t)
            err = rel_err(out, mp_vslerp(v0_t, v1_t, theta, alpha, m_t))
            assert err < tol, (gap, theta, err)  # float64: ~1e-16 / (pi - W), not in TOL's bound
        outs[gap] = vslerp(v0_t, v1_t, 0.5, alpha, m_t).double()
    jump = float((outs[0.99e-4] - outs[1.01e-4]).norm() / np.linalg.norm(p0))
    print(f"\n{dtype}: |vSLERP(pi - 0.99e-4) - vSLERP(pi - 1.01e-4)| / |v| = {jump:.2e} at theta 0.5")
    assert jump < max_jump


# --------------------------------------------------------------------------- shapes
def _vectors(d=32, b=5, seed=0):
    rng = np.random.default_rng(seed)
    x, m = clip_like(rng, d, 2 * b + 2, scale=4.0)
    t = torch.from_numpy
    return t(x[0]), t(x[1]), t(x[2:2 + b]), t(x[2 + b:2 + 2 * b]), t(m)


def test_single_vectors_with_scalar_parameters_give_a_vector():
    a, b, _, _, m = _vectors()
    for theta in (0.3, torch.tensor(0.3, dtype=torch.float64), np.float64(0.3)):
        out = vslerp(a, b, theta, torch.tensor(1.5), m)
        assert out.shape == (32,)
        np.testing.assert_allclose(out.numpy(), ref_vslerp(a, b, 0.3, 1.5, m), rtol=1e-12)
    assert slerp(a, b, 0.3).shape == (32,)


def test_single_vectors_with_a_theta_sweep_give_one_row_per_theta():
    a, b, _, _, m = _vectors()
    thetas = torch.linspace(0, 1, 7, dtype=torch.float64)
    out = vslerp(a, b, thetas, 0.8, m)
    assert out.shape == (7, 32)
    for i, t in enumerate(thetas.tolist()):
        np.testing.assert_allclose(out[i].numpy(), ref_vslerp(a, b, t, 0.8, m), rtol=1e-12)
    alphas = torch.linspace(-2, 2, 7)
    out = vslerp(a, b, thetas, alphas, m)
    assert out.shape == (7, 32)
    for i, (t, al) in enumerate(zip(thetas.tolist(), alphas.tolist(), strict=True)):
        np.testing.assert_allclose(out[i].numpy(), ref_vslerp(a, b, t, al, m), rtol=1e-12)
    assert slerp(a, b, thetas).shape == (7, 32)


def test_batches_with_scalar_and_per_row_parameters():
    _, _, v0, v1, m = _vectors()
    out = vslerp(v0, v1, 0.4, -1.0, m)
    assert out.shape == (5, 32)
    for i in range(5):
        np.testing.assert_allclose(out[i].numpy(), ref_vslerp(v0[i], v1[i], 0.4, -1.0, m), rtol=1e-12)
    thetas = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    alphas = torch.tensor([-3.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    out = vslerp(v0, v1, thetas, alphas, m)
    assert out.shape == (5, 32)
    for i in range(5):
        single = vslerp(v0[i], v1[i], float(thetas[i]), float(alphas[i]), m)
        np.testing.assert_allclose(out[i].numpy(), single.numpy(), rtol=1e-13)
        ref = ref_vslerp(v0[i], v1[i], float(thetas[i]), float(alphas[i]), m)
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-12)
    # A length-1 parameter broadcasts like a scalar.
    torch.testing.assert_close(vslerp(v0, v1, torch.tensor([0.4]), -1.0, m), vslerp(v0, v1, 0.4, -1.0, m))


def test_mixed_single_vector_and_batch():
    a, _, _, v1, m = _vectors()
    out = vslerp(a, v1, 0.6, 0.5, m)
    assert out.shape == (5, 32)
    for i in range(5):
        np.testing.assert_allclose(out[i].numpy(), ref_vslerp(a, v1[i], 0.6, 0.5, m), rtol=1e-12)
    out = vslerp(v1, a, torch.linspace(0, 1, 5), 0.5, m)
    assert out.shape == (5, 32)
    assert torch.equal(out[0], v1[0]) and torch.equal(out[-1], a)
    assert vslerp(a[None], a, 0.5, 0.0, None).shape == (1, 32)


def test_inputs_are_not_modified():
    a, b, v0, v1, m = _vectors()
    copies = [t.clone() for t in (a, b, v0, v1, m)]
    vslerp(v0, v1, torch.rand(5, dtype=torch.float64), 1.0, m)
    vslerp(a, b, 0.5, 2.0, m)
    for before, after in zip(copies, (a, b, v0, v1, m), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize(
    "case",
    [
        "batch_vs_batch",
        "theta_vs_batch",
        "alpha_vs_batch",
        "theta_vs_alpha",
        "dims",
        "theta_2d",
        "vector_3d",
    ],
)
def test_shapes_that_do_not_broadcast_raise(case):
    a, b, v0, v1, m = _vectors(b=5)
    _, _, w0, _, _ = _vectors(b=4, seed=1)
    args = {
        "batch_vs_batch": (v0, w0, 0.5, 1.0, m),
        "theta_vs_batch": (v0, v1, torch.rand(4), 1.0, m),
        "alpha_vs_batch": (v0, v1, 0.5, torch.rand(3), m),
        "theta_vs_alpha": (a, b, torch.rand(3), torch.rand(4), m),
        "dims": (a, b[:31], 0.5, 0.0, None),
        "theta_2d": (v0, v1, torch.rand(5, 1), 1.0, m),
        "vector_3d": (v0[None], v1[None], 0.5, 1.0, m),
    }[case]
    with pytest.raises(ValueError):
        vslerp(*args)


def test_alpha_without_a_mean_raises_and_a_wrong_mean_shape_raises():
    a, b, v0, v1, m = _vectors()
    with pytest.raises(ValueError, match="mean"):
        vslerp(a, b, 0.5, 1.0, None)
    with pytest.raises(ValueError, match="mean"):
        vslerp(v0, v1, 0.5, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), None)
    for bad in (m[:31], torch.cat([m, m]), m[None], m.reshape(4, 8)):
        with pytest.raises(ValueError, match="mean"):
            vslerp(a, b, 0.5, 1.0, bad)
    # alpha = 0 everywhere needs no mean.
    assert vslerp(v0, v1, 0.5, torch.zeros(5), None).shape == (5, 32)


# --------------------------------------------------------------------------- conformity, likelihood
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_conformity_is_the_mean_cosine_to_the_set():
    rng = np.random.default_rng(21)
    s, m = clip_like(rng, 512, 400, scale=7.0)
    queries, _ = clip_like(rng, 512, 20, scale=7.0)
    mean_unit = _unit(s).mean(0)
    brute = (_unit(queries) @ _unit(s).T).mean(1)
    ours = conformity(torch.from_numpy(queries), torch.from_numpy(mean_unit))
    assert ours.shape == (20,) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), brute, rtol=0, atol=1e-13)
    ours32 = conformity(torch.from_numpy(queries).float(), torch.from_numpy(mean_unit).float())
    np.testing.assert_allclose(ours32.double().numpy(), brute, rtol=0, atol=1e-6)
    ours16 = conformity(torch.from_numpy(queries).half(), torch.from_numpy(mean_unit).float())
    np.testing.assert_allclose(ours16.double().numpy(), brute, rtol=0, atol=2e-3)
    single = conformity(torch.from_numpy(queries[3]), torch.from_numpy(mean_unit))
    assert single.shape == ()
    assert abs(float(single) - brute[3]) < 1e-13
    # Scale-free: conformity depends on directions only.
    assert abs(float(conformity(torch.from_numpy(queries[3] * 1e3), torch.from_numpy(mean_unit)))
               - brute[3]) < 1e-12


def test_member_conformity_leaves_the_member_out():
    rng = np.random.default_rng(22)
    s, _ = clip_like(rng, 768, 300, scale=3.0)
    n = len(s)
    u = _unit(s)
    g = u @ u.T
    brute = (g.sum(1) - np.diag(g)) / (n - 1)
    ours = member_conformity(torch.from_numpy(s), torch.from_numpy(u.mean(0)), n)
    np.testing.assert_allclose(ours.numpy(), brute, rtol=0, atol=1e-12)
    # Not the same as including itself (which would be biased up by (1 - C)/n).
    assert np.all(conformity(torch.from_numpy(s), torch.from_numpy(u.mean(0))).numpy() > brute)
    with pytest.raises(ValueError):
        member_conformity(torch.from_numpy(s[0]), torch.from_numpy(u[0]), 1)


def test_estimated_conformity_is_affine_in_the_cosine_to_the_mean():
    rng = np.random.default_rng(23)
    x, m = clip_like(rng, 1024, 10, scale=2.0)
    a, b = 1.461, 0.002
    cos = _unit(x) @ _unit(m)
    ours = estimated_conformity(torch.from_numpy(x), torch.from_numpy(m), a, b)
    np.testing.assert_allclose(ours.numpy(), a * cos + b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cosine(torch.from_numpy(x), torch.from_numpy(m)).numpy(), cos, atol=1e-14)
    ours32 = estimated_conformity(torch.from_numpy(x).float(), torch.from_numpy(m).float(), a, b)
    np.testing.assert_allclose(ours32.double().numpy(), a * cos + b, rtol=0, atol=1e-6)


def test_whitened_log_likelihood_matches_numpy():
    rng = np.random.default_rng(24)
    d = 64
    x, m = clip_like(rng, d, 12, scale=3.0)
    w = rng.normal(size=(d, d)) / math.sqrt(d)
    z = (x - m) @ w.T
    ref = -0.5 * (z**2).sum(1)
    ours = whitened_log_likelihood(torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(w))
    assert ours.shape == (12,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    one = whitened_log_likelihood(torch.from_numpy(x[0]), torch.from_numpy(m), torch.from_numpy(w))
    assert one.shape == () and abs(float(one) - ref[0]) < 1e-10 * abs(ref[0])
    ours32 = whitened_log_likelihood(*(torch.from_numpy(a).float() for a in (x, m, w)))
    np.testing.assert_allclose(ours32.double().numpy(), ref, rtol=1e-5)
    # W not symmetric: W (v - m), not W^T (v - m).
    wrong = -0.5 * (((x - m) @ w) ** 2).sum(1)
    assert not np.allclose(ours.numpy(), wrong, rtol=1e-3)


def test_module_exports_only_torch_math():
    assert set(geometry.__all__) >= {"slerp", "vslerp", "conformity", "member_conformity",
                                     "estimated_conformity", "whitened_log_likelihood"}


def test_zz_report_max_relative_errors():
    """Printed with ``-s``: the largest ||ours - ref|| / ||ref|| seen in this module, per dtype."""
    print("\nvSLERP max relative error vs float64 reference:",
          {k: f"{v:.3g}" for k, v in sorted(MAX_REL_ERR.items())})
    for key, err in MAX_REL_ERR.items():
        assert err < TOL[key]
