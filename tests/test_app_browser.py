"""The studio in a real browser: Debian's chromium driven by Playwright for Python.

Upload both images, move a slider (release renders a preview, then the full frame), see the
frame and its conformity explained, generate, run a short sequence and download its GIF,
click an example (it renders), swap the images and draw a new seed; every refusal appears
on the page; a sequence streams into the gallery and Stop stops it; on a phone the new
frame comes into view and the gallery's captions fit. Screenshots are kept under
test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app_api import EXAMPLES, SOURCE, TARGET

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000
THIRD = EXAMPLES / "coffee.jpg"  # a third keyframe
expect.set_options(timeout=TIMEOUT_MS)  # renders share two cores with other work: wait as a person would


# The two screens every rough edge is checked on: a desktop at 1440 px and a 390 px phone.
SCREENS = {"desktop": {"viewport": {"width": 1440, "height": 1000}},
           "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                     "has_touch": True}}


# `app`: the app shared with the API tests (conftest.py).


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, app, **context):
    page = browser.new_page(**({"viewport": {"width": 1400, "height": 1000}} | context))
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(app.url)
    page.get_by_text("vSLERP Studio").first.wait_for()
    return page


def _set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a slider or number component and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def _gallery_columns(page, elem_id: str) -> int:
    """How many columns the gallery shows (its grid's computed columns)."""
    grid = page.locator(f"#{elem_id} .grid-container")
    return grid.evaluate("e => getComputedStyle(e).gridTemplateColumns.trim().split(/\\s+/).length")


def _drag_slider(page, elem_id: str, fraction: float) -> None:
    """Press, drag and release the mouse on a slider, as a person does (fires `release`)."""
    rng = page.locator(f"#{elem_id} input[type=range]")
    box = rng.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, y, steps=5)
    page.mouse.up()


def _both_images(page, source=SOURCE, target=TARGET) -> None:
    page.locator("#source input[type=file]").set_input_files(str(source))
    page.locator("#target input[type=file]").set_input_files(str(target))
    page.locator("#target img").wait_for()


def _fast_settings(page, max_batch: int | None = None) -> None:
    """Tiny step counts in the advanced settings (Karlo's scheduler needs two)."""
    page.get_by_text("Advanced settings").click()
    for elem_id in ("steps", "super_res_steps", "preview_steps"):
        _set_number(page, elem_id, 2)
    if max_batch is not None:
        _set_number(page, "max_batch", max_batch)


def _refusal_shown(page, message: str) -> None:
    """The message is on the page (Gradio's error toast), then the toasts are closed."""
    toast = page.locator(".toast-body").filter(has_text=message)
    expect(toast.first).to_be_visible()
    for close in page.locator(".toast-close").all():
        if close.is_visible():
            close.click()
    expect(page.locator(".toast-body")).to_have_count(0)


