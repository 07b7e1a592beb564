"""vslerp_app.stats: exact and estimated conformity (Eq. 10, 11), streaming, whitening, files.

The population is synthetic but shaped like raw CLIP image embeddings (PAPER.md): a thin
shell on a tilted, anisotropic ellipsoid (random rotation, log-normal axis lengths,
1% radial noise) around a centre m with ||m|| / ||sigma|| = 0.94. Every expected value is
computed here by brute force in float64 numpy (N x N cosines, np.polyfit, np.cov).
Run with ``-s`` to see the measured Pearson correlations.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tracemalloc
import weakref

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vslerp_app import geometry
from vslerp_app.geometry import member_conformity
from vslerp_app.stats import (
    FORMAT,
    ModalityStats,
    StatsAccumulator,
    StatsError,
    compute_stats,
    leave_one_out_log_likelihood,
    percentile_in,
    quantiles_of,
)

MEAN_TO_SPREAD = 0.94


def shell_population(n: int, d: int, seed: int, radial_noise: float = 0.01):
    """n raw embeddings on a thin, shifted, tilted ellipsoid shell, as float32 (an encoder's output)."""
    rng = np.random.default_rng(seed)
    axes = np.exp(rng.normal(0.0, 0.5, d))
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    g = rng.normal(size=(n, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)  # on the unit sphere
    s = (g * axes) * (1.0 + radial_noise * rng.normal(size=(n, 1)))  # thin ellipsoid shell
    s = s @ rotation.T  # tilted
    sigma_norm = math.sqrt((s**2).sum(1).mean())
    m = rng.normal(size=d)
    m *= MEAN_TO_SPREAD * sigma_norm / np.linalg.norm(m)
    return ((m + s) * 0.37).astype(np.float32)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_force(x32: np.ndarray):
    """Member conformity C (self excluded), cos(m, v) and the mean, all in float64."""
    x = x32.astype(np.float64)
    n = len(x)
    u = unit(x)
    gram = u @ u.T
    c = (gram.sum(1) - np.diag(gram)) / (n - 1)
    mean = x.mean(0)
    cos_m = u @ unit(mean)
    return c, cos_m, mean


@pytest.fixture(scope="module", params=[(512, 3000), (768, 2000)], ids=["d512", "d768"])
def population(request):
    d, n = request.param
    x = shell_population(n, d, seed=d)
    c, cos_m, mean = brute_force(x)
    return x, c, cos_m, mean, compute_stats(torch.from_numpy(x), encoder="synthetic", dataset="shell")


def test_population_is_clip_like(population):
    x, *_ = population
    x = x.astype(np.float64)
    m = x.mean(0)
    centred = np.linalg.norm(x - m, axis=1)
    ratio = np.linalg.norm(m) / math.sqrt((centred**2).mean())
    assert 0.9 < ratio < 1.0  # ||m|| / ||sigma|| ~ 0.94
    assert centred.std() / centred.mean() < 0.2  # a shell: the centred norm concentrates


def test_exact_member_conformity_equals_brute_force(population):
    x, c, _, _, stats = population
    assert stats.n == len(x) and stats.conformity_kind == "exact"
    ours = member_conformity(torch.from_numpy(x), stats.mean_unit, stats.n).double().numpy()
    err = np.abs(ours - c).max()
    print(f"\nmember conformity, max |ours - brute force| = {err:.2e} (N={len(x)}, d={x.shape[1]})")
    assert err < 1e-6
    # A new vector is compared with all N members.
    new = shell_population(5, x.shape[1], seed=x.shape[1])[:3] * 1.01 + 0.001
    brute_new = (unit(new.astype(np.float64)) @ unit(x.astype(np.float64)).T).mean(1)
    np.testing.assert_allclose(stats.conformity(torch.from_numpy(new)).double().numpy(), brute_new, atol=1e-6)


def test_eq11_estimate_fits_brute_force_conformity(population):
    x, c, cos_m, _, stats = population
    estimate = stats.estimated_conformity(torch.from_numpy(x)).double().numpy()
    pearson = np.corrcoef(c, estimate)[0, 1]
    print(f"\nEq. 11 Pearson(C, C_hat) = {pearson:.7f} (paper: 0.9998), a = {stats.a:.4f}, b = {stats.b:.5f}")
    assert pearson >= 0.999
    # The Pearson the stats report is the one computed directly.
    assert stats.calibrated
    assert abs(stats.pearson - np.corrcoef(c, cos_m)[0, 1]) < 1e-9
    assert abs(stats.pearson - pearson) < 1e-6
    # a, b are the least-squares line of brute-force C on cos(m, v).
    a, b = np.polyfit(cos_m, c, 1)
    assert stats.a == pytest.approx(a, rel=1e-7)
    assert stats.b == pytest.approx(b, abs=1e-8)
    # And the estimate is that line.
    np.testing.assert_allclose(estimate, a * cos_m + b, atol=1e-6)
    # The fit is meaningful: the estimate beats the best constant by far.
    assert np.abs(estimate - c).max() < 0.05 * np.abs(c - c.mean()).max()


def test_equally_conformal_members_give_a_flat_fit():
    """No spread in cos(m, v): no slope (a = 0), b the common conformity, no Pearson."""
    basis = torch.eye(8, dtype=torch.float64) * torch.arange(1.0, 9.0, dtype=torch.float64)[:, None]
    s = compute_stats(basis)  # orthogonal members: C = 0 for each
    assert (s.a, s.pearson, s.calibrated) == (0.0, None, False)
    assert abs(s.b) < 1e-12
    same = compute_stats(torch.ones(5, 8, dtype=torch.float64) * torch.arange(1.0, 6.0)[:, None])
    assert same.a == 0.0 and same.b == pytest.approx(1.0, abs=1e-12)  # identical directions: C = 1


# --------------------------------------------------------------------------- streaming
def _assert_same_stats(s1: ModalityStats, s2: ModalityStats):
    assert s1.n == s2.n and s1.dim == s2.dim
    torch.testing.assert_close(s1.mean, s2.mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s1.mean_unit, s2.mean_unit, rtol=1e-6, atol=1e-7)
    assert (s1.whitening is None) == (s2.whitening is None)
    if s1.whitening is not None:
        torch.testing.assert_close(s1.whitening, s2.whitening, rtol=1e-5, atol=1e-6)
    assert s1.a == pytest.approx(s2.a, rel=1e-9)
    assert s1.b == pytest.approx(s2.b, rel=1e-9, abs=1e-12)
    assert s1.pearson == pytest.approx(s2.pearson, rel=1e-9)


def test_streaming_equals_all_at_once():
    x = shell_population(700, 48, seed=1)
    full = compute_stats(torch.from_numpy(x))

    sizes = [1, 7, 300, 2, 113, 5, 64]
    cuts = np.cumsum(sizes)
    batches = [torch.from_numpy(b) for b in np.split(x, cuts) if len(b)]
    assert sum(len(b) for b in batches) == len(x) and len(batches) == len(sizes) + 1
    _assert_same_stats(full, compute_stats(iter(batches)))
    _assert_same_stats(full, compute_stats(torch.from_numpy(x), batch_size=9))

    acc = StatsAccumulator()
    start, k = 0, 1
    while start < len(x):
        acc.update(torch.from_numpy(x[start:start + k]))
        start, k = start + k, k + 1
    _assert_same_stats(full, acc.finalize())

    # Single vectors one at a time, as (d,) tensors.
    acc = StatsAccumulator()
    for row in x[:100]:
        acc.update(torch.from_numpy(row))
    _assert_same_stats(compute_stats(torch.from_numpy(x[:100])), acc.finalize())

    # The mean is the numpy mean; mean_unit the mean of the unit vectors.
    np.testing.assert_allclose(full.mean.double().numpy(), x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(full.mean_unit.double().numpy(), unit(x.astype(np.float64)).mean(0),
                               rtol=1e-6, atol=1e-7)


def test_whitening_whitens_the_numpy_covariance():
    x = shell_population(1200, 64, seed=2)
    stats = compute_stats(torch.from_numpy(x))
    assert stats.whitening is not None and stats.whitening.shape == (64, 64)
    w = stats.whitening.double().numpy()
    cov = np.cov(x.astype(np.float64), rowvar=False)
    err = np.abs(w @ cov @ w.T - np.eye(64)).max()
    print(f"\nwhitening: max |W Sigma W^T - I| = {err:.2e}")
    assert err < 1e-4
    np.testing.assert_allclose(w, w.T, atol=1e-6)  # Sigma^-1/2 is symmetric
    # The likelihood readout is the standard-normal log-density up to a constant.
    v = x[:4].astype(np.float64)
    z = (v - x.astype(np.float64).mean(0)) @ w.T
    np.testing.assert_allclose(stats.log_likelihood(torch.from_numpy(v)).numpy(), -0.5 * (z**2).sum(1),
                               rtol=1e-5)


def test_whitening_by_default_from_three_images_per_dimension_and_never_at_n_le_d():
    x = shell_population(192, 64, seed=3)
    assert compute_stats(torch.from_numpy(x[:191])).whitening is None  # 191 < 3 * 64
    assert compute_stats(torch.from_numpy(x[:30])).log_likelihood(torch.from_numpy(x[0])) is None
    assert compute_stats(torch.from_numpy(x)).whitening is not None  # 192 = 3 * 64
    assert compute_stats(torch.from_numpy(x), whitening=False).whitening is None
    # Forced, d < n < 3 d works; n <= d is refused, naming n and d (it used to floor the
    # missing eigenvalues to 1e-10 max: members read -n/2, new images -1e9).
    assert compute_stats(torch.from_numpy(x[:65]), whitening=True).whitening is not None
    for n in (64, 30):
        with pytest.raises(StatsError, match=rf"n={n} for d=64.*at least 192"):
            compute_stats(torch.from_numpy(x[:n]), whitening=True)


def test_accumulator_memory_does_not_grow_with_the_count():
    """200k x 64 float64 embeddings (102 MB) from a generator: no batch is kept alive.

    By design the accumulator holds O(d^2) sums. Checked two ways: weak references to
    every yielded batch (none but the current one may be alive), and tracemalloc, which
    sees numpy buffers (torch's own allocations it cannot see: the batches are numpy
    arrays, which the accumulator wraps without copying).
    """
    n, d, bs = 200_000, 64, 1000
    rng = np.random.default_rng(4)
    offset = rng.normal(size=d)
    alive: list[weakref.ref] = []
    total = np.zeros(d)
    max_alive = 0

    def batches():
        nonlocal total, max_alive
        for _ in range(n // bs):
            b = rng.normal(size=(bs, d)) + offset
            total += b.sum(0)
            alive.append(weakref.ref(b))
            max_alive = max(max_alive, sum(r() is not None for r in alive[-20:]))
            yield b
            del b

    tracemalloc.start()
    try:
        stats = compute_stats(batches())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.n == n
    np.testing.assert_allclose(stats.mean.double().numpy(), total / n, rtol=1e-6, atol=1e-6)
    assert sum(r() is not None for r in alive) == 0
    assert max_alive <= 2
    print(f"\naccumulator over {n}x{d}: tracemalloc peak {peak / 1e6:.2f} MB "
          f"vs {n * d * 8 / 1e6:.0f} MB of data")
    assert peak < n * d * 8 / 20


def test_accumulator_rejects_bad_batches():
    acc = StatsAccumulator()
    acc.update(torch.ones(3, 8) + torch.arange(8.0))
    with pytest.raises(StatsError, match="9-d"):
        acc.update(torch.ones(2, 9))
    with pytest.raises(StatsError, match="non-finite"):
        acc.update(torch.full((2, 8), float("nan")))
    with pytest.raises(StatsError, match="zero"):
        acc.update(torch.zeros(1, 8))
    with pytest.raises(StatsError, match="at least 2"):
        StatsAccumulator().finalize()


# --------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def small_stats():
    x = shell_population(300, 16, seed=5)
    return compute_stats(torch.from_numpy(x), encoder="ViT-L/14", model_id="kakaobrain/karlo-v1-alpha",
                         dataset="synthetic shell, 300 images")


def test_save_load_round_trip_keeps_every_field(small_stats, tmp_path):
    s = small_stats
    path = tmp_path / "sub" / "stats.safetensors"
    assert s.save(path) == path
    assert os.listdir(path.parent) == ["stats.safetensors"]  # atomic: no temporary left
    loaded = ModalityStats.load(path, expected_dim=16)
    for name in ("mean", "mean_unit", "whitening"):
        assert torch.equal(getattr(loaded, name), getattr(s, name)), name
    assert (loaded.n, loaded.a, loaded.b, loaded.pearson) == (s.n, s.a, s.b, s.pearson)
    assert loaded.modality == "image"
    prov = dict(loaded.provenance)
    assert prov.pop("source") == str(path)
    assert prov == s.provenance
    assert "ViT-L/14" in loaded.describe() and "exact conformity" in loaded.describe()
    assert prov["encoder"] == "ViT-L/14" and prov["model_id"] == "kakaobrain/karlo-v1-alpha"
    assert prov["dataset"] == "synthetic shell, 300 images" and prov["image_count"] == "300"
    assert re.match(r"\d{4}-\d\d-\d\dT", prov["date"])
    assert {"torch", "safetensors"} <= set(json.loads(prov["library_versions"]))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert re.fullmatch(r"[0-9a-f]{64}", meta["checksum"])
    assert meta["checksum"] == s.checksum()
    # load() adds provenance["source"]; without it the loaded object hashes like the file.
    del loaded.provenance["source"]
    assert loaded.checksum() == meta["checksum"]
    # Overwriting an existing file works and still leaves nothing behind.
    s.save(path)
    assert os.listdir(path.parent) == ["stats.safetensors"]


def test_text_modality_and_mean_only_round_trip(tmp_path):
    x = shell_population(48, 16, seed=6)
    text = compute_stats(torch.from_numpy(x), modality="text")
    assert text.provenance["caption_count"] == "48" and "image_count" not in text.provenance
    loaded = ModalityStats.load(text.save(tmp_path / "t.safetensors"))
    assert loaded.modality == "text" and loaded.whitening is not None  # 48 = 3 * 16
    torch.testing.assert_close(loaded.whitening, text.whitening, rtol=0, atol=0)
    only_mean = ModalityStats.from_mean(torch.from_numpy(x.mean(0)), model_id="m")
    back = ModalityStats.load(only_mean.save(tmp_path / "m.safetensors"))
    assert back.mean_unit is None and back.n is None and back.pearson is None
    assert back.conformity_kind == "cosine" and torch.equal(back.mean, only_mean.mean)
    assert back.conformity_label == "cosine to the image mean (Eq. 11 uncalibrated)"
    assert back.conformity_percentile(0.5) is None and back.readouts(torch.from_numpy(x[0]))[
        "conformity_percentile"] is None


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(small_stats, tmp_path, monkeypatch):
    import safetensors.torch

    path = small_stats.save(tmp_path / "s.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        small_stats.save(path)
    assert os.listdir(tmp_path) == ["s.safetensors"]
    assert path.read_bytes() == before


def test_wrong_dimension_names_the_file_and_both_dimensions(small_stats, tmp_path):
    path = small_stats.save(tmp_path / "vit-l.safetensors")
    with pytest.raises(StatsError) as info:
        ModalityStats.load(path, expected_dim=1024)
    msg = str(info.value)
    assert str(path) in msg
    rest = msg.replace(str(path), "")
    assert re.search(r"\b16\b", rest) and re.search(r"\b1024\b", rest), msg


def _header_size(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _expect_error(path, *words):
    with pytest.raises(StatsError) as info:
        ModalityStats.load(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert any(w in msg.lower() for w in words), msg
    return msg


def test_truncated_files_raise(small_stats, tmp_path):
    data = small_stats.save(tmp_path / "full.safetensors").read_bytes()
    h = _header_size(data)
    for cut in sorted({0, 3, 8, 9, 40, h - 1, h, h + 1, h + 64, (h + len(data)) // 2, len(data) - 1}):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        _expect_error(path, "truncated", "corrupt")


def test_random_bytes_raise(tmp_path):
    rng = np.random.default_rng(8)
    for i, blob in enumerate([rng.bytes(2000), struct.pack("<Q", 50) + rng.bytes(200), b"\0" * 64]):
        path = tmp_path / f"noise{i}.safetensors"
        path.write_bytes(blob)
        _expect_error(path, "corrupt", "truncated")


def test_flipped_byte_in_tensor_data_fails_the_checksum(small_stats, tmp_path):
    path = small_stats.save(tmp_path / "flip.safetensors")
    data = bytearray(path.read_bytes())
    h = _header_size(bytes(data))
    offsets = json.loads(data[8:h])["mean"]["data_offsets"]
    data[h + offsets[0]] ^= 0x01  # the lowest mantissa bit of mean[0]: still finite and plausible
    path.write_bytes(bytes(data))
    _expect_error(path, "checksum")


def _write_crafted(path, stats: ModalityStats, **changes):
    """A stats file whose fields are changed behind validation, with a matching checksum."""
    for name, value in changes.items():
        setattr(stats, name, value)  # bypasses __post_init__ validation
    meta = dict(stats._scalars(), checksum=stats.checksum())
    save_file(stats._tensors(), str(path), metadata=meta)
    return path


def test_changed_metadata_fails_the_checksum(small_stats, tmp_path):
    path = small_stats.save(tmp_path / "meta.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["a"] = repr(float(meta["a"]) + 0.5)
    save_file(tensors, str(path), metadata=meta)
    _expect_error(path, "checksum")


@pytest.mark.parametrize(
    "change, words",
    [
        ("nan_mean", ("finite",)),
        ("inf_whitening", ("finite",)),
        ("short_mean_unit", ("shape",)),
        ("zero_mean", ("zero",)),
        ("long_mean_unit", ("longer", "unit")),
        ("bad_modality", ("modality",)),
    ],
)
def test_invalid_values_with_a_valid_checksum_raise(small_stats, tmp_path, change, words):
    s = ModalityStats(mean=small_stats.mean.clone(), mean_unit=small_stats.mean_unit.clone(), n=small_stats.n,
                      a=small_stats.a, b=small_stats.b, whitening=small_stats.whitening.clone(),
                      pearson=small_stats.pearson, provenance=dict(small_stats.provenance))
    mean = s.mean.clone()
    changes = {
        "nan_mean": {"mean": torch.cat([mean[:3], torch.tensor([float("nan")]), mean[4:]])},
        "inf_whitening": {"whitening": s.whitening.clone().fill_diagonal_(float("inf"))},
        "short_mean_unit": {"mean_unit": s.mean_unit[:-1].clone()},
        "zero_mean": {"mean": torch.zeros_like(mean)},
        "long_mean_unit": {"mean_unit": s.mean_unit * 2 / s.mean_unit.norm()},
        "bad_modality": {"modality": "audio"},
    }[change]
    path = _write_crafted(tmp_path / f"{change}.safetensors", s, **changes)
    _expect_error(path, *words)


def test_not_a_stats_file_and_missing_file_raise(tmp_path):
    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(4)}, str(other))
    _expect_error(other, "format", "not a vslerp")
    extra = tmp_path / "extra.safetensors"
    save_file({"mean": torch.ones(4), "bias": torch.ones(4)}, str(extra),
              metadata={"format": FORMAT, "a": "1.0", "b": "0.0"})
    _expect_error(extra, "expected tensors")
    _expect_error(tmp_path / "missing.safetensors", "no such")
    _expect_error(tmp_path, "no such")  # a directory is not a stats file


def test_from_mean_falls_back_to_the_cosine_and_says_so():
    x = shell_population(200, 32, seed=9)
    mean = torch.from_numpy(x.mean(0))
    only_mean = ModalityStats.from_mean(mean, encoder="ViT-H/14")
    # A mean alone gives cos(m, v): not an estimate of conformity until a and b are fitted.
    assert only_mean.conformity_kind == "cosine" and not only_mean.has_exact_conformity
    assert not only_mean.calibrated and (only_mean.a, only_mean.b) == (1.0, 0.0)
    assert "cosine to the image mean (Eq. 11 uncalibrated)" in only_mean.describe()
    assert "estimated conformity" not in only_mean.describe()
    # With a fitted a, b (and no mean_unit) it is the Eq. 11 estimate.
    fitted = ModalityStats(mean=mean, a=1.461, b=0.002, pearson=0.9998)
    assert fitted.conformity_kind == "estimated"
    assert fitted.conformity_label == "estimated conformity (Eq. 11)"
    v = torch.from_numpy(x[:10])
    torch.testing.assert_close(only_mean.conformity(v), only_mean.estimated_conformity(v))
    expected = unit(x[:10].astype(np.float64)) @ unit(x.astype(np.float64).mean(0))
    np.testing.assert_allclose(only_mean.conformity(v).double().numpy(), expected, atol=1e-6)

    full = compute_stats(torch.from_numpy(x))
    assert full.conformity_kind == "exact" and full.has_exact_conformity
    brute = (unit(x[:10].astype(np.float64)) @ unit(x.astype(np.float64)).T).mean(1)
    np.testing.assert_allclose(full.conformity(v).double().numpy(), brute, atol=1e-6)
    assert not np.allclose(full.conformity(v).double().numpy(), full.estimated_conformity(v).double().numpy(),
                           atol=1e-9)
    with pytest.raises(StatsError, match="zero"):
        ModalityStats.from_mean(torch.zeros(32))
    with pytest.raises(StatsError, match="finite"):
        ModalityStats.from_mean(torch.full((32,), float("nan")))


# --------------------------------------------------------------------------- the population's scale
def brute_force_log_likelihood(x32: np.ndarray, mean32: np.ndarray, w: np.ndarray) -> np.ndarray:
    """-1/2 ||W (v - m)||^2 in float64 numpy."""
    z = (x32.astype(np.float64) - mean32.astype(np.float64)) @ w.astype(np.float64).T
    return -0.5 * (z * z).sum(1)


def test_population_quantiles_are_the_members_own_values_self_excluded():
    x = shell_population(900, 24, seed=31)  # whitened: 900 >= 3 * 24
    stats = compute_stats(torch.from_numpy(x), encoder="synthetic")
    c, _, _ = brute_force(x)  # Eq. 10 of each member against the other 899
    q = np.linspace(0, 1, 101)
    assert stats.conformity_quantiles.shape == (101,) and stats.conformity_quantiles.dtype == torch.float64
    # Brute force uses float64 means; the stats' float32 mean_unit costs ~1e-8.
    np.testing.assert_allclose(stats.conformity_quantiles.numpy(), np.quantile(c, q), rtol=0, atol=1e-7)
    # The log-likelihood of each member with m and W refitted on the other 899 (float64 numpy).
    x64 = x.astype(np.float64)
    ll = np.empty(len(x))
    for i in range(len(x)):
        rest = np.delete(x64, i, axis=0)
        r = x64[i] - rest.mean(0)
        ll[i] = -0.5 * r @ np.linalg.solve(np.cov(rest, rowvar=False), r)
    np.testing.assert_allclose(stats.log_likelihood_quantiles.numpy(), np.quantile(ll, q), rtol=1e-6)
    # Not the conformity of a new vector (which would include itself): that is biased up.
    c_incl = unit(x.astype(np.float64)) @ stats.mean_unit.double().numpy()
    assert np.quantile(c_incl, 0.5) - np.quantile(c, 0.5) > 1e-5


def test_population_quantiles_stream_like_the_rest():
    x = shell_population(500, 16, seed=32)
    full = compute_stats(torch.from_numpy(x))
    streamed = compute_stats(iter(torch.from_numpy(b) for b in np.array_split(x, 13)))
    torch.testing.assert_close(streamed.conformity_quantiles, full.conformity_quantiles, rtol=0, atol=1e-12)
    torch.testing.assert_close(streamed.log_likelihood_quantiles, full.log_likelihood_quantiles,
                               rtol=1e-9, atol=0)
    # Fewer embeddings than dimensions: no whitening, so conformity quantiles only.
    few = compute_stats(torch.from_numpy(x[:10]))
    assert few.conformity_quantiles is not None and few.log_likelihood_quantiles is None
    assert few.readouts(torch.from_numpy(x[0]))["log_likelihood_percentile"] is None


def test_percentiles_are_in_0_100_monotone_and_rank_the_members():
    x = shell_population(2001, 16, seed=33)
    stats = compute_stats(torch.from_numpy(x))
    c, _, _ = brute_force(x)
    lo, hi = float(stats.conformity_quantiles[0]), float(stats.conformity_quantiles[-1])
    grid = np.linspace(lo - 0.05, hi + 0.05, 4001)
    pct = np.array([stats.conformity_percentile(v) for v in grid])
    assert pct.min() == 0.0 and pct.max() == 100.0
    assert np.all((pct >= 0) & (pct <= 100)) and np.all(np.diff(pct) >= 0)
    assert stats.conformity_percentile(np.median(c)) == pytest.approx(50.0, abs=0.01)
    # A member's percentile is the share of members below it (to the 1% grid's resolution).
    order = np.argsort(c)
    for rank in (100, 700, 1500, 1900):
        v = c[order[rank]]
        assert stats.conformity_percentile(v) == pytest.approx(100 * rank / 2000, abs=0.6)
    assert stats.conformity_percentile(float("nan")) is None


def test_percentile_in_handles_ties_and_the_ends():
    q = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0], dtype=torch.float64)  # 4 steps of 25%
    assert percentile_in(-1, q) == 0.0 and percentile_in(3, q) == 100.0
    assert percentile_in(0.0, q) == 0.0 and percentile_in(2.0, q) == 100.0
    assert percentile_in(1.0, q) == 50.0  # the middle of the run of equal quantiles
    assert percentile_in(0.5, q) == 12.5 and percentile_in(1.5, q) == 87.5
    values = np.linspace(-0.5, 2.5, 301)
    assert np.all(np.diff([percentile_in(v, q) for v in values]) >= 0)
    assert percentile_in(None, q) is None


def test_stats_file_with_and_without_the_distribution(tmp_path):
    x = shell_population(300, 16, seed=34)
    with_scale = compute_stats(torch.from_numpy(x), encoder="synthetic")
    loaded = ModalityStats.load(with_scale.save(tmp_path / "with.safetensors"), expected_dim=16)
    for name in ("conformity_quantiles", "log_likelihood_quantiles", "whitening"):
        assert torch.equal(getattr(loaded, name), getattr(with_scale, name)), name
    assert loaded.whitening.dtype == torch.float64 and loaded.has_population
    assert "percentiles" in loaded.describe()
    r = loaded.readouts(torch.from_numpy(x[7]))
    assert 0 <= r["conformity_percentile"] <= 100 and 0 <= r["log_likelihood_percentile"] <= 100
    assert r["conformity_label"] == "exact conformity (Eq. 10)"

    # A file as written before the population's scale: float32 tensors, no quantiles.
    old = ModalityStats(mean=with_scale.mean, mean_unit=with_scale.mean_unit, n=300, a=with_scale.a,
                        b=with_scale.b, whitening=with_scale.whitening.float(), pearson=with_scale.pearson,
                        provenance={"encoder": "synthetic"})
    path = old.save(tmp_path / "old.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"mean", "mean_unit", "whitening"}
        assert f.get_tensor("whitening").dtype == torch.float32
    back = ModalityStats.load(path)
    assert not back.has_population and back.conformity_quantiles is None
    r_old = back.readouts(torch.from_numpy(x[7]))
    assert r_old["conformity_percentile"] is None and r_old["log_likelihood_percentile"] is None
    assert r_old["conformity"] == pytest.approx(r["conformity"], abs=1e-12)
    assert r_old["log_likelihood"] == pytest.approx(r["log_likelihood"], rel=1e-5)
    # population=False writes such a file too.
    assert compute_stats(torch.from_numpy(x), population=False).conformity_quantiles is None


def test_out_of_order_quantiles_are_refused(tmp_path):
    x = shell_population(100, 8, seed=35)
    s = compute_stats(torch.from_numpy(x))
    with pytest.raises(StatsError, match="non-decreasing"):
        ModalityStats(mean=s.mean, conformity_quantiles=s.conformity_quantiles.flip(0))
    with pytest.raises(StatsError, match="non-finite"):
        ModalityStats(mean=s.mean, log_likelihood_quantiles=torch.tensor([0.0, float("inf")]))


def test_log_likelihood_is_float64_against_numpy_on_an_ill_conditioned_covariance():
    """Covariance condition number 1e10: float64 arithmetic to 1e-9 relative, float32 not."""
    rng = np.random.default_rng(36)
    d, n = 24, 400
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.logspace(0, -5, d)  # standard deviations over 5 decades: variances over 10
    x = ((rng.normal(size=(n, d)) * scales) @ rotation.T + 3.0).astype(np.float32)
    stats = compute_stats(torch.from_numpy(x))
    evals = np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False))
    assert evals.max() / evals.min() > 1e9
    queries = x[:20]
    ref = brute_force_log_likelihood(queries, stats.mean.numpy(), stats.whitening.numpy())
    ours = stats.log_likelihood(torch.from_numpy(queries))
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9)
    for i in range(3):  # one vector at a time, as readouts do
        one = stats.readouts(torch.from_numpy(queries[i]))["log_likelihood"]
        assert one == pytest.approx(ref[i], rel=1e-9)
    as_float32 = geometry.whitened_log_likelihood(*(torch.from_numpy(a).float() for a in
                                                    (queries, stats.mean.numpy(), stats.whitening.numpy())))
    assert np.max(np.abs(as_float32.double().numpy() / ref - 1)) > 1e-7  # the test can tell


def test_fixture_likelihood_matches_a_float64_numpy_reference(karlo_dir):
    """The tiny Karlo fixture's stats, its encoder's embeddings: 1e-9 relative."""
    from pipelines.fixtures import fixture_images
    from vslerp_app import load_pipeline

    pipe = load_pipeline(karlo_dir)
    stats = pipe.stats
    emb = pipe.encoder.encode(fixture_images(12, seed=41))
    ref = brute_force_log_likelihood(emb.numpy(), stats.mean.numpy(), stats.whitening.double().numpy())
    for i in range(len(emb)):
        assert stats.readouts(emb[i])["log_likelihood"] == pytest.approx(ref[i], rel=1e-9, abs=0)


def test_folder_stats_prepares_images_as_generation_does(karlo_dir, tmp_path):
    """One image preparation (images.MAX_SIDE): stats of a folder of large photos are the stats
    of the embeddings the engine computes for the same files."""
    from vslerp_app import load_pipeline
    from vslerp_app.folder_stats import folder_stats
    from vslerp_app.images import MAX_SIDE

    pipe = load_pipeline(karlo_dir)
    rng = np.random.default_rng(42)
    paths = []
    for i in range(6):  # larger than MAX_SIDE, full of detail, so any other downscale shows
        arr = rng.integers(0, 256, size=(1300 + 20 * i, 1500, 3), dtype=np.uint8)
        paths.append(tmp_path / "big" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        PIL.Image.fromarray(arr).save(paths[-1])
    result = folder_stats(pipe.encoder, tmp_path / "big", batch_size=4)
    engine = torch.stack([pipe.encode(p) for p in paths]).double()
    torch.testing.assert_close(result.stats.mean.double(), engine.mean(0), rtol=1e-6, atol=1e-6)
    assert MAX_SIDE == 1024
    # The quantiles of member conformity are those of the engine's embeddings.
    c = geometry.member_conformity(engine, result.stats.mean_unit.double(), 6)
    np.testing.assert_allclose(result.stats.conformity_quantiles.numpy(),
                               np.quantile(c.numpy(), np.linspace(0, 1, 101)), atol=1e-6)


# ------------------------------------------------------------------- out-of-sample likelihood, d = 768
class ClipShaped:
    """Gaussian raw embeddings shaped like CLIP ViT-L/14's: d = 768, mean norm 13, anisotropic
    covariance (eigenvalues ~ k^-0.8, trace 150, tilted by a random rotation)."""

    def __init__(self, d: int = 768, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.mean = self.rng.standard_normal(d)
        self.mean *= 13 / np.linalg.norm(self.mean)
        self.rotation, _ = np.linalg.qr(self.rng.standard_normal((d, d)))
        ev = 1.0 / np.arange(1, d + 1) ** 0.8
        self.scales = np.sqrt(ev * 150 / ev.sum())

    def draw(self, n: int) -> np.ndarray:
        return self.mean + (self.rng.standard_normal((n, len(self.mean))) * self.scales) @ self.rotation.T


@pytest.fixture(scope="module")
def clip_shaped():
    """3,000 members at d = 768 (3.9 d: whitened by default) and 2,000 fresh draws."""
    source = ClipShaped()
    members, fresh = source.draw(3000), source.draw(2000)
    acc = StatsAccumulator()
    acc.update(torch.from_numpy(members))
    stats = acc.finalize(encoder="synthetic ViT-L/14-shaped")
    return members, fresh, stats, acc


def test_leave_one_out_formula_equals_refitting_without_the_member_at_d768(clip_shaped):
    members, _, stats, _ = clip_shaped
    n = len(members)
    mean, cov = members.mean(0), np.cov(members, rowvar=False)
    for i in (0, 17, 1234, 2999):
        r = members[i] - mean
        in_sample = -0.5 * r @ np.linalg.solve(cov, r)
        rest = np.delete(members, i, axis=0)
        r_out = members[i] - rest.mean(0)
        left_out = -0.5 * r_out @ np.linalg.solve(np.cov(rest, rowvar=False), r_out)
        assert float(leave_one_out_log_likelihood(in_sample, n)) == pytest.approx(left_out, rel=1e-9)
        assert left_out < in_sample  # a member is always more likely under a fit that includes it


def test_fresh_images_read_near_the_50th_likelihood_percentile_at_d768(clip_shaped):
    members, fresh, stats, acc = clip_shaped
    ll = stats.log_likelihood(torch.from_numpy(fresh))
    pct = np.array([stats.log_likelihood_percentile(v) for v in ll])
    # The members' own in-sample values, as stats files stored them before: fresh draws from
    # the very same distribution read the 0th percentile there (n = 3.9 d; the 1st at n = 5,000).
    _, in_sample = acc.member_values(stats)
    before = np.array([percentile_in(v, quantiles_of(in_sample)) for v in ll])
    print(f"\nfresh images' mean likelihood percentile: in-sample {before.mean():.1f}, "
          f"leave-one-out {pct.mean():.1f}; below the 5th: {np.mean(before < 5):.2f} -> "
          f"{np.mean(pct < 5):.3f}")
    assert before.mean() < 10
    assert 46 < pct.mean() < 54 and 45 < np.median(pct) < 55
    assert 0.02 < np.mean(pct < 5) < 0.08 and 0.02 < np.mean(pct > 95) < 0.08
    # Conformity (Eq. 10, the member left out) was already out-of-sample.
    c = stats.conformity(torch.from_numpy(fresh))
    assert 46 < np.mean([stats.conformity_percentile(v) for v in c]) < 54


def test_files_with_in_sample_likelihood_quantiles_are_corrected_on_load(clip_shaped, tmp_path):
    _, fresh, stats, acc = clip_shaped
    _, in_sample = acc.member_values(stats)
    fields = dict(mean=stats.mean, mean_unit=stats.mean_unit, a=stats.a, b=stats.b,
                  whitening=stats.whitening, pearson=stats.pearson, provenance={"encoder": "synthetic"},
                  conformity_quantiles=stats.conformity_quantiles,
                  log_likelihood_quantiles=quantiles_of(in_sample), likelihood_out_of_sample=False)
    path = ModalityStats(n=3000, **fields).save(tmp_path / "old.safetensors")  # as written before
    with safe_open(str(path), framework="pt") as f:
        assert "log_likelihood_population" not in f.metadata()
    loaded = ModalityStats.load(path, expected_dim=768)
    # Equal to the quantiles of the corrected values up to the 1% grid's interpolation.
    torch.testing.assert_close(loaded.log_likelihood_quantiles, stats.log_likelihood_quantiles,
                               rtol=1e-6, atol=0)
    assert loaded.provenance["log_likelihood_quantiles"] == ("written in-sample, corrected to "
                                                             "leave-one-out on load")
    v = torch.from_numpy(fresh[:500])
    assert 40 < np.mean([loaded.readouts(x)["log_likelihood_percentile"] for x in v]) < 60
    # Saved again, the file says its quantiles are out-of-sample and loads unchanged.
    again = ModalityStats.load(loaded.save(tmp_path / "new.safetensors"))
    assert torch.equal(again.log_likelihood_quantiles, loaded.log_likelihood_quantiles)
    # Without n there is nothing to correct with: no likelihood percentiles, and it says so.
    no_n = ModalityStats.load(ModalityStats(n=None, **fields).save(tmp_path / "no_n.safetensors"))
    assert no_n.log_likelihood_quantiles is None and no_n.conformity_quantiles is not None
    assert "dropped on load" in no_n.provenance["log_likelihood_quantiles"]


# ------------------------------------------------------------------- KS p-value (vslerp score)
def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution, summed to convergence in mpmath: the
    alternating series for lam >= 1, its Jacobi theta form (fast for small lam) below."""
    import mpmath

    lam = mpmath.mpf(lam)
    if lam < 1:
        cdf = mpmath.sqrt(2 * mpmath.pi) / lam * mpmath.nsum(
            lambda k: mpmath.exp(-((2 * k - 1) ** 2) * mpmath.pi**2 / (8 * lam**2)), [1, mpmath.inf])
        return float(1 - cdf)
    terms = lambda k: (-1) ** (k - 1) * mpmath.exp(-2 * k * k * lam * lam)  # noqa: E731
    return float(2 * mpmath.nsum(terms, [1, mpmath.inf]))


def test_ks_p_value_follows_the_kolmogorov_distribution_for_large_samples():
    from vslerp_app.score import ks_statistic

    rng = np.random.default_rng(5)
    a = rng.normal(size=20000)
    # b = a plus one point: the samples are the same but for 1 in 20001. A 100-term series
    # with Stephens' correction gave p = 0.17 here; the distribution says 1.
    d, p = ks_statistic(a, np.append(a, 0.3))
    assert d < 1e-4  # at most 1/20001 per point: the CDFs differ by the one point's weight
    assert p == pytest.approx(1.0, abs=1e-9)
    assert kolmogorov_sf(math.sqrt(20000 * 20001 / 40001) * d) == pytest.approx(1.0, abs=1e-12)
    for shift, m in ((0.02, 15000), (0.05, 20000), (0.0, 5000)):
        b = rng.normal(shift, 1, m)
        d, p = ks_statistic(a, b)
        grid = np.concatenate([a, b])  # sup |F_a - F_b| is reached at a sample point
        brute = np.max(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                              - np.searchsorted(np.sort(b), grid, "right") / len(b)))
        assert d == pytest.approx(brute, abs=1e-12)
        reference = kolmogorov_sf(math.sqrt(len(a) * m / (len(a) + m)) * d)
        print(f"\nKS n=20000 m={m} shift={shift}: p={p:.4g}, Kolmogorov (mpmath) {reference:.4g}")
        assert p == pytest.approx(reference, rel=0.03, abs=1e-3)
