"""The app over HTTP: `gradio_client` against `python app.py --model <tiny karlo>` in a subprocess.

Covers the named endpoints `/preview` and `/sequence` (returned files exist and are valid,
readouts are numbers), plain error messages for broken uploads and bad values with the
server still serving afterwards, and the per-session embedding cache of the app's helpers.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from conftest import free_port as _free_port  # noqa: E402
from conftest import launched_app  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from vslerp_app.service import readouts_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SOURCE, TARGET = EXAMPLES / "chelsea.jpg", EXAMPLES / "rocket.jpg"
# Karlo's scheduler needs two timesteps; two of each keeps a tiny frame well under a second.
FAST = {"steps": 2, "super_res_steps": 2, "preview_steps": 2}


# -- the launched app: `app` and `client` are conftest.py's (one app, shared with the aiming
# and browser tests); `launched_app` and `write_tiny_karlo` stay importable from here.


def write_tiny_karlo(directory: Path) -> Path:
    from vslerp_app.fixtures import write_fixture

    write_fixture("karlo", directory)
    return directory


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- endpoints ---------------------------------------------------------------------------
def test_only_the_three_named_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/preview", "/sequence", "/path"}
    assert not api["unnamed_endpoints"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/preview"]["parameters"]]
    assert params[:5] == ["source", "target", "theta", "alpha", "seed"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/path"]["parameters"]]
    assert params[:9] == [*(f"keyframe_{k}" for k in range(1, 9)), "frames"]
    assert params[9:14] == ["loop", "spacing", "ease", "alpha", "seed"]


def test_preview_returns_the_frame_and_numeric_readouts(client):
    image_path, readouts = client.predict(
        source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.5, alpha=1.0, seed=7,
        quality="full", api_name="/preview", **FAST)
    with Image.open(image_path) as im:
        assert im.format == "PNG" and im.size == (64, 64)  # the tiny fixture's super-resolution size
    assert readouts["theta"] == 0.5 and readouts["alpha"] == 1.0 and readouts["seed"] == 7
    assert readouts["preview"] is False and readouts["conformity_kind"] == "exact"
    for key in ("conformity", "frame_conformity", "log_likelihood", "frame_log_likelihood"):
        assert _finite_number(readouts[key]), key
    for side in ("source", "target"):
        assert _finite_number(readouts[side]["conformity"]) and -1 <= readouts[side]["conformity"] <= 1
    json.dumps(readouts, allow_nan=False)  # valid JSON, no NaN

    # The same frame at preview quality: the 32 px decoder output, same readout keys.
    image_path, quick = client.predict(
        source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.5, alpha=1.0, seed=7,
        quality="preview", api_name="/preview", **FAST)
    with Image.open(image_path) as im:
        assert im.size == (32, 32)
    assert quick["preview"] is True and _finite_number(quick["frame_conformity"])
    # The interpolated embedding does not depend on quality.
    assert quick["conformity"] == pytest.approx(readouts["conformity"])


def test_sequence_returns_gallery_plot_gif_mp4_and_zip(client):
    gallery, plot, mp4, gif, zip_path, smoothness = client.predict(
        source=handle_file(SOURCE), target=handle_file(TARGET), sweep="theta", alpha=1.0,
        theta_start=0.0, theta_stop=1.0, theta_frames=4, seed=3, fps=4, quality="full",
        api_name="/sequence", **FAST)
    assert len(gallery) == 4
    assert [g["caption"].split()[0] for g in gallery] == ["θ=0.00", "θ=0.33", "θ=0.67", "θ=1.00"]
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert im.size == (64, 64)
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.width > 200
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 4
    head = Path(mp4).read_bytes()[:12]
    assert head[4:8] == b"ftyp", "not an MP4 file"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        assert {"manifest.json", *(f"frames/{i:04d}.png" for i in range(4))} <= names
        manifest = json.loads(zf.read("manifest.json"))
        Image.open(io.BytesIO(zf.read("frames/0003.png"))).verify()
    assert manifest["frame_count"] == 4 and manifest["status"] == "complete"
    assert [f["theta"] for f in manifest["frames"]] == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-5)
    assert all(_finite_number(f["frame_conformity"]) for f in manifest["frames"])
    assert manifest["settings"]["seed"] == 3 and manifest["settings"]["steps"] == 2
    # How evenly it moves, in plain words, with the manifest's numbers
    measured = manifest["smoothness"]["model"]
    assert len(measured["steps"]) == 3 and measured["directness"]["steps"] == 3
    assert smoothness.startswith("**Smoothness in the model's CLIP:** Smoothness ")
    assert f"Smoothness {measured['smoothness']:.3f} " in smoothness
    jump = measured["largest_jump"]["frames"]
    assert f"largest jump between frames {jump[0] + 1} and {jump[1] + 1}" in smoothness


def test_the_zip_holds_what_the_page_says(client):
    """The page: "The ZIP holds the frames and manifest.json ..., with the GIF, MP4 and plot"."""
    from vslerp_app.outputs import GIF_NAME, MP4_NAME, PLOT_NAME

    *_, zip_path, _smoothness = client.predict(source=handle_file(SOURCE), target=handle_file(TARGET),
                                               theta_frames=2, quality="preview", api_name="/sequence",
                                               **FAST)
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    assert {"manifest.json", "frames/0000.png", "frames/0001.png", GIF_NAME, MP4_NAME, PLOT_NAME} <= names


def test_grid_sequence_at_preview_quality(client):
    gallery, plot, mp4, gif, zip_path, smoothness = client.predict(
        source=handle_file(SOURCE), target=handle_file(TARGET), sweep="grid", theta_start=0.0,
        theta_stop=1.0, theta_frames=2, alpha_start=-1.0, alpha_stop=2.0, alpha_frames=2,
        quality="preview", api_name="/sequence", **FAST)
    captions = [g["caption"].split()[:2] for g in gallery]
    assert captions == [["θ=0.00", "α=-1.00"], ["θ=0.00", "α=2.00"],
                        ["θ=1.00", "α=-1.00"], ["θ=1.00", "α=2.00"]]
    with Image.open(gallery[0]["image"]) as im:
        assert im.size == (32, 32)
    with Image.open(gif) as im:
        assert im.n_frames == 4


def test_a_theta_sweep_leaves_the_alpha_sweeps_ends_unchecked(client):
    """The alpha boxes of a theta sweep are not used, so their values cannot refuse it."""
    gallery, *_ = client.predict(source=handle_file(SOURCE), target=handle_file(TARGET), sweep="theta",
                                 theta_frames=2, alpha_start=-5.0, alpha_stop=9.0, quality="preview",
                                 api_name="/sequence", **FAST)
    assert [g["caption"].split()[:2] for g in gallery] == [["θ=0.00", "α=1.00"], ["θ=1.00", "α=1.00"]]


# -- failures: plain messages, and the app keeps serving --------------------------------------
def _broken_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.png"
    text.write_text("these are my holiday notes, not a picture\n")
    buf = io.BytesIO()
    Image.open(SOURCE).save(buf, "PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buf.getvalue()[:3000])
    return {"text": text, "truncated": truncated}


@pytest.mark.parametrize("which, message", [
    ("text", "The file 'notes.png' is not an image (it looks like text)."),
    ("truncated", "The source image is truncated or corrupt"),
])
def test_broken_upload_is_refused_clearly_and_the_app_keeps_serving(client, app, tmp_path, which, message):
    """A file that is not an image is refused by the upload itself (gradio_client raises its HTTP
    error, the words in the answer); one that only turns out broken when decoded, by /preview."""
    import httpx

    bad = _broken_files(tmp_path)[which]
    with pytest.raises((AppError, httpx.HTTPStatusError)) as err:
        client.predict(source=handle_file(bad), target=handle_file(TARGET), theta=0.5, alpha=1.0,
                       api_name="/preview", **FAST)
    text = err.value.response.text if isinstance(err.value, httpx.HTTPStatusError) else str(err.value)
    assert message in text
    assert "Traceback" not in text and "/tmp" not in text and str(tmp_path) not in text
    # The next request is served.
    image_path, readouts = client.predict(source=handle_file(SOURCE), target=handle_file(TARGET),
                                          theta=0.25, alpha=0.0, quality="preview",
                                          api_name="/preview", **FAST)
    assert Path(image_path).is_file() and _finite_number(readouts["frame_conformity"])
    assert app.proc.poll() is None


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 1}, "steps must be between 2 and 100, got 1."),
    ({"theta": 1.5}, "theta must be between 0 and 1, got 1.5."),
    ({"guidance_scale": "strong"}, "guidance_scale must be between 0 and 20, got 'strong'."),
    ({"seed": -1}, "seed must be at least 0, got -1."),
    ({"quality": "best"}, "best"),
])
def test_bad_values_are_refused_with_a_plain_message(client, kwargs, message):
    args = {"theta": 0.5, "alpha": 1.0, **FAST, **kwargs}
    with pytest.raises(AppError) as err:
        client.predict(source=handle_file(SOURCE), target=handle_file(TARGET), api_name="/preview", **args)
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"theta_stop": 2.0}, "theta_stop must be between 0 and 1, got 2.0."),
    ({"alpha_frames": 0, "sweep": "alpha"}, "alpha_frames must be between 1 and 32, got 0."),
    ({"fps": 60}, "fps must be between 0.5 and 30, got 60."),
    ({"alpha_stop": 9.0, "sweep": "alpha"}, "alpha_stop must be between -3 and 3 here, got 9 "),
])
def test_bad_sequence_values_name_the_parameter(client, kwargs, message):
    with pytest.raises(AppError) as err:
        client.predict(source=handle_file(SOURCE), target=handle_file(TARGET), api_name="/sequence",
                       **{**FAST, **kwargs})
    assert message in str(err.value)


def test_a_sequence_too_long_is_refused_before_rendering(client):
    with pytest.raises(AppError, match="at most 96 frames here, this one would have 400"):
        client.predict(source=handle_file(SOURCE), target=handle_file(TARGET), sweep="grid",
                       theta_frames=20, alpha_frames=20, api_name="/sequence", **FAST)


def test_the_papers_demo_grid_renders_through_the_api(client, tmp_path):
    """6 thetas x 16 alphas over linspace(-1, 3, 16), the authors' demo, fits the default cap."""
    gallery, _plot, _mp4, _gif, zip_path, _smoothness = client.predict(
        source=handle_file(SOURCE), target=handle_file(TARGET), sweep="grid", theta_start=0.0,
        theta_stop=1.0, theta_frames=6, alpha_start=-1.0, alpha_stop=3.0, alpha_frames=16,
        quality="preview", api_name="/sequence", **FAST)
    assert len(gallery) == 96
    with zipfile.ZipFile(zip_path) as z:
        manifest = json.loads(z.read("manifest.json"))
    pairs = [(f["theta"], f["alpha"]) for f in manifest["frames"]]
    assert pairs[:2] == [(0.0, -1.0), (0.0, pytest.approx(-1 + 4 / 15, abs=1e-6))]  # theta major
    assert pairs[-1] == (1.0, 3.0)


