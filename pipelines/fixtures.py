"""Random-weight unCLIP pipelines in the same on-disk layout as the real hub repositories.

`write_model("karlo", DIR)` writes an `UnCLIPImageVariationPipeline` laid out like
kakaobrain/karlo-v1-alpha-image-variations; `write_model("stable-unclip", DIR)` writes a
`StableUnCLIPImg2ImgPipeline` laid out like stabilityai/stable-diffusion-2-1-unclip(-small);
`write_model("kandinsky", DIR)` writes Kandinsky 2.2's two repositories,
kandinsky-community/kandinsky-2-2-prior as ``DIR/prior`` (`KandinskyV22PriorPipeline`:
image encoder, image processor, text encoder, tokenizer, prior scheduler and a
`PriorTransformer` whose `clip_mean`/`clip_std` hold the statistics of the fixture images'
embeddings) and kandinsky-community/kandinsky-2-2-decoder as ``DIR/decoder``
(`KandinskyV22Pipeline`: UNet, DDPM scheduler, MoVQ).
Every component is the real diffusers/transformers class, built in code from a seed
(nothing is downloaded) and saved with `save_pretrained`; the same seed gives
byte-identical weight files.

The architecture is data: `TINY` holds the tiny configurations of the test fixtures (after
diffusers' own fast tests, shrunk further for CPU: 32-d CLIP image embeddings, a 32 px Karlo
decoder with 64 px super-resolution, a 32 px Stable unCLIP, a 32 px Kandinsky 2.2 whose
UNet and MoVQ follow diffusers' own Kandinsky 2.2 fast tests); the benchmark passes its
full-size and scaled-down configurations (`bench/models.py`) to the same builders.

Layouts: "hub" rewrites Karlo's model_index.json so `text_proj` names the library "unclip",
as the real repository (saved by an older diffusers) does and current diffusers refuses to
load; "current" keeps what today's diffusers writes. Stable unCLIP's model_index is the same
in both.

`write_model` also returns the raw embeddings of generated images (smooth colour fields,
gradients, blobs) under the written image encoder, from which `vslerp_app.fixtures` writes
the statistics file beside the model.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FIXTURE_KINDS", "EMBEDDING_DIM", "TINY", "FixtureModel", "build_components",
           "fixture_images", "image_embeddings", "write_model", "write_tokenizer"]

IP_ADAPTER_KINDS = ("ip-adapter-sd15", "ip-adapter-sdxl")  # `pipelines.fixtures_ip_adapter`
FIXTURE_KINDS = ("karlo", "stable-unclip", "kandinsky", *IP_ADAPTER_KINDS)
EMBEDDING_DIM = 32  # projection_dim of the tiny CLIP encoders: raw image embeddings are 32-d
IMAGE_SIZE = 32  # CLIP encoder input side (feature_extractor crop)
STATS_IMAGES = 96
MODEL_MAX_LENGTH = 77  # as the real CLIP tokenizers
_PIPELINE_CLASS = {"karlo": "UnCLIPImageVariationPipeline", "stable-unclip": "StableUnCLIPImg2ImgPipeline",
                   "kandinsky": ("KandinskyV22PriorPipeline", "KandinskyV22Pipeline")}

# Real repositories saved by an older diffusers name the library "unclip" for text_proj.
_HUB_TEXT_PROJ = ["unclip", "UnCLIPTextProjModel"]

# -- the tiny architectures ----------------------------------------------------------------
_TINY_VISION = {"hidden_size": 32, "projection_dim": EMBEDDING_DIM, "num_hidden_layers": 5,
                "num_attention_heads": 4, "image_size": IMAGE_SIZE, "intermediate_size": 37,
                "patch_size": 4}
_TINY_TEXT = {"hidden_size": 32, "projection_dim": EMBEDDING_DIM, "intermediate_size": 37,
              "layer_norm_eps": 1e-5, "num_attention_heads": 4, "num_hidden_layers": 5,
              "max_position_embeddings": MODEL_MAX_LENGTH}
_TINY_SUPER_RES = {"sample_size": 64, "layers_per_block": 1, "in_channels": 6, "out_channels": 3,
                   "down_block_types": ("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
                   "up_block_types": ("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
                   "block_out_channels": (32, 64)}
TINY = {
    "karlo": {
        "decoder": {"sample_size": 32, "in_channels": 3, "out_channels": 6,
                    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
                    "block_out_channels": (32, 64), "layers_per_block": 1,
                    "cross_attention_dim": 100, "attention_head_dim": 4,
                    "resnet_time_scale_shift": "scale_shift", "class_embed_type": "identity"},
        "text_proj": {"clip_embeddings_dim": EMBEDDING_DIM, "time_embed_dim": 128,
                      "cross_attention_dim": 100},
        "text_encoder": _TINY_TEXT,
        "image_encoder": _TINY_VISION,
        "super_res_first": _TINY_SUPER_RES,
        "super_res_last": _TINY_SUPER_RES,
    },
    "stable-unclip": {
        "unet": {"sample_size": 16, "in_channels": 4, "out_channels": 4,
                 "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                 "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "block_out_channels": (32, 64),
                 "attention_head_dim": (2, 4), "class_embed_type": "projection",
                 "projection_class_embeddings_input_dim": EMBEDDING_DIM * 2, "cross_attention_dim": 32,
                 "layers_per_block": 1, "upcast_attention": True, "use_linear_projection": True},
        # Two levels: latents at half the pixel side (the real VAE has 4 levels, factor 8).
        "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
                "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
                "block_out_channels": (32, 32), "layers_per_block": 1, "norm_num_groups": 16,
                "sample_size": 32},
        "text_encoder": _TINY_TEXT,
        "image_encoder": _TINY_VISION,
        "image_normalizer": {"embedding_dim": EMBEDDING_DIM},
        "scheduler": {},
    },
    # The UNet and MoVQ of diffusers' tests/pipelines/kandinsky2_2 get_dummy_components, the
    # UNet at 16 latent cells (a 32 px frame: the two-level MoVQ has factor 2).
    "kandinsky": {
        "unet": {"sample_size": 16, "in_channels": 4, "out_channels": 8, "addition_embed_type": "image",
                 "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                 "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                 "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "block_out_channels": (32, 64),
                 "layers_per_block": 1, "encoder_hid_dim": EMBEDDING_DIM,
                 "encoder_hid_dim_type": "image_proj", "cross_attention_dim": 32, "attention_head_dim": 4,
                 "resnet_time_scale_shift": "scale_shift", "class_embed_type": None},
        "movq": {"block_out_channels": (32, 64),
                 "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                 "in_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
                 "norm_type": "spatial", "num_vq_embeddings": 12, "out_channels": 3,
                 "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), "vq_embed_dim": 4},
        "prior": {"num_attention_heads": 2, "attention_head_dim": 12, "embedding_dim": EMBEDDING_DIM,
                  "num_layers": 1},
        "text_encoder": _TINY_TEXT,
        "image_encoder": _TINY_VISION,
    },
}

# Each component draws its weights from the seed plus its own offset, so changing one
# component's size leaves the others' weights alone.
_SEED_OFFSETS = {"decoder": 0, "unet": 0, "text_proj": 1, "vae": 1, "movq": 1, "text_encoder": 2,
                 "image_encoder": 3, "super_res_first": 4, "super_res_last": 5, "prior": 6}


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


def write_tokenizer(directory: Path):
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
def _text_config(cfg: dict, tokenizer):
    from transformers import CLIPTextConfig

    cfg = dict(cfg)
    cfg["vocab_size"] = max(cfg.get("vocab_size", 0), len(tokenizer))
    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **cfg)


def _feature_extractor(side: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(crop_size=side, size=side)


def _karlo_modules(cfg: dict, tokenizer) -> dict:
    """Constructors of Karlo's trainable components (called under each one's seed)."""
    from diffusers import UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "decoder": lambda: UNet2DConditionModel(**cfg["decoder"]),
        "text_proj": lambda: UnCLIPTextProjModel(**cfg["text_proj"]),
        "text_encoder": lambda: CLIPTextModelWithProjection(_text_config(cfg["text_encoder"], tokenizer)),
        "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"])),
        "super_res_first": lambda: UNet2DModel(**cfg["super_res_first"]),
        "super_res_last": lambda: UNet2DModel(**cfg["super_res_last"]),
    }


def _stable_modules(cfg: dict, tokenizer) -> dict:
    """Constructors of Stable unCLIP's trainable components (called under each one's seed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "unet": lambda: UNet2DConditionModel(**cfg["unet"]),
        "vae": lambda: AutoencoderKL(**cfg["vae"]),
        "text_encoder": lambda: CLIPTextModel(_text_config(cfg["text_encoder"], tokenizer)),
        "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"])),
    }