def test_upload_slide_generate_sequence_and_download_the_gif(app, browser, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = _open(browser, app, accept_downloads=True)
    _both_images(page)
    page.locator("#source img").wait_for()
    _fast_settings(page)

    # Release the theta slider: a preview, then the full frame with its conformity explained.
    _drag_slider(page, "theta", 0.3)
    page.locator("#frame-out img").wait_for()
    readout = page.locator("#readout")
    expect(readout).to_contain_text("Exact conformity (Eq. 10)")
    expect(readout).not_to_contain_text("(preview)", timeout=TIMEOUT_MS)  # the full frame followed
    theta = float(page.locator("#theta input[type=number]").input_value())
    assert abs(theta - 0.3) < 0.05, theta  # the drag moved it from 0.5
    text = readout.inner_text()
    assert f"theta = {theta:.3f}" in text, text
    assert "higher is more typical" in text and "higher is more likely" in text, text
    assert re.search(r"This frame: -?\d\.\d{3}, (between|above both|below both) the source and the "
                     r"target \(0\.\d{3} and 0\.\d{3}\)", text), text

    # A typed-in alpha renders too (preview, then full).
    _set_number(page, "alpha", 2)
    expect(readout).to_contain_text("alpha = 2.000")
    expect(readout).not_to_contain_text("(preview)")

    # Generate: the full frame, its denoising steps counted while it renders.
    _set_number(page, "seed", 6)
    _set_number(page, "steps", 30)
    page.locator("#generate").click()
    expect(page.locator("#frame-out")).to_contain_text(re.compile(r"\d+/32 steps .*denoising"))
    expect(readout).to_contain_text("alpha = 2.000, seed 6")
    _set_number(page, "steps", 2)
    _set_number(page, "seed", 7)
    page.locator("#generate").click()
    expect(readout).to_contain_text("alpha = 2.000, seed 7")
    expect(readout).not_to_contain_text("(preview)")
    with Image.open(_download_src(page, "#frame-out img", tmp_path / "frame.png")) as im:
        assert im.size == (64, 64)
    # The same frame again comes from the server's frame cache.
    _set_number(page, "seed", 8)
    page.locator("#generate").click()
    expect(readout).to_contain_text("seed 8")
    _set_number(page, "seed", 7)
    page.locator("#generate").click()
    expect(readout).to_contain_text("From the frame cache")

    # Keep editing from the frame: it becomes the source (the same pixels).
    page.locator("#use-frame").click()
    expect(page.locator("#source img")).not_to_have_attribute("src", re.compile(r"chelsea"))
    with Image.open(_download_src(page, "#source img", tmp_path / "source.png")) as im, \
            Image.open(tmp_path / "frame.png") as frame_png:
        assert im.size == (64, 64) and im.tobytes() == frame_png.convert(im.mode).tobytes()

    # A short theta sweep, then the GIF download.
    _set_number(page, "theta_frames", 3)
    page.locator("#run-sequence").click()
    expect(page.locator("#gallery img")).to_have_count(3)
    expect(page.locator("#gallery")).to_contain_text("Frames: all 3")
    page.get_by_text("θ=1.00").first.wait_for()
    with Image.open(_download_link(page, "#gif", tmp_path / "sequence.gif")) as im:
        assert im.format == "GIF" and im.n_frames == 3
    expect(page.locator("#plot img")).to_have_count(1)
    expect(page.locator("#zip a").first).to_have_attribute("download", "sequence.zip")
    # How evenly it moved, in words under the gallery, and the step strip under the plot
    smooth = page.locator("#smoothness")
    expect(smooth).to_contain_text("Smoothness in the model's CLIP:")
    expect(smooth).to_contain_text(re.compile(r"Smoothness [01]\.\d{3} \(1 − Gini of the steps"))
    expect(smooth).to_contain_text("largest jump between frames")
    _assert_step_strip(_download_src(page, "#plot img", tmp_path / "plot.png"))
    assert _gallery_columns(page, "gallery") == 8  # 3 frames keep a frame's size, not a third of the page
    page.get_by_text("grid (a row per theta, a column per alpha)").click()  # 2 thetas x 3 alphas
    _set_number(page, "theta_frames", 2)
    _set_number(page, "alpha_frames", 3)
    page.locator("#run-sequence").click()
    expect(page.locator("#gallery")).to_contain_text("Frames: all 6")
    assert _gallery_columns(page, "gallery") == 3  # a row per theta
    page.get_by_text("theta sweep (alpha fixed)").click()
    assert not (app.work / "vslerp-studio").is_dir() or not any((app.work / "vslerp-studio").iterdir())

    page.screenshot(path=str(ARTIFACTS / "app-browser.png"), full_page=True)

    # An example fills both images and its theta and alpha, and renders its frame.
    page.get_by_text("rocket -> coffee, plain SLERP").click()
    expect(page.locator("#alpha input[type=number]")).to_have_value("0")
    expect(page.locator("#theta input[type=number]")).to_have_value("0.5")
    expect(page.locator("#source img")).to_have_attribute("src", re.compile(r"rocket"))
    expect(readout).to_contain_text("theta = 0.500, alpha = 0.000")
    expect(readout).not_to_contain_text("(preview)")

    # Swap: the source becomes the target and back; a new seed replaces 7.
    page.locator("#swap").click()
    expect(page.locator("#source img")).to_have_attribute("src", re.compile(r"coffee"))
    expect(page.locator("#target img")).to_have_attribute("src", re.compile(r"rocket"))
    page.locator("#random-seed").click()
    expect(page.locator("#seed input")).not_to_have_value("7")
    seed = int(page.locator("#seed input").input_value())
    assert seed >= 0
    expect(readout).to_contain_text(f"seed {seed}")  # and the frame is rendered with it at once
    expect(readout).not_to_contain_text("(preview)")
    assert not page.errors, page.errors
    page.close()


def test_every_refusal_is_on_the_page(app, browser, tmp_path):
    """Each button that can be refused shows the refusal's text on the page, and a refused
    upload is not kept in its box."""
    page = _open(browser, app)
    page.locator("#generate").click()
    _refusal_shown(page, "Add a source image first (upload, paste or webcam), or click an example.")
    page.locator("#use-frame").click()
    _refusal_shown(page, "There is no frame yet: generate one first.")
    page.locator("#run-sequence").click()
    _refusal_shown(page, "Add a source image first")

    # A text file as the source: refused by the upload route as it arrives (what its bytes show),
    # and not kept in the box (the buttons then ask for a source; a file broken further in is
    # refused by the box's check, and through the API by /preview and /sequence).
    notes = tmp_path / "notes.png"
    notes.write_text("these are my holiday notes, not a picture\n")
    page.locator("#source input[type=file]").set_input_files(str(notes))
    _refusal_shown(page, "The file 'notes.png' is not an image (it looks like text).")
    expect(page.locator("#source img")).to_have_count(0)
    page.locator("#target input[type=file]").set_input_files(str(TARGET))
    page.locator("#target img").wait_for()
    page.locator("#generate").click()
    _refusal_shown(page, "Add a source image first")
    page.locator("#run-sequence").click()
    _refusal_shown(page, "Add a source image first")
    # The same as a keyframe: refused, nothing added to the strip, the box emptied.
    page.get_by_text("Path: through several keyframes").click()
    page.locator("#keyframe-add input[type=file]").set_input_files(str(notes))
    _refusal_shown(page, "The file 'notes.png' is not an image (it looks like text).")
    expect(page.locator("#keyframe-add img")).to_have_count(0)
    expect(page.locator("#keyframes img")).to_have_count(0)

    # Good images, bad values: an empty seed box, a grid over the frame limit, theta "from" 1.5.
    _both_images(page)
    page.locator("#seed input").fill("")
    page.locator("#seed input").blur()
    page.locator("#generate").click()
    _refusal_shown(page, "seed is empty: type a whole number.")
    _set_number(page, "seed", 1.5)
    page.locator("#generate").click()
    _refusal_shown(page, "seed must be a whole number, got 1.5")
    _set_number(page, "seed", 42)
    page.get_by_text("grid (a row per theta, a column per alpha)").click()
    _set_number(page, "theta_frames", 32)
    _set_number(page, "alpha_frames", 32)
    page.locator("#run-sequence").click()
    _refusal_shown(page, "a sequence has at most 96 frames here, this one would have 1024")
    page.get_by_text("theta sweep (alpha fixed)").click()
    page.locator("#theta_start input").fill("1.5")
    page.locator("#theta_start input").blur()
    page.locator("#run-sequence").click()
    _refusal_shown(page, "theta_start must be between 0 and 1, got 1.5.")
    page.screenshot(path=str(ARTIFACTS / "app-browser-refusals.png"), full_page=True)
    assert not page.errors, page.errors
    page.close()


def test_a_sequence_streams_into_the_gallery_and_stop_stops_it(app, browser):
    page = _open(browser, app)
    _both_images(page)
    _fast_settings(page, max_batch=1)
    # Many denoising steps per frame, one frame per batch: the sequence takes long enough
    # (about 0.5 s a frame here) that Stop lands before its end on any machine.
    _set_number(page, "steps", 40)
    _set_number(page, "theta_frames", 32)
    page.locator("#run-sequence").click()
    gallery = page.locator("#gallery")
    # Finished batches are shown while the rest renders, with one readout "frame k of N".
    expect(gallery).to_contain_text(re.compile(r"frame [1-9]\d* of 32"))
    expect(page.locator("#gallery img").first).to_be_visible()
    page.locator("#stop-sequence").click()
    expect(gallery).to_contain_text("Frames (stopped)")
    shown = page.locator("#gallery img").count()
    assert 1 <= shown < 32
    work = app.work / "vslerp-studio"
    deadline = time.monotonic() + 60  # the batch in progress finishes; then nothing is left
    while work.is_dir() and any(work.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not work.is_dir() or not any(work.iterdir())
    assert page.locator("#gallery img").count() == shown  # the frames shown stay
    assert not page.errors, page.errors
    page.close()


def _keyframe_srcs(page) -> list[str]:
    return [img.get_attribute("src") for img in page.locator("#keyframes img").all()]


def test_a_three_keyframe_loop_is_built_rendered_and_its_gif_downloaded(app, browser, tmp_path):
    page = _open(browser, app, accept_downloads=True)
    _both_images(page)
    _fast_settings(page)
    page.get_by_text("Path: through several keyframes").click()
    page.locator("#run-path").click()  # nothing in the strip yet: refused on the page
    _refusal_shown(page, "A path needs at least 2 keyframes, got 0")
    page.locator("#add-frame").click()  # no frame generated yet
    _refusal_shown(page, "There is no frame yet: generate one first.")
    expect(page.locator("#keyframes img")).to_have_count(0)

    # The strip: the source, the target, then an uploaded third image.
    page.locator("#add-source").click()
    expect(page.locator("#keyframes img")).to_have_count(1)
    page.locator("#add-target").click()
    expect(page.locator("#keyframes img")).to_have_count(2)
    page.locator("#keyframe-add input[type=file]").set_input_files(str(THIRD))
    expect(page.locator("#keyframes img")).to_have_count(3)
    strip = page.locator("#keyframes").bounding_box()
    thumb = page.locator("#keyframes img").first.bounding_box()
    assert strip["height"] < thumb["height"] + 100, (strip, thumb)  # no blank band under the thumbnails
    for elem_id in ("path-gallery", "path-plot", "path-video", "path-gif", "path-zip"):
        expect(page.locator(f"#{elem_id}")).to_be_hidden()  # no empty boxes before the path renders
    order = _keyframe_srcs(page)
    assert len(set(order)) == 3, order
    # Reorder: the third one place earlier, then back.
    page.locator("#keyframes img").nth(2).click()
    page.locator("#keyframe-earlier").click()
    expect(page.locator("#keyframes img").nth(1)).to_have_attribute("src", order[2])
    page.locator("#keyframe-later").click()
    expect(page.locator("#keyframes img").nth(2)).to_have_attribute("src", order[2])
    assert _keyframe_srcs(page) == order

    # A loop of 6 frames: A, A-B, B, B-C, C, C-A.
    page.locator("#loop input[type=checkbox]").check()
    _set_number(page, "path_frames", 6)
    page.locator("#run-path").click()
    gallery = page.locator("#path-gallery")
    expect(gallery).to_contain_text("Path frames: all 6")
    expect(page.locator("#path-status")).to_contain_text("Done: all 6 frames.")
    expect(page.locator("#run-path")).to_be_enabled()
    expect(page.locator("#path-gallery img")).to_have_count(6)
    captions = [c.inner_text() for c in page.locator("#path-gallery .caption-label").all()]
    assert [c.split()[0] for c in captions] == ["key", "1→2", "key", "2→3", "key", "3→1"], captions
    with Image.open(_download_link(page, "#path-gif", tmp_path / "path.gif")) as im:
        assert im.format == "GIF" and im.n_frames == 6
    expect(page.locator("#path-video video")).to_have_count(1)
    expect(page.locator("#path-smoothness")).to_contain_text("% of steps head straight from source to target")
    _assert_step_strip(_download_src(page, "#path-plot img", tmp_path / "path-plot.png"))
    page.locator("#path").screenshot(path=str(ARTIFACTS / "app-path.png"))
    assert not page.errors, page.errors
    page.close()


def test_on_a_phone_the_frame_comes_into_view_and_the_gallery_fits(app, browser):
    page = _open(browser, app, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                 is_mobile=True, has_touch=True)
    _both_images(page)
    _fast_settings(page)
    page.locator("#generate").scroll_into_view_if_needed()
    page.locator("#generate").click()
    frame = page.locator("#frame-out img")
    frame.wait_for()
    expect(page.locator("#readout")).to_contain_text("conformity (Eq. 10)")
    box = frame.bounding_box()
    assert box["y"] >= -1 and box["y"] + box["height"] <= 844 + 1, box  # the new frame is in view
    page.screenshot(path=str(ARTIFACTS / "app-phone-frame.png"))

    _set_number(page, "theta_frames", 5)
    page.locator("#run-sequence").click()
    expect(page.locator("#gallery img")).to_have_count(5)
    page.locator("#gallery").scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    captions = page.locator("#gallery .caption-label")
    expect(captions).to_have_count(5)
    for caption in captions.all():
        text = caption.inner_text()
        assert re.fullmatch(r"θ=\d\.\d\d α=-?\d\.\d\d C=\d\.\d{3}", text), text
        width, visible = caption.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert width <= visible, f"caption {text!r} is cut off"
    page.locator("#gallery").screenshot(path=str(ARTIFACTS / "app-phone-gallery.png"))
    assert not page.errors, page.errors
    page.close()


def _download_link(page, selector: str, dest: Path) -> Path:
    """Click a file component's download link as a user would; the saved file."""
    link = page.locator(f"{selector} a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    download.value.save_as(dest)
    return dest


def _assert_step_strip(png: Path) -> None:
    """The plot ends with the step-size strip: the largest jump's crimson bar in its bottom part."""
    from vslerp_app.outputs import JUMP_COLOR, STRIP_INCHES

    with Image.open(png) as im:
        rgb = im.convert("RGB")
    crimson = tuple(int(JUMP_COLOR[i:i + 2], 16) for i in (1, 3, 5))
    pixels = rgb.load()
    strip_top = rgb.height - int(STRIP_INCHES * 100)  # the plot is drawn at 100 dpi
    hits = [y for y in range(rgb.height) for x in range(0, rgb.width, 2)
            if max(abs(a - b) for a, b in zip(pixels[x, y], crimson, strict=True)) <= 8]
    assert hits and min(hits) >= strip_top, (len(hits), strip_top)


def _download_src(page, selector: str, dest: Path) -> Path:
    """Fetch an <img>'s source through the page (same origin), to check the served file."""
    src = page.locator(selector).get_attribute("src")
    resp = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + src)
    assert resp.ok, resp.status
    dest.write_bytes(resp.body())
    return dest


@pytest.mark.parametrize("screen", SCREENS)
def test_readouts_are_fresh_and_follow_one_rule(app, browser, screen):
    """One sentence of alpha advice; a typed theta out of range refused in the box; Aim at an end
    says alpha has no effect there; a refused Aim leaves no old note; 3 decimals in the readout and
    the aim note; no "100%"; after "Use this frame as the source" the readout says so."""
    page = _open(browser, app, **SCREENS[screen])
    expect(page.locator("body")).to_contain_text(
        "alpha from -2 to 2 gives visually appealing images (the paper); the authors' demo sweeps -1 to 3 "
        "in 16 steps (--alpha -1:3:16); the studio's slider runs -3 to 3 and vslerp render takes up to ±10")
    _both_images(page)
    _fast_settings(page)
    theta = page.locator("#theta input[type=number]")
    _set_number(page, "theta", 1.5)  # refused as the box is left, before any Generate
    _refusal_shown(page, "theta must be between 0 and 1, got 1.5.")
    assert 0 <= float(theta.input_value()) <= 1

    _set_number(page, "theta", 0)
    aim_box, note = page.locator("#target_conformity input"), page.locator("#aim-note")
    aim_box.fill("0.5")
    page.locator("#aim").click()
    _refusal_shown(page, "Cannot aim: at theta = 0 the frame is the source itself, so alpha has no effect "
                         "there. Move theta between 0 and 1 first.")
    _set_number(page, "theta", 0.5)
    page.locator("#aim").click()
    expect(note).to_contain_text(re.compile(r"(Aimed at conformity|out of reach)"))
    readout = page.locator("#readout")
    aimed = re.search(r"alpha = (-?\d+\.\d{3})", note.inner_text()).group(1)
    expect(readout).to_contain_text(f"alpha = {aimed}")  # the frame at the aimed alpha, not the one before
    expect(readout).not_to_contain_text("(preview)")  # the full frame at the aimed alpha
    for text in (note.inner_text(), readout.inner_text()):  # theta, alpha and conformity: 3 decimals
        lines = [line for line in text.splitlines()  # the likelihood has 1 decimal, seconds 2
                 if not any(words in line for words in ("log-likelihood", "Rendered in", "frame cache"))]
        # (a percentage has its own rule, below: near 0 or 100 it shows a decimal, never "100%")
        numbers = re.findall(r"-?\d+\.\d+(?![\d%])", "\n".join(lines))
        assert numbers and all(len(n.split(".")[1]) == 3 for n in numbers), text
        assert not re.search(r"\b(100|0)%", text), text
    assert "more typical than" in readout.inner_text()
    aim_box.fill("")
    page.locator("#aim").click()  # refused: the earlier note does not stay beside the refusal
    _refusal_shown(page, "Type the conformity to aim at first")
    expect(note).not_to_contain_text("onformity")

    page.locator("#use-frame").click()
    expect(readout).to_contain_text("This frame is now the source")
    expect(readout).not_to_contain_text("between the source and the target")
    readout.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"app-readouts-{screen}.png"))
    assert not page.errors, page.errors
    page.close()