def test_an_upload_over_the_size_limit_is_refused(app, tmp_path):
    # The server's limit is 25 MB by default: the client refuses before sending, and the
    # server's upload route refuses the bytes on its own.
    import httpx

    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(26 * 1024 * 1024))
    c = Client(app.url, verbose=False, download_files=str(tmp_path))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        c.predict(source=handle_file(big), target=handle_file(TARGET), api_name="/preview", **FAST)
    with open(big, "rb") as f:
        r = httpx.post(app.url + "gradio_api/upload", files={"files": ("huge.png", f, "image/png")},
                       timeout=60)
    assert r.status_code == 413, r.text[:200]
    with urllib.request.urlopen(app.url + "config", timeout=5) as r:
        assert r.status == 200


# -- the helpers of the app, in process ------------------------------------------------------
def test_session_embeddings_bypass_the_shared_pipeline_cache(karlo_dir):
    from vslerp_app import load_pipeline
    from vslerp_app import service as ui

    pipe = load_pipeline(karlo_dir)
    first = ui.embed_input(pipe, str(SOURCE), "source image")
    assert not pipe._embedding_cache, "the app's embeddings must stay in the session's state"
    # Equal pixels reuse the session's entry; other pixels give a new one.
    assert ui.embed_input(pipe, str(SOURCE), "source image", first) is first
    other = ui.embed_input(pipe, str(TARGET), "source image", first)
    assert other.key != first.key and not other.embedding.equal(first.embedding)
    assert _finite_number(first.readouts["conformity"])
    # A frame rendered from the session's embeddings equals one rendered from the images.
    a = pipe.generate(first.embedding, other.embedding, 0.5, 1.0, seed=1, preview=True, steps=2)
    b = pipe.generate(str(SOURCE), str(TARGET), 0.5, 1.0, seed=1, preview=True, steps=2)
    assert a[0].image.tobytes() == b[0].image.tobytes()


def test_the_keyframe_strip_adds_moves_and_removes():
    from vslerp_app import service as ui

    strip = ui.add_keyframes([], ["a.png", "b.png"])
    strip = ui.add_keyframes(strip, ["c.png"])
    assert strip == [("a.png", "keyframe 1"), ("b.png", "keyframe 2"), ("c.png", "keyframe 3")]
    strip, at = ui.move_keyframe(strip, 2, -1)  # c one place earlier, still selected
    assert ui.strip_paths(strip) == ["a.png", "c.png", "b.png"] and at == 1
    strip, at = ui.move_keyframe(strip, 0, -1)  # the first stays first
    assert ui.strip_paths(strip) == ["a.png", "c.png", "b.png"] and at == 0
    assert ui.strip_paths(ui.remove_keyframe(strip, 1)) == ["a.png", "b.png"]
    with pytest.raises(ui.RequestError, match="Select a keyframe first"):
        ui.remove_keyframe(strip, None)
    full = ui.add_keyframes([], [f"{k}.png" for k in range(8)])
    with pytest.raises(ui.RequestError, match="at most 8 keyframes: the strip has 8, so 0 more fit"):
        ui.add_keyframes(full, ["x.png"])


def test_sweep_values_and_request_checks():
    from vslerp_app import service as ui

    assert ui.sweep_values("theta", 0.5, 1.0, 0, 1, 3, -1, 2, 4) == ([0.0, 0.5, 1.0], [1.0], False)
    assert ui.sweep_values("alpha", 0.5, 1.0, 0, 1, 3, -1, 2, 4) == ([0.5], [-1.0, 0.0, 1.0, 2.0], False)
    thetas, alphas, grid = ui.sweep_values("grid", 0.5, 1.0, 0, 1, 2, 0, 1, 2)
    assert ui.sweep_pairs(thetas, alphas, grid) == [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    with pytest.raises(ui.RequestError, match="sweep must be one of"):
        ui.sweep_values("spiral", 0.5, 1.0, 0, 1, 3, -1, 2, 4)
    with pytest.raises(ui.RequestError, match="theta frames must be between 1 and 96"):
        ui.sweep_values("theta", 0.5, 1.0, 0, 1, 0, -1, 2, 4)
    sampling = ui.Sampling.parse("preview", 25, 7, 3, 1.0, 4)
    assert (sampling.preview, sampling.max_batch, sampling.overrides()) == (True, 4, {"steps": 3,
                                                                                     "guidance_scale": 1.0})
    assert ui.Sampling.parse("full", 25, 7, 3, 1.0, 4).overrides()["super_res_steps"] == 7
    assert ui.json_safe({"a": float("nan"), "b": [float("inf"), 1.5]}) == {"a": None, "b": [None, 1.5]}
    # The server's cap (app.py --max-sequence-frames) is checked before the model sees the request.
    with pytest.raises(ui.RequestError, match="at most 4 frames here, this one would have 5"):
        ui.SweepRequest.parse(None, source="a.png", target="b.png", thetas=[0.0] * 5, alphas=0.0, seed=0,
                              max_frames=4)
    # An emptied box in plain words; the alpha slider's range for every frame of any request.
    frame = {"source": "a.png", "target": "b.png", "theta": 0.0, "alpha": 0.0}
    for empty in (None, "", "  "):
        with pytest.raises(ui.RequestError, match="^seed is empty: type a whole number.$"):
            ui.FrameRequest.parse(None, **frame, seed=empty)
    with pytest.raises(ui.RequestError, match="alpha must be between -3 and 3 here, got -3.5"):
        ui.FrameRequest.parse(None, **{**frame, "alpha": -3.5}, seed=0)


def test_the_apps_sweep_is_the_render_commands_sweep():
    """One linspace: the app's theta sweep and `vslerp render --theta 0:1:8` give the same values
    (so the same settings fingerprint)."""
    from vslerp_app import service as ui
    from vslerp_app.specs import parse_spec

    thetas, alphas, _ = ui.sweep_values("grid", 0.5, 1.0, 0, 1, 8, -1, 3, 16)
    assert thetas == parse_spec("0:1:8", "theta") and alphas == parse_spec("-1:3:16", "alpha")


def test_without_stats_the_app_refuses_alpha_in_plain_words_and_slerp_works(karlo_dir, tmp_path, monkeypatch):
    """build_demo around a model with no statistics, in process: the alpha slider starts at 0,
    /preview refuses alpha != 0 with the engine's explanation, plain SLERP renders without
    conformity."""
    import shutil

    import gradio as gr

    from vslerp_app import load_pipeline

    model = tmp_path / "no-stats"
    shutil.copytree(karlo_dir, model)
    (model / "vslerp-stats.safetensors").unlink()
    monkeypatch.syspath_prepend(str(ROOT))
    import app

    pipe = load_pipeline(model)
    demo = app.build_demo(pipe)
    assert isinstance(demo, gr.Blocks) and pipe.stats is None
    alpha = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "alpha")
    assert alpha.value == 0.0  # the slider starts where the model can go
    preview = next(f.fn for f in demo.fns.values() if f.api_name == "preview")
    settings = ("full", 2, 2, 2, 1.0, 8)
    with pytest.raises(gr.Error) as err:
        preview(str(SOURCE), str(TARGET), 0.5, 1.0, 42, *settings, session={})
    assert "needs the image-modality mean" in err.value.message
    image, readouts, session = preview(str(SOURCE), str(TARGET), 0.5, 0.0, 42, *settings, session={})
    assert image.size == (64, 64) and readouts["conformity"] is None
    assert "Conformity is not available" in readouts_markdown(readouts, pipe.stats_note)
    assert set(session) == {"source", "target"}