def _kandinsky_modules(cfg: dict, tokenizer) -> dict:
    """Constructors of Kandinsky 2.2's trainable components, both repositories' (prior side:
    prior, image_encoder, text_encoder; decoder side: unet, movq)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    return {
        "unet": lambda: UNet2DConditionModel(**cfg["unet"]),
        "movq": lambda: VQModel(**cfg["movq"]),
        "text_encoder": lambda: CLIPTextModelWithProjection(_text_config(cfg["text_encoder"], tokenizer)),
        "image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"])),
        "prior": lambda: PriorTransformer(**cfg["prior"]),
    }


_MODULES = {"karlo": _karlo_modules, "stable-unclip": _stable_modules, "kandinsky": _kandinsky_modules}


def _schedulers(kind: str, cfg: dict) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler, UnCLIPScheduler

    if kind == "kandinsky":  # the prior's (as diffusers' tests) and the decoder's DDPM
        return {"scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                             num_train_timesteps=1000, clip_sample=True,
                                             clip_sample_range=10.0),
                "decoder_scheduler": DDPMScheduler(beta_schedule="linear", beta_start=0.00085,
                                                   beta_end=0.012, clip_sample=False, steps_offset=1,
                                                   prediction_type="epsilon", variance_type="fixed_small")}
    if kind == "karlo":
        return {"decoder_scheduler": UnCLIPScheduler(variance_type="learned_range",
                                                     prediction_type="epsilon", num_train_timesteps=1000),
                "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log",
                                                       prediction_type="epsilon", num_train_timesteps=1000)}
    return {"image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
            "scheduler": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", set_alpha_to_one=False,
                                       steps_offset=1, **cfg.get("scheduler", {}))}


def _zero_out(model) -> None:
    """Zero the output convolution: random weights then predict zero noise, so no fp16
    overflow can come out of a random UNet (timing is unaffected)."""
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()


def build_components(kind: str, config: dict, tokenizer, *, seed: int = 0, device="cpu",
                     zero_out: bool = False) -> dict:
    """The components of a ``kind`` pipeline with random weights, built on ``device``.

    Args:
        kind: one of `FIXTURE_KINDS`.
        config: the trainable components' configurations (`TINY[kind]`, or the benchmark's).
        tokenizer: the CLIP tokenizer (`write_tokenizer`).
        seed: every component's weights derive from it (its own offset each).
        device: where the weights are initialised (a GPU builds full size in seconds).
        zero_out: zero the denoisers' output convolutions (random weights then predict zero
            noise, so nothing overflows in fp16; for timing).
    """
    if kind not in FIXTURE_KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}; known: {', '.join(FIXTURE_KINDS)}")
    modules = _MODULES[kind](config, tokenizer)
    parts = {}
    with torch.device(device):
        for name, build in modules.items():
            torch.manual_seed(seed + _SEED_OFFSETS[name])
            parts[name] = build().eval()
        if kind == "stable-unclip":
            from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
                StableUnCLIPImageNormalizer,
            )

            parts["image_normalizer"] = StableUnCLIPImageNormalizer(**config["image_normalizer"])
    if zero_out:
        for name in ("decoder", "super_res_first", "super_res_last", "unet"):  # the denoisers
            if name in parts:
                _zero_out(parts[name])
    parts.update(_schedulers(kind, config), tokenizer=tokenizer,
                 feature_extractor=_feature_extractor(config["image_encoder"]["image_size"]))
    return parts


def _kandinsky_pipelines(components: dict):
    """(prior pipeline, decoder pipeline) of Kandinsky 2.2 from `build_components`' parts."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    c = components
    prior = KandinskyV22PriorPipeline(prior=c["prior"], image_encoder=c["image_encoder"],
                                      text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                      scheduler=c["scheduler"], image_processor=c["feature_extractor"])
    decoder = KandinskyV22Pipeline(unet=c["unet"], scheduler=c["decoder_scheduler"], movq=c["movq"])
    return prior, decoder


