"""IP-Adapter on Stable Diffusion 1.5 and SDXL: the tiny fixtures in h94's layout, end to end.

The fixtures are real `StableDiffusionPipeline` / `StableDiffusionXLPipeline` bases with
random weights and adapter weights in h94/IP-Adapter's key names, loaded by diffusers'
`load_ip_adapter` on the same code path as the real checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import HubFiles, ModelLoadError, get_preset
from pipelines.families.ip_adapter import IpAdapter, resolve_spec
from pipelines.fixtures import fixture_images
from pipelines.loading import carried_mean, weight_files
from vslerp_app import geometry, load_pipeline
from vslerp_app.fixtures import write_fixture
from vslerp_app.specs import SpecError

KINDS = ["ip-adapter-sd15", "ip-adapter-sdxl"]
FAST = dict(steps=3)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapter")
    return {kind: write_fixture(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def pipes(dirs):
    return {kind: load_pipeline(dirs[kind]) for kind in KINDS}


@pytest.fixture(scope="session")
def images():
    return tuple(fixture_images(2, seed=11))


def _px(frame) -> np.ndarray:
    return np.asarray(frame.image).astype(np.int16)


# -- the engine's invariants ------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_one_noise_path_equal_embeddings_equal_frames_alone_equals_in_sequence(pipes, images, kind):
    pipe = pipes[kind]
    assert pipe.kind == "ip-adapter" and type(pipe.runner.family) is IpAdapter
    seq = pipe.generate(*images, thetas=[0.2, 0.6, 0.2, 0.9, 0.6], alphas=0.5, seed=3, max_batch=4, **FAST)
    assert np.array_equal(_px(seq[0]), _px(seq[2])) and np.array_equal(_px(seq[1]), _px(seq[4]))
    alone = pipe.generate(*images, thetas=0.9, alphas=0.5, seed=3, max_batch=1, **FAST)[0]
    assert np.abs(_px(alone) - _px(seq[3])).max() <= 1
    assert np.abs(_px(seq[0]) - _px(seq[1])).max() > 0  # each row is conditioned on its own embedding
    other_seed = pipe.generate(*images, thetas=0.2, alphas=0.5, seed=4, **FAST)[0]
    assert not np.array_equal(_px(other_seed), _px(seq[0]))
    for f in seq:
        assert f.image.size == (32, 32) and f.conformity_kind == "exact"
        assert np.isfinite([f.conformity, f.frame_conformity, f.log_likelihood]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_a_frame_equals_the_stock_diffusers_pipeline_fed_the_same_embedding(pipes, images, kind):
    import diffusers

    pipe = pipes[kind]
    (frame,) = pipe.generate(*images, thetas=0.4, alphas=0.5, seed=9, steps=2)
    settings = pipe.settings_for(False, steps=2)
    sdxl = kind == "ip-adapter-sdxl"
    stock_cls = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    stock = stock_cls(**pipe.diffusers_pipe.components,
                      **({} if sdxl else {"requires_safety_checker": False}))
    embeds = frame.embedding.reshape(1, 1, -1)
    stock_frame = stock(prompt="", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(embeds), embeds])],
                        height=32, width=32, num_inference_steps=2, guidance_scale=settings.guidance_scale,
                        generator=torch.Generator().manual_seed(9)).images[0]
    assert np.abs(_px(frame) - np.asarray(stock_frame).astype(np.int16)).max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_readouts_are_the_stats_of_vslerp_and_of_the_reencoded_frame(pipes, images, kind):
    pipe = pipes[kind]
    (frame,) = pipe.generate(*images, thetas=0.3, alphas=1.5, seed=1, **FAST)
    v0, v1 = pipe.encode(images[0]).double(), pipe.encode(images[1]).double()
    expected = geometry.vslerp(v0, v1, 0.3, 1.5, pipe.stats.mean.double()).float()
    torch.testing.assert_close(frame.embedding, expected)
    # The encoder is h94's models/image_encoder, loaded by load_ip_adapter, with the image
    # processor diffusers makes for its input size.
    family = pipe.runner.family
    assert family.image_encoder is family.pipe.image_encoder
    assert family.feature_extractor.crop_size["height"] == family.image_encoder.config.image_size
    reencoded = pipe.encoder.encode([frame.image])[0]
    assert frame.frame_conformity == pytest.approx(float(pipe.stats.conformity(reencoded)), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_preview_is_smaller_with_fewer_steps_and_the_step_callback_counts_unet_calls(pipes, images, kind):
    pipe = pipes[kind]
    full, preview = pipe.settings_for(False), pipe.settings_for(True)
    assert preview.resolution == 16 < full.resolution == 32 and preview.steps < full.steps
    calls, steps = [], []
    hook = pipe.diffusers_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pipe.runner.on_step(lambda done, total: steps.append((done, total))):
            (frame,) = pipe.generate(*images, 0.5, 1.0, seed=2, preview=True)
    finally:
        hook.remove()
    assert frame.preview and frame.image.size == (16, 16)
    assert steps == [(i, len(calls)) for i in range(1, len(calls) + 1)]


def test_guidance_negative_is_diffusers_zeros_before_the_batch(pipes, images):
    pipe = pipes["ip-adapter-sd15"]
    def projected_rows(**options) -> torch.Tensor:
        """The image embeddings the UNet's adapter projection receives at the first step."""
        seen = []
        hook = pipe.diffusers_pipe.unet.encoder_hid_proj.register_forward_pre_hook(
            lambda mod, args: seen.append(args[0][0].clone()))
        try:
            pipe.generate(*images, thetas=[0.0, 1.0], alphas=0.0, seed=0, steps=1, **options)
        finally:
            hook.remove()
        return seen[0]

    embeds = torch.stack([pipe.encode(images[0]), pipe.encode(images[1])])[:, None]
    rows = projected_rows(guidance_scale=5.0)  # (2 x 2 rows, one image, d)
    # what diffusers itself uses
    _, diffusers_negative = pipe.diffusers_pipe.encode_image(images[0], "cpu", 1)
    assert torch.equal(diffusers_negative, torch.zeros_like(diffusers_negative))
    torch.testing.assert_close(rows[:2], torch.zeros_like(embeds))  # negatives first
    torch.testing.assert_close(rows[2:], embeds)
    torch.testing.assert_close(projected_rows(guidance_scale=1.0), embeds)  # guidance off: no negative


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_scale_and_prompt_are_settings(pipes, images, kind):
    pipe = pipes[kind]
    off = pipe.generate(*images, thetas=[0.0, 1.0], alphas=0.0, seed=0, adapter_scale=0.0, **FAST)
    assert np.array_equal(_px(off[0]), _px(off[1]))  # scale 0: the adapter is switched off
    on = pipe.generate(*images, thetas=[0.0, 1.0], alphas=0.0, seed=0, **FAST)
    assert pipe.settings_for().adapter_scale == 1.0 and not np.array_equal(_px(on[0]), _px(on[1]))
    prompted = pipe.generate(*images, thetas=0.0, alphas=0.0, seed=0, prompt="a photo of the", **FAST)[0]
    assert not np.array_equal(_px(prompted), _px(on[0]))
    with pytest.raises(SpecError, match=r"adapter_scale must be in \[0, 2\], got 2.5"):
        pipe.generate(*images, 0.5, 0.0, seed=0, adapter_scale=2.5, **FAST)
    with pytest.raises(SpecError, match="prompt must be text, got 3"):
        pipe.generate(*images, 0.5, 0.0, seed=0, prompt=3, **FAST)