# -- paths through keyframes ----------------------------------------------------------------------
KEYFRAMES = (SOURCE, TARGET, EXAMPLES / "coffee.jpg")


def _keyframes(*paths) -> dict:
    return {f"keyframe_{k}": handle_file(p) for k, p in enumerate(paths, 1)}


def test_a_loop_through_three_keyframes(client):
    gallery, plot, mp4, gif, zip_path, smoothness = client.predict(
        **_keyframes(*KEYFRAMES), frames=6, loop=True, alpha="0, 1, 2", seed=5, quality="preview", fps=4,
        api_name="/path", **FAST)
    # A, A-B, B, B-C, C, C-A: the loop does not repeat its first frame.
    assert [g["caption"].split()[0] for g in gallery] == ["key", "1→2", "key", "2→3", "key", "3→1"]
    assert [g["caption"].split()[1] for g in gallery[::2]] == ["1", "2", "3"]
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 6
    assert Path(mp4).read_bytes()[4:8] == b"ftyp" and Image.open(plot).format == "PNG"
    with zipfile.ZipFile(zip_path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["path"]["loop"] is True and manifest["path"]["alphas"] == [0.0, 1.0, 2.0]
    assert [(f["segment"], f["theta"]) for f in manifest["frames"]] == [
        (0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5)]
    assert manifest["settings"]["seed"] == 5 and "/tmp" not in json.dumps(manifest["inputs"])
    measured = manifest["smoothness"]["model"]  # a loop: 6 steps, the last back to the first frame
    assert len(measured["steps"]) == 6 and measured["largest_jump"]["frames"][1] == (
        measured["largest_jump"]["frames"][0] + 1) % 6
    assert f"Smoothness {measured['smoothness']:.3f} " in smoothness
    # Keyframe 2's frame is the frame of that image alone at theta 0, with the same seed.
    alone, _ = client.predict(source=handle_file(TARGET), target=handle_file(SOURCE), theta=0.0, alpha=0.0,
                              seed=5, quality="preview", api_name="/preview", **FAST)
    # (Equal up to float noise: a frame alone matches its row in a batch to ~1e-6 before uint8.)
    alone_px, shown_px = (np.asarray(Image.open(f), np.int16) for f in (alone, gallery[2]["image"]))
    diff = np.abs(alone_px - shown_px)
    assert (diff > 1).sum() <= 3 and diff.max() <= 8, diff.max()


def test_an_open_path_with_angle_spacing_and_ease(client):
    gallery, *_ = client.predict(**_keyframes(*KEYFRAMES), frames=7, spacing="angle", ease=True, alpha=1.0,
                                 quality="preview", api_name="/path", **FAST)
    captions = [g["caption"] for g in gallery]
    assert len(captions) == 7 and captions[0].startswith("key 1") and captions[-1].startswith("key 3")
    assert sum(c.startswith("key") for c in captions) == 3


def test_a_path_with_perceptual_spacing_keeps_its_measured_curve(client):
    *_, zip_path, smoothness = client.predict(**_keyframes(SOURCE, TARGET), frames=5, spacing="perceptual",
                                              alpha="1", seed=2, quality="preview", api_name="/path", **FAST)
    with zipfile.ZipFile(zip_path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    layout = manifest["path"]
    (curve,) = layout["measured"]
    assert layout["spacing"] == "perceptual" and len(curve["thetas"]) == 13 and layout["measure_seconds"] > 0
    fractions = np.interp(layout["thetas"], curve["thetas"], curve["distances"]) / curve["length"]
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75, 1], atol=1e-9)  # equally far apart
    assert f"Smoothness {manifest['smoothness']['model']['smoothness']:.3f} " in smoothness


@pytest.mark.parametrize("kwargs, message", [
    ({"keyframe_1": handle_file(SOURCE), "keyframe_2": None}, "A path needs at least 2 keyframes, got 1"),
    ({"frames": 500}, "frames must be between 2 and 96, got 500"),
    ({"frames": 2}, "needs at least 3 frames"),
    ({"alpha": "0, 1"}, "alpha has 2 values for a path of 3 segments"),
    ({"alpha": "strong"}, "alpha"),
    ({"alpha": " "}, "alpha is empty: type one value for every segment, or one per segment"),
    ({"alpha": "0, 9, 1"}, "alpha must be between -3 and 3 here, got 9"),  # the slider's range, as everywhere
    ({"alpha": "12"}, "alpha must be between -3 and 3 here, got 12"),  # was "must be in [-10, 10]"
    ({"alpha": "0, 3.5, 1"}, "alpha must be between -3 and 3 here, got 3.5"),
    ({"seed": -1}, "seed must be at least 0, got -1"),
])
def test_bad_path_requests_are_refused_in_plain_words(client, kwargs, message):
    request = {**_keyframes(*KEYFRAMES), "loop": True, "frames": 6, "quality": "preview", **FAST, **kwargs}
    if "keyframe_1" in kwargs:
        request = {k: v for k, v in request.items() if not k.startswith("keyframe_")} | kwargs
    with pytest.raises(AppError) as err:
        client.predict(**request, api_name="/path")
    assert message in str(err.value), str(err.value)


# -- every way an image arrives passes one gate ------------------------------------------------
def _inline(data: bytes, mime: str = "image/png") -> dict:
    """An image as an API call may send it inline: a data: URL in a FileData."""
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return {"url": url, "meta": {"_type": "gradio.FileData"}}


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_bomb(side: int, claimed: int | None = None) -> bytes:
    """A valid all-black grayscale PNG of side x side (a 12000 x 12000 one is ~140 KB, 1.4 GB
    decoded as RGB); with ``claimed``, the header claims claimed x claimed over one row."""
    compressor, rows = zlib.compressobj(9), []
    row = b"\x00" * (side + 1)
    for _ in range(side if claimed is None else 1):
        rows.append(compressor.compress(row))
    rows.append(compressor.flush())
    w = h = claimed or side
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", b"".join(rows)) + _png_chunk(b"IEND", b""))


def _encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, fmt, **kw)
    return buf.getvalue()


def _nan_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0.0, 0.5, np.nan]], dtype=np.float32)).save(buf, "TIFF")
    return buf.getvalue()