def param_counts(components: dict) -> dict[str, int]:
    """Parameters per torch module among the components."""
    return {name: sum(p.numel() for p in module.parameters())
            for name, module in components.items() if isinstance(module, torch.nn.Module)}


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
def image_embeddings(components: dict, images) -> torch.Tensor:
    """Raw (unnormalised) image embeddings, float32 on the CPU, as the pipelines compute them."""
    encoder = components["image_encoder"]
    param = next(encoder.parameters())
    pixels = components["feature_extractor"](images=images, return_tensors="pt").pixel_values
    return encoder(pixels.to(param.device, param.dtype)).image_embeds.float().cpu()


# -- writing -----------------------------------------------------------------------------
@dataclass
class FixtureModel:
    """What `write_model` wrote.

    Attributes:
        path: the pipeline directory.
        embeddings: raw embeddings (N, d) of ``N`` generated images under its image encoder.
        param_counts: parameters per component.
    """

    path: Path
    embeddings: torch.Tensor
    param_counts: dict[str, int]


def _rewrite_index_hub(directory: Path) -> None:
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_proj"] = list(_HUB_TEXT_PROJ)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _set_normalizer(normalizer, embeddings: torch.Tensor) -> None:
    """Store the embeddings' mean and std, as -small's normalizer holds ViT-L/14's."""
    with torch.no_grad():
        normalizer.mean.copy_(embeddings.mean(0, keepdim=True))
        normalizer.std.copy_(embeddings.std(0, keepdim=True).clamp_min(1e-3))


