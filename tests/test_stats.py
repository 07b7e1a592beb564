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
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vslerp_app.geometry import member_conformity
from vslerp_app.stats import FORMAT, ModalityStats, StatsAccumulator, StatsError, compute_stats

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


def test_whitening_only_when_there_are_more_embeddings_than_dimensions():
    x = shell_population(65, 64, seed=3)
    assert compute_stats(torch.from_numpy(x[:64])).whitening is None
    assert compute_stats(torch.from_numpy(x[:30])).whitening is None
    assert compute_stats(torch.from_numpy(x[:30])).log_likelihood(torch.from_numpy(x[0])) is None
    assert compute_stats(torch.from_numpy(x)).whitening is not None
    assert compute_stats(torch.from_numpy(x), whitening=False).whitening is None


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
    x = shell_population(40, 16, seed=6)
    text = compute_stats(torch.from_numpy(x), modality="text")
    assert text.provenance["caption_count"] == "40" and "image_count" not in text.provenance
    loaded = ModalityStats.load(text.save(tmp_path / "t.safetensors"))
    assert loaded.modality == "text" and loaded.whitening is not None  # 40 > 16
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
