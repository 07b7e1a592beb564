"""Aiming at a conformity: the alpha whose Eq. 12 embedding has a wanted conformity.

Every way in: the search itself on curves with known answers, the engine on the tiny Karlo
fixture (checked against a dense brute-force scan of the curve and against the frames it
renders), `render_sequence` and `vslerp render --conformity`, the HTTP API's
``target_conformity`` of /preview and /sequence, and the app's *Aim* button in a browser.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vslerp_app import geometry, load_pipeline
from vslerp_app.engine import AIM_ALPHA_RANGE, aim_alpha
from vslerp_app.fixtures import write_fixture
from vslerp_app.render import render_sequence
from vslerp_app.specs import SpecError
from vslerp_app.stats import ModalityStats

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "examples" / "chelsea.jpg", ROOT / "examples" / "rocket.jpg"
FAST = {"steps": 2, "super_res_steps": 2}
TOL = 1e-4  # the bar; the search itself reaches ~1e-12


def curve_of(fn):
    return lambda a: fn(a.to(torch.float64))


# -- the search ---------------------------------------------------------------------------
def test_several_roots_give_the_one_nearest_zero():
    alpha, achieved, reachable = aim_alpha(curve_of(lambda a: (a - 0.1) ** 2), 1.0)
    assert reachable and alpha == pytest.approx(-0.9, abs=1e-12) and achieved == pytest.approx(1.0, abs=1e-12)
    alpha, _, _ = aim_alpha(curve_of(lambda a: (a + 0.1) ** 2), 1.0)
    assert alpha == pytest.approx(0.9, abs=1e-12)
    alpha, _, reachable = aim_alpha(curve_of(torch.sin), math.sin(2.5))  # roots 0.64 and 2.5
    assert reachable and alpha == pytest.approx(math.pi - 2.5, abs=1e-12)


def test_out_of_reach_gives_the_closest_value_and_its_alpha():
    alpha, achieved, reachable = aim_alpha(curve_of(torch.tanh), 0.999)  # tanh(3) = 0.99505
    assert not reachable and alpha == 3.0 and achieved == pytest.approx(math.tanh(3.0), abs=1e-15)
    alpha, achieved, reachable = aim_alpha(curve_of(lambda a: (a - 0.123) ** 2 + 0.5), 0.2)
    assert not reachable and alpha == pytest.approx(0.123, abs=1e-6)
    assert achieved == pytest.approx(0.5, abs=1e-12)
    # A minimum at the edge of the range.
    alpha, achieved, reachable = aim_alpha(curve_of(lambda a: a), 0.5, alpha_range=(1.0, 2.0))
    assert (alpha, achieved, reachable) == (1.0, 1.0, False)


def test_a_flat_curve_gives_alpha_zero_and_a_tangent_is_reached():
    flat = curve_of(lambda a: torch.full_like(a, 0.7))
    assert aim_alpha(flat, 0.7) == (0.0, 0.7, True)
    assert aim_alpha(flat, 0.9) == (0.0, 0.7, False)
    alpha, achieved, reachable = aim_alpha(curve_of(lambda a: 0.8 - (a - 0.5) ** 2), 0.8)
    assert reachable and alpha == pytest.approx(0.5, abs=1e-4) and achieved == pytest.approx(0.8, abs=1e-9)


def test_at_theta_0_and_1_alpha_is_0_and_reachable_only_at_the_ends_own_conformity_d768():
    """Eq. 12 pins the ends, so conformity there does not depend on alpha: the 1-ulp gap
    between a batched and a single readout used to give spurious roots (alpha 2.995)."""
    rng = np.random.default_rng(21)
    d = 768
    mean = rng.standard_normal(d)
    mean *= 13 / np.linalg.norm(mean)
    scales = np.sqrt(150 / d * np.linspace(3.0, 0.05, d))  # anisotropic
    members = torch.from_numpy(mean + rng.standard_normal((3000, d)) * scales)
    from vslerp_app.stats import compute_stats

    stats = compute_stats(members, population=False)
    v0, v1 = members[0], members[1]
    for theta, end in ((0.0, v0), (1.0, v1)):
        def curve(alphas, theta=theta):
            return stats.conformity(geometry.vslerp(v0, v1, theta, alphas, stats.mean.double()))

        own = float(stats.conformity(end))  # a single readout, as the UI shows it
        # The float64 reference: Eq. 10 with mean_unit, in numpy.
        reference = float(end.numpy() / np.linalg.norm(end.numpy()) @ stats.mean_unit.double().numpy())
        assert own == pytest.approx(reference, abs=1e-14)
        assert aim_alpha(curve, own, theta=theta) == (0.0, pytest.approx(own, abs=1e-15), True)
        alpha, achieved, reachable = aim_alpha(curve, own + 1e-6, theta=theta)
        assert (alpha, reachable) == (0.0, False) and achieved == pytest.approx(own, abs=1e-15)
        assert aim_alpha(curve, own + 0.5e-9, theta=theta)[2]  # within the stated 1e-9


def test_aiming_at_the_ends_through_the_pipeline_gives_alpha_0(pipe):
    for theta, image in ((0.0, SOURCE), (1.0, TARGET)):
        own = float(pipe.stats.conformity(pipe.encode(image)))
        r = pipe.alpha_for_conformity(SOURCE, TARGET, theta, own)
        assert (r.alpha, r.reachable) == (0.0, True) and r.achieved == pytest.approx(own, abs=1e-12)
        r = pipe.alpha_for_conformity(SOURCE, TARGET, theta, own + 0.01)
        assert (r.alpha, r.reachable) == (0.0, False) and r.achieved == pytest.approx(own, abs=1e-12)


def test_readme_aiming_snippets_compile():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Aiming at a conformity", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and "alpha_for_conformity" in blocks[0] and "target_conformity" in blocks[1]
    for block in blocks:
        compile(block, "README snippet", "exec")
    assert "--conformity 0.8" in section


# -- the engine on the fixture ----------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(karlo_dir):
    return load_pipeline(karlo_dir)


def dense_curve(pipe, theta, n=24001):
    alphas = torch.linspace(*AIM_ALPHA_RANGE, n, dtype=torch.float64)
    v0, v1 = pipe.encode(SOURCE).double(), pipe.encode(TARGET).double()
    emb = geometry.vslerp(v0, v1, theta, alphas, pipe.stats.mean.double())
    return alphas.numpy(), pipe.stats.conformity(emb).numpy()


def test_aimed_alpha_reproduces_the_wanted_conformity_nearest_zero(pipe):
    cases = []
    for theta, at in ((0.3, 2.0), (0.5, -1.0), (0.5, 2.5), (0.8, 1.2)):
        alphas, values = dense_curve(pipe, theta)
        wanted = float(values[np.argmin(np.abs(alphas - at))])
        r = pipe.alpha_for_conformity(SOURCE, TARGET, theta, wanted)
        assert r.reachable and abs(r.achieved - wanted) < 1e-10 and r.theta == theta
        assert AIM_ALPHA_RANGE[0] <= r.alpha <= AIM_ALPHA_RANGE[1]
        # No alpha nearer 0 reaches it: the brute-force scan finds no crossing inside |r.alpha|.
        inside = np.abs(alphas) < abs(r.alpha) - 1e-3
        gap = values[inside] - wanted
        assert not np.any(gap[:-1] * gap[1:] < 0) and not np.any(gap == 0)
        cases.append((theta, r.alpha, wanted))
    # The frames rendered at those alphas: their embeddings have the wanted conformity.
    frames = pipe.generate(SOURCE, TARGET, [c[0] for c in cases], [c[1] for c in cases], seed=3, **FAST)
    for frame, (_, _, wanted) in zip(frames, cases, strict=True):
        assert abs(frame.conformity - wanted) < TOL


def test_out_of_reach_reports_the_closest_value_the_range_allows(pipe):
    alphas, values = dense_curve(pipe, 0.5)
    for wanted, best in ((values.max() + 0.02, values.max()), (values.min() - 0.02, values.min())):
        wanted = float(wanted)
        r = pipe.alpha_for_conformity(SOURCE, TARGET, 0.5, wanted)
        assert not r.reachable and r.wanted == wanted
        assert r.achieved == pytest.approx(float(best), abs=1e-7)  # the scan's extreme, refined
        (frame,) = pipe.generate(SOURCE, TARGET, 0.5, r.alpha, seed=3, **FAST)
        assert abs(frame.conformity - r.achieved) < TOL
    # theta = 0 is the source itself for every alpha: alpha 0, reached only at its own conformity.
    own = float(pipe.stats.conformity(pipe.encode(SOURCE)))
    assert pipe.alpha_for_conformity(SOURCE, TARGET, 0.0, own).as_dict() == {
        "wanted": own, "achieved": pytest.approx(own, abs=1e-12), "alpha": 0.0, "reachable": True}
    r = pipe.alpha_for_conformity(SOURCE, TARGET, 0.0, own + 0.05)
    assert (r.alpha, r.reachable) == (0.0, False)


def test_aiming_refuses_what_it_cannot_do(pipe, tmp_path):
    with pytest.raises(SpecError, match="theta"):
        pipe.alpha_for_conformity(SOURCE, TARGET, 1.5, 0.8)
    with pytest.raises(SpecError, match="conformity must be a finite number"):
        pipe.alpha_for_conformity(SOURCE, TARGET, 0.5, float("nan"))
    with pytest.raises(SpecError, match="alpha_range"):
        pipe.alpha_for_conformity(SOURCE, TARGET, 0.5, 0.8, alpha_range=(2, -2))
    bare = load_pipeline(write_fixture("karlo", tmp_path / "no-stats", write_stats=False))
    assert bare.stats is None
    with pytest.raises(SpecError, match="needs this model's image statistics.*vslerp stats"):
        bare.alpha_for_conformity(SOURCE, TARGET, 0.5, 0.8)


def test_mean_only_stats_aim_at_the_cosine_and_say_so(karlo_dir):
    full = load_pipeline(karlo_dir)
    cosine = load_pipeline(karlo_dir, stats=ModalityStats.from_mean(full.stats.mean, encoder="tiny"))
    assert cosine.stats.conformity_kind == "cosine"
    v0, v1 = cosine.encode(SOURCE).double(), cosine.encode(TARGET).double()
    wanted = float(geometry.cosine(geometry.vslerp(v0, v1, 0.4, 1.7, cosine.stats.mean.double()),
                                   cosine.stats.mean.double()))
    r = cosine.alpha_for_conformity(SOURCE, TARGET, 0.4, wanted)
    assert r.reachable
    (frame,) = cosine.generate(SOURCE, TARGET, 0.4, r.alpha, seed=0, **FAST)
    assert abs(frame.conformity - wanted) < TOL
    readouts = frame.readouts()
    assert readouts["conformity_kind"] == "cosine"
    assert readouts["conformity_label"] == "cosine to the image mean (Eq. 11 uncalibrated)"
    assert readouts["conformity_percentile"] is None and readouts["frame_conformity_percentile"] is None
    assert cosine.info()["stats"]["conformity_label"] == "cosine to the image mean (Eq. 11 uncalibrated)"


# -- render_sequence and the command line -------------------------------------------------------
def wanted_values(pipe, thetas, alphas):
    v0, v1 = pipe.encode(SOURCE).double(), pipe.encode(TARGET).double()
    emb = geometry.vslerp(v0, v1, torch.tensor(thetas, dtype=torch.float64),
                          torch.tensor(alphas, dtype=torch.float64), pipe.stats.mean.double())
    return [float(c) for c in pipe.stats.conformity(emb)]


def test_render_sequence_aims_each_frame_and_the_manifest_says_wanted_and_achieved(pipe, tmp_path):
    thetas = [0.25, 0.5, 0.75]
    wanted = wanted_values(pipe, thetas, [1.5, -0.5, 2.0])
    wanted[2] = 0.99  # out of reach here
    m = render_sequence(pipe, SOURCE, TARGET, thetas, None, 5, tmp_path / "r", conformity=wanted,
                        max_batch=2, **FAST)
    frames = m["frames"]
    assert [f["theta"] for f in frames] == thetas and m["settings"]["conformity"] == wanted
    for f, w in zip(frames, wanted, strict=True):
        assert f["aim"]["wanted"] == w and f["aim"]["alpha"] == f["alpha"]
        assert abs(f["conformity"] - f["aim"]["achieved"]) < TOL
    assert [f["aim"]["reachable"] for f in frames] == [True, True, False]
    assert all(abs(f["conformity"] - w) < TOL for f, w in zip(frames[:2], wanted, strict=False))
    with pytest.raises(SpecError, match="not both"):
        render_sequence(pipe, SOURCE, TARGET, thetas, 1.0, 5, tmp_path / "x", conformity=0.8, **FAST)
    with pytest.raises(SpecError, match="not --grid"):
        render_sequence(pipe, SOURCE, TARGET, thetas, None, 5, tmp_path / "x", conformity=0.8, grid=True,
                        **FAST)
    with pytest.raises(SpecError, match=r"theta has 3 values and conformity 2: .* one side$"):
        render_sequence(pipe, SOURCE, TARGET, [0.0, 0.5, 1.0], None, 5, tmp_path / "x", conformity=[0.7, 0.8],
                        **FAST)


def vslerp(*args):
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_cli_render_conformity_spec_paired_with_theta_and_resumed(pipe, karlo_dir, tmp_path):
    w1, w2 = wanted_values(pipe, [0.3, 0.7], [1.0, 2.5])
    out = tmp_path / "cli"
    args = ["render", "--model", karlo_dir, "--source", SOURCE, "--target", TARGET, "--theta", "0.3,0.7,0.7",
            "--conformity", f"{w1!r},{w2!r},0.999", "--seed", 4, "--out", out, "--steps", 2,
            "--super-res-steps", 2]
    result = vslerp(*args)
    assert result.returncode == 0, result.stderr
    assert "aimed at a conformity: 2 of 3 frames reach it" in result.stderr
    assert "theta 0.7: conformity 0.999 is out of reach; closest" in result.stderr
    m = json.loads((out / "manifest.json").read_text())
    aims = [f["aim"] for f in m["frames"]]
    assert [a["wanted"] for a in aims] == [w1, w2, 0.999]
    assert [a["reachable"] for a in aims] == [True, True, False]
    assert all(abs(f["conformity"] - a["wanted"]) < TOL for f, a in zip(m["frames"][:2], aims, strict=False))
    again = vslerp(*args)  # resumed: the same alphas, every frame kept
    assert again.returncode == 0 and "(0 rendered, 3 already done" in again.stdout

    both = vslerp(*args, "--alpha", "1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    grid = vslerp(*args[:-4], "--grid", "--out", tmp_path / "g")
    assert grid.returncode == 2 and "not --grid" in grid.stderr


# -- the HTTP API and the browser -------------------------------------------------------------
# `app` and `client`: the app shared with the API tests (conftest.py).
API_FAST = {"steps": 2, "super_res_steps": 2, "preview_steps": 2}


def test_api_preview_and_sequence_take_a_target_conformity(pipe, client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/preview", "/sequence"):
        last = api[name]["parameters"][-1]
        assert last["parameter_name"] == "target_conformity" and last["parameter_default"] is None
    src, tgt = handle_file(str(SOURCE)), handle_file(str(TARGET))
    (wanted,) = wanted_values(pipe, [0.5], [1.8])
    _, r = client.predict(source=src, target=tgt, theta=0.5, alpha=0.0, seed=2, target_conformity=wanted,
                          api_name="/preview", **API_FAST)
    assert r["aim"]["reachable"] and r["aim"]["wanted"] == wanted and r["alpha"] == r["aim"]["alpha"]
    assert abs(r["conformity"] - wanted) < TOL
    _, r = client.predict(source=src, target=tgt, theta=0.5, alpha=1.0, seed=2, api_name="/preview",
                          **API_FAST)
    assert "aim" not in r and r["alpha"] == 1.0  # left out: not aiming, as before

    *_, zip_path, _smoothness = client.predict(
        source=src, target=tgt, sweep="theta", theta_start=0.2, theta_stop=0.8, theta_frames=3, seed=2,
        target_conformity=wanted, api_name="/sequence", **API_FAST)
    with zipfile.ZipFile(zip_path) as z:
        m = json.loads(z.read("manifest.json"))
    assert [f["aim"]["wanted"] for f in m["frames"]] == [wanted] * 3
    for f in m["frames"]:
        assert abs(f["conformity"] - f["aim"]["achieved"]) < TOL
    with pytest.raises(AppError, match="sweep='theta'"):
        client.predict(source=src, target=tgt, sweep="alpha", target_conformity=wanted, api_name="/sequence")
    with pytest.raises(AppError, match="target_conformity must be between -1 and 1, got 'high'"):
        client.predict(source=src, target=tgt, target_conformity="high", api_name="/preview")
    with pytest.raises(AppError, match="target_conformity must be between -1 and 1, got 5"):
        client.predict(source=src, target=tgt, target_conformity=5, api_name="/preview")


@pytest.mark.browser
def test_the_aim_button_sets_alpha_and_renders_at_it(pipe, app):
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_app_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    (wanted,) = wanted_values(pipe, [0.5], [1.3])
    expected = pipe.alpha_for_conformity(SOURCE, TARGET, 0.5, wanted)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app.url)
        page.locator("#source input[type=file]").set_input_files(str(SOURCE))
        page.locator("#target input[type=file]").set_input_files(str(TARGET))
        page.locator("#target img").wait_for()
        box = page.locator("#target_conformity input")
        assert box.input_value() == ""  # nothing typed: not aiming (an empty number box would say 0)
        box.fill(f"{wanted:.6f}")
        page.locator("#aim").click()
        page.locator("#aim-note").get_by_text("Aimed at conformity").wait_for()
        page.locator("#readout").get_by_text("Aimed at conformity").wait_for()
        readout = page.locator("#readout")
        sync_api.expect(readout).not_to_contain_text("(preview)", timeout=TIMEOUT_MS)  # then the full frame
        shown = float(page.locator("#alpha input[type=number]").input_value())
        assert shown == pytest.approx(expected.alpha, abs=0.01)
        assert shown == round(shown, 4)  # the slider shows 4 decimals, not 16
        assert "Exact conformity (Eq. 10)" in page.locator("#readout").inner_text()
        # A refusal on screen: aiming with nothing typed.
        box.fill("")
        page.locator("#aim").click()
        page.get_by_text("Type the conformity to aim at first").first.wait_for()
        box.fill("5")  # a conformity is a cosine
        page.locator("#aim").click()
        page.get_by_text("target_conformity must be between -1 and 1").first.wait_for()
        browser.close()