def _set_prior_stats(prior, embeddings: torch.Tensor) -> None:
    """Store the embeddings' mean and std as the prior's clip_mean/clip_std (what Kandinsky
    2.2's prior holds for ViT-bigG/14 over its training set)."""
    with torch.no_grad():
        prior.clip_mean.copy_(embeddings.mean(0, keepdim=True))
        prior.clip_std.copy_(embeddings.std(0, keepdim=True).clamp_min(1e-3))


def _save(kind: str, components: dict, directory: Path, tokenizer_dir: Path, dtype) -> None:
    import diffusers

    if kind == "kandinsky":  # two repositories, as on the hub
        saved = dict(zip(("prior", "decoder"), _kandinsky_pipelines(components), strict=True))
    else:
        saved = {"": getattr(diffusers, _PIPELINE_CLASS[kind])(**components)}
    for folder, pipe in saved.items():
        if dtype is not None:
            pipe.to(dtype=dtype)
        pipe.save_pretrained(directory / folder, safe_serialization=True)
    finish_files(directory, tokenizer_dir)


def finish_files(directory: Path, tokenizer_dir: Path) -> None:
    """Saved weights in the usual file mode, and the BPE files beside each tokenizer."""
    umask = os.umask(0o022)
    os.umask(umask)
    for weights in directory.rglob("*.safetensors"):  # safetensors writes 0600: the usual mode instead
        weights.chmod(0o666 & ~umask)
    # Keep the BPE source files beside tokenizer.json, as the real repositories do (and
    # so a transformers without the tokenizers backend can read them too).
    for tokenizer in (d for d in directory.rglob("tokenizer*") if d.is_dir()):
        for name in ("vocab.json", "merges.txt"):
            if not (tokenizer / name).exists():
                (tokenizer / name).write_bytes((tokenizer_dir / name).read_bytes())