def _rendered_font_px(page, elem_id: str) -> float:
    """The plot's smallest text as shown on the page, in CSS pixels: its size in the PNG
    (`PLOT_FONT_PT` at `PLOT_DPI`) times the scale the page shows the PNG at."""
    from vslerp_app.outputs import PLOT_DPI, PLOT_FONT_PT

    shown, natural = page.locator(f"#{elem_id} img").evaluate("e => [e.clientWidth, e.naturalWidth]")
    return PLOT_FONT_PT * PLOT_DPI / 72 * shown / natural


@pytest.mark.parametrize("screen", SCREENS)
def test_a_sequence_shows_progress_stops_at_once_and_its_plot_is_readable(app, browser, screen):
    """No empty output boxes before a render; while it runs, Render is disabled and the status
    line counts the batch's denoising steps, the frames done and the time; Stop ends the batch
    and the next Render starts right away; the plot's labels are readable where shown."""
    page = _open(browser, app, **SCREENS[screen])
    for elem_id in ("gallery", "plot", "video", "gif", "zip", "sequence-status"):
        expect(page.locator(f"#{elem_id}")).to_be_hidden()  # nothing rendered: no empty boxes
    _both_images(page)
    _fast_settings(page, max_batch=2)
    _set_number(page, "steps", 40)
    _set_number(page, "theta_frames", 12)
    page.locator("#run-sequence").click()
    status, render = page.locator("#sequence-status"), page.locator("#run-sequence")
    expect(render).to_be_disabled()
    expect(status).to_contain_text(re.compile(r"batch \d+ of 6, step \d+ of 42 · \d+ of 12 frames done · "
                                              r"\d+ s elapsed"))
    expect(status).to_contain_text(re.compile(r"s elapsed, about \d+ s left"))
    expect(page.locator("#gallery img").first).to_be_visible()
    page.locator("#stop-sequence").click()
    expect(status).to_contain_text("Stopped")
    expect(render).to_be_enabled()
    shown = page.locator("#gallery img").count()

    # The next render starts at once (the stopped batch ends at its next step), a 3 x 3 grid.
    _set_number(page, "steps", 2)
    page.get_by_text("grid (a row per theta, a column per alpha)").click()
    _set_number(page, "theta_frames", 3)
    _set_number(page, "alpha_frames", 3)
    page.locator("#run-sequence").click()
    assert 1 <= shown < 12
    expect(status).to_contain_text("Done: all 9 frames.", timeout=3 * TIMEOUT_MS)
    expect(render).to_be_enabled()
    for elem_id in ("plot", "video", "gif", "zip"):
        expect(page.locator(f"#{elem_id}")).to_be_visible()
    plot = page.locator("#plot img")
    plot.scroll_into_view_if_needed()
    expect(plot).to_have_js_property("complete", True)
    assert _rendered_font_px(page, "plot") >= 9  # labels a person reads without zooming
    assert page.evaluate("document.documentElement.scrollWidth") <= SCREENS[screen]["viewport"]["width"]
    page.locator("#sequence").screenshot(path=str(ARTIFACTS / f"app-sequence-{screen}.png"))
    assert not page.errors, page.errors
    page.close()