@pytest.mark.parametrize("kind", KINDS)
def test_strength_starts_every_frame_from_the_source_latents(pipes, images, kind):
    pipe = pipes[kind]
    source = images[0]
    options = dict(seed=4, steps=10, strength=0.3)
    seq = pipe.generate(*images, [0.0, 0.5, 0.0, 1.0], 0.5, max_batch=3, **options)
    assert np.array_equal(_px(seq[0]), _px(seq[2]))
    alone = pipe.generate(*images, 1.0, 0.5, max_batch=1, **options)[0]
    assert np.abs(_px(alone) - _px(seq[3])).max() <= 1
    (wide,) = pipe.generate(*images, 0.5, 0.0, seed=4, steps=4, strength=0.5, resolution=(48, 32))
    assert wide.image.size == (48, 32)

    # The source as the (random) VAE gives it back: what a frame at strength -> 0 becomes.
    with torch.no_grad():
        processor, vae = pipe.diffusers_pipe.image_processor, pipe.diffusers_pipe.vae
        latents = vae.encode(processor.preprocess(source.convert("RGB").resize((32, 32)))).latent_dist.mean
        round_trip = processor.postprocess(vae.decode(latents).sample, output_type="np")[0]
    near, far = (pipe.generate(*images, 0.0, 0.0, seed=4, steps=10, strength=s)[0] for s in (0.1, 1.0))
    distance = [float(np.abs(_px(f) / 255.0 - round_trip).mean()) for f in (near, far)]
    assert distance[0] < 0.5 * distance[1]
    with pytest.raises(SpecError, match=r"strength=0.2 with 4 steps leaves no denoising step"):
        pipe.generate(*images, 0.5, 0.0, seed=0, steps=4, strength=0.2)
    with pytest.raises(SpecError, match=r"resolution must be a multiple of 8 .*got 30"):
        pipe.generate(*images, 0.5, 0.0, seed=0, steps=2, resolution=30)


