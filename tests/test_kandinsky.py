"""Kandinsky 2.2 end to end on its tiny fixture, the ways users run it: the `vslerp` command
(fixture, render with --strength and --resolution, resume, a path, stats, score, models) and
the app's /preview through gradio_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.fixtures import fixture_images
from vslerp_app.stats import ModalityStats

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def vslerp(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "kandinsky"
    result = vslerp("fixture", "kandinsky", out)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # quiet, as for Karlo
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    for name, img in zip(("a.png", "b.png", "c.png"), fixture_images(3, seed=11, size=64), strict=True):
        img.save(root / name)
    return root


def _frames(out: Path) -> list[Path]:
    return sorted((out / "frames").glob("*.png"))


def test_fixture_writes_the_two_repositories(model):
    assert json.loads((model / "prior" / "model_index.json").read_text())["_class_name"] == \
        "KandinskyV22PriorPipeline"
    assert json.loads((model / "decoder" / "model_index.json").read_text())["_class_name"] == \
        "KandinskyV22Pipeline"


def test_render_with_strength_and_a_non_square_size_then_resume(model, inputs, tmp_path):
    out = tmp_path / "run"
    args = ("render", "--model", model, "--source", inputs / "a.png", "--target", inputs / "b.png",
            "--theta", "0:1:3", "--alpha", "0.5", "--seed", 3, "--steps", 4, "--strength", 0.5,
            "--resolution", "48x32", "--out", out)
    first = vslerp(*args)
    assert first.returncode == 0, first.stderr
    frames = _frames(out)
    assert len(frames) == 3 and all(Image.open(f).size == (48, 32) for f in frames)
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"strength": 0.5' in text and "kandinsky-2-2" in text
    pixels = [np.asarray(Image.open(f)) for f in frames]
    again = vslerp(*args)  # everything done: nothing rendered again, the frames unchanged
    assert again.returncode == 0 and "0 rendered, 3 already done" in again.stdout, again.stdout
    assert all(np.array_equal(p, np.asarray(Image.open(f)))
               for p, f in zip(pixels, _frames(out), strict=True))
    changed = vslerp(*args[:-2], "--strength", 0.75, "--out", out)  # another strength is another run
    assert changed.returncode != 0 and "strength" in changed.stderr, changed.stderr


def test_render_refuses_a_size_the_movq_cannot_make(model, inputs, tmp_path):
    result = vslerp("render", "--model", model, "--source", inputs / "a.png", "--target", inputs / "b.png",
                    "--theta", 0.5, "--resolution", "30", "--out", tmp_path / "o")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "resolution must be a multiple of 4" in result.stderr and "got 30" in result.stderr
    bad = vslerp("render", "--model", model, "--source", inputs / "a.png", "--target", inputs / "b.png",
                 "--theta", 0.5, "--resolution", "big", "--out", tmp_path / "o")
    assert bad.returncode != 0 and "WIDTHxHEIGHT" in bad.stderr and "'big'" in bad.stderr


def test_render_a_path_through_keyframes(model, inputs, tmp_path):
    out = tmp_path / "path"
    result = vslerp("render", "--model", model, "--keyframes", inputs / "a.png", inputs / "b.png",
                    inputs / "c.png", "--frames", 5, "--seed", 1, "--steps", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(_frames(out)) == 5 and Image.open(_frames(out)[0]).size == (32, 32)


def test_stats_and_score_use_the_kandinsky_image_encoder(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(fixture_images(40, seed=5, size=48)):
        img.save(folder / f"{i:02d}.png")
    stats_file = tmp_path / "k.safetensors"
    made = vslerp("stats", "--model", model, "--images", folder, "--out", stats_file)
    assert made.returncode == 0, made.stderr
    stats = ModalityStats.load(stats_file, expected_dim=32)
    assert stats.n == 40
    scored = vslerp("score", "--model", model, "--images", folder, "--stats", stats_file,
                    "--out", tmp_path / "scores")
    assert scored.returncode == 0, scored.stderr
    assert any((tmp_path / "scores").iterdir())


def test_models_lists_the_kandinsky_preset():
    result = vslerp("models", "--json")
    assert result.returncode == 0, result.stderr
    presets = {p["name"]: p for p in json.loads(result.stdout)}
    k = presets["kandinsky-2-2"]
    assert k["hub_id"] == "kandinsky-community/kandinsky-2-2-decoder" and k["embedding_dim"] == 1280
    assert (k["resolution"], k["max_resolution"]) == (768, 1024)
    assert k["mean_source"] == ["kandinsky-community/kandinsky-2-2-prior", "prior"]


def test_preview_through_gradio_client_with_strength(model, launch_app, tmp_path):
    from gradio_client import Client, handle_file
    from test_ip_adapter import (
        full_and_preview_through_gradio_client,
        sequence_and_path_through_gradio_client,
    )

    source, target = Path(ROOT / "examples" / "chelsea.jpg"), Path(ROOT / "examples" / "rocket.jpg")
    app = launch_app(model)
    client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
    common = dict(source=handle_file(source), target=handle_file(target), seed=7, steps=4,
                  preview_steps=2, api_name="/preview")
    full_and_preview_through_gradio_client(client, common)
    # strength < 1 at theta 0: nearer the source photo than the frame from noise
    near, _ = client.predict(theta=0.0, alpha=0.0, quality="full", strength=0.25, **common)
    far, _ = client.predict(theta=0.0, alpha=0.0, quality="full", strength=1.0, **common)
    photo = np.asarray(Image.open(source).convert("RGB").resize((32, 32))).astype(float)
    gap = [np.abs(np.asarray(Image.open(p)).astype(float) - photo).mean() for p in (near, far)]
    assert gap[0] < gap[1], gap
    with pytest.raises(Exception, match=r"strength must be between 0.05 and 1, got 1.5"):  # named
        client.predict(theta=0.5, alpha=0.0, quality="full", strength=1.5, **common)
    sequence_and_path_through_gradio_client(client, source, target)