def _short_jpeg(width: int, height: int) -> bytes:
    data = bytearray(_encoded("JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


HOSTILE = {  # what each must be refused with, whether uploaded or sent inline
    "text": (lambda: b"these are my holiday notes, not a picture\n", "is not an image (it looks like text)"),
    "eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "looks like PostScript/EPS"),
    "sgi": (lambda: _encoded("SGI"), "the file format is not recognised"),
    "pcx": (lambda: _encoded("PCX"), "the file format is not recognised"),
    "bomb-12000": (lambda: _png_bomb(12000), "is too large (12000x12000 = 144,000,000 pixels)"),
    "bomb-30000": (lambda: _png_bomb(8, claimed=30000), "is too large (900,000,000 pixels)"),
    "nan-tiff": (_nan_tiff, "contains NaN or infinite values"),
    # 8 x 8 of data under a header claiming 7000 x 7000: was rendered as a flat grey frame.
    "grey-jpeg": (lambda: _short_jpeg(7000, 7000), "is truncated or corrupt"),
}


def _refusal(client, source) -> str:
    """The refusal's words: /preview's, or the upload route's when that refuses the file first."""
    import httpx

    with pytest.raises((AppError, httpx.HTTPStatusError)) as err:
        client.predict(source=source, target=handle_file(TARGET), theta=0.5, alpha=1.0,
                       quality="preview", api_name="/preview", **FAST)
    return err.value.response.text if isinstance(err.value, httpx.HTTPStatusError) else str(err.value)


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_image_is_refused_alike_uploaded_and_inline(client, tmp_path, kind):
    """The same problem in the same words, whether the upload route refuses the file as it
    arrives ("The file 'image.png' ...": what its bytes show) or /preview refuses it."""
    make, expected = HOSTILE[kind]
    data = make()
    path = tmp_path / "image.png"
    path.write_bytes(data)
    uploaded, inline = _refusal(client, handle_file(path)), _refusal(client, _inline(data))
    assert inline.startswith("The source image ") and expected in inline, inline
    upload_route = inline.replace("The source image ", "The file 'image.png' ")
    assert uploaded in (inline, upload_route), (uploaded, inline)
    assert "/tmp" not in inline + uploaded and "Traceback" not in inline + uploaded


@pytest.mark.parametrize("kind", ["eps", "bomb-30000"])
def test_a_hostile_keyframe_is_refused_by_its_place_uploaded_and_inline(client, tmp_path, kind):
    make, expected = HOSTILE[kind]
    path = tmp_path / "image.png"
    path.write_bytes(make())
    import httpx

    with pytest.raises(AppError) as err:
        client.predict(keyframe_1=handle_file(SOURCE), keyframe_2=_inline(path.read_bytes()), frames=3,
                       quality="preview", api_name="/path", **FAST)
    inline = str(err.value)
    assert inline.startswith("The keyframe 2 ") and expected in inline, inline
    with pytest.raises(httpx.HTTPStatusError) as err:  # uploaded: refused as it arrives, the same words
        client.predict(keyframe_1=handle_file(SOURCE), keyframe_2=handle_file(path), frames=3,
                       quality="preview", api_name="/path", **FAST)
    assert err.value.response.text == inline.replace("The keyframe 2 ", "The file 'image.png' ")


def test_an_inline_image_over_the_size_limit_is_refused_as_an_upload_is(client):
    big = b"\x89PNG\r\n\x1a\n" + os.urandom(27 * 2**20)  # the server's limit is 25 MB
    message = _refusal(client, _inline(big))
    assert message == "The source image is too large (27.0 MB); files up to 25 MB are accepted."


def _peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the kernel's peak-RSS counter starts again


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024


def test_inline_bombs_keep_the_servers_memory_bounded(app, client):
    """A 140 KB PNG declaring 12000 x 12000 (1.4 GB decoded), alone and three at once."""
    if not Path(f"/proc/{app.proc.pid}/clear_refs").exists():
        pytest.skip("needs Linux's /proc/PID/clear_refs")
    bomb = _inline(_png_bomb(12000))
    _peak_rss_reset(app.proc.pid)
    before = _peak_rss(app.proc.pid)
    assert "144,000,000 pixels" in _refusal(client, bomb)
    clients = [Client(app.url, verbose=False) for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        messages = list(pool.map(lambda c: _refusal(c, bomb), clients))
    assert all("144,000,000 pixels" in m for m in messages)
    grown = _peak_rss(app.proc.pid) - before
    assert grown < 150 * 2**20, f"the server's peak memory grew by {grown / 2**20:.0f} MB"


def test_two_decodes_of_the_worst_accepted_file_at_once_stay_within_one(app, tmp_path):
    """The 50-megapixel RGBA WebP (2 KB) through the page's upload check and /preview at the same
    time: the server grows by under 1.1 GB at its peak (one decode is ~0.8 GB; the two ran side
    by side before, 6.7 GB for two 10000 x 10000 files) and gives the memory back."""
    if not Path(f"/proc/{app.proc.pid}/clear_refs").exists():
        pytest.skip("needs Linux's /proc/PID/clear_refs")
    from vslerp_app.images import MAX_PIXELS

    side = int(MAX_PIXELS ** 0.5)
    path = tmp_path / "worst.webp"
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(path, lossless=True)
    uploaded, target = _uploaded(app, path), _uploaded(app, TARGET)
    _page_event(app, "source", ["source"], [uploaded])  # warm up the decoders once
    _peak_rss_reset(app.proc.pid)
    before = _peak_rss(app.proc.pid)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        checked = pool.submit(_page_event, app, "source", ["source"], [uploaded])
        rendered = pool.submit(_call, app, "preview", [uploaded, target, *_settings_after("preview")])
        assert checked.result()[0] and rendered.result()[0] == "complete"
    grown = _peak_rss(app.proc.pid) - before
    assert grown < 1100 * 2**20, f"the server's peak memory grew by {grown / 2**20:.0f} MB"
    held = int(next(line.split()[1] for line in Path(f"/proc/{app.proc.pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS"))) * 1024 - before
    assert held < 300 * 2**20, f"{held / 2**20:.0f} MB held after"


def _call(app, api_name: str, data: list) -> tuple[str, object]:
    """A raw REST call (`POST /gradio_api/call/NAME`, then its event stream): (event, data)."""
    import httpx

    r = httpx.post(f"{app.url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    r.raise_for_status()
    event = None
    with httpx.stream("GET", f"{app.url}gradio_api/call/{api_name}/{r.json()['event_id']}", timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                return event, json.loads(line.removeprefix("data: "))
    raise AssertionError("the event stream ended without a result")


def _uploaded(app, path: Path) -> dict:
    import httpx

    with open(path, "rb") as f:
        r = httpx.post(app.url + "gradio_api/upload", files={"files": (path.name, f, "image/jpeg")},
                       timeout=30)
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("source, message", [
    ({"path": str(SOURCE)}, "a path on the server is not accepted"),
    ({"path": "/etc/passwd"}, "a path on the server is not accepted"),
    ({"path": "http://127.0.0.1:9/cat.png"}, "could not be downloaded: its host cannot be reached"),
    ({"url": "data:image/png;base64,iVBORw0KGgo="}, "is truncated or corrupt"),
    ({"url": "https://example.com/cat.png"}, 'came as a web address in "url" alone: send {"path": URL}'),
    ({}, "The source image is missing: no file was sent."),
])
def test_paths_and_urls_in_an_api_call_are_refused_in_plain_words(app, source, message):
    target = _uploaded(app, TARGET)
    event, data = _call(app, "preview", [{**source, "meta": {"_type": "gradio.FileData"}}, target,
                                         0.5, 1.0, 42, "preview", 2, 2, 2, 1.0, 8, None, None, None, None])
    assert event == "error" and message in data["error"], data


def test_a_raw_http_call_may_leave_settings_out_as_null(app):
    """null for a slider's parameter takes its default, as gradio_client fills it in."""
    source, target = _uploaded(app, SOURCE), _uploaded(app, TARGET)
    event, data = _call(app, "preview", [source, target, 0.5, 1.0, 42, "preview"] + [None] * 9)
    assert event == "complete", data
    readouts = data[1]
    assert readouts["seed"] == 42 and readouts["preview"] is True
    event, data = _call(app, "preview", [source, target, 0.5, 1.0, None, "preview"] + [None] * 9)
    assert event == "error" and "seed is empty: type a whole number." in data["error"], data  # no default


@pytest.mark.parametrize("keyframe, message", [
    ({"path": str(SOURCE)}, "a path on the server is not accepted"),
    ({"path": "http://127.0.0.1:9/cat.png"}, "The keyframe 2 could not be downloaded: its host cannot"),
    ({"url": "data:image/png;base64,iVBORw0KGgo="}, "The keyframe 2 is truncated or corrupt"),
])
def test_keyframe_paths_and_urls_are_refused_in_plain_words(app, keyframe, message):
    first = _uploaded(app, SOURCE)
    keyframes = [first, {**keyframe, "meta": {"_type": "gradio.FileData"}}, *[None] * 6]
    event, data = _call(app, "path", [*keyframes, 3, False, "uniform", False, "1", 42, "preview", 2, 2, 2,
                                      1.0, 8, 4, None, None, None])
    assert event == "error" and message in data["error"], data


def test_the_model_panel_names_the_model_and_stats_without_server_paths(app, karlo_dir):
    """The page's model panel (its Markdown and its details JSON, as /config hands them to the
    browser) says `tiny-karlo` and `vslerp-stats.safetensors`, never the folder they are in."""
    import httpx

    config = httpx.get(app.url + "config", timeout=10).json()
    panel = [c["props"].get("value") for c in config["components"]
             if c["type"] in ("markdown", "json") and "Model" in json.dumps(c["props"].get("value"))]
    text = json.dumps(panel)
    assert "**Model**: `tiny-karlo`" in text and "from vslerp-stats.safetensors" in text, text[:400]
    assert str(karlo_dir) not in text and str(karlo_dir.parent) not in text


# -- the file gate: only what Gradio stored, whatever the payload's shape ----------------------------
ONE_REFUSAL = "must be uploaded (or sent inline as a data: URL); a path on the server is not accepted."


def _server_paths(app) -> dict[str, str]:
    """Paths a caller might try: a readable image and text outside the upload folder, a missing
    file, a folder, and symlinks planted inside the upload folder that lead out of it."""
    uploads = app.work / "gradio"
    planted = uploads / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    for name, to in (("image.jpg", SOURCE), ("folder", uploads.parent)):
        with contextlib.suppress(FileExistsError):
            (planted / name).symlink_to(to)
    return {"image": str(SOURCE), "text": "/etc/passwd", "missing": "/no/such/file.png", "folder": "/tmp",
            "escape": str(uploads / ".." / "app.log"), "symlink": str(planted / "image.jpg"),
            "symlinked folder": str(planted / "folder" / "app.log")}


def _settings_after(api_name: str) -> list:
    return {"preview": [0.5, 1.0, 42, "preview", 2, 2, 2, 1.0, 8, None, None, None, None],
            "sequence": ["theta", 0.5, 1.0, 0.0, 1.0, 2, -1.0, 2.0, 2, 42, "preview", 2, 2, 2, 1.0, 8, 4,
                         None, None, None, None]}[api_name]


@pytest.mark.parametrize("meta", [True, False], ids=["with meta", "without meta"])
def test_a_server_path_is_refused_with_one_message_on_preview_and_sequence(app, meta):
    """Every path the server did not store as an upload gets the same words, with or without
    Gradio's meta: nothing tells the caller whether the file exists or what it holds."""
    uploaded = _uploaded(app, TARGET)
    seen = set()
    for kind, path in _server_paths(app).items():
        sent = {"path": path, **({"meta": {"_type": "gradio.FileData"}} if meta else {})}
        for api_name, data in (("preview", [sent, uploaded]), ("sequence", [uploaded, sent])):
            event, answer = _call(app, api_name, [*data, *_settings_after(api_name)])
            assert event == "error", (kind, api_name, answer)
            seen.add(answer["error"])
    assert seen == {f"The source image {ONE_REFUSAL}", f"The target image {ONE_REFUSAL}"}


def test_a_server_path_is_refused_for_every_path_keyframe(app):
    uploaded = _uploaded(app, SOURCE)
    shape = [3, False, "uniform", False, "1", 42, "preview", 2, 2, 2, 1.0, 8, 4, None, None, None]
    for k in range(8):
        for path in (str(SOURCE), "/etc/passwd", "/no/such/file.png"):
            keyframes = [uploaded, uploaded, None, None, None, None, None, None]
            keyframes[k] = {"path": path}
            event, answer = _call(app, "path", [*keyframes, *shape])
            assert event == "error" and answer["error"] == f"The keyframe {k + 1} {ONE_REFUSAL}", answer


def _page_event(app, button: str, inputs: list[str], data: list):
    """Call one of the page's own (private) events as the page does: POST queue/join by fn_index,
    then read the queue's event stream; returns (success, output)."""
    import uuid

    import httpx

    config = httpx.get(app.url + "config", timeout=10).json()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c["props"].get("elem_id")}
    fn = next(d["id"] for d in config["dependencies"] if any(t[0] == ids[button] for t in d["targets"])
              and d["inputs"] == [ids[name] for name in inputs])
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn, "session_hash": session, "trigger_id": ids[button]}
    r = httpx.post(app.url + "gradio_api/queue/join", json=body, timeout=10)
    assert r.status_code == 200, r.text
    with httpx.stream("GET", f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=60) as s:
        for line in s.iter_lines():
            message = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
            if message.get("msg") == "process_completed":
                return message.get("success"), message.get("output")
    raise AssertionError("the queue's stream ended without a result")


def test_the_pages_own_events_refuse_server_paths_too(app):
    """The page's private events take files as well (the current frame, the keyframe strip, the
    upload checks): a raw client calling them by number meets the same gate. Before, "use this
    frame" copied any image under the app's folder into Gradio's cache and served it."""
    for path in (str(SOURCE), "/etc/passwd"):
        ok, out = _page_event(app, "use-frame", ["frame-out"], [{"path": path}])
        assert not ok and out["error"] == f"The current frame {ONE_REFUSAL}", out
        strip = [{"image": {"path": path}, "caption": "keyframe 1"},
                 {"image": {"path": path}, "caption": None}]
        ok, out = _page_event(app, "run-path", ["keyframes", "path_frames", "loop", "spacing", "ease",
                                                "path_alpha", "seed", "quality", "steps", "super_res_steps",
                                                "preview_steps", "guidance", "max_batch", "fps", "strength",
                                                "adapter_scale", "prompt"],
                              [strip, 3, False, "uniform", False, "1", 42, "preview", 2, 2, 2, 1.0, 8, 4, 1.0,
                               1.0, ""])
        assert not ok and out["error"] == f"The keyframe strip {ONE_REFUSAL}", out
        ok, out = _page_event(app, "source", ["source"], [{"path": path}])
        assert not ok and out["error"] == f"The source image {ONE_REFUSAL}", out
    # An upload passes the same events.
    ok, out = _page_event(app, "use-frame", ["frame-out"], [_uploaded(app, SOURCE)])
    assert ok, out


@pytest.mark.parametrize("api_name, index, role", [("preview", 0, "source image"),
                                                   ("sequence", 1, "target image")])
def test_a_bare_string_where_a_file_belongs_is_refused_in_words(app, api_name, index, role):
    uploaded = _uploaded(app, SOURCE)
    for bare in (str(SOURCE), "/etc/passwd", "cat.png"):
        data = [uploaded, uploaded]
        data[index] = bare
        event, answer = _call(app, api_name, [*data, *_settings_after(api_name)])
        assert event == "error" and answer["error"] is not None, answer
        assert answer["error"].startswith(f"The {role} must be sent as a file: upload it"), answer
        assert "got a bare string" in answer["error"] and bare not in answer["error"]


def test_a_request_body_over_the_limit_is_refused_before_it_is_read(app):
    host, port = app.url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500000000\r\n\r\n{")
        assert s.recv(64).startswith(b"HTTP/1.1 413")


# -- what one client may ask -----------------------------------------------------------------
def test_one_client_cannot_fill_the_queue(app, tmp_path):
    """18 sequences from one client: four wait, the rest are refused, another client gets in."""
    from gradio_client.utils import QueueError

    greedy = Client(app.url, verbose=False, download_files=str(tmp_path))
    jobs = [greedy.submit(source=handle_file(SOURCE), target=handle_file(TARGET), theta_frames=4,
                          seed=i, api_name="/sequence", **FAST) for i in range(18)]
    try:
        deadline = time.monotonic() + 120
        while sum(j.done() for j in jobs) < 13 and time.monotonic() < deadline:
            time.sleep(0.2)
        refused = [j for j in jobs if j.done() and isinstance(j.exception(), QueueError)]
        assert len(refused) >= 13, [j.status().code for j in jobs]
        other = Client(app.url, verbose=False, download_files=str(tmp_path))
        image, readouts = other.predict(source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.5,
                                        alpha=1.0, quality="preview", api_name="/preview", **FAST)
        assert Path(image).is_file() and readouts["theta"] == 0.5
    finally:
        for j in jobs:
            j.cancel()


def _stored_bytes(app) -> int:
    files = [p for p in (app.work / "gradio").rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files)


def test_an_upload_flood_stores_nothing(app):
    """One request with 20 files of 1 MB of random bytes (before: 200 files stored 200 MB until
    the hourly clean-up): refused, nothing kept; a text file alone is refused as it arrives."""
    import httpx

    before = _stored_bytes(app)
    files = [("files", (f"noise{i}.png", os.urandom(2**20), "image/png")) for i in range(20)]
    r = httpx.post(app.url + "gradio_api/upload", files=files, timeout=60)
    assert r.status_code == 413 and "up to 8 files; this one held 20" in r.text, r.text
    upload = app.url + "gradio_api/upload"
    r = httpx.post(upload, files=[("files", ("notes.png", b"my notes\n" * 100, "image/png"))], timeout=60)
    assert r.status_code == 415, r.text
    assert r.text == "The file 'notes.png' is not an image (it looks like text)."
    r = httpx.post(upload, files=[("files", ("noise.png", os.urandom(2**20), "image/png"))], timeout=60)
    assert r.status_code == 415 and "the file format is not recognised" in r.text, r.text
    assert _stored_bytes(app) - before == 0
    image = _uploaded(app, SOURCE)  # an image still goes through
    assert Path(image["path"]).read_bytes() == SOURCE.read_bytes()


@pytest.fixture(scope="module")
def tight_app(karlo_dir, tmp_path_factory):
    """The app with a 200 KB upload quota per address and 2 waiting requests per address."""
    with launched_app(karlo_dir, tmp_path_factory.mktemp("tight"),
                      args=("--upload-quota", "200kb", "--address-queue-size", "2")) as running:
        yield running


def test_one_address_may_upload_only_its_quota(tight_app):
    """A header claiming another address changes nothing (no proxy is trusted by default)."""
    import httpx

    answers = []
    for i in range(8):
        with open(EXAMPLES / "astronaut.jpg", "rb") as f:  # 66 KB
            r = httpx.post(tight_app.url + "gradio_api/upload", headers={"X-Forwarded-For": f"10.0.0.{i}"},
                           files={"files": (f"a{i}.jpg", f, "image/jpeg")}, timeout=30)
        answers.append(r.status_code)
    assert answers[:3] == [200, 200, 200] and set(answers[3:]) == {429}, answers
    assert r.text == ("This address has uploaded 195 KB in the last hour; the limit is 200 KB. "
                      "Try again later.")
    assert _stored_bytes(tight_app) < 200 * 1024 + 400 * 1024  # the examples Gradio copied, and 3 uploads


def _join_sequence(app, headers: dict | None = None):
    """POST one /sequence to the queue with a fresh session (raw HTTP): (status, refusal or "")."""
    import uuid

    import httpx

    config = httpx.get(app.url + "config", timeout=10).json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "sequence")
    source, target = _inline(SOURCE.read_bytes(), "image/jpeg"), _inline(TARGET.read_bytes(), "image/jpeg")
    # ..., fps, then strength, adapter_scale, prompt, the session state and target_conformity
    data = [source, target, "theta", 0.5, 1.0, 0.0, 1.0, 24, -1.0, 2.0, 2, 42, "full", 2, 2, 2, 1.0, 1, 4,
            None, None, None, {}, None]
    r = httpx.post(app.url + "gradio_api/queue/join", headers=headers or {},
                   json={"data": data, "fn_index": fn, "session_hash": uuid.uuid4().hex}, timeout=10)
    return r.status_code, "" if r.status_code == 200 else r.json().get("detail", "")


def test_the_client_address_is_forwarded_only_by_a_trusted_proxy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import gate

    def scope(peer, forwarded=None):
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return {"client": (peer, 5000), "headers": headers}

    proxy = frozenset({"10.0.0.2"})
    assert gate.client_address(scope("203.0.113.9", "10.1.1.1")) == "203.0.113.9"  # no proxy trusted
    assert gate.client_address(scope("203.0.113.9", "10.1.1.1"), proxy) == "203.0.113.9"  # not from it
    assert gate.client_address(scope("10.0.0.2", "198.51.100.7"), proxy) == "198.51.100.7"
    # A hop the client wrote itself sits left of the one the proxy added: the proxy's counts.
    assert gate.client_address(scope("10.0.0.2", "1.2.3.4, 198.51.100.7"), proxy) == "198.51.100.7"
    two_proxies = proxy | {"10.0.0.3"}
    assert gate.client_address(scope("10.0.0.2", "198.51.100.7, 10.0.0.3"), two_proxies) == "198.51.100.7"
    assert gate.client_address(scope("10.9.9.9", "1.2.3.4, 198.51.100.7"), frozenset({"*"})) == "198.51.100.7"
    assert gate.client_address(scope("10.9.9.9"), frozenset({"*"})) == "10.9.9.9"
    assert gate.trusted_proxies(" 10.0.0.2, 10.0.0.3 ,") == {"10.0.0.2", "10.0.0.3"}
    assert gate.trusted_proxies("") == frozenset()


def test_one_address_cannot_fill_the_queue_with_fresh_sessions(tight_app):
    """20 sequences from one address, each with a session of its own (raw HTTP, as a flood
    does), claiming other addresses in X-Forwarded-For (no proxy is trusted): two wait, the rest
    are refused by address (before: 17 of 20 accepted at the default bounds)."""
    codes = [_join_sequence(tight_app, {"X-Forwarded-For": f"10.0.0.{i}"}) for i in range(20)]
    refused = [detail for status, detail in codes if status != 200]
    assert len(refused) >= 17, codes
    assert all("Your address already has 2 requests waiting" in d for d in refused), refused


@pytest.fixture(scope="module")
def proxied_app(karlo_dir, tmp_path_factory):
    """The app behind a proxy it trusts (127.0.0.1, where the tests connect from), 2 waiting
    requests per address."""
    with launched_app(karlo_dir, tmp_path_factory.mktemp("proxied"),
                      args=("--trusted-proxies", "127.0.0.1", "--address-queue-size", "2")) as running:
        yield running


def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_bound(proxied_app):
    flood = [_join_sequence(proxied_app, {"X-Forwarded-For": "198.51.100.7"}) for _ in range(10)]
    assert sum(status != 200 for status, _ in flood) >= 7, flood
    other = _join_sequence(proxied_app, {"X-Forwarded-For": "203.0.113.5"})
    assert other == (200, ""), other  # another user behind the same proxy still gets in


# -- streamed, stoppable, cached -----------------------------------------------------------------
def _frames_of(outputs) -> list[int]:
    return [len(o[0]) for o in outputs]


def test_a_sequence_streams_batch_by_batch(client):
    job = client.submit(source=handle_file(SOURCE), target=handle_file(TARGET), theta_frames=6, max_batch=2,
                        api_name="/sequence", **FAST)
    gallery, plot, mp4, gif, zip_path, smoothness = job.result(timeout=300)
    counts = _frames_of(job.outputs())
    assert counts[0] == 0 and counts[-1] == 6 and len(gallery) == 6
    assert {2, 4} <= set(counts), f"no partial gallery was streamed: {counts}"
    assert all(o[1] is None for o in job.outputs()[:-1])  # the files come with the last update
    assert Path(zip_path).is_file() and Path(plot).is_file()


def test_a_cancelled_sequence_keeps_its_frames_and_leaves_nothing_on_disk(app, client):
    job = client.submit(source=handle_file(SOURCE), target=handle_file(TARGET), theta_frames=24, max_batch=2,
                        api_name="/sequence", **FAST)
    deadline = time.monotonic() + 120
    while not any(n >= 2 for n in _frames_of(job.outputs())) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    deadline = time.monotonic() + 60
    while job.status().code.name != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.1)
    shown = job.outputs()[-1][0]
    assert 2 <= len(shown) < 24 and all(Path(item["image"]).is_file() for item in shown)
    work = app.work / "vslerp-studio"
    deadline = time.monotonic() + 60  # the batch in progress finishes, then the folder goes
    while work.is_dir() and any(work.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not work.is_dir() or not any(work.iterdir())


def test_cancel_answers_while_the_batch_goes_on(app):
    """/cancel as gradio_client's job.cancel() posts it (with its HTTP timeout, 5 s by default;
    1 s here, shorter than one batch of 8 frames at 20 + 10 steps: ~20 s on a shared CPU). Before,
    /cancel waited for the batch in progress (24.8 s) and the documented call raised
    httpx.ReadTimeout; now it answers at once while the batch goes on, and the render then stops
    and removes its folder."""
    import threading
    import uuid

    import httpx

    config = httpx.get(app.url + "config", timeout=10).json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "sequence")
    source, target = _uploaded(app, SOURCE), _uploaded(app, TARGET)
    data = [source, target, "theta", 0.5, 1.0, 0.0, 1.0, 8, -1.0, 2.0, 2, 42, "full", 20, 10, 2, 1.0, 8, 4,
            None, None, None, {}, None]
    session = uuid.uuid4().hex
    joined = httpx.post(app.url + "gradio_api/queue/join", timeout=10,
                        json={"data": data, "fn_index": fn, "session_hash": session})
    event_id, messages = joined.json()["event_id"], []

    def listen():
        with httpx.stream("GET", f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=900) as s:
            for line in s.iter_lines():
                if line.startswith("data: "):
                    messages.append(json.loads(line.removeprefix("data: ")))
                    if messages[-1].get("msg") == "process_completed":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    work, deadline = app.work / "vslerp-studio", time.monotonic() + 120
    while not any(m.get("msg") == "process_generating" for m in messages) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first (empty) update: the request's folder exists, its batch starts
    assert work.is_dir() and any(work.iterdir()), messages
    r = httpx.post(app.url + "gradio_api/cancel", timeout=1.0,
                   json={"session_hash": session, "fn_index": fn, "event_id": event_id})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert any(work.iterdir()), "the batch should still be running behind the answer"
    listener.join(timeout=900)
    assert messages[-1].get("msg") == "process_completed"
    deadline = time.monotonic() + 900  # the batch in progress finishes, then the folder goes
    while any(work.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(work.iterdir())


def test_the_same_frame_twice_comes_from_the_cache(client):
    args = {"source": handle_file(SOURCE), "target": handle_file(TARGET), "theta": 0.4, "alpha": 1.0,
            "seed": 11, "quality": "full", "api_name": "/preview", **FAST}
    first_image, first = client.predict(**args)
    again_image, again = client.predict(**args)
    assert not first["cached"] and again["cached"]
    assert Path(first_image).read_bytes() == Path(again_image).read_bytes()
    # Another seed, or another input, is never served from the cache.
    _, other_seed = client.predict(**{**args, "seed": 12})
    other_image, other_input = client.predict(**{**args, "target": handle_file(EXAMPLES / "coffee.jpg")})
    assert not other_seed["cached"] and not other_input["cached"]
    assert Path(other_image).read_bytes() != Path(first_image).read_bytes()


def test_a_frame_reports_its_denoising_steps(client):
    job = client.submit(source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.45, alpha=1.0,
                        seed=99, steps=40, super_res_steps=2, api_name="/preview")
    seen = set()
    while not job.done():
        progress = job.status().progress_data
        if progress:
            seen.update((p.unit, p.length) for p in progress)
        time.sleep(0.02)
    job.result()
    assert ("steps", 42) in seen, seen


# -- a full disk ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_disk_app(karlo_dir, tmp_path_factory):
    """The app with its request folders on a 48 KB file system of its own (a tmpfs mounted in
    a user and mount namespace, so no root is needed): four frames fit, the plot does not."""
    work = tmp_path_factory.mktemp("small-disk")
    tmp = work / "tmp"
    tmp.mkdir()
    prefix = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
              'mount -t tmpfs -o size=48k tmpfs "$1" && shift && exec "$@"', "sh", str(tmp))
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {probe.stderr.decode().strip()}")
    with launched_app(karlo_dir, work, extra_env={"TMPDIR": str(tmp)}, prefix=prefix) as running:
        running.tmp = tmp
        yield running


def test_a_full_disk_is_refused_in_plain_words_and_its_folder_removed(small_disk_app, tmp_path):
    c = Client(small_disk_app.url, verbose=False, download_files=str(tmp_path))
    with pytest.raises(AppError) as err:
        c.predict(source=handle_file(SOURCE), target=handle_file(TARGET), theta_frames=4, max_batch=2,
                  api_name="/sequence", **FAST)
    message = str(err.value)
    assert message.startswith("The server ran out of disk space while writing this sequence")
    assert "/tmp" not in message and "vslerp" not in message and "command" not in message
    # The app's own view of its small file system (its mount namespace, through /proc): the
    # failed request's folder is gone.
    inside = Path(f"/proc/{small_disk_app.proc.pid}/root") / str(small_disk_app.tmp).lstrip("/")
    assert inside.is_dir() and list((inside / "vslerp-studio").iterdir()) == []
    # And the app keeps serving.
    image, readouts = c.predict(source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.5, alpha=1.0,
                                quality="preview", api_name="/preview", **FAST)
    assert Path(image).is_file()


@pytest.fixture(scope="module")
def small_cache_app(karlo_dir, tmp_path_factory):
    """The app with Gradio's cache (GRADIO_TEMP_DIR: uploads and results) on a 360 KB file system
    of its own: the examples and two uploads fit, a sequence's frames and files do not."""
    work = tmp_path_factory.mktemp("small-cache")
    cache = work / "gradio"
    cache.mkdir()
    prefix = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
              'mount -t tmpfs -o size=360k tmpfs "$1" && shift && exec "$@"', "sh", str(cache))
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {probe.stderr.decode().strip()}")
    with launched_app(karlo_dir, work, prefix=prefix) as running:
        yield running


def test_a_full_gradio_cache_during_a_sequence_is_said_in_words(small_cache_app, tmp_path):
    """Before: {"error": null}. Gradio copies each streamed result into its cache; when that
    folder is full the request ends with a message, without the server's paths."""
    c = Client(small_cache_app.url, verbose=False, download_files=str(tmp_path))
    with pytest.raises(AppError) as err:
        c.predict(source=handle_file(SOURCE), target=handle_file(TARGET), theta_frames=16, max_batch=4,
                  api_name="/sequence", **FAST)
    message = str(err.value)
    assert message.startswith("The server ran out of disk space while storing this result"), message
    assert "/tmp" not in message and "gradio" not in message


# -- offline -------------------------------------------------------------------------------------
def test_without_the_hub_the_app_fails_at_once_naming_what_works_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "GRADIO_SERVER_PORT")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://hub.invalid", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "app.py", "--port", str(_free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cannot reach the Hugging Face hub at http://hub.invalid" in proc.stderr
    assert "vslerp fixture karlo /tmp/tiny-karlo" in proc.stderr
    assert "python app.py --model /tmp/tiny-karlo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreachable_hub_is_given_up_within_seconds(monkeypatch, tmp_path):
    """A hub whose name does not resolve, or whose port refuses, is given up at once instead
    of after the hub client's retries (~25 s)."""
    from huggingface_hub import constants

    from pipelines import HubUnreachableError
    from pipelines.loading import resolve_model_path

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for endpoint in (f"http://127.0.0.1:{_free_port()}", "http://hub.invalid"):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        start = time.monotonic()
        with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face hub"):
            resolve_model_path("karlo")
        assert time.monotonic() - start < 10