def test_paths_and_aiming_work(pipes, images):
    pipe = pipes["ip-adapter-sdxl"]
    keys = [*images, fixture_images(3, seed=5)[2]]
    frames = pipe.generate_path(keys, frames=6, alphas=0.5, seed=2, loop=True, **FAST)
    assert len(frames) == 6 and {f.segment for f in frames} == {0, 1, 2}
    first = pipe.generate(keys[0], keys[1], 0.0, 0.5, seed=2, **FAST)[0]
    assert np.abs(_px(frames[0]) - _px(first)).max() <= 1  # a keyframe is the keyframe rendered alone
    wanted = float(pipe.stats.conformity(pipe.interpolate(*images, 0.5, 0.7)[1][0]))
    aim = pipe.alpha_for_conformity(*images, theta=0.5, conformity=wanted)
    assert aim.reachable
    (frame,) = pipe.generate(*images, 0.5, aim.alpha, seed=0, **FAST)
    assert frame.conformity == pytest.approx(wanted, abs=1e-6)


def test_jobs_render_each_line_with_the_prompt_and_scale(dirs, tmp_path):
    from vslerp_app.jobs import run_jobs

    names = []
    for i, im in enumerate(fixture_images(3, seed=8)):
        im.save(tmp_path / f"{i}.png")
        names.append(str(tmp_path / f"{i}.png"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"source": names[0], "target": names[1], "theta": "0,1", "alpha": 0.5,
                                "name": "a"}) + "\n"
                    + json.dumps({"keyframes": names, "frames": 3, "alpha": 0.5, "name": "b"}) + "\n")
    result = run_jobs(dirs["ip-adapter-sd15"], jobs, tmp_path / "out", device="cpu", steps=2,
                      prompt="a photo", adapter_scale=0.7, log=lambda msg: None)
    assert result["failed"] == 0 and [r["status"] for r in result["jobs"]] == ["complete"] * 2
    for name, count in (("a", 2), ("b", 3)):
        manifest = json.loads((tmp_path / "out" / name / "manifest.json").read_text())
        assert (manifest["settings"]["prompt"], manifest["settings"]["adapter_scale"]) == ("a photo", 0.7)
        assert len(list((tmp_path / "out" / name / "frames").glob("*.png"))) == count


