"""The studio in a real browser: Debian's chromium driven by Playwright for Python.

Upload both images, move a slider (release renders a preview, then the full frame), see the
frame and its conformity, generate, run a short sequence and download its GIF, click an
example, swap the images and draw a new seed. A screenshot of the page is kept under
test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_app_api import SOURCE, TARGET, launched_app, write_tiny_karlo

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model = write_tiny_karlo(tmp_path_factory.mktemp("tiny-karlo"))
    with launched_app(model, tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a slider or number component and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def _drag_slider(page, elem_id: str, fraction: float) -> None:
    """Press, drag and release the mouse on a slider, as a person does (fires `release`)."""
    rng = page.locator(f"#{elem_id} input[type=range]")
    box = rng.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, y, steps=5)
    page.mouse.up()


def test_upload_slide_generate_sequence_and_download_the_gif(app, browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app.url)
    page.get_by_text("vSLERP Studio").first.wait_for()

    # Both images.
    page.locator("#source input[type=file]").set_input_files(str(SOURCE))
    page.locator("#target input[type=file]").set_input_files(str(TARGET))
    page.locator("#source img").wait_for()
    page.locator("#target img").wait_for()

    # Tiny step counts in the advanced settings (Karlo's scheduler needs two).
    page.get_by_text("Advanced settings").click()
    for elem_id in ("steps", "super_res_steps", "preview_steps"):
        _set_number(page, elem_id, 2)

    # Release the theta slider: a preview, then the full frame with its conformity.
    _drag_slider(page, "theta", 0.3)
    page.locator("#frame-out img").wait_for()
    readout = page.locator("#readout")
    sync_api.expect(readout).to_contain_text("Exact conformity (Eq. 10)")
    sync_api.expect(readout).not_to_contain_text("(preview)", timeout=TIMEOUT_MS)  # the full frame followed
    theta = float(page.locator("#theta input[type=number]").input_value())
    assert abs(theta - 0.3) < 0.05, theta  # the drag moved it from 0.5
    text = readout.inner_text()
    assert f"theta = {theta:.3f}" in text, text
    assert "source 0." in text and "target 0." in text, text

    # A typed-in alpha renders too (preview, then full).
    _set_number(page, "alpha", 2)
    sync_api.expect(readout).to_contain_text("alpha = 2.000")
    sync_api.expect(readout).not_to_contain_text("(preview)")

    # Generate with another seed: the full frame.
    _set_number(page, "seed", 7)
    page.locator("#generate").click()
    sync_api.expect(readout).to_contain_text("alpha = 2.000, seed 7")
    sync_api.expect(readout).not_to_contain_text("(preview)")
    with Image.open(_download_src(page, "#frame-out img", tmp_path / "frame.png")) as im:
        assert im.size == (64, 64)

    # Keep editing from the frame: it becomes the source (the same pixels).
    page.locator("#use-frame").click()
    sync_api.expect(page.locator("#source img")).not_to_have_attribute("src", re.compile(r"chelsea"))
    with Image.open(_download_src(page, "#source img", tmp_path / "source.png")) as im, \
            Image.open(tmp_path / "frame.png") as frame_png:
        assert im.size == (64, 64) and im.tobytes() == frame_png.convert(im.mode).tobytes()

    # A short theta sweep, then the GIF download.
    _set_number(page, "theta_frames", 3)
    page.locator("#run-sequence").click()
    sync_api.expect(page.locator("#gallery img")).to_have_count(3)
    page.get_by_text("θ=1.00").first.wait_for()
    gif_link = page.locator("#gif a").first
    gif_link.wait_for()
    with page.expect_download() as download:
        gif_link.click()
    gif = tmp_path / "sequence.gif"
    download.value.save_as(gif)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
    sync_api.expect(page.locator("#plot img")).to_have_count(1)
    sync_api.expect(page.locator("#zip a").first).to_have_attribute("download", "sequence.zip")

    page.screenshot(path=str(ARTIFACTS / "app-browser.png"), full_page=True)

    # An example fills both images and its suggested theta and alpha.
    page.get_by_text("rocket -> coffee, plain SLERP").click()
    sync_api.expect(page.locator("#alpha input[type=number]")).to_have_value("0")
    sync_api.expect(page.locator("#theta input[type=number]")).to_have_value("0.5")
    sync_api.expect(page.locator("#source img")).to_have_attribute("src", re.compile(r"rocket"))

    # Swap: the source becomes the target and back; a new seed replaces 7.
    page.locator("#swap").click()
    sync_api.expect(page.locator("#source img")).to_have_attribute("src", re.compile(r"coffee"))
    sync_api.expect(page.locator("#target img")).to_have_attribute("src", re.compile(r"rocket"))
    page.locator("#random-seed").click()
    sync_api.expect(page.locator("#seed input")).not_to_have_value("7")
    assert int(page.locator("#seed input").input_value()) >= 0
    assert not errors, errors
    page.close()


def _download_src(page, selector: str, dest: Path) -> Path:
    """Fetch an <img>'s source through the page (same origin), to check the served file."""
    src = page.locator(selector).get_attribute("src")
    resp = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + src)
    assert resp.ok, resp.status
    dest.write_bytes(resp.body())
    return dest