# -- the service layer, in process ------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(karlo_dir):
    from vslerp_app import load_pipeline

    return load_pipeline(karlo_dir)


def test_stopping_a_sequence_stops_within_one_batch_and_removes_its_folder(pipe, tmp_path):
    from vslerp_app import service as ui

    studio = ui.Studio(pipe)
    studio.work_root = tmp_path / "work"
    steps = []
    values = dict(source=str(SOURCE), target=str(TARGET), sweep="theta", theta=0.5, alpha=1.0,
                  theta_start=0.0, theta_stop=1.0, theta_frames=8, alpha_start=-1.0, alpha_stop=2.0,
                  alpha_frames=6, seed=3, quality="full", steps=2, super_res_steps=2, preview_steps=2,
                  guidance_scale=1.0, max_batch=2, fps=4.0)
    with pipe.runner.on_step(lambda step, total: steps.append(step)):
        updates = studio.sequence({}, studio.sequence_request(**values))
        assert next(updates).status == "frame 0 of 8"
        first = next(updates)
        assert first.status == "frame 2 of 8" and len(first.gallery) == 2 and first.files is None
        assert all(Path(path).is_file() for path, _ in first.gallery)
        updates.close()  # a Stop
    assert steps == [1, 2, 3, 4], "the work went on past the batch it stopped in"
    assert list((tmp_path / "work").iterdir()) == []
    # Run to the end: the files come with the last update, the folder goes with the generator.
    *_, last = studio.sequence({}, studio.sequence_request(**{**values, "theta_frames": 3}))
    assert last.status == "all 3"
    assert set(last.files) == {"gallery", "plot", "gif", "mp4", "zip", "smoothness"}
    assert list((tmp_path / "work").iterdir()) == []