def test_score_reads_the_adapters_encoder(pipes, tmp_path):
    from vslerp_app.score import score_folders

    pipe = pipes["ip-adapter-sd15"]
    folder = tmp_path / "images"
    folder.mkdir()
    pictures = fixture_images(4, seed=9)
    for i, im in enumerate(pictures):
        im.save(folder / f"{i}.png")
    score_folders(pipe.encoder, pipe.stats, [folder], tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "scores.json").read_text())["rows"]
    by_name = {Path(r["file"]).name: r for r in rows}
    expected = pipe.stats.conformity(pipe.encoder.encode([pictures[2]])[0])
    assert by_name["2.png"]["conformity"] == pytest.approx(float(expected), abs=1e-5)


# -- statistics ---------------------------------------------------------------------------
def test_without_stats_alpha_is_refused_never_a_zero_mean(dirs, tmp_path, images):
    bare = tmp_path / "bare"
    shutil.copytree(dirs["ip-adapter-sd15"], bare)
    (bare / "vslerp-stats.safetensors").unlink()
    pipe = load_pipeline(bare)
    assert pipe.stats is None and carried_mean(pipe.runner.loaded)[0] is None
    with pytest.raises(SpecError, match=r"alpha=1.0 needs the image-modality mean.*vslerp stats --model"):
        pipe.generate(*images, 0.5, 1.0, seed=0, **FAST)
    (frame,) = pipe.generate(*images, 0.5, 0.0, seed=0, **FAST)  # plain SLERP needs no mean
    assert frame.conformity is None


def test_presets_share_stable_unclip_h_encoder_and_its_statistics():
    from vslerp_app.registry import preset_stats_path

    vit_h = get_preset("stable-unclip-h").encoder
    for name in KINDS:
        assert preset_stats_path(name) == preset_stats_path("stable-unclip-h")
        preset = get_preset(name)
        assert (preset.kind, preset.encoder, preset.embedding_dim) == ("ip-adapter", vit_h, 1024)
        assert preset.mean_source is None and preset.adapter_scale == 1.0 and preset.prompt == ""
    assert (get_preset("ip-adapter-sd15").resolution, get_preset("ip-adapter-sdxl").resolution) == (512, 1024)


# -- loading ------------------------------------------------------------------------------
def test_presets_download_only_what_a_frame_needs():
    sd15 = ["model_index.json", "v1-5-pruned.safetensors", "safety_checker/model.safetensors",
            "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.non_ema.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
            "text_encoder/model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "tokenizer/vocab.json", "scheduler/scheduler_config.json"]
    base, adapter = get_preset("ip-adapter-sd15").downloads
    assert sorted(weight_files(sd15, base, half=False)) == [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/model.safetensors",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    h94 = ["models/ip-adapter_sd15.safetensors", "models/ip-adapter_sd15.bin",
           "models/ip-adapter-plus_sd15.safetensors", "models/image_encoder/config.json",
           "models/image_encoder/model.safetensors", "models/image_encoder/pytorch_model.bin",
           "sdxl_models/image_encoder/model.safetensors", "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"]
    assert sorted(weight_files(h94, adapter, half=True)) == [
        "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
        "models/ip-adapter_sd15.safetensors"]
    sdxl_adapter = get_preset("ip-adapter-sdxl").downloads[1]
    assert sorted(weight_files(h94, sdxl_adapter, half=False)) == [
        "models/image_encoder/config.json", "models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter_sdxl_vit-h.safetensors"]
    assert weight_files(["x/a.safetensors"], HubFiles("r", ("x",)), half=False) == ["x/a.safetensors"]


def test_ip_adapter_base_specs_and_their_errors(dirs, tmp_path):
    # A local diffusers base: the adapter comes from h94/IP-Adapter, offline here.
    with pytest.raises(ModelLoadError, match="h94/IP-Adapter.*hub"):
        load_pipeline(f"ip-adapter:{dirs['ip-adapter-sd15'] / 'base'}")
    with pytest.raises(ModelLoadError, match="stabilityai/stable-diffusion-xl-base-1.0.*hub"):
        load_pipeline("ip-adapter-sdxl")
    with pytest.raises(ModelLoadError, match="someone/my-finetune.*hub"):
        load_pipeline("ip-adapter:someone/my-finetune")
    with pytest.raises(ModelLoadError, match="names no base"):
        load_pipeline("ip-adapter:")
    with pytest.raises(ModelLoadError, match="'not a hub id!' is neither a file, a directory nor a hub id"):
        load_pipeline("ip-adapter:not a hub id!")
    karlo_like = tmp_path / "other"
    (karlo_like).mkdir()
    (karlo_like / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ModelLoadError, match="'KandinskyV22Pipeline'; IP-Adapter needs a StableDiffusion"):
        load_pipeline(f"ip-adapter:{karlo_like}")
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion 1.5 or SDXL single-file checkpoint"):
        load_pipeline(f"ip-adapter:{foreign}")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .safetensors checkpoint"):
        load_pipeline(f"ip-adapter:{ckpt}")
    single = tmp_path / "single"  # a model directory around a single-file SD 1.x checkpoint
    shutil.copytree(dirs["ip-adapter-sd15"] / "IP-Adapter", single / "IP-Adapter")
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(2)},
              str(single / "base.safetensors"))
    with pytest.raises(ModelLoadError, match=r"single-file checkpoint .*base.safetensors.*hub"):
        load_pipeline(single)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(dirs["ip-adapter-sdxl"], incomplete)
    (incomplete / "IP-Adapter" / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="incomplete: no IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h"):
        load_pipeline(incomplete)


