"""Tiny random-weight unCLIP pipelines in the same on-disk layout as the real hub repositories.

`write_fixture("karlo", DIR)` writes an `UnCLIPImageVariationPipeline` laid out like
kakaobrain/karlo-v1-alpha-image-variations; `write_fixture("stable-unclip", DIR)` writes a
`StableUnCLIPImg2ImgPipeline` laid out like stabilityai/stable-diffusion-2-1-unclip(-small).
Every component is the real diffusers/transformers class with a tiny configuration (sizes
after diffusers' own fast tests, shrunk further for CPU): 32-d CLIP image embeddings, a
32 px Karlo decoder with 64 px super-resolution, a 32 px Stable unCLIP. Built in code from a
seed (nothing is downloaded), saved with `save_pretrained`, and the same seed gives
byte-identical weight files.

Layouts: "hub" rewrites Karlo's model_index.json so `text_proj` names the library "unclip",
as the real repository (saved by an older diffusers) does and current diffusers refuses to
load; "current" keeps what today's diffusers writes. Stable unCLIP's model_index is the same
in both.

Next to the pipeline a `vslerp-stats.safetensors` holds image-modality statistics of the
tiny image encoder over generated images (smooth colour fields, gradients, blobs).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["FIXTURE_KINDS", "EMBEDDING_DIM", "write_fixture", "fixture_images"]

FIXTURE_KINDS = ("karlo", "stable-unclip")
EMBEDDING_DIM = 32  # projection_dim of the tiny CLIP encoders: raw image embeddings are 32-d
IMAGE_SIZE = 32  # CLIP encoder input side (feature_extractor crop)
STATS_IMAGES = 96
MODEL_MAX_LENGTH = 77  # as the real CLIP tokenizers

# Real repositories saved by an older diffusers name the library "unclip" for text_proj.
_HUB_TEXT_PROJ = ["unclip", "UnCLIPTextProjModel"]


# -- tokenizer ---------------------------------------------------------------------------
def _byte_level_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: the 256 printable stand-ins for the 256 bytes."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


# A few merges so common words become single tokens ("photo</w>", "of</w>"), like real BPE.
_MERGES = ["p h", "o t", "ph ot", "phot o</w>", "o f</w>", "t h", "th e</w>"]


def _write_tokenizer(directory: Path):
    """A tiny valid CLIP BPE tokenizer saved in `directory` (vocab.json, merges.txt, config)."""
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n",
                                          encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(directory), model_max_length=MODEL_MAX_LENGTH)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    checks = {"": [bos, eos],
              "a photo": [bos, vocab["a</w>"], vocab["photo</w>"], eos]}
    for text, want in checks.items():
        got = tokenizer(text).input_ids
        if got != want:
            raise RuntimeError(f"fixture tokenizer is broken: {text!r} -> {got}, expected {want}")
    return tokenizer


# -- components --------------------------------------------------------------------------
def _seeded(seed: int, fn, *args, **kwargs):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


def _image_encoder(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, projection_dim=EMBEDDING_DIM, num_hidden_layers=5,
                              num_attention_heads=4, image_size=IMAGE_SIZE, intermediate_size=37,
                              patch_size=4)
    return _seeded(seed, CLIPVisionModelWithProjection, config).eval()


def _feature_extractor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=IMAGE_SIZE, size=IMAGE_SIZE)


def _text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                          projection_dim=EMBEDDING_DIM, intermediate_size=37, layer_norm_eps=1e-5,
                          num_attention_heads=4, num_hidden_layers=5, vocab_size=len(tokenizer),
                          max_position_embeddings=MODEL_MAX_LENGTH)


def _karlo_components(seed: int, tokenizer) -> dict:
    from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection

    time_input_dim, cross_attention_dim = 32, 100
    decoder = _seeded(
        seed, UNet2DConditionModel, sample_size=32, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(time_input_dim, time_input_dim * 2), layers_per_block=1,
        cross_attention_dim=cross_attention_dim, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity")
    text_proj = _seeded(seed + 1, UnCLIPTextProjModel, clip_embeddings_dim=EMBEDDING_DIM,
                        time_embed_dim=time_input_dim * 4, cross_attention_dim=cross_attention_dim)
    text_encoder = _seeded(seed + 2, CLIPTextModelWithProjection, _text_config(tokenizer)).eval()
    super_res = dict(sample_size=64, layers_per_block=1, in_channels=6, out_channels=3,
                     down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                     up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                     block_out_channels=(time_input_dim, time_input_dim * 2))
    return {
        "decoder": decoder,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_proj": text_proj,
        "feature_extractor": _feature_extractor(),
        "image_encoder": _image_encoder(seed + 3),
        "super_res_first": _seeded(seed + 4, UNet2DModel, **super_res),
        "super_res_last": _seeded(seed + 5, UNet2DModel, **super_res),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range",
                                             prediction_type="epsilon", num_train_timesteps=1000),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log",
                                               prediction_type="epsilon",
                                               num_train_timesteps=1000),
    }


def _stable_components(seed: int, tokenizer) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPTextModel

    unet = _seeded(
        seed, UNet2DConditionModel, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
        attention_head_dim=(2, 4), class_embed_type="projection",
        projection_class_embeddings_input_dim=EMBEDDING_DIM * 2, cross_attention_dim=32,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    # Two levels: latents at half the pixel side (the real VAE has 4 levels, factor 8).
    vae = _seeded(seed + 1, AutoencoderKL, in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                  block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=16,
                  sample_size=32)
    return {
        "feature_extractor": _feature_extractor(),
        "image_encoder": _image_encoder(seed + 3),
        "image_normalizer": StableUnCLIPImageNormalizer(embedding_dim=EMBEDDING_DIM),
        "image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        "tokenizer": tokenizer,
        "text_encoder": _seeded(seed + 2, CLIPTextModel, _text_config(tokenizer)).eval(),
        "unet": unet,
        "scheduler": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, prediction_type="v_prediction",
                                   set_alpha_to_one=False, steps_offset=1),
        "vae": vae,
    }


# -- images for the statistics -----------------------------------------------------------
def fixture_images(n: int = STATS_IMAGES, seed: int = 0, size: int = IMAGE_SIZE) -> list:
    """n smooth RGB PIL images, deterministic by seed: colour fields, gradients, blobs."""
    import torch.nn.functional as F
    from PIL import Image

    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for i in range(n):
        kind = i % 3
        if kind == 0:  # smooth random colour field: a coarse grid, bicubically upsampled
            cells = 2 + int(rand(1) * 4)
            img = F.interpolate(rand(1, 3, cells, cells), size=(size, size), mode="bicubic",
                                align_corners=True)[0]
        elif kind == 1:  # linear gradient between two colours in a random direction
            angle = rand(1) * 2 * torch.pi
            t = ((xx * torch.cos(angle) + yy * torch.sin(angle)) + 1.5) / 3
            c0, c1 = rand(3, 1, 1), rand(3, 1, 1)
            img = c0 * (1 - t) + c1 * t
        else:  # 1-3 gaussian blobs on a plain background
            img = rand(3, 1, 1).expand(3, size, size).clone()
            for _ in range(1 + int(rand(1) * 3)):
                cx, cy = rand(2) * 1.6 - 0.8
                r = 0.15 + 0.35 * rand(1)
                w = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
                img = img * (1 - w) + rand(3, 1, 1) * w
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        images.append(Image.fromarray(arr, mode="RGB"))
    return images


@torch.no_grad()
def _embed(feature_extractor, image_encoder, images) -> torch.Tensor:
    """Raw (unnormalised) image embeddings, as the unCLIP pipelines compute them."""
    pixels = feature_extractor(images=images, return_tensors="pt").pixel_values
    return image_encoder(pixels.to(image_encoder.dtype)).image_embeds.float()


# -- writing -----------------------------------------------------------------------------
def _rewrite_index_hub(directory: Path) -> None:
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_proj"] = list(_HUB_TEXT_PROJ)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def write_fixture(kind: str, directory: str | os.PathLike, *, layout: str = "hub",
                  seed: int = 0, embedded_mean: str = "stats",
                  write_stats: bool = True) -> Path:
    """Write a tiny random-weight pipeline of ``kind`` into ``directory``; return its path.

    Args:
        kind: "karlo" (UnCLIPImageVariationPipeline, like
            kakaobrain/karlo-v1-alpha-image-variations) or "stable-unclip"
            (StableUnCLIPImg2ImgPipeline, like stabilityai/stable-diffusion-2-1-unclip).
        directory: where to write (created if needed; existing files are overwritten).
        layout: "hub" (Karlo's model_index.json names the "unclip" library for text_proj, as
            the real repository does) or "current" (what today's diffusers writes).
        seed: all weights derive from it; the same seed gives byte-identical weight files.
        embedded_mean: Stable unCLIP only: "stats" stores the image-modality mean of the
            fixture images in image_normalizer.mean (like -small, whose normalizer holds the
            ViT-L/14 training-set mean); "zeros" leaves mean 0, std 1 (like -h).
        write_stats: also write ``vslerp-stats.safetensors`` (statistics of the tiny image
            encoder over generated images).
    """
    if kind not in FIXTURE_KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}; known: {', '.join(FIXTURE_KINDS)}")
    if layout not in ("hub", "current"):
        raise ValueError(f"unknown layout {layout!r}; known: hub, current")
    if embedded_mean not in ("stats", "zeros"):
        raise ValueError(f"embedded_mean must be 'stats' or 'zeros', got {embedded_mean!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        tokenizer = _write_tokenizer(Path(tmp) / "tokenizer")
        if kind == "karlo":
            from diffusers import UnCLIPImageVariationPipeline as cls

            components = _karlo_components(seed, tokenizer)
        else:
            from diffusers import StableUnCLIPImg2ImgPipeline as cls

            components = _stable_components(seed, tokenizer)

        need_embeddings = write_stats or (kind == "stable-unclip" and embedded_mean == "stats")
        embeddings = None
        if need_embeddings:
            images = fixture_images(STATS_IMAGES, seed=seed)
            embeddings = _embed(components["feature_extractor"], components["image_encoder"],
                                images)
        if kind == "stable-unclip" and embedded_mean == "stats":
            normalizer = components["image_normalizer"]
            with torch.no_grad():
                normalizer.mean.copy_(embeddings.mean(0, keepdim=True))
                normalizer.std.copy_(embeddings.std(0, keepdim=True).clamp_min(1e-3))

        pipe = cls(**components)
        pipe.save_pretrained(directory, safe_serialization=True)
        # Keep the BPE source files beside tokenizer.json, as the real repositories do (and
        # so a transformers without the tokenizers backend can read them too).
        for name in ("vocab.json", "merges.txt"):
            target = directory / "tokenizer" / name
            if not target.exists():
                target.write_bytes((Path(tmp) / "tokenizer" / name).read_bytes())

    if kind == "karlo" and layout == "hub":
        _rewrite_index_hub(directory)

    if write_stats:
        from vslerp_app.stats import STATS_FILENAME, compute_stats

        stats = compute_stats(embeddings, encoder="tiny-random-clip-vit",
                              model_id=f"{kind} fixture",
                              dataset=f"generated fixture images (seed {seed})")
        stats.save(directory / STATS_FILENAME)
    else:
        from vslerp_app.stats import STATS_FILENAME

        (directory / STATS_FILENAME).unlink(missing_ok=True)
    return directory