def test_the_frame_cache_is_bounded_and_keyed_by_everything():
    from vslerp_app import service as ui

    cache = ui.FrameCache(max_bytes=3 * 64 * 64 * 3)
    for i in range(5):
        cache.put(("a", "b", i), Image.new("RGB", (64, 64)), {"i": i})
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.get(("a", "b", 0)) is None and cache.get(("a", "b", 4))[1] == {"i": 4}
    cache.put(("huge",), Image.new("RGB", (512, 512)), {})  # larger than the whole cache: not kept
    assert cache.get(("huge",)) is None and len(cache) == 3


def test_frame_keys_differ_for_other_inputs_and_settings(pipe, tmp_path):
    from vslerp_app import service as ui

    studio = ui.Studio(pipe)
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(SOURCE.read_bytes())

    def frame_key(source, seed=1, sampling=None, alpha=1.0):
        sampling = sampling or ui.Sampling(steps=2)
        request = ui.FrameRequest(str(source), str(TARGET), 0.5, alpha, seed, sampling)
        return studio.frame_key(request, (ui.file_key(source), ui.file_key(TARGET)))

    key = frame_key(SOURCE)
    assert key == frame_key(copy, sampling=ui.Sampling(steps=2, max_batch=4))
    for other in [frame_key(TARGET), frame_key(SOURCE, seed=2),
                  frame_key(SOURCE, sampling=ui.Sampling(steps=3)),
                  frame_key(SOURCE, sampling=ui.Sampling(preview=True, preview_steps=2)),
                  frame_key(SOURCE, alpha=ui.AimAt(0.8))]:  # aimed
        assert other != key