def _cache_snapshot(cache: Path, repo: str, source: Path) -> None:
    """``source`` as ``repo``'s snapshot in a hub cache (what a download leaves)."""
    revision = "0" * 40
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    shutil.copytree(source, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(revision)


def test_a_preset_and_a_base_spec_in_the_hub_cache_load_offline(dirs, tmp_path, monkeypatch, images):
    import huggingface_hub

    cache = tmp_path / "hub"
    _cache_snapshot(cache, "h94/IP-Adapter", dirs["ip-adapter-sd15"] / "IP-Adapter")
    _cache_snapshot(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", dirs["ip-adapter-sd15"] / "base")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    preset = load_pipeline("ip-adapter-sd15")
    assert preset.preset.name == "ip-adapter-sd15"
    assert preset.encoder.name == get_preset("stable-unclip-h").encoder  # stats keyed by ViT-H
    spec = load_pipeline(f"ip-adapter:{dirs['ip-adapter-sd15'] / 'base'}")
    assert spec.encoder.name == preset.encoder.name and spec.preset.hub_id.endswith("base")
    assert spec.preset.name == "ip-adapter-sd15"  # its settings and its (the encoder's) stats file
    a, b = (p.generate(*images, 0.5, 0.0, seed=1, steps=2, resolution=32)[0] for p in (preset, spec))
    assert np.array_equal(_px(a), _px(b))  # one model, by either name
    path, _ = resolve_spec(str(dirs["ip-adapter-sd15"] / "base"))
    assert (path / "base").resolve() == (dirs["ip-adapter-sd15"] / "base").resolve()


# -- the command line and the studio's API ------------------------------------------------------
def _vslerp(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


def test_cli_fixture_stats_and_render_with_prompt_and_adapter_scale(tmp_path):
    model = tmp_path / "sd15"
    made = _vslerp("fixture", "ip-adapter-sd15", model)
    assert made.returncode == 0, made.stderr
    assert (model / "IP-Adapter" / "models" / "ip-adapter_sd15.safetensors").is_file()
    (model / "vslerp-stats.safetensors").unlink()  # as a real model: no stats until made
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(fixture_images(40, seed=5)):
        im.save(folder / f"{i:02d}.png")
    stats_file = tmp_path / "vit-h.safetensors"
    stats = _vslerp("stats", "--model", model, "--images", folder, "--out", stats_file)
    assert stats.returncode == 0, stats.stderr
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    for im, p in zip(fixture_images(2, seed=1), (src, dst), strict=True):
        im.save(p)
    out = tmp_path / "run"
    run = _vslerp("render", "--model", model, "--source", src, "--target", dst, "--theta", "0,0.5,1",
                  "--alpha", "0.5", "--steps", "2", "--prompt", "a photo", "--adapter-scale", "0.5",
                  "--stats", stats_file, "--out", out)
    assert run.returncode == 0, run.stderr
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert (settings["kind"], settings["prompt"], settings["adapter_scale"]) == ("ip-adapter", "a photo", 0.5)
    assert len(list((out / "frames").glob("*.png"))) == 3
    bad = _vslerp("render", "--model", model, "--source", src, "--target", dst, "--theta", "0.5",
                  "--adapter-scale", "3", "--out", tmp_path / "bad")
    assert bad.returncode != 0 and "adapter_scale must be in [0, 2], got 3.0" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_models_lists_the_ip_adapter_presets():
    result = _vslerp("models", "--json")
    assert result.returncode == 0, result.stderr
    presets = {p["name"]: p for p in json.loads(result.stdout)}
    assert presets["ip-adapter-sd15"]["hub_id"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert presets["ip-adapter-sdxl"]["hub_id"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert {presets[k]["encoder"] for k in KINDS} == {presets["stable-unclip-h"]["encoder"]}


def test_preview_through_gradio_client(dirs, launch_app, tmp_path):
    from gradio_client import Client, handle_file

    source, target = (tmp_path / "a.png", tmp_path / "b.png")
    for im, p in zip(fixture_images(2, seed=3), (source, target), strict=True):
        im.save(p)
    app = launch_app(dirs["ip-adapter-sdxl"])
    client = Client(app.url, verbose=False, download_files=str(tmp_path / "downloads"))
    common = dict(source=handle_file(source), target=handle_file(target), seed=7, steps=3,
                  preview_steps=2, api_name="/preview")
    full_and_preview_through_gradio_client(client, common)
    sequence_and_path_through_gradio_client(client, source, target)


def full_and_preview_through_gradio_client(client, common: dict) -> None:
    """/preview on a family's fixture: a full frame at the fixture's 32 px with exact readouts,
    a preview at 16 px marked as one."""
    from PIL import Image

    path, readouts = client.predict(theta=0.5, alpha=1.0, quality="full", **common)
    assert Image.open(path).size == (32, 32) and readouts["conformity_kind"] == "exact"
    path, quick = client.predict(theta=0.5, alpha=1.0, quality="preview", **common)
    assert Image.open(path).size == (16, 16) and quick["preview"] is True


def sequence_and_path_through_gradio_client(client, source, target) -> None:
    """/sequence and /path on a family's fixture: the frames asked for, captioned, with files and
    the smoothness line."""
    from gradio_client import handle_file

    a, b = handle_file(source), handle_file(target)
    gallery, plot, mp4, gif, zip_path, smooth = client.predict(
        source=a, target=b, sweep="theta", theta_start=0.0, theta_stop=1.0, theta_frames=3, alpha=1.0,
        seed=7, quality="preview", preview_steps=2, api_name="/sequence")
    assert len(gallery) == 3 and "θ=0.5" in gallery[1]["caption"] and "smoothness" in smooth.lower()
    assert all(Path(f).is_file() for f in (plot, gif, zip_path))
    gallery, *_files, smooth = client.predict(
        keyframe_1=a, keyframe_2=b, frames=4, loop=False, alpha="0.5", spacing="angle", seed=7,
        quality="preview", preview_steps=2, api_name="/path")
    assert len(gallery) == 4 and gallery[0]["caption"].startswith("key 1") and smooth


def _manifest_of(zip_path) -> dict:
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("manifest.json"))))


def test_adapter_scale_prompt_and_strength_reach_every_render_of_the_api(dirs, launch_app, tmp_path):
    """IP-Adapter's settings through gradio_client: /preview's frame changes with the prompt and
    the adapter scale (and is the same again without them), /sequence and /path pin the values
    in their manifests, and a bad value is refused by name."""
    from gradio_client import Client, handle_file
    from PIL import Image

    source, target = (tmp_path / "a.png", tmp_path / "b.png")
    for im, p in zip(fixture_images(2, seed=3), (source, target), strict=True):
        im.save(p)
    client = Client(launch_app(dirs["ip-adapter-sd15"]).url, verbose=False,
                    download_files=str(tmp_path / "downloads"))
    a, b = handle_file(source), handle_file(target)
    common = dict(source=a, target=b, theta=0.5, alpha=1.0, seed=7, steps=3, quality="full",
                  api_name="/preview")
    pixels = {name: np.asarray(Image.open(client.predict(**common, **options)[0])).astype(int)
              for name, options in {"plain": {}, "again": {}, "prompted": {"prompt": "a red apple"},
                                    "scaled": {"adapter_scale": 0.25}}.items()}
    assert np.array_equal(pixels["plain"], pixels["again"])  # one noise path: the settings alone differ
    assert np.abs(pixels["prompted"] - pixels["plain"]).max() > 0
    assert np.abs(pixels["scaled"] - pixels["plain"]).max() > 0
    with pytest.raises(Exception, match=r"adapter_scale must be between 0 and 2, got 3"):
        client.predict(**{**common, "adapter_scale": 3})
    options = dict(strength=0.5, adapter_scale=0.25, prompt="a red apple", seed=7, quality="preview",
                   preview_steps=2)
    *_, zip_path, _smooth = client.predict(source=a, target=b, sweep="theta", theta_frames=2, alpha=1.0,
                                           api_name="/sequence", **options)
    *_, path_zip, _smooth = client.predict(keyframe_1=a, keyframe_2=b, frames=3, alpha="0.5",
                                           api_name="/path", **options)
    for archive in (zip_path, path_zip):
        settings = _manifest_of(archive)["settings"]
        pinned = settings["strength"], settings["adapter_scale"], settings["prompt"]
        assert pinned == (0.5, 0.25, "a red apple"), archive


# -- the benchmark --------------------------------------------------------------------------
def test_bench_full_size_configs_have_the_published_sizes():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench.ip_adapter import ip_adapter_configs

    def millions(module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    sd15, sdxl = ip_adapter_configs("sd15"), ip_adapter_configs("sdxl")
    with torch.device("meta"):
        assert 859 < millions(UNet2DConditionModel(**sd15["unet"])) < 860  # SD 1.5: 859.5 M
        assert 2567 < millions(UNet2DConditionModel(**sdxl["unet"])) < 2568  # SDXL base: 2567.5 M
        assert 123 < millions(CLIPTextModel(CLIPTextConfig(**sd15["text_encoder"]))) < 124
        assert 694 < millions(CLIPTextModelWithProjection(CLIPTextConfig(**sdxl["text_encoder_2"]))) < 695
    assert sd15["image_encoder"] == sdxl["image_encoder"]  # one ViT-H/14 for both
    assert sd15["image_encoder"]["projection_dim"] == 1024


def test_bench_smoke_equals_stock_diffusers_and_full_needs_a_gpu(capsys):
    from bench.ip_adapter import EXIT_NO_GPU, main

    assert main(["--smoke"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mode"] == "ip-adapter-smoke" and set(result["results"]) == {"sd15", "sdxl"}
    for row in result["results"].values():
        assert row["max_pixel_diff_vs_stock"] <= 1 and row["max_pixel_diff_batched_vs_single"] <= 1
        assert row["overhead_ratio"] > 0 and row["batch_speedup_vs_stock"] > 0
    if not torch.cuda.is_available():
        assert main(["--full"]) == EXIT_NO_GPU
        assert "needs a CUDA GPU" in capsys.readouterr().err