def write_model(kind: str, directory: str | os.PathLike, *, config: dict | None = None,
                layout: str = "hub", seed: int = 0, embedded_mean: str = "stats",
                images: int = STATS_IMAGES, device="cpu", dtype: torch.dtype | None = None,
                zero_out: bool = False) -> FixtureModel:
    """Write a random-weight pipeline of ``kind`` into ``directory`` in the hub layout.

    Args:
        kind: "karlo" (UnCLIPImageVariationPipeline, like
            kakaobrain/karlo-v1-alpha-image-variations), "stable-unclip"
            (StableUnCLIPImg2ImgPipeline, like stabilityai/stable-diffusion-2-1-unclip) or
            "kandinsky" (Kandinsky 2.2's prior and decoder repositories as ``prior/`` and
            ``decoder/``), "ip-adapter-sd15" or "ip-adapter-sdxl" (a base pipeline as
            ``base/`` and h94/IP-Adapter's files as ``IP-Adapter/``,
            `pipelines.fixtures_ip_adapter`; layout and embedded_mean do not apply).
        directory: where to write (created if needed; existing files are overwritten).
        config: the components' configurations (default: `TINY[kind]`).
        layout: "hub" (Karlo's model_index.json names the "unclip" library for text_proj, as
            the real repository does) or "current" (what today's diffusers writes).
        seed: all weights derive from it; the same seed gives byte-identical weight files.
        embedded_mean: Stable unCLIP only: "stats" stores the mean of the generated images'
            embeddings in image_normalizer.mean (like -small, whose normalizer holds the
            ViT-L/14 training-set mean); "zeros" leaves mean 0, std 1 (like -h).
        images: how many generated images to embed (returned as `FixtureModel.embeddings`).
        device, dtype: where the weights are built, and the dtype they are saved in.
        zero_out: see `build_components`.
    """
    if kind not in FIXTURE_KINDS:
        raise ValueError(f"unknown fixture kind {kind!r}; known: {', '.join(FIXTURE_KINDS)}")
    if kind in IP_ADAPTER_KINDS:  # a base pipeline and h94's adapter files: their own module
        from pipelines.fixtures_ip_adapter import write_ip_adapter_model

        return write_ip_adapter_model(kind, directory, config=config, seed=seed, images=images,
                                      device=device, dtype=dtype, zero_out=zero_out)
    if layout not in ("hub", "current"):
        raise ValueError(f"unknown layout {layout!r}; known: hub, current")
    if embedded_mean not in ("stats", "zeros"):
        raise ValueError(f"embedded_mean must be 'stats' or 'zeros', got {embedded_mean!r}")
    config = copy.deepcopy(TINY[kind] if config is None else config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp) / "tokenizer")
        components = build_components(kind, config, tokenizer, seed=seed, device=device,
                                      zero_out=zero_out)
        side = min(config["image_encoder"]["image_size"], 64)
        embeddings = image_embeddings(components, fixture_images(images, seed=seed, size=side))
        if kind == "stable-unclip" and embedded_mean == "stats":
            _set_normalizer(components["image_normalizer"], embeddings)
        if kind == "kandinsky":
            _set_prior_stats(components["prior"], embeddings)
        counts = param_counts(components)
        _save(kind, components, directory, Path(tmp) / "tokenizer", dtype)
        del components
    if kind == "karlo" and layout == "hub":
        _rewrite_index_hub(directory)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return FixtureModel(path=directory, embeddings=embeddings, param_counts=counts)