def test_readouts_say_what_conformity_and_likelihood_mean():
    r = {"theta": 0.5, "alpha": 1.0, "seed": 3, "preview": False, "conformity_kind": "exact",
         "conformity": 0.61, "frame_conformity": 0.62, "log_likelihood": -410.0,
         "frame_log_likelihood": -500.0, "source": {"conformity": 0.58, "log_likelihood": -400.0},
         "target": {"conformity": 0.65, "log_likelihood": -420.0}, "seconds": 1.5}
    text = readouts_markdown(r)
    assert "higher is more typical" in text and "higher is more likely" in text
    assert "**0.620**, between the source and the target (0.580 and 0.650)" in text
    assert "**-500.0**, below both the source and the target" in text
    assert "reference images' scale" not in text  # no population in these stats
    with_population = readouts_markdown({**r, "frame_conformity_percentile": 53.2,
                                         "frame_log_likelihood_percentile": 1.0, "conformity_kind": "cosine"})
    assert "the frame is more typical than 53%" in with_population
    assert "more likely than 1% of those images" in with_population
    assert "Cosine to the image mean (Eq. 11 uncalibrated)" in with_population
    cached = readouts_markdown({**r, "cached": True})
    assert "From the frame cache" in cached
    # Keys another version may not send are simply left out.
    minimal = {k: r[k] for k in ("theta", "alpha", "seed", "conformity_kind", "frame_conformity")}
    assert "**0.620**" in readouts_markdown(minimal)


