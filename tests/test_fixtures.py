"""Tiny random-weight fixtures in the hub layout, and loading them on current diffusers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.fixtures import EMBEDDING_DIM, FIXTURE_KINDS
from pipelines.loading import (
    SUPPORTED_PIPELINES,
    PipelineDirectoryError,
    load_diffusers_pipeline,
    read_embedded_mean,
)
from vslerp_app.fixtures import write_fixture
from vslerp_app.stats import STATS_FILENAME, ModalityStats

CLASS_OF = {"karlo": "UnCLIPImageVariationPipeline", "stable-unclip": "StableUnCLIPImg2ImgPipeline"}
SINGLE_REPOSITORY = tuple(CLASS_OF)  # Kandinsky 2.2 is two repositories: tested on its own
OUTPUT_SIDE = {"karlo": 64, "stable-unclip": 32}
WRITE_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def fixture_dirs(tmp_path_factory):
    """One directory per (kind, layout), plus variants; written once for the whole session."""

    def write(name, kind, **kwargs):
        start = time.perf_counter()
        path = write_fixture(kind, tmp_path_factory.mktemp(name), **kwargs)
        WRITE_SECONDS[name] = time.perf_counter() - start
        return path

    dirs = {}
    for kind in FIXTURE_KINDS:
        for layout in ("hub", "current"):
            dirs[kind, layout] = write(f"{kind}-{layout}", kind, layout=layout)
    dirs["stable-unclip", "zeros"] = write("stable-zeros", "stable-unclip",
                                           embedded_mean="zeros", write_stats=False)
    return dirs


@pytest.fixture(scope="session")
def loaded(fixture_dirs):
    """The hub-layout fixtures loaded through load_diffusers_pipeline, progress bars off."""
    pipes = {}
    for kind in SINGLE_REPOSITORY:
        pipe = load_diffusers_pipeline(fixture_dirs[kind, "hub"])
        pipe.set_progress_bar_config(disable=True)
        pipes[kind] = pipe
    return pipes


def _image(colour=(200, 40, 10)):
    return Image.new("RGB", (32, 32), colour)


# -- writing -----------------------------------------------------------------------------
def test_unknown_kind_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="karlo.*stable-unclip.*kandinsky"):
        write_fixture("dalle", tmp_path)


@pytest.mark.parametrize("kind", SINGLE_REPOSITORY)
def test_layout_has_the_real_repositories_components(fixture_dirs, kind):
    index = json.loads((fixture_dirs[kind, "hub"] / "model_index.json").read_text())
    components = {k for k in index if not k.startswith("_")}
    expected = {
        "karlo": {"decoder", "text_proj", "text_encoder", "tokenizer", "feature_extractor",
                  "image_encoder", "super_res_first", "super_res_last", "decoder_scheduler",
                  "super_res_scheduler"},
        "stable-unclip": {"feature_extractor", "image_encoder", "image_normalizer",
                          "image_noising_scheduler", "tokenizer", "text_encoder", "unet",
                          "scheduler", "vae"},
    }[kind]
    assert index["_class_name"] == CLASS_OF[kind]
    assert components == expected
    for name in expected:
        assert (fixture_dirs[kind, "hub"] / name).is_dir(), name


def test_fixtures_are_quick_to_write(fixture_dirs):
    # The first write pays for importing the model classes; later ones take a few seconds.
    later = list(WRITE_SECONDS.values())[1:]
    assert max(later) < 30, WRITE_SECONDS


def test_tokenizer_is_a_working_clip_bpe(fixture_dirs):
    from transformers import CLIPTokenizer

    folder = fixture_dirs["karlo", "hub"] / "tokenizer"
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    assert (folder / "merges.txt").read_text().startswith("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(folder))
    assert tok.model_max_length == 77
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]
    ids = tok("a photo").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>",
                                              "<|endoftext|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a photo"
    padded = tok("", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77


# -- layouts and loading -----------------------------------------------------------------
def test_hub_layout_names_the_old_unclip_library(fixture_dirs):
    hub = json.loads((fixture_dirs["karlo", "hub"] / "model_index.json").read_text())
    current = json.loads((fixture_dirs["karlo", "current"] / "model_index.json").read_text())
    assert hub["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    assert current["text_proj"] == ["diffusers", "UnCLIPTextProjModel"]
    assert {k: v for k, v in hub.items() if k != "text_proj"} == \
        {k: v for k, v in current.items() if k != "text_proj"}


def test_plain_diffusers_refuses_the_hub_layout(fixture_dirs):
    # The reason load_diffusers_pipeline exists. (On diffusers 0.42.1 plain from_pretrained
    # also fails on the "current" layout: the top-level diffusers module no longer exports
    # UnCLIPTextProjModel. Not asserted: a later diffusers may fix that.)
    from diffusers import DiffusionPipeline

    with pytest.raises(ValueError, match="unclip"):
        DiffusionPipeline.from_pretrained(str(fixture_dirs["karlo", "hub"]))


@pytest.mark.parametrize("layout", ["hub", "current"])
@pytest.mark.parametrize("kind", SINGLE_REPOSITORY)
def test_both_layouts_load(fixture_dirs, kind, layout):
    pipe = load_diffusers_pipeline(fixture_dirs[kind, layout])
    assert type(pipe).__name__ == CLASS_OF[kind]
    assert pipe.image_encoder.config.projection_dim == EMBEDDING_DIM
    assert pipe.image_encoder.dtype == torch.float32
    if kind == "karlo":
        assert type(pipe.text_proj).__name__ == "UnCLIPTextProjModel"
    else:
        assert type(pipe.image_normalizer).__name__ == "StableUnCLIPImageNormalizer"


def test_load_in_half_precision(fixture_dirs):
    pipe = load_diffusers_pipeline(fixture_dirs["karlo", "hub"], torch_dtype=torch.float16)
    assert pipe.text_proj.dtype == torch.float16
    assert pipe.decoder.dtype == torch.float16
    assert pipe.image_encoder.dtype == torch.float16


def test_loader_errors_are_clear(tmp_path, fixture_dirs):
    with pytest.raises(PipelineDirectoryError, match="not a diffusers pipeline directory"):
        load_diffusers_pipeline(tmp_path)
    with pytest.raises(PipelineDirectoryError, match="not a diffusers pipeline directory"):
        load_diffusers_pipeline(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline") as info:
        load_diffusers_pipeline(tmp_path)
    for name in SUPPORTED_PIPELINES:
        assert name in str(info.value)


def test_kandinsky_is_the_two_hub_repositories(fixture_dirs):
    """kandinsky-2-2-prior as prior/, kandinsky-2-2-decoder as decoder/, with their components."""
    root = fixture_dirs["kandinsky", "hub"]
    expected = {"prior": ("KandinskyV22PriorPipeline", {"prior", "image_encoder", "image_processor",
                                                        "text_encoder", "tokenizer", "scheduler"}),
                "decoder": ("KandinskyV22Pipeline", {"unet", "scheduler", "movq"})}
    for folder, (class_name, components) in expected.items():
        index = json.loads((root / folder / "model_index.json").read_text())
        assert index["_class_name"] == class_name
        assert {k for k in index if not k.startswith("_")} == components
        assert all((root / folder / name).is_dir() for name in components)
    assert not (root / "model_index.json").exists()


def test_kandinsky_stock_pipelines_run_from_the_fixture(fixture_dirs):
    """The prior's text-to-embedding and both decoders, loaded the stock way from each repository."""
    from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline

    root = fixture_dirs["kandinsky", "hub"]
    prior = KandinskyV22PriorPipeline.from_pretrained(root / "prior")
    out = prior("a photo", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.image_embeds.shape == out.negative_image_embeds.shape == (1, EMBEDDING_DIM)
    decoder = KandinskyV22Pipeline.from_pretrained(root / "decoder")
    kwargs = dict(image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
                  height=32, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert decoder(**kwargs).images[0].size == (32, 32)
    img2img = KandinskyV22Img2ImgPipeline.from_pretrained(root / "decoder")
    assert img2img(image=_image(), strength=0.5, **kwargs).images[0].size == (32, 32)
    # The prior holds the statistics of the fixture images' embeddings: clip_mean is read alone.
    stats = ModalityStats.load(root / STATS_FILENAME)
    torch.testing.assert_close(prior.prior.clip_mean.flatten(), stats.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(read_embedded_mean(root), stats.mean, rtol=1e-5, atol=1e-6)


# -- the stock pipelines run ---------------------------------------------------------------
def test_stock_karlo_runs(loaded):
    out = loaded["karlo"](_image(), decoder_num_inference_steps=2, super_res_num_inference_steps=2,
                          generator=torch.Generator().manual_seed(0)).images
    assert len(out) == 1 and out[0].size == (OUTPUT_SIDE["karlo"],) * 2


def test_stock_stable_unclip_runs(loaded):
    out = loaded["stable-unclip"](_image(), num_inference_steps=2,
                                  generator=torch.Generator().manual_seed(0)).images
    assert len(out) == 1 and out[0].size == (OUTPUT_SIDE["stable-unclip"],) * 2


def test_karlo_rows_share_noise_only_with_one_generator_per_row(loaded):
    """Fact the engine relies on: equally seeded per-row generators give equal rows."""
    pipe = loaded["karlo"]
    pixels = pipe.feature_extractor(images=[_image()], return_tensors="pt").pixel_values
    with torch.no_grad():
        emb = pipe.image_encoder(pixels).image_embeds.repeat(3, 1)
    kwargs = dict(image_embeddings=emb, decoder_num_inference_steps=2,
                  super_res_num_inference_steps=2, decoder_guidance_scale=1.0, output_type="np")
    per_row = pipe(generator=[torch.Generator().manual_seed(7) for _ in range(3)], **kwargs).images
    shared = pipe(generator=torch.Generator().manual_seed(7), **kwargs).images
    assert per_row.shape == (3, 64, 64, 3)
    assert np.abs(per_row - per_row[:1]).max() < 1e-5
    assert np.abs(shared - shared[:1]).max() > 0.1


# -- statistics ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", FIXTURE_KINDS)
def test_stats_file_loads(fixture_dirs, kind):
    stats = ModalityStats.load(fixture_dirs[kind, "hub"] / STATS_FILENAME,
                               expected_dim=EMBEDDING_DIM)
    assert stats.n == 96
    assert stats.has_exact_conformity and stats.whitening is not None
    assert stats.provenance["encoder"] == "tiny-random-clip-vit"
    assert stats.provenance["model_id"] == f"{kind} fixture"
    assert "seed 0" in stats.provenance["dataset"]


def test_stats_describe_the_encoders_own_embeddings(loaded, fixture_dirs):
    """The mean is the mean of raw image_embeds of this very encoder (not normalised)."""
    pipe = loaded["karlo"]
    stats = ModalityStats.load(fixture_dirs["karlo", "hub"] / STATS_FILENAME)
    pixels = pipe.feature_extractor(images=[_image(), _image((10, 90, 200))],
                                    return_tensors="pt").pixel_values
    with torch.no_grad():
        emb = pipe.image_encoder(pixels).image_embeds
    cos = torch.nn.functional.cosine_similarity(emb, stats.mean.unsqueeze(0))
    assert bool((cos > 0.5).all()), cos
    assert float(stats.mean.norm()) != pytest.approx(1.0, abs=1e-3)


def test_write_stats_false_writes_none(fixture_dirs):
    assert not (fixture_dirs["stable-unclip", "zeros"] / STATS_FILENAME).exists()


def test_embedded_mean(fixture_dirs):
    stats = ModalityStats.load(fixture_dirs["stable-unclip", "hub"] / STATS_FILENAME)
    mean = read_embedded_mean(fixture_dirs["stable-unclip", "hub"])
    assert mean is not None and mean.shape == (EMBEDDING_DIM,) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, stats.mean, rtol=1e-5, atol=1e-6)
    assert read_embedded_mean(fixture_dirs["stable-unclip", "zeros"]) is None
    assert read_embedded_mean(fixture_dirs["karlo", "hub"]) is None  # no prior, like the real one


def test_embedded_std_is_positive(fixture_dirs):
    for variant, mean_is_zero in (("hub", False), ("zeros", True)):
        pipe = load_diffusers_pipeline(fixture_dirs["stable-unclip", variant])
        normalizer = pipe.image_normalizer
        assert bool((normalizer.std > 0).all())
        assert bool((normalizer.mean == 0).all()) == mean_is_zero


def test_embedded_mean_rejects_non_finite_and_reads_a_prior(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "image_normalizer").mkdir()
    bad = torch.ones(1, 4)
    bad[0, 1] = float("nan")
    save_file({"mean": bad, "std": torch.ones(1, 4)},
              str(tmp_path / "image_normalizer" / "diffusion_pytorch_model.safetensors"))
    assert read_embedded_mean(tmp_path) is None
    (tmp_path / "prior").mkdir()
    save_file({"clip_mean": torch.arange(1.0, 5.0).reshape(1, 4)},
              str(tmp_path / "prior" / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(read_embedded_mean(tmp_path), torch.arange(1.0, 5.0))
    assert read_embedded_mean(tmp_path / "nowhere") is None


# -- determinism ---------------------------------------------------------------------------
def _weights(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*.safetensors")) if p.name != STATS_FILENAME}


@pytest.mark.parametrize("kind", FIXTURE_KINDS)
def test_same_seed_same_bytes(fixture_dirs, tmp_path, kind):
    again = write_fixture(kind, tmp_path / "again", layout="hub", seed=0)
    first, second = _weights(fixture_dirs[kind, "hub"]), _weights(again)
    assert len(first) >= 4 and first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    torch.testing.assert_close(ModalityStats.load(again / STATS_FILENAME).mean,
                               ModalityStats.load(fixture_dirs[kind, "hub"] / STATS_FILENAME).mean,
                               rtol=0, atol=0)
    other = _weights(write_fixture(kind, tmp_path / "other", layout="hub", seed=1))
    assert any(first[name] != other[name] for name in first)


def test_writing_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_fixture("stable-unclip", tmp_path, write_stats=False)
    assert torch.equal(torch.rand(3), expected)
