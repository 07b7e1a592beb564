"""Reference-space readouts with open_clip: stats, report, readouts, errors.

A real open_clip model built from a tiny config registered at test time (random weights
from a fixed seed, `pretrained=None`) goes through the same code path as
`open_clip:ViT-B-32/openai` on a user's machine, minus the download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.fixtures import fixture_images
from pipelines.reference_encoder import (
    CONFIG_ENV,
    OpenClipEncoder,
    ReferenceSpaceError,
    parse_reference,
    register_model_config,
)
from vslerp_app import load_pipeline
from vslerp_app.caption_stats import read_captions, reference_stats, sibling_paths
from vslerp_app.cli import build_parser
from vslerp_app.fixtures import write_fixture
from vslerp_app.reference import ReferenceReadout, reference_stats_filename
from vslerp_app.stats import ModalityStats

TINY = "vslerp-test-tiny-clip"
SPEC = f"open_clip:{TINY}"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
N_IMAGES = 96  # 3 * embed_dim, so the stats carry a whitening matrix
CAPTIONS = ["a photo of a cat", "a dog asleep on a sofa", "a red bus in a busy street",
            "a pizza on a wooden table", "two people skiing down a hill", "a bowl of fruit",
            "a man riding a wave on a surfboard", "an empty train station at night"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("openclip") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    assert register_model_config(path) == [TINY]
    return path


@pytest.fixture(scope="module")
def encoder(tiny_config):
    model, pretrained = parse_reference(SPEC)
    return OpenClipEncoder(model, pretrained, "cpu", spec=SPEC)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref-images")
    for i, img in enumerate(fixture_images(N_IMAGES, seed=5)):
        img.save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def python_run(encoder, image_dir, tmp_path_factory):
    captions = tmp_path_factory.mktemp("caps") / "captions.txt"
    captions.write_text("\n".join(CAPTIONS[:4]) + "\n\n" + "\n".join(CAPTIONS[4:]) + "\n")
    out = tmp_path_factory.mktemp("ref-stats") / "tiny.safetensors"
    return reference_stats(encoder, image_dir, out, captions=captions, batch_size=16)


def _vslerp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def _fit(emb: np.ndarray) -> dict:
    """Brute force from the embeddings: member conformity, Eq. 11 least squares, Pearson."""
    emb = emb.astype(np.float64)
    n = emb.shape[0]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit.T
    c = (cos.sum(1) - np.diag(cos)) / (n - 1)
    m = emb.mean(0)
    x = unit @ (m / np.linalg.norm(m))
    a, b = np.polyfit(x, c, 1)
    sigma = np.linalg.norm(emb.std(0, ddof=1))
    return {"a": a, "b": b, "pearson": np.corrcoef(x, c)[0, 1], "mean": m, "c": c,
            "mean_to_sigma": np.linalg.norm(m) / sigma}


def test_parse_reference_and_stats_file_naming():
    assert parse_reference("open_clip:ViT-B-32/openai") == ("ViT-B-32", "openai")
    assert parse_reference("open_clip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_reference("open_clip:ViT-B-32//data/w.pt") == ("ViT-B-32", "/data/w.pt")
    assert parse_reference("open_clip:hf-hub:timm/ViT-B-16-SigLIP") == ("hf-hub:timm/ViT-B-16-SigLIP", None)
    for bad, words in [("ViT-B-32/openai", "open_clip:MODEL/PRETRAINED"),
                       ("clip:ViT-B-32", "open_clip:MODEL/PRETRAINED"),
                       ("open_clip:", "names no model"), ("open_clip:/openai", "names no model")]:
        with pytest.raises(ReferenceSpaceError, match=words):
            parse_reference(bad)
    assert (reference_stats_filename("open_clip:ViT-B-32/openai")
            == "open_clip-ViT-B-32-openai-coco-val2017.safetensors")
    paths = sibling_paths("/x/y/tiny.safetensors")
    assert [paths[k].name for k in ("text", "report_json", "report_png")] == [
        "tiny.text.safetensors", "tiny.report.json", "tiny.report.png"]


def test_encoder_gives_raw_embeddings_through_open_clips_own_transform(encoder):
    import open_clip

    images = fixture_images(3, seed=1)
    emb = encoder.encode(images)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32 and encoder.dim == 32
    norms = emb.norm(dim=1)
    assert not torch.allclose(norms, torch.ones(3), atol=1e-3)  # not L2-normalised
    with torch.no_grad():
        pixels = torch.stack([encoder.preprocess(i) for i in images])
        direct = encoder.model.encode_image(pixels, normalize=False)
    torch.testing.assert_close(emb, direct)
    text = encoder.encode_text(["a photo of a cat", "a dog"])
    with torch.no_grad():
        want = encoder.model.encode_text(open_clip.get_tokenizer(TINY)(["a photo of a cat", "a dog"]))
    torch.testing.assert_close(text, want)
    assert not encoder.model.training
    # random weights come from a fixed seed: the same spec builds the same model
    again = OpenClipEncoder(TINY, None, "cpu", spec=SPEC)
    torch.testing.assert_close(again.encode(images), emb)


def test_python_stats_and_report_equal_recomputation_from_embeddings(python_run, encoder, image_dir):
    from vslerp_app.folder_stats import find_images
    from vslerp_app.images import load_image

    paths = python_run.paths
    for key in ("image", "text", "report_json", "report_png"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["report_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["report_json"].read_text())
    assert report["space"] == SPEC

    emb = torch.cat([encoder.encode([load_image(p)]) for p in find_images(image_dir)])
    text_emb = encoder.encode_text(CAPTIONS)
    for modality, e in (("image", emb), ("text", text_emb)):
        want, got = _fit(e.numpy()), report["modalities"][modality]
        assert got["n"] == e.shape[0]
        for key in ("a", "b", "pearson", "mean_to_sigma"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), (modality, key)
        assert got["member_conformity"]["mean"] == pytest.approx(want["c"].mean(), abs=1e-3)
        stats = ModalityStats.load(paths[modality], expected_dim=32)
        assert stats.modality == modality and stats.n == e.shape[0]
        assert stats.provenance["encoder"] == SPEC
        np.testing.assert_allclose(stats.mean.numpy(), want["mean"], atol=1e-5, rtol=1e-5)
        assert stats.a == pytest.approx(got["a"]) and stats.pearson == pytest.approx(got["pearson"])
    mi, mt = emb.double().mean(0), text_emb.double().mean(0)
    gap = report["modality_gap"]
    assert gap["mean_distance"] == pytest.approx(float((mi - mt).norm()), abs=1e-4)
    assert gap["mean_cosine"] == pytest.approx(float(mi @ mt / (mi.norm() * mt.norm())), abs=1e-5)


def test_cli_stats_reference_with_coco_captions(tiny_config, image_dir, python_run, tmp_path):
    coco = {"annotations": [{"image_id": i, "id": i, "caption": f"  {c}\n"} for i, c in enumerate(CAPTIONS)]}
    captions = tmp_path / "captions_val2017.json"
    captions.write_text(json.dumps(coco))
    assert read_captions(captions) == CAPTIONS
    out = tmp_path / "stats" / "cli.safetensors"
    result = _vslerp("stats", "--reference", SPEC, "--images", image_dir, "--out", out,
                     "--captions", captions, "--batch-size", 7, "--source-name", "tiny-set",
                     env={CONFIG_ENV: str(tiny_config)})
    assert result.returncode == 0, result.stderr
    assert f"image: n={N_IMAGES}" in result.stdout and "text: n=8" in result.stdout
    assert "modality gap" in result.stdout
    paths = sibling_paths(out)
    assert all(p.is_file() for p in paths.values())
    # the CLI (another process, other batch sizes) gives the numbers of the Python run
    for modality in ("image", "text"):
        cli = ModalityStats.load(paths[modality], expected_dim=32)
        py = ModalityStats.load(python_run.paths[modality], expected_dim=32)
        torch.testing.assert_close(cli.mean, py.mean, atol=1e-5, rtol=1e-5)
        assert cli.a == pytest.approx(py.a, abs=1e-5) and cli.b == pytest.approx(py.b, abs=1e-5)
    report = json.loads(paths["report_json"].read_text())
    assert report["dataset"] == "tiny-set" and report["files"]["text_stats"] == "cli.text.safetensors"


def test_cli_stats_needs_exactly_one_of_model_and_reference(capsys):
    parser = build_parser()
    for argv in (["stats", "--images", "d", "--out", "o"],
                 ["stats", "--model", "m", "--reference", SPEC, "--images", "d", "--out", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    args = parser.parse_args(["stats", "--reference", SPEC, "--images", "d", "--out", "o.safetensors"])
    assert args.reference == SPEC and args.model is None and args.captions is None


def test_pipeline_frames_carry_reference_readouts_equal_to_direct_values(python_run, encoder, tmp_path):
    karlo = write_fixture("karlo", tmp_path / "karlo")
    stats_file = python_run.paths["image"]
    pipe = load_pipeline(karlo, device="cpu", reference=SPEC, reference_stats=stats_file)
    source, target = fixture_images(2, seed=11)
    frames = pipe.generate(source, target, thetas=[0.0, 0.5, 0.5], alphas=[0.0, 1.0, 1.0], seed=3,
                           steps=2, super_res_steps=2)
    stats = ModalityStats.load(stats_file, expected_dim=32)
    assert stats.whitening is not None
    for frame in frames:
        ref = frame.reference
        assert ref is not None and frame.readouts()["reference"] == ref
        v = encoder.encode([frame.image])[0]
        assert ref["space"] == SPEC and ref["conformity_kind"] == "exact"
        assert ref["frame_conformity"] == pytest.approx(float(stats.conformity(v)), abs=1e-6)
        assert ref["estimated_conformity"] == pytest.approx(float(stats.estimated_conformity(v)), abs=1e-6)
        assert ref["frame_log_likelihood"] == pytest.approx(float(stats.log_likelihood(v)), rel=1e-5)
        json.dumps(frame.readouts())  # JSON-ready for manifests and APIs
    assert frames[1].reference == frames[2].reference
    info = pipe.info()["reference"]
    assert info["space"] == SPEC and info["stats"]["checksum"] == stats.checksum()
    assert not info["stats"]["encoder_mismatch"]


def test_readout_of_embeddings_and_stats_checks(python_run, encoder, tmp_path):
    readout = ReferenceReadout(encoder, ModalityStats.load(python_run.paths["image"]))
    images = fixture_images(3, seed=9)
    emb = encoder.encode(images)
    assert readout.readouts(images) == readout.readouts_of_embeddings(emb)
    # mean-only stats: conformity falls back to the cosine to the mean (Eq. 11 uncalibrated), no likelihood
    mean_only = ModalityStats.from_mean(readout.stats.mean, encoder=SPEC)
    r = ReferenceReadout(encoder, mean_only).readouts(images[:1])[0]
    assert r["conformity_kind"] == "cosine" and r["frame_log_likelihood"] is None
    assert r["frame_conformity"] == r["estimated_conformity"]
    # stats of another dimension are refused, naming both
    wrong = tmp_path / "wrong.safetensors"
    ModalityStats.from_mean(torch.ones(16), encoder="other").save(wrong)
    with pytest.raises(ReferenceSpaceError, match="16-d.*32-d"):
        ReferenceReadout.load(SPEC, stats=wrong, device="cpu")
    with pytest.raises(ReferenceSpaceError, match="image stats"):
        ReferenceReadout(encoder, ModalityStats.load(python_run.paths["text"]))


def test_missing_stats_say_how_to_compute_them(tiny_config, tmp_path, monkeypatch):
    import vslerp_app.reference

    monkeypatch.setattr(vslerp_app.reference, "STATS_DIR", tmp_path)
    with pytest.raises(ReferenceSpaceError) as err:
        ReferenceReadout.load(SPEC, device="cpu")
    msg = str(err.value)
    assert f"vslerp stats --reference {SPEC} --images DIR --out" in msg
    assert reference_stats_filename(SPEC) in msg


def test_unknown_model_and_tag_errors_say_how_to_find_valid_names(tiny_config):
    with pytest.raises(ReferenceSpaceError) as err:
        OpenClipEncoder("ViT-B-23", "openai", "cpu")
    msg = str(err.value)
    assert "'ViT-B-23'" in msg and "did you mean" in msg and "ViT-B-32" in msg
    assert "open_clip.list_models()" in msg and "open_clip.list_pretrained()" in msg
    with pytest.raises(ReferenceSpaceError) as err:
        OpenClipEncoder("ViT-B-32", "opneai", "cpu")
    msg = str(err.value)
    assert "did you mean openai" in msg and "laion2b_s34b_b79k" in msg
    assert "list_pretrained_tags_by_model('ViT-B-32')" in msg
    with pytest.raises(ReferenceSpaceError, match="names no pretrained weights.*ViT-B-32/openai"):
        OpenClipEncoder("ViT-B-32", None, "cpu")


def test_a_checkpoint_file_as_pretrained(encoder, tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(encoder.model.state_dict(), weights)
    spec = f"{SPEC}/{weights}"
    model, pretrained = parse_reference(spec)
    assert (model, pretrained) == (TINY, str(weights))
    loaded = OpenClipEncoder(model, pretrained, "cpu", spec=spec)
    images = fixture_images(2, seed=2)
    torch.testing.assert_close(loaded.encode(images), encoder.encode(images))


def test_pretrained_download_offline_fails_with_one_clear_line(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py
    with pytest.raises(ReferenceSpaceError) as err:
        OpenClipEncoder("ViT-B-32", "laion2b_s34b_b79k", "cpu", spec="open_clip:ViT-B-32/laion2b_s34b_b79k")
    msg = str(err.value)
    assert "could not download" in msg and "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg
    assert "Hugging Face cache" in msg
    # through the command line: one line on stderr, no traceback, no open_clip log soup
    images = tmp_path / "imgs"
    images.mkdir()
    for i, img in enumerate(fixture_images(2, seed=0)):
        img.save(images / f"{i}.png")
    result = _vslerp("stats", "--reference", "open_clip:ViT-B-32/openai", "--images", images,
                     "--out", tmp_path / "o.safetensors", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vslerp stats: error: could not download") and "ViT-B-32" in lines[0]


def test_render_command_writes_reference_readouts_into_the_manifest(python_run, tiny_config, tmp_path):
    karlo = write_fixture("karlo", tmp_path / "karlo")
    source, target = fixture_images(2, seed=4)
    source.save(tmp_path / "a.png")
    target.save(tmp_path / "b.png")
    out = tmp_path / "out"
    result = _vslerp("render", "--model", karlo, "--source", tmp_path / "a.png", "--target",
                     tmp_path / "b.png", "--theta", "0:1:3", "--alpha", "1", "--seed", "2", "--out", out,
                     "--steps", "2", "--super-res-steps", "2", "--reference", SPEC,
                     "--reference-stats", python_run.paths["image"],
                     env={"VSLERP_OPEN_CLIP_CONFIG": str(tiny_config)})
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    stats = ModalityStats.load(python_run.paths["image"], expected_dim=32)
    encoder = OpenClipEncoder(*parse_reference(SPEC), "cpu", spec=SPEC)
    for entry in manifest["frames"]:
        ref = entry["reference"]
        v = encoder.encode([Image.open(out / entry["file"]).convert("RGB")])[0]
        assert ref["space"] == SPEC
        assert ref["frame_conformity"] == pytest.approx(float(stats.conformity(v)), abs=1e-5)
    # the frames' smoothness in the reference space too, from its own embeddings of the frames
    from vslerp_app.smoothness import cosine_steps

    frames = [Image.open(out / e["file"]).convert("RGB") for e in manifest["frames"]]
    measured = manifest["smoothness"]["reference"]
    assert measured["space"] == SPEC
    expected = cosine_steps(encoder.encode(frames)).tolist()
    assert measured["steps"] == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_app_shows_the_reference_readout_when_configured(python_run, tiny_config, tmp_path):
    from gradio_client import Client, handle_file

    from tests.test_app_api import EXAMPLES, launched_app, write_tiny_karlo

    karlo = write_tiny_karlo(tmp_path / "karlo")
    env = {"VSLERP_REFERENCE": SPEC, "VSLERP_REFERENCE_STATS": str(python_run.paths["image"]),
           "VSLERP_OPEN_CLIP_CONFIG": str(tiny_config)}
    with launched_app(karlo, tmp_path / "app", extra_env=env) as app:
        client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
        image_path, readouts = client.predict(
            source=handle_file(EXAMPLES / "chelsea.jpg"), target=handle_file(EXAMPLES / "rocket.jpg"),
            theta=0.5, alpha=1.0, seed=1, quality="full", steps=2, super_res_steps=2, preview_steps=2,
            api_name="/preview")
        page = client.view_api(return_format="dict", print_info=False)
        assert page  # the API is served with the reference configured
        html = urllib.request.urlopen(app.url + "config", timeout=10).read().decode()
    ref = readouts["reference"]
    stats = ModalityStats.load(python_run.paths["image"], expected_dim=32)
    encoder = OpenClipEncoder(*parse_reference(SPEC), "cpu", spec=SPEC)
    v = encoder.encode([Image.open(image_path).convert("RGB")])[0]
    assert ref["space"] == SPEC
    assert ref["frame_conformity"] == pytest.approx(float(stats.conformity(v)), abs=1e-4)
    assert f"Reference space**: `{SPEC}`" in html  # the model panel names the space
