"""The smoothness measures (vslerp_app.smoothness) against an independent float64 reference.

Steps are cosine distances of neighbouring embeddings (scipy's), Gini the mean absolute
difference over twice the mean, PPL n * sum d^2, PDV the standard deviation, directness
counted step by step in plain Python; at CLIP's size (d = 768) and thousands of frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine as scipy_cosine

from vslerp_app import smoothness


def _walk(rng, n: int, d: int = 768) -> np.ndarray:
    """A random walk of n raw CLIP-like vectors (a mean far from the origin plus drifting noise)."""
    mean = rng.normal(size=d)
    mean *= 10 / np.linalg.norm(mean)
    return mean + np.cumsum(rng.normal(scale=rng.uniform(0.01, 0.3), size=(n, d)), axis=0)


def _gini_reference(x: np.ndarray) -> float:
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


@pytest.mark.parametrize("closed", [False, True])
def test_measures_against_a_float64_reference(closed):
    rng = np.random.default_rng(1)
    e = _walk(rng, 2000)
    m = smoothness.describe(torch.from_numpy(e).float() if closed else e, closed=closed)
    pairs = [(i, (i + 1) % len(e)) for i in range(len(e) if closed else len(e) - 1)]
    d = np.array([scipy_cosine(e[i], e[j]) for i, j in pairs])
    tol = 1e-6 if closed else 1e-12  # float32 input when closed
    np.testing.assert_allclose(m["steps"], d, rtol=tol * 10, atol=tol)
    n = len(d)
    assert m["path_length"] == pytest.approx(d.sum(), rel=tol * 10)
    assert m["ppl"] == pytest.approx(n * np.sum(d ** 2), rel=tol * 10)
    assert m["pdv"] == pytest.approx(np.std(d), rel=tol * 100)
    assert m["smoothness"] == pytest.approx(1 - _gini_reference(d), rel=tol * 10)
    jump = m["largest_jump"]
    assert jump["step"] == int(np.argmax(d)) and jump["frames"] == list(pairs[jump["step"]])
    assert jump["distance"] == pytest.approx(d.max(), rel=tol * 10)
    assert jump["times_mean"] == pytest.approx(d.max() / d.mean(), rel=tol * 10)


def test_even_steps_are_perfectly_smooth_and_one_jump_is_not():
    rng = np.random.default_rng(2)
    p0, p1 = rng.normal(size=768), rng.normal(size=768)
    w = np.arccos(p0 @ p1 / np.linalg.norm(p0) / np.linalg.norm(p1))
    t = np.linspace(0, 1, 33)[:, None]  # unit vectors on a great circle: equal steps
    u0, u1 = p0 / np.linalg.norm(p0), p1 / np.linalg.norm(p1)
    arc = (np.sin((1 - t) * w) * u0 + np.sin(t * w) * u1) / np.sin(w)
    even = smoothness.describe(arc, sources=arc[0], targets=arc[-1])
    assert even["smoothness"] == pytest.approx(1.0, abs=1e-9) and even["pdv"] == pytest.approx(0, abs=1e-12)
    assert even["ppl"] == pytest.approx(even["path_length"] ** 2, rel=1e-9)  # n sum d^2 = L^2 when even
    assert even["directness"] == {"directness": 1.0, "source_rises": 0, "target_falls": 0, "steps": 32}
    jumpy = np.concatenate([np.repeat(arc[:1], 16, axis=0), np.repeat(arc[-1:], 17, axis=0)])  # a cut
    cut = smoothness.describe(jumpy)
    assert cut["smoothness"] == pytest.approx(1 / 32) and cut["largest_jump"]["frames"] == [15, 16]
    assert cut["ppl"] == pytest.approx(32 * cut["path_length"] ** 2)
    assert smoothness.gini([0, 0, 0]) == 0.0 and smoothness.gini([0, 0, 1]) == pytest.approx(2 / 3)


def test_directness_counts_each_wrong_way_step():
    rng = np.random.default_rng(3)
    for _ in range(4):
        e = _walk(rng, 300)
        src, tgt = e[0], e[-1]
        got = smoothness.directness(e, src, tgt)

        def cos(a, b):
            return 1 - scipy_cosine(a, b)

        rises = sum(cos(e[i + 1], src) > cos(e[i], src) + 1e-9 for i in range(len(e) - 1))
        falls = sum(cos(e[i + 1], tgt) < cos(e[i], tgt) - 1e-9 for i in range(len(e) - 1))
        wrong = sum((cos(e[i + 1], src) > cos(e[i], src) + 1e-9)
                    or (cos(e[i + 1], tgt) < cos(e[i], tgt) - 1e-9) for i in range(len(e) - 1))
        assert got == {"directness": pytest.approx(1 - wrong / (len(e) - 1)), "source_rises": rises,
                       "target_falls": falls, "steps": len(e) - 1}


def test_sequence_layouts_path_and_grid():
    rng = np.random.default_rng(4)
    e = _walk(rng, 12)
    # a loop of 3 keyframes at frames 0, 4, 8: step i is judged against its segment's keyframes
    segments = [0] * 4 + [1] * 4 + [2] * 4
    m = smoothness.describe_sequence(e, segments=segments, keyframe_frames=[0, 4, 8], loop=True)
    first, second = m["largest_jump"]["frames"]
    assert len(m["steps"]) == 12 and second == (first + 1) % 12
    sources = e[[0] * 4 + [4] * 4 + [8] * 4]
    targets = e[[4] * 4 + [8] * 4 + [0] * 4]
    assert m["directness"] == smoothness.directness(e, sources, targets, closed=True)
    g = smoothness.describe_sequence(e, grid=(3, 4))
    assert [len(r["steps"]) for r in g["rows"]] == [3, 3, 3]
    assert [len(c["steps"]) for c in g["columns"]] == [2] * 4
    np.testing.assert_allclose(g["columns"][1]["steps"], smoothness.cosine_steps(e[[1, 5, 9]]))
    line = smoothness.summary_line(g)
    assert line.startswith("Grid rows (one theta each): smoothness") and "columns (one alpha each)" in line
    words = smoothness.summary_line(smoothness.describe(e, sources=e[0], targets=e[-1]))
    assert "Smoothness 0." in words and "largest jump between frames" in words and "% of steps" in words


def test_lpips_is_absent_without_its_weights_and_says_nothing(tmp_path, monkeypatch, capsys, caplog):
    """The lpips package may be installed, but AlexNet's weights come from download.pytorch.org on
    first use: with an empty torch hub cache nothing is downloaded and nothing is said."""
    from PIL import Image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() is $TORCH_HOME/hub
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    assert not smoothness.lpips_weights_present()
    frames = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(4)]
    assert smoothness.lpips_steps(frames) is None
    assert not any(tmp_path.rglob("*.pth"))  # nothing fetched
    assert capsys.readouterr() == ("", "") and not caplog.records
    # where the weights would go: the file torchvision downloads AlexNet's ImageNet weights to
    pytest.importorskip("torchvision")
    from torchvision.models import AlexNet_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url == smoothness._ALEXNET
