"""The app over HTTP: `gradio_client` against `python app.py --model <tiny karlo>` in a subprocess.

Covers the named endpoints `/preview` and `/sequence` (returned files exist and are valid,
readouts are numbers), plain error messages for broken uploads and bad values with the
server still serving afterwards, and the per-session embedding cache of the app's helpers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from vslerp_app.service import readouts_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SOURCE, TARGET = EXAMPLES / "chelsea.jpg", EXAMPLES / "rocket.jpg"
# Karlo's scheduler needs two timesteps; two of each keeps a tiny frame well under a second.
FAST = {"steps": 2, "super_res_steps": 2, "preview_steps": 2}
STARTUP_TIMEOUT_S = 180


# -- a launched app (also used by test_app_browser.py) ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_karlo(directory: Path) -> Path:
    from vslerp_app.fixtures import write_fixture

    write_fixture("karlo", directory)
    return directory


@contextlib.contextmanager
def launched_app(model_dir: Path, work: Path, extra_env: dict | None = None):
    """`python app.py --model model_dir --port P` in a subprocess; yields its url and log."""
    port = _free_port()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GRADIO_TEMP_DIR=str(work / "gradio"), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", TMPDIR=str(work), **(extra_env or {}))
    env.pop("GRADIO_SERVER_PORT", None)
    log_path = work / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(model_dir), "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not start in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, proc=proc, log=log_path, work=work)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def karlo_dir(tmp_path_factory):
    return write_tiny_karlo(tmp_path_factory.mktemp("tiny-karlo"))


@pytest.fixture(scope="module")
def app(karlo_dir, tmp_path_factory):
    with launched_app(karlo_dir, tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    return Client(app.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- endpoints ---------------------------------------------------------------------------
def test_only_the_two_named_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/preview", "/sequence"}
    assert not api["unnamed_endpoints"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/preview"]["parameters"]]
    assert params[:5] == ["source", "target", "theta", "alpha", "seed"]


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
    gallery, plot, mp4, gif, zip_path = client.predict(
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


def test_grid_sequence_at_preview_quality(client):
    gallery, plot, mp4, gif, zip_path = client.predict(
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
    ("text", "The source image is not an image (it looks like text)."),
    ("truncated", "The source image is truncated or corrupt"),
])
def test_broken_upload_is_refused_clearly_and_the_app_keeps_serving(client, app, tmp_path, which, message):
    bad = _broken_files(tmp_path)[which]
    with pytest.raises(AppError) as err:
        client.predict(source=handle_file(bad), target=handle_file(TARGET), theta=0.5, alpha=1.0,
                       api_name="/preview", **FAST)
    text = str(err.value)
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
    gallery, _plot, _mp4, _gif, zip_path = client.predict(
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
    kwargs = ui.generate_kwargs("preview", 25, 7, 3, 1.0, 4)
    assert kwargs == {"preview": True, "steps": 3, "max_batch": 4, "guidance_scale": 1.0}
    assert ui.generate_kwargs("full", 25, 7, 3, 1.0, 4)["super_res_steps"] == 7
    assert ui.json_safe({"a": float("nan"), "b": [float("inf"), 1.5]}) == {"a": None, "b": [None, 1.5]}
    # The server's cap (app.py --max-sequence-frames) is checked before anything else.
    with pytest.raises(ui.RequestError, match="at most 4 frames here, this one would have 5"):
        ui.check_request(None, "a.png", "b.png", [(0.0, 0.0)] * 5, 0, {}, max_frames=4)


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
        preview(str(SOURCE), str(TARGET), 0.5, 1.0, 42, *settings, {})
    assert "needs the image-modality mean" in err.value.message
    image, readouts, session = preview(str(SOURCE), str(TARGET), 0.5, 0.0, 42, *settings, {})
    assert image.size == (64, 64) and readouts["conformity"] is None
    assert "Conformity is not available" in readouts_markdown(readouts, pipe.stats_note)
    assert set(session) == {"source", "target"}
