"""`vslerp fixture` and `vslerp stats` through the real command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pipelines.fixtures import fixture_images
from vslerp_app import files, load_pipeline
from vslerp_app.images import load_image
from vslerp_app.stats import ModalityStats


def vslerp(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def karlo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "karlo"
    result = vslerp("fixture", "karlo", out)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet: no deprecation warning, no "Writing model shards" bars
    return out


def test_fixture_command_writes_a_loadable_hub_layout_pipeline(karlo_dir):
    index = json.loads((karlo_dir / "model_index.json").read_text())
    assert index["_class_name"] == "UnCLIPImageVariationPipeline"
    assert index["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    pipe = load_pipeline(karlo_dir)
    assert pipe.stats is not None and pipe.stats.dim == 32


def test_stats_command_streams_a_folder_skipping_and_counting_bad_files(karlo_dir, tmp_path):
    images = tmp_path / "images"
    (images / "nested" / "deeper").mkdir(parents=True)
    pics = fixture_images(100, seed=3)  # >= 3 d = 96: whitened
    for i, img in enumerate(pics):
        folder = images if i % 2 else images / "nested" / "deeper"
        img.save(folder / f"{i:03d}.{'png' if i % 3 else 'jpg'}")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (images / "notes.jpg").write_text("not a picture")
    (images / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "stats" / "tiny.safetensors"

    result = vslerp("stats", "--model", karlo_dir, "--images", images, "--out", out,
                    "--batch-size", 7, "--source-name", "test images")
    assert result.returncode == 0, result.stderr
    assert "100 images (2 unreadable skipped)" in result.stdout
    # The numbers come with what they mean; 100 images are enough for 32-d (no warning).
    assert re.search(r"a=-?\d\.\d{4} b=-?\d\.\d{4} pearson=0\.\d{5}", result.stdout), result.stdout
    assert "a, b: the Eq. 11 fit C_hat = a * cos(m, v) + b" in result.stdout
    assert "pearson: correlation of that estimate with exact conformity" in result.stdout
    assert "whitening: yes (log-likelihood readout; n = 100 >= 3 d = 96)" in result.stdout
    assert "warning" not in result.stderr
    assert (out.stat().st_mode & 0o777) == 0o666 & ~files._UMASK  # not mkstemp's 0600

    stats = ModalityStats.load(out, expected_dim=32)
    prov = stats.provenance
    assert stats.n == 100 and prov["image_count"] == "100" and prov["files_skipped"] == "2"
    assert prov["dataset"] == "test images" and prov["model_id"] == str(karlo_dir)
    assert {"torch", "diffusers"} <= set(json.loads(prov["library_versions"]))
    # The streamed statistics equal those of all embeddings (of the files as saved) at once.
    pipe = load_pipeline(karlo_dir)
    saved = [p for p in sorted(images.rglob("*")) if p.suffix in (".png", ".jpg") and p.stem.isdigit()]
    embeddings = pipe.encoder.encode([load_image(p) for p in saved])
    torch.testing.assert_close(stats.mean, embeddings.mean(0), atol=1e-5, rtol=1e-5)
    unit = embeddings / embeddings.norm(dim=1, keepdim=True)
    torch.testing.assert_close(stats.mean_unit, unit.mean(0), atol=1e-5, rtol=1e-5)


def test_too_few_images_for_the_dimension_warn_and_explain_the_missing_fit(karlo_dir, tmp_path):
    images = tmp_path / "two"
    images.mkdir()
    for i, img in enumerate(fixture_images(2, seed=5)):
        img.save(images / f"{i}.png")
    out = tmp_path / "two.safetensors"
    result = vslerp("stats", "--model", karlo_dir, "--images", images, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "pearson=n/a: every image here is equally conformal" in result.stdout
    assert "a=0.0000" in result.stdout and "whitening: none (needs n >= 3 d = 96, got 2)" in result.stdout
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warning == [
        "vslerp stats: warning: only 2 image(s) for 32-d embeddings: the whitening behind the "
        "log-likelihood readout needs at least 96 (3 d; the covariance is singular), so this file has "
        "no whitening and frames get no likelihood; the mean and the Eq. 11 fit are rough with so few "
        "images too"]
    stats = ModalityStats.load(out, expected_dim=32)
    assert stats.whitening is None and stats.pearson is None and stats.n == 2


def test_too_few_images_is_below_three_per_dimension_and_says_the_inflation():
    from vslerp_app.folder_stats import too_few_images

    assert "at least 2304 (3 d; the covariance is singular)" in too_few_images(768, 768)
    # n / (n - d) at n = 1000, d = 768: 4.31.
    assert "inflated about n/(n-d) = 4.31x" in too_few_images(1000, 768)
    assert "rough" not in too_few_images(1000, 768)
    assert too_few_images(2304, 768) is None and too_few_images(5000, 768) is None


@pytest.mark.parametrize("args, message", [
    (["--images", "{missing}"], "not a directory"),
    (["--images", "{empty}"], "no image files found"),
])
def test_stats_command_errors_are_one_clear_line(karlo_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in args]
    result = vslerp("stats", "--model", karlo_dir, "--out", tmp_path / "x.safetensors", *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_unknown_model_is_one_line_listing_presets(tmp_path):
    result = vslerp("stats", "--model", "karol", "--images", tmp_path, "--out", tmp_path / "x")
    assert result.returncode == 2
    assert "karlo, stable-unclip-h, stable-unclip-l" in result.stderr
    assert "Traceback" not in result.stderr


# -- `vslerp stats --dataset`: a streamed image dataset --------------------------------------
@pytest.fixture(scope="module")
def parquet_dataset(tmp_path_factory):
    """A local dataset in the hub's layout: data/validation-*.parquet with an Image column
    (and a caption column), 100 images; read through the same `load_dataset` call as a hub id."""
    import datasets

    root = tmp_path_factory.mktemp("dataset")
    (root / "data").mkdir()
    images = fixture_images(100, seed=9)
    table = datasets.Dataset.from_dict({"image": images, "caption": [f"image {i}" for i in range(100)]})
    shard = root / "data" / "validation-00000-of-00001.parquet"
    table.cast_column("image", datasets.Image()).to_parquet(str(shard))
    return root, images


def test_stats_from_a_dataset_land_where_the_model_finds_them(karlo_dir, parquet_dataset, tmp_path,
                                                              monkeypatch):
    root, images = parquet_dataset
    cache = tmp_path / "cache"
    result = vslerp("stats", "--model", karlo_dir, "--dataset", root, "--split", "validation",
                    "--limit", 98, "--batch-size", 16, env={"XDG_CACHE_HOME": str(cache)})
    assert result.returncode == 0, result.stderr
    assert "98 images (0 unreadable skipped)" in result.stdout and "whitening: yes" in result.stdout
    files = list((cache / "vslerp-studio" / "stats").glob("*.safetensors"))
    assert len(files) == 1 and str(files[0]) in result.stdout
    assert not (cache / "vslerp-studio" / "stats" / "partial").exists() or not any(
        (cache / "vslerp-studio" / "stats" / "partial").iterdir())  # a finished run leaves no state
    stats = ModalityStats.load(files[0], expected_dim=32)
    prov = stats.provenance
    assert stats.n == 98 and prov["dataset"] == str(root) and prov["split"] == "validation"
    assert prov["image_count"] == "98" and prov["encoder"] and prov["date"]
    assert stats.has_population and stats.whitening is not None
    # The first 98 images, prepared as for generation, give these numbers.
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    pipe = load_pipeline(karlo_dir)
    assert pipe.stats_note == f"from {files[0]}"  # the user cache comes before the model's own file
    embeddings = pipe.encoder.encode([load_image(im) for im in images[:98]])
    torch.testing.assert_close(pipe.stats.mean, embeddings.mean(0), atol=1e-5, rtol=1e-5)


def test_an_interrupted_dataset_run_resumes_without_encoding_again(karlo_dir, parquet_dataset, tmp_path,
                                                                    monkeypatch):
    from vslerp_app.dataset_stats import dataset_stats

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, _ = parquet_dataset
    encoder = load_pipeline(karlo_dir).encoder
    calls, first_run = [], True

    class Interrupted:  # the real encoder; the run dies during the third batch
        name, dim = encoder.name, encoder.dim

        def encode(self, batch):
            calls.append(len(batch))
            if len(calls) == 3 and first_run:
                raise RuntimeError("power cut")
            return encoder.encode(batch)

    with pytest.raises(RuntimeError, match="power cut"):
        dataset_stats(Interrupted(), str(root), split="validation", batch_size=16)
    calls.clear()
    first_run = False
    resumed = dataset_stats(Interrupted(), str(root), split="validation", batch_size=16)
    assert resumed.resumed_from == 32 and sum(calls) == 100 - 32  # only the rest was encoded
    whole = dataset_stats(encoder, str(root), split="validation", batch_size=16)
    assert resumed.encoded == whole.encoded == 100
    torch.testing.assert_close(resumed.stats.mean, whole.stats.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.stats.whitening, whole.stats.whitening, rtol=1e-4, atol=1e-5)


def test_dataset_errors_are_one_line_and_offline_fails_fast(karlo_dir, parquet_dataset, tmp_path):
    root, _ = parquet_dataset
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    # No network here: the hub is not reached, and the command says so in one line (the
    # libraries' own retries take ~30 s; the check before them does not wait for them).
    # HF_ENDPOINT at a closed local port: unreachable on any machine.
    hub = vslerp("stats", "--model", karlo_dir, "--dataset", "AKCIT/coco2017-captioning",
                 env={**env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert hub.returncode == 2 and "Traceback" not in hub.stderr
    assert "cannot reach the Hugging Face hub (127.0.0.1:9" in hub.stderr
    assert "AKCIT/coco2017-captioning" in hub.stderr
    # HF_HUB_OFFLINE=1 (the test suite's setting): the dataset is not in the cache, one line too.
    offline = vslerp("stats", "--model", karlo_dir, "--dataset", "AKCIT/coco2017-captioning",
                     env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert "could not open the dataset 'AKCIT/coco2017-captioning'" in offline.stderr
    bad_split = vslerp("stats", "--model", karlo_dir, "--dataset", root, "--split", "nope", env=env)
    assert bad_split.returncode == 2 and "split 'nope'" in bad_split.stderr
    assert "Traceback" not in bad_split.stderr
    both = vslerp("stats", "--model", karlo_dir, "--dataset", root, "--images", tmp_path, env=env)
    assert both.returncode == 2 and "give one of --images DIR" in both.stderr
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing written


# -- `vslerp stats import FILE` and what `vslerp models` says -----------------------------------
def test_stats_import_reads_pt_npy_safetensors_into_mean_only_stats(karlo_dir, tmp_path, monkeypatch):
    import numpy as np
    from safetensors.torch import save_file

    from vslerp_app.registry import user_stats_path

    mean = torch.randn(32, generator=torch.Generator().manual_seed(4)) * 3
    files = {"pt": tmp_path / "mean.pt", "npy": tmp_path / "mean.npy", "st": tmp_path / "m.safetensors"}
    torch.save({"clip_mean": mean[None]}, files["pt"])  # a Karlo-prior-like (1, d) named tensor
    np.save(files["npy"], mean.numpy())
    save_file({"mean": mean}, str(files["st"]))
    for kind, path in files.items():
        out = tmp_path / f"{kind}.safetensors"
        result = vslerp("stats", "import", path, "--encoder", "some/encoder", "--out", out)
        assert result.returncode == 0, result.stderr
        stats = ModalityStats.load(out)
        torch.testing.assert_close(stats.mean, mean, rtol=0, atol=0)
        assert stats.conformity_kind == "cosine" and stats.mean_unit is None
        prov = stats.provenance
        assert prov["encoder"] == "some/encoder" and prov["imported_from"] == str(path) and prov["date"]
        assert len(prov["imported_sha256"]) == 64

    # A pickle that is more than tensors is refused (weights_only), as is a wrong size.
    torch.save({"mean": mean, "code": print}, tmp_path / "evil.pt")
    evil = vslerp("stats", "import", tmp_path / "evil.pt", "--encoder", "x", "--out", tmp_path / "e.st")
    assert evil.returncode == 2 and "could not read a mean" in evil.stderr
    assert "Traceback" not in evil.stderr and not (tmp_path / "e.st").exists()
    np.save(tmp_path / "long.npy", np.ones(48, np.float32))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    wrong = vslerp("stats", "import", tmp_path / "long.npy", "--model", karlo_dir, env=env)
    assert wrong.returncode == 2 and "a 48-d mean" in wrong.stderr and "makes 32-d embeddings" in wrong.stderr

    # Into the user cache by the model's encoder, where load_pipeline finds it.
    done = vslerp("stats", "import", files["npy"], "--model", karlo_dir, env=env)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipe = load_pipeline(karlo_dir)
    assert pipe.stats_note == f"from {user_stats_path(pipe.encoder.name)}"
    torch.testing.assert_close(pipe.stats.mean, mean, rtol=0, atol=0)


def test_models_name_the_stats_in_use_and_the_command_for_full_ones(tmp_path, monkeypatch):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "VSLERP_STATS_DIR": str(tmp_path / "none")}
    before = vslerp("models", env=env)
    assert before.returncode == 0, before.stderr
    command = "`vslerp stats --model karlo --dataset AKCIT/coco2017-captioning --split validation`"
    assert command in before.stdout and "(mean-only)" in before.stdout
    # Full stats for ViT-L/14 in the user cache serve both presets with that encoder.
    from vslerp_app.registry import user_stats_path
    from vslerp_app.stats import compute_stats

    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    x = torch.randn(200, 768, dtype=torch.float64) + 0.5
    path = compute_stats(x, population=False, encoder="openai/clip-vit-large-patch14").save(
        user_stats_path("openai/clip-vit-large-patch14"))
    cache = tmp_path / "cache" / "vslerp-studio" / "stats"
    assert path == cache / "openai--clip-vit-large-patch14.safetensors"
    after = vslerp("models", "--json", env=env)
    presets = {p["name"]: p for p in json.loads(after.stdout)}
    for name in ("karlo", "stable-unclip-l"):
        assert presets[name]["stats_path"] == str(path) and presets[name]["conformity_kind"] == "exact"
        assert presets[name]["full_stats_command"] is None
    assert presets["stable-unclip-h"]["stats_path"] != str(path)  # another encoder
    assert presets["stable-unclip-h"]["full_stats_command"].startswith("vslerp stats --model stable-unclip-h")