def test_on_a_phone_new_seed_sits_beside_the_seed_and_sliders_keep_their_ends(app, browser):
    page = _open(browser, app, **SCREENS["phone"])
    seed, new_seed = page.locator("#seed").bounding_box(), page.locator("#random-seed").bounding_box()
    assert abs(seed["y"] - new_seed["y"]) < seed["height"], (seed, new_seed)  # one line
    assert new_seed["x"] >= seed["x"] + seed["width"] - 1
    for elem_id in ("theta", "alpha"):
        expect(page.locator(f"#{elem_id} .min_value")).to_be_visible()
        expect(page.locator(f"#{elem_id} .max_value")).to_be_visible()
    page.locator("#seed").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "app-phone-seed.png"))
    page.close()


def test_ip_adapter_shows_its_settings_and_renders_with_them(app, launch_app, browser, tmp_path_factory):
    """On an IP-Adapter model the advanced settings hold its adapter scale and prompt (and
    strength), and the frame follows them: another prompt, another frame on the same noise
    path. A Karlo page shows none of the three."""
    from vslerp_app.fixtures import write_fixture

    karlo = _open(browser, app)
    karlo.get_by_text("Advanced settings").click()
    expect(karlo.locator("#steps")).to_be_visible()
    for elem_id in ("adapter_scale", "prompt", "strength"):
        expect(karlo.locator(f"#{elem_id}")).to_be_hidden()
    karlo.close()

    work = tmp_path_factory.mktemp("ip-adapter")
    page = _open(browser, launch_app(write_fixture("ip-adapter-sd15", work / "sd15")))
    _both_images(page)
    page.get_by_text("Advanced settings").click()
    for elem_id in ("adapter_scale", "prompt", "strength"):
        expect(page.locator(f"#{elem_id}")).to_be_visible()
    expect(page.locator("#super_res_steps")).to_be_hidden()
    for elem_id, value in (("steps", 3), ("preview_steps", 2), ("adapter_scale", 0.5)):
        _set_number(page, elem_id, value)
    frames = []
    for prompt in ("a red apple", "a blue boat"):
        page.locator("#prompt textarea").fill(prompt)
        old_src = page.locator("#frame-out img").get_attribute("src") if frames else None
        page.locator("#generate").click()
        expect(page.locator("#frame-out img")).to_be_visible()
        if old_src is not None:
            expect(page.locator("#frame-out img")).not_to_have_attribute("src", old_src)
        expect(page.locator("#readout")).to_contain_text("conformity")
        with Image.open(_download_src(page, "#frame-out img", work / f"{len(frames)}.png")) as im:
            frames.append(np.asarray(im.convert("RGB")).astype(int))
    assert np.abs(frames[0] - frames[1]).max() > 0  # the prompt reached the model
    assert not page.errors, page.errors
    page.close()
