"""The vSLERP engine on both backends' tiny fixtures: frames, noise path, readouts, guards."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import GenerationError, ModelLoadError, get_preset
from pipelines.fixtures import fixture_images
from vslerp_app import geometry, load_pipeline
from vslerp_app.fixtures import write_fixture
from vslerp_app.images import ImageInputError
from vslerp_app.stats import STATS_FILENAME, ModalityStats, StatsError

KINDS = ["karlo", "stable-unclip", "kandinsky"]
FAST = {"karlo": dict(steps=2, super_res_steps=2), "stable-unclip": dict(steps=2), "kandinsky": dict(steps=2)}
FULL_SIDE = {"karlo": 64, "stable-unclip": 32, "kandinsky": 32}
PREVIEW_SIDE = {"karlo": 32, "stable-unclip": 16, "kandinsky": 16}


@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {
        "karlo": write_fixture("karlo", root / "karlo"),
        "karlo-current": write_fixture("karlo", root / "karlo-current", layout="current"),
        "stable-unclip": write_fixture("stable-unclip", root / "stable"),
        "stable-embedded": write_fixture("stable-unclip", root / "stable-emb", write_stats=False),
        "stable-zeros": write_fixture("stable-unclip", root / "stable-zeros", write_stats=False,
                                      embedded_mean="zeros"),
        "karlo-nostats": write_fixture("karlo", root / "karlo-nostats", write_stats=False),
        "kandinsky": write_fixture("kandinsky", root / "kandinsky"),
        "kandinsky-embedded": write_fixture("kandinsky", root / "kandinsky-emb", write_stats=False),
    }


@pytest.fixture(scope="session")
def pipes(dirs):
    return {kind: load_pipeline(dirs[kind]) for kind in KINDS}


@pytest.fixture(scope="session")
def images():
    source, target = fixture_images(2, seed=11)
    return source, target


def _px(frame):
    return np.asarray(frame.image).astype(np.int16)


@pytest.mark.parametrize("kind", KINDS)
def test_frames_have_the_asked_parameters_sizes_and_readouts(pipes, images, kind):
    pipe = pipes[kind]
    frames = pipe.generate(*images, thetas=[0.0, 0.5, 1.0], alphas=[1.0, -1.5, 2.0], seed=7,
                           **FAST[kind])
    assert [(f.theta, f.alpha, f.seed) for f in frames] == [(0.0, 1.0, 7), (0.5, -1.5, 7), (1.0, 2.0, 7)]
    for f in frames:
        assert f.image.mode == "RGB" and f.image.size == (FULL_SIDE[kind],) * 2
        assert f.conformity_kind == "exact"
        assert all(np.isfinite([f.conformity, f.frame_conformity, f.log_likelihood,
                                f.frame_log_likelihood]))
        json.dumps(f.readouts())  # manifest-ready


@pytest.mark.parametrize("kind", KINDS)
def test_readouts_equal_the_stats_applied_to_vslerp_and_to_the_reencoded_frame(pipes, images, kind):
    pipe = pipes[kind]
    (frame,) = pipe.generate(*images, thetas=0.3, alphas=1.5, seed=1, **FAST[kind])
    v0, v1 = pipe.encode(images[0]), pipe.encode(images[1])
    expected = geometry.vslerp(v0.double(), v1.double(), 0.3, 1.5, pipe.stats.mean.double()).float()
    torch.testing.assert_close(frame.embedding, expected)
    assert frame.conformity == pytest.approx(float(geometry.conformity(expected, pipe.stats.mean_unit)),
                                             abs=1e-6)
    reencoded = pipe.encoder.encode([frame.image])[0]
    assert frame.frame_conformity == pytest.approx(float(pipe.stats.conformity(reencoded)), abs=1e-5)
    ll = geometry.whitened_log_likelihood(reencoded, pipe.stats.mean, pipe.stats.whitening)
    assert frame.frame_log_likelihood == pytest.approx(float(ll), rel=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_one_noise_path_equal_embeddings_give_equal_frames_anywhere(pipes, images, kind):
    pipe = pipes[kind]
    thetas = [0.2, 0.6, 0.2, 0.9, 0.6]
    seq = pipe.generate(*images, thetas=thetas, alphas=0.5, seed=3, max_batch=4, **FAST[kind])
    assert np.array_equal(_px(seq[0]), _px(seq[2]))
    assert np.array_equal(_px(seq[1]), _px(seq[4]))
    # A frame rendered alone equals the same frame inside the sequence, whatever the batching.
    alone = pipe.generate(*images, thetas=0.9, alphas=0.5, seed=3, max_batch=1, **FAST[kind])[0]
    assert np.abs(_px(alone) - _px(seq[3])).max() <= 1
    assert np.abs(_px(seq[0]) - _px(seq[1])).max() > 0  # different embeddings do differ


@pytest.mark.parametrize("kind", KINDS)
def test_seed_decides_the_noise(pipes, images, kind):
    pipe = pipes[kind]
    a = pipe.generate(*images, 0.5, 0.0, seed=5, **FAST[kind])[0]
    b = pipe.generate(*images, 0.5, 0.0, seed=5, **FAST[kind])[0]
    c = pipe.generate(*images, 0.5, 0.0, seed=6, **FAST[kind])[0]
    assert np.array_equal(_px(a), _px(b))
    assert not np.array_equal(_px(a), _px(c))


def test_endpoint_frames_are_computed_once_per_distinct_embedding(pipes, images):
    pipe = pipes["karlo"]
    calls = []
    hook = pipe.diffusers_pipe.decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(kwargs["sample"].shape[0]), with_kwargs=True)
    try:
        grid_t = [t for t in (0.0, 0.5, 1.0) for _ in (-1.0, 0.0, 1.0)]
        grid_a = [a for _ in (0.0, 0.5, 1.0) for a in (-1.0, 0.0, 1.0)]
        frames = pipe.generate(*images, grid_t, grid_a, seed=0, max_batch=16, **FAST["karlo"])
    finally:
        hook.remove()
    # theta = 0 and theta = 1 give the source and target for every alpha: 2 + 3 distinct.
    assert calls == [5] * FAST["karlo"]["steps"]
    assert np.array_equal(_px(frames[0]), _px(frames[2]))
    assert len(frames) == 9


@pytest.mark.parametrize("kind", KINDS)
def test_preview_is_smaller_and_skips_the_expensive_stage(pipes, images, kind):
    pipe = pipes[kind]
    (frame,) = pipe.generate(*images, 0.5, 1.0, seed=2, preview=True)
    assert frame.preview and frame.image.size == (PREVIEW_SIDE[kind],) * 2
    assert frame.conformity is not None and frame.frame_conformity is not None
    if kind == "karlo":
        sr_calls = []
        hook = pipe.diffusers_pipe.super_res_first.register_forward_pre_hook(lambda *a: sr_calls.append(1))
        try:
            pipe.generate(*images, 0.5, 1.0, seed=2, preview=True)
        finally:
            hook.remove()
        assert sr_calls == []


def test_karlo_preview_decoder_matches_the_stock_decoder_stage(pipes, images):
    """Our decoder-only preview follows the stock pipeline's first stage exactly."""
    pipe = pipes["karlo"]
    captured = {}

    def grab(mod, args, kwargs):  # the super-res input: [noise, bicubic(decoder output)]
        captured.setdefault("upscaled", kwargs["sample"][:, 3:].clone())

    hook = pipe.diffusers_pipe.super_res_first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe.generate(*images, 0.4, 0.0, seed=9, steps=3, super_res_steps=2)
    finally:
        hook.remove()
    (preview,) = pipe.generate(*images, 0.4, 0.0, seed=9, steps=3, preview=True)
    small = torch.from_numpy(np.array(preview.image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    upscaled = torch.nn.functional.interpolate(small, size=captured["upscaled"].shape[-1],
                                               mode="bicubic", align_corners=False, antialias=True)
    assert (upscaled - captured["upscaled"]).abs().max() < 0.05  # uint8 rounding only


def test_hub_and_current_layouts_load_to_the_same_frames(dirs, pipes, images):
    other = load_pipeline(dirs["karlo-current"])
    a = pipes["karlo"].generate(*images, 0.5, 1.0, seed=4, **FAST["karlo"])[0]
    b = other.generate(*images, 0.5, 1.0, seed=4, **FAST["karlo"])[0]
    assert json.loads((dirs["karlo"] / "model_index.json").read_text())["text_proj"][0] == "unclip"
    assert np.array_equal(_px(a), _px(b))


def test_without_stats_alpha_is_refused_with_directions_and_slerp_works(dirs, images):
    pipe = load_pipeline(dirs["karlo-nostats"])
    assert pipe.stats is None
    with pytest.raises(ValueError, match=r"alpha=1.0 needs the image-modality mean.*vslerp stats"):
        pipe.generate(*images, 0.5, 1.0, seed=0, **FAST["karlo"])
    (frame,) = pipe.generate(*images, 0.5, 0.0, seed=0, **FAST["karlo"])
    assert frame.conformity is None and frame.frame_conformity is None
    assert frame.image.size == (64, 64)


def test_stats_lookup_order_explicit_then_model_dir_then_embedded(dirs, images, tmp_path):
    # The mean the model carries (Stable unCLIP-small's image_normalizer): the cosine to it only.
    embedded = load_pipeline(dirs["stable-embedded"])
    assert embedded.stats is not None and embedded.stats.conformity_kind == "cosine"
    (frame,) = embedded.generate(*images, 0.5, 1.0, seed=0, **FAST["stable-unclip"])
    assert frame.conformity_kind == "cosine" and frame.log_likelihood is None
    assert frame.conformity_label == "cosine to the image mean (Eq. 11 uncalibrated)"
    # An all-zero mean (the -h checkpoint) is no stats at all.
    assert load_pipeline(dirs["stable-zeros"]).stats is None
    # The model dir's vslerp-stats file wins over the embedded mean; an explicit file wins over both.
    own = load_pipeline(dirs["stable-unclip"])
    assert own.stats.conformity_kind == "exact"
    other_stats = ModalityStats.load(dirs["karlo"] / STATS_FILENAME)
    explicit = load_pipeline(dirs["stable-unclip"], stats=dirs["karlo"] / STATS_FILENAME)
    torch.testing.assert_close(explicit.stats.mean, other_stats.mean)


def test_wrong_sized_stats_file_is_refused_naming_file_and_sizes(dirs, tmp_path):
    bad = ModalityStats.from_mean(torch.randn(48) + 1, encoder="other")
    path = bad.save(tmp_path / "other.safetensors")
    with pytest.raises(StatsError, match=r"other\.safetensors.*48-d.*32-d"):
        load_pipeline(dirs["karlo"], stats=path)


def test_nan_output_is_never_returned_as_a_frame(dirs, images):
    pipe = load_pipeline(dirs["karlo"])
    with torch.no_grad():
        next(pipe.diffusers_pipe.super_res_last.parameters()).fill_(float("nan"))
    with pytest.raises(GenerationError, match="NaN"):
        pipe.generate(*images, 0.5, 0.0, seed=0, **FAST["karlo"])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_karlo_in_half_precision_on_the_cpu_is_refused_at_load_in_plain_words(dirs, dtype):
    """Its 64 px decoder would run, then the super-resolution's antialiased bicubic resize has no
    half-precision CPU kernel: say so before loading, not after a decoder's worth of work."""
    with pytest.raises(ModelLoadError, match=r"Karlo cannot run in .*16 on the CPU.*Use fp32"):
        load_pipeline(dirs["karlo"], device="cpu", dtype=dtype)


def test_half_precision_nan_is_retried_in_float32(dirs, images, pipes):
    # Stable unCLIP's fixture runs in float16 on a CPU (Karlo's bicubic upscale does not).
    pipe = load_pipeline(dirs["stable-unclip"], dtype=torch.float16)

    def poison_half(module, args, output):  # what fp16 overflow does to a real UNet
        sample = output[0] if isinstance(output, tuple) else output.sample
        if sample.dtype == torch.float16:
            sample.fill_(float("nan"))
        return output

    pipe.diffusers_pipe.unet.register_forward_hook(poison_half)
    (frame,) = pipe.generate(*images, 0.5, 0.0, seed=0, **FAST["stable-unclip"])
    assert pipe.diffusers_pipe.unet.dtype == torch.float16  # put back after the retry
    reference = pipes["stable-unclip"].generate(*images, 0.5, 0.0, seed=0, **FAST["stable-unclip"])[0]
    assert np.abs(_px(frame) - _px(reference)).max() <= 2


def test_out_of_memory_splits_the_batch_and_goes_on(dirs, images, pipes):
    pipe = load_pipeline(dirs["karlo"])

    def limit(module, args, kwargs):
        if kwargs["sample"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    pipe.diffusers_pipe.decoder.register_forward_pre_hook(limit, with_kwargs=True)
    thetas = [0.1, 0.3, 0.5, 0.7, 0.9]
    frames = pipe.generate(*images, thetas, 0.0, seed=8, max_batch=8, **FAST["karlo"])
    reference = pipes["karlo"].generate(*images, thetas, 0.0, seed=8, max_batch=8, **FAST["karlo"])
    assert all(np.abs(_px(a) - _px(b)).max() <= 1 for a, b in zip(frames, reference, strict=True))
    assert pipe.max_batch == 8  # the split was this call's: later callers keep their batch

    def never(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    pipe.diffusers_pipe.decoder.register_forward_pre_hook(never, with_kwargs=True)
    with pytest.raises(GenerationError, match="one frame does not fit"):
        pipe.generate(*images, 0.5, 0.0, seed=8, **FAST["karlo"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(thetas=1.5, alphas=0.0), r"theta must be in \[0, 1\], got 1.5"),
    (dict(thetas=float("nan"), alphas=0.0), r"theta must be in \[0, 1\], got nan"),
    (dict(thetas=0.5, alphas=25.0), r"alpha must be in \[-10, 10\], got 25.0"),
    (dict(thetas=[0.1, 0.2], alphas=[0.0, 1.0, 2.0]), "equal length"),
    (dict(thetas=[], alphas=0.0), "thetas is empty"),
    (dict(thetas=[0.5, "x"], alphas=0.0), "bad thetas: expected a number, a SPEC string or a list"),
    (dict(thetas="0:1:x", alphas=0.0), "not a whole number"),
    (dict(thetas=0.5, alphas=0.0, seed=-1), "seed must be a whole number"),
    (dict(thetas=0.5, alphas=0.0, steps=0), r"steps must be in \[1, 1000\], got 0"),
    (dict(thetas=0.5, alphas=0.0, guidance_scale=-1.0), "guidance_scale"),
])
def test_bad_arguments_are_refused_echoing_the_value(pipes, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipes["karlo"].generate(*images, **kwargs)


def test_thetas_and_alphas_may_be_spec_strings_numpy_scalars_or_arrays():
    """As `render_sequence` takes them: a SPEC string is parsed, never read character by character."""
    from vslerp_app.engine import pair_up

    assert pair_up("10", 1) == [(10.0, 1.0)]  # one value (its range is checked later), not "1", "0"
    assert pair_up("0:1:3", "1") == [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
    assert pair_up("0.5", "-1,0,1") == [(0.5, -1.0), (0.5, 0.0), (0.5, 1.0)]
    assert pair_up(np.float32(0.5), np.array([0.0, 2.0])) == [(0.5, 0.0), (0.5, 2.0)]
    assert pair_up(torch.tensor(0.25), [1, 2]) == [(0.25, 1.0), (0.25, 2.0)]


def test_inputs_of_every_kind_are_normalised_or_refused(pipes, tmp_path):
    pipe = pipes["karlo"]
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    gray16 = Image.fromarray(np.full((20, 20), 40000, np.uint16))
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (10, 200, 30)).save(buf, "PNG")
    frames = pipe.generate(rgba, buf.getvalue(), 0.5, 0.0, seed=0, **FAST["karlo"])
    assert frames[0].image.size == (64, 64)
    assert pipe.encode(gray16).shape == (32,)
    broken = tmp_path / "broken.png"
    broken.write_bytes(buf.getvalue()[:60])
    with pytest.raises(ImageInputError, match="broken.png"):
        pipe.generate(broken, rgba, 0.5, 0.0, seed=0, **FAST["karlo"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageInputError, match="not an image"):
        pipe.encode(text)


def test_embeddings_are_accepted_and_checked(pipes, images):
    pipe = pipes["karlo"]
    v0, v1 = pipe.encode(images[0]), pipe.encode(images[1])
    a = pipe.generate(v0, v1, 0.5, 1.0, seed=0, **FAST["karlo"])[0]
    b = pipe.generate(*images, 0.5, 1.0, seed=0, **FAST["karlo"])[0]
    assert np.array_equal(_px(a), _px(b))
    with pytest.raises(ValueError, match="embedding has 16 values"):
        pipe.generate(torch.zeros(16), v1, 0.5, 0.0, seed=0)


def test_model_errors_name_the_problem(tmp_path, dirs):
    with pytest.raises(ValueError, match="unknown model preset 'karol'.*karlo, stable-unclip-h"):
        get_preset("karol")
    with pytest.raises(ModelLoadError, match="neither a preset"):
        load_pipeline("karol")
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(tmp_path)
    # A preset is fetched from the hub; offline (as in every test) the error says so.
    with pytest.raises(ModelLoadError, match="kakaobrain/karlo-v1-alpha-image-variations.*hub"):
        load_pipeline("karlo")
    partial = tmp_path / "partial"
    shutil.copytree(dirs["karlo"], partial)
    shutil.rmtree(partial / "decoder")
    with pytest.raises(Exception, match="decoder"):
        load_pipeline(partial)


def test_presets_carry_the_published_defaults():
    karlo = get_preset("karlo")
    assert (karlo.steps, karlo.super_res_steps, karlo.guidance_scale) == (25, 7, 1.0)
    assert karlo.embedding_dim == 768 and get_preset("stable-unclip-h").embedding_dim == 1024
    assert get_preset("stable-unclip-l").hub_id.endswith("unclip-small")


def test_karlo_preset_fetches_its_mean_from_the_hub_and_says_so_offline(dirs):
    """Karlo's repository has no prior: its preset names where the ViT-L/14 mean lives."""
    from pipelines import LoadedModel
    from vslerp_app.models import resolve_stats

    loaded = LoadedModel(pipe=None, kind="karlo", preset=get_preset("karlo"), from_preset=True,
                         model="karlo", model_dir=dirs["karlo-nostats"], device=torch.device("cpu"),
                         dtype=torch.float32)
    stats, note = resolve_stats(loaded, 32)
    assert stats is None
    assert "stabilityai/stable-diffusion-2-1-unclip-small/image_normalizer" in note


def test_a_preset_in_the_local_hub_cache_loads_offline(dirs, tmp_path, monkeypatch):
    """A downloaded preset (or a Space's preload_from_hub) needs no network afterwards."""
    import huggingface_hub

    cache = tmp_path / "hub"
    snapshot = cache / "models--kakaobrain--karlo-v1-alpha-image-variations" / "snapshots" / ("0" * 40)
    shutil.copytree(dirs["karlo"], snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    pipe = load_pipeline("karlo")
    assert pipe.preset.name == "karlo" and pipe.encoder.name == "openai/clip-vit-large-patch14"
    assert pipe.stats is not None  # the copied fixture's vslerp-stats file, found in the snapshot


# -- Kandinsky 2.2 ------------------------------------------------------------------------
def test_kandinsky_guidance_negative_is_diffusers_zero_image_embedding(dirs, pipes):
    """The image-variation recipe's negative: the stock prior pipeline's get_zero_embed."""
    from diffusers import KandinskyV22PriorPipeline

    prior = KandinskyV22PriorPipeline.from_pretrained(dirs["kandinsky"] / "prior")
    expected = prior.get_zero_embed(batch_size=1, device="cpu").float()
    family = pipes["kandinsky"].runner.family
    torch.testing.assert_close(family.negative, expected)
    assert family.negative.abs().sum() > 0  # an image's embedding, not a zero vector


def test_kandinsky_mean_is_the_priors_clip_mean(dirs, images):
    """Without a stats file the mean is the prior's clip_mean, read without loading the prior."""
    from diffusers import PriorTransformer

    pipe = load_pipeline(dirs["kandinsky-embedded"])
    prior = PriorTransformer.from_pretrained(dirs["kandinsky-embedded"] / "prior", subfolder="prior")
    torch.testing.assert_close(pipe.stats.mean, prior.clip_mean.detach().flatten())
    assert pipe.stats.conformity_kind == "cosine" and pipe.stats_note == "embedded in the model"
    (frame,) = pipe.generate(*images, 0.5, 1.0, seed=0, **FAST["kandinsky"])
    assert frame.conformity is not None


def _mean_abs(frame, image) -> float:
    side = frame.image.size
    return float(np.abs(_px(frame) - np.asarray(image.convert("RGB").resize(side)).astype(np.int16)).mean())


def test_kandinsky_strength_starts_every_frame_from_the_source_latents(pipes, images):
    pipe = pipes["kandinsky"]
    source, _ = images
    options = dict(seed=4, steps=10, strength=0.3)
    seq = pipe.generate(*images, [0.0, 0.5, 0.0, 1.0], 0.5, max_batch=3, **options)
    assert np.array_equal(_px(seq[0]), _px(seq[2]))  # equal embeddings, equal frames
    alone = pipe.generate(*images, 1.0, 0.5, max_batch=1, **options)[0]
    assert np.abs(_px(alone) - _px(seq[3])).max() <= 1  # alone equals it inside the sequence
    # strength 1 is the frame from noise, as without the option
    full = pipe.generate(*images, 0.5, 0.5, seed=4, steps=10)[0]
    same = pipe.generate(*images, 0.5, 0.5, seed=4, steps=10, strength=1.0)[0]
    assert np.array_equal(_px(full), _px(same))
    # theta 0, alpha 0: the lower the strength, the nearer the source, in pixels and in CLIP
    v = pipe.encode(source)
    near, far = (pipe.generate(*images, 0.0, 0.0, seed=4, steps=20, strength=s)[0] for s in (0.1, 1.0))
    assert _mean_abs(near, source) < 0.5 * _mean_abs(far, source)
    cos = [float(torch.nn.functional.cosine_similarity(f.frame_embedding, v, dim=0)) for f in (near, far)]
    assert cos[0] > 0.98 and cos[0] > cos[1]


def test_kandinsky_sizes_up_to_1024_any_multiple_of_the_movq_cells(pipes, images):
    pipe = pipes["kandinsky"]
    (frame,) = pipe.generate(*images, 0.5, 0.0, seed=0, steps=2, resolution=(48, 32))
    assert frame.image.size == (48, 32)
    (frame,) = pipe.generate(*images, 0.5, 0.0, seed=0, steps=4, strength=0.5, resolution=(24, 40))
    assert frame.image.size == (24, 40)
    for bad in (30, (32, 1028), 0):
        message = rf"resolution must be a multiple of 4 .*got {re.escape(str(bad))}"
        with pytest.raises(ValueError, match=message):
            pipe.generate(*images, 0.5, 0.0, seed=0, steps=2, resolution=bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.0), r"strength must be in \(0, 1\], got 0.0"),
    (dict(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
    (dict(strength=0.2, steps=4), r"strength=0.2 with 4 steps leaves no denoising step"),
])
def test_kandinsky_bad_strength_is_refused_echoing_the_value(pipes, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipes["kandinsky"].generate(*images, 0.5, 0.0, seed=0, **{"steps": 2, **kwargs})


def test_strength_needs_a_model_that_takes_it_and_the_source_image(pipes, images):
    with pytest.raises(ValueError, match=r"strength=0.5 needs a model .*kandinsky-2-2.*karlo always"):
        pipes["karlo"].generate(*images, 0.5, 0.0, seed=0, strength=0.5, **FAST["karlo"])
    pipe = pipes["kandinsky"]
    with pytest.raises(ValueError, match="give the source as an image, not an embedding"):
        pipe.generate(pipe.encode(images[0]), images[1], 0.5, 0.0, seed=0, steps=4, strength=0.5)


def test_kandinsky_preset_downloads_only_what_it_needs_and_says_so_offline():
    from pipelines import HubFiles
    from pipelines.loading import weight_files

    listing = ["model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.bin",
               "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
               "movq/config.json", "movq/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json",
               "text_encoder/model.safetensors"]
    wanted = HubFiles("repo", ("unet", "movq", "scheduler"))
    assert sorted(weight_files(listing, wanted, half=True)) == [
        "model_index.json", "movq/config.json", "movq/diffusion_pytorch_model.bin",
        "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert "unet/diffusion_pytorch_model.safetensors" in weight_files(listing, wanted, half=False)
    preset = get_preset("kandinsky-2-2")
    assert {w.repo for w in preset.downloads} == {"kandinsky-community/kandinsky-2-2-decoder",
                                                  "kandinsky-community/kandinsky-2-2-prior"}
    with pytest.raises(ModelLoadError, match="kandinsky-community/kandinsky-2-2-decoder.*hub"):
        load_pipeline("kandinsky-2-2")


def test_kandinsky_loads_fp16_variant_files_as_the_hub_names_them(dirs, pipes, images, tmp_path):
    """A download of the fp16 variants only (what a CUDA load fetches) still loads, here in float32."""
    copy = tmp_path / "kandinsky-fp16-files"
    shutil.copytree(dirs["kandinsky"], copy)
    for folder in ("decoder/unet", "decoder/movq", "prior/image_encoder"):
        for weights in (copy / folder).glob("*.safetensors"):
            weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    variant = load_pipeline(copy)
    a = variant.generate(*images, 0.5, 1.0, seed=2, **FAST["kandinsky"])[0]
    b = pipes["kandinsky"].generate(*images, 0.5, 1.0, seed=2, **FAST["kandinsky"])[0]
    assert np.array_equal(_px(a), _px(b))


def test_a_single_tensor_is_read_from_a_safetensors_stream_as_safetensors_reads_it(dirs):
    """What the Kandinsky preset does over HTTP ranges to get the prior's clip_mean alone."""
    from safetensors import safe_open

    from pipelines.loading import read_safetensors_tensor

    file = next((dirs["kandinsky"] / "prior" / "prior").glob("*.safetensors"))
    with safe_open(str(file), framework="pt") as f:
        keys = list(f.keys())
        expected = {k: f.get_tensor(k) for k in ("clip_mean", "clip_std", keys[-1])}
    for key, tensor in expected.items():
        with open(file, "rb") as stream:
            assert torch.equal(read_safetensors_tensor(stream, key), tensor), key
    with open(file, "rb") as stream:
        assert read_safetensors_tensor(stream, "no-such-tensor") is None