def test_the_runners_step_hook_counts_each_batch_in_its_own_thread(pipe):
    import threading

    seen = []
    other = threading.Thread(target=lambda: pipe.generate(str(SOURCE), str(TARGET), 0.3, 0.0, seed=1,
                                                          preview=True, steps=3))
    with pipe.runner.on_step(lambda step, total: seen.append((step, total))):
        other.start()
        other.join()  # renders in another thread do not report here
        pipe.generate(str(SOURCE), str(TARGET), [0.2, 0.5, 0.8], 1.0, seed=1, steps=3, super_res_steps=2,
                      max_batch=2)
    assert seen == [(i, 5) for i in range(1, 6)] * 2
    pipe.generate(str(SOURCE), str(TARGET), 0.5, 1.0, seed=1, preview=True, steps=2)  # no hook: nothing
    assert len(seen) == 10


def test_a_url_download_stops_at_the_size_limit(tmp_path, monkeypatch):
    """The app's bounded download against a real local HTTP server (the public-host check,
    which refuses 127.0.0.1, is replaced by a plain transport): a small image arrives whole,
    a file over the limit is refused and nothing of it is kept."""
    import asyncio
    import functools
    import http.server
    import threading

    import gradio as gr
    import httpx

    monkeypatch.syspath_prepend(str(ROOT))
    import gate

    site = tmp_path / "site"
    site.mkdir()
    (site / "cat.jpg").write_bytes(SOURCE.read_bytes())
    (site / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 2**20))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def download(name: str) -> str:
        return asyncio.run(gate.bounded_download(f"{base}/{name}", tmp_path / "cache", 2**20, "source image",
                                                 transport=httpx.AsyncHTTPTransport()))

    try:
        assert Path(download("cat.jpg")).read_bytes() == SOURCE.read_bytes()
        with pytest.raises(gr.Error) as err:
            download("huge.png")
        assert err.value.message == "The source image is too large; files up to 1 MB are accepted."
        with pytest.raises(gr.Error, match="the server answered 404"):
            download("missing.png")
        kept = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
        assert [p.read_bytes() for p in kept] == [SOURCE.read_bytes()]

        # Two requests for one URL at once: each downloads to a file of its own, then moves it
        # into place, so neither reads the other's half-written file (they shared one before).
        # (A transport each: the test server speaks HTTP/1.0 and closes every connection, which
        # one shared connection pool may try to reuse: a ReadError that is the test's, not the gate's.)
        async def twice():
            def one():
                return gate.bounded_download(f"{base}/cat.jpg", tmp_path / "twice", 2**20, "source image",
                                             transport=httpx.AsyncHTTPTransport())

            return await asyncio.gather(one(), one())

        paths = asyncio.run(twice())
        assert all(Path(p).read_bytes() == SOURCE.read_bytes() for p in paths)
        assert [p.name for p in (tmp_path / "twice").rglob("*") if p.is_file()] == ["download"]
    finally:
        server.shutdown()


# -- the hooks into Gradio: what they rely on, checked -----------------------------------------
def _gradio_patches(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import gradio_patches

    return gradio_patches


def test_the_gradio_internals_the_gate_hooks_into_are_as_written_for(monkeypatch):
    """Every internal `gradio_patches` relies on (a method's parameters, an attribute, a request
    body's fields) is there in the installed Gradio: an upgrade that changes one fails here,
    by name, and the app refuses to start on it."""
    patches = _gradio_patches(monkeypatch)
    assert patches.changed_internals() == []
    patches.check_gradio()  # the installed release is in the tested range

    import gradio as gr
    import pydantic
    from gradio import data_classes, queueing

    # Each kind of change is caught, and named: a parameter added, a method gone, a field renamed.
    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False, run_id=None):
        return inputs

    monkeypatch.setattr(gr.Blocks, "preprocess_data", preprocess_data)
    monkeypatch.delattr(queueing.Queue, "push")
    monkeypatch.setattr(data_classes, "CancelBody", pydantic.create_model(
        "CancelBody", session_hash=(str, ...), fn_index=(int, ...), job_id=(str, ...)))
    assert patches.changed_internals() == [
        "Blocks.preprocess_data(self, block_fn, inputs, state, explicit_call)",
        "Queue.push(self, body, request, username) -> (ok, message, kind)",
        "CancelBody's fields session_hash, fn_index, event_id (POST /cancel)"]
    with pytest.raises(patches.GradioMismatchError) as err:
        patches.check_gradio()
    assert "relies on (Blocks.preprocess_data(self, block_fn, inputs, state, explicit_call); Queue.push" \
        in str(err.value)


@pytest.mark.parametrize("version", ["6.19.0", "6.32.0", "7.0.0"])
def test_a_gradio_outside_the_tested_range_is_refused_at_start_up(monkeypatch, version):
    """`python app.py` on a Gradio release the gate was not tested with stops before loading the
    model, in one line naming the release, the tested range and the fix."""
    patches = _gradio_patches(monkeypatch)
    import gradio as gr

    import app

    monkeypatch.setattr(gr, "__version__", version)
    with pytest.raises(SystemExit) as err:
        app.main(["--model", "no-such-model-is-loaded"])
    assert str(err.value) == (f"vSLERP Studio: vSLERP Studio's request gate is tested with gradio "
                              f"{patches.TESTED_GRADIO}; this is gradio {version}: install a tested "
                              "release: pip install -r requirements.txt.")
    with pytest.raises(patches.GradioMismatchError):
        app.build_demo(None)  # a Python caller (a Space imports app.py) is refused as well


def test_requirements_pin_gradio_to_the_tested_range(monkeypatch):
    from packaging.requirements import Requirement

    patches = _gradio_patches(monkeypatch)
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    gradio = next(Requirement(line) for line in lines if line.startswith("gradio"))
    assert gradio.specifier == patches.TESTED_GRADIO


def _served(directory: Path):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_url_for_an_image_box_is_fetched_by_the_gate_not_by_gradio(tmp_path, monkeypatch):
    """Through Gradio's own request processing (`Blocks.preprocess_data`, in process): an image
    URL sent as a file's path is downloaded by the gate with its byte bound and handed on as a
    file Gradio stored, so Gradio's unbounded download never runs; a file over the limit is
    refused as an upload is, and a server path still gets the file gate's one message. (Only
    the public-host check is replaced, so the local test server can answer.)"""
    import asyncio

    import gradio as gr
    import safehttpx
    from gradio import processing_utils

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    _gradio_patches(monkeypatch)
    import gate

    site = tmp_path / "site"
    site.mkdir()
    (site / "cat.jpg").write_bytes(SOURCE.read_bytes())
    (site / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2 * 2**20))
    server = _served(site)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    async def local(hostname):
        return "127.0.0.1"

    gradio_downloads = []

    async def recorded(url, cache_dir):
        gradio_downloads.append(url)
        raise AssertionError("Gradio's own download ran")

    monkeypatch.setattr(safehttpx, "async_validate_url", local)
    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", recorded)
    file_gate = gate.FileGate()
    with gr.Blocks() as demo:
        image = gate.checked_image("source image", 2**20, file_gate, type="filepath", image_mode=None)
        image.change(lambda path: path, image, gr.Textbox())
    gate.install_file_gate(demo, file_gate)
    block_fn = next(iter(demo.fns.values()))

    def read(path: str):
        payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
        return asyncio.run(demo.preprocess_data(block_fn, [payload], None))[0]

    try:
        fetched = read(f"{base}/cat.jpg")
        assert Path(fetched).read_bytes() == SOURCE.read_bytes()
        assert Path(fetched).resolve().is_relative_to((tmp_path / "gradio").resolve())
        with pytest.raises(gr.Error) as err:
            read(f"{base}/huge.png")
        assert err.value.message == "The source image is too large; files up to 1 MB are accepted."
        with pytest.raises(gr.Error) as err:
            read(str(SOURCE))
        assert "a path on the server is not accepted" in err.value.message
        assert gradio_downloads == []
    finally:
        server.shutdown()


def test_only_gradio_patches_reaches_into_gradio():
    """The app's other modules replace no Gradio method on an object and read no private part
    of the page's queue: every hook is in gradio_patches.py, where `check_gradio` checks what
    it relies on (read with `ast`, so a new hook elsewhere fails here)."""
    import ast

    hooks = {"preprocess", "postprocess", "preprocess_data", "postprocess_data", "push",
             "async_move_resource_to_block_cache", "move_resource_to_block_cache"}
    found = []
    for name in ("app.py", "gate.py"):
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            found += [f"{name}:{node.lineno}: .{t.attr} =" for target in targets
                      for t in ast.walk(target) if isinstance(t, ast.Attribute) and t.attr in hooks]
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr"
                    and getattr(node.args[1], "value", None) in hooks):
                found.append(f"{name}:{node.lineno}: setattr")
            if isinstance(node, ast.Attribute) and node.attr in ("_queue", "event_queue_per_concurrency_id"):
                found.append(f"{name}:{node.lineno}: .{node.attr}")
    assert found == []
