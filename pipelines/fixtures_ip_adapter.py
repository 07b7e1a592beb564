"""Random-weight IP-Adapter models in the layout `pipelines.families.ip_adapter` reads.

`write_ip_adapter_model("ip-adapter-sd15", DIR)` writes a tiny `StableDiffusionPipeline` as
``DIR/base`` (laid out like stable-diffusion-v1-5/stable-diffusion-v1-5: UNet, VAE, CLIP text
encoder and tokenizer, PNDM scheduler) and h94/IP-Adapter's files as ``DIR/IP-Adapter``:
the image encoder in ``models/image_encoder`` and the adapter weights in
``models/ip-adapter_sd15.safetensors``; "ip-adapter-sdxl" a tiny `StableDiffusionXLPipeline`
(two text encoders, Euler scheduler, like stabilityai/stable-diffusion-xl-base-1.0) with
``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` and the same ``models/image_encoder``.

The adapter weights are what h94 ships, in its key names: ``image_proj.proj`` and
``image_proj.norm`` (the embedding's projection to four cross-attention tokens) and
``ip_adapter.{2k+1}.to_k_ip`` / ``to_v_ip`` for the k-th cross-attention layer of the UNet, in
the order of its attention processors (diffusers' `load_ip_adapter` numbers them so). The
model loads through `load_ip_adapter` by the same code as the real one.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch

from pipelines.fixtures import IP_ADAPTER_KINDS

__all__ = ["IP_ADAPTER_KINDS", "TINY_IP_ADAPTER", "adapter_state_dict", "write_ip_adapter_model"]

IMAGE_TOKENS = 4  # what the non-"plus" adapters project one embedding to

_UNET = {"block_out_channels": (32, 64), "layers_per_block": 1, "sample_size": 16, "in_channels": 4,
         "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
         "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 32}
# SDXL's UNet after diffusers' SDXL fast tests: added time and pooled-text conditioning
# (6 x 8 time features + the 32-d pooled embedding) and both text encoders' states (32 + 32).
_SDXL_UNET = {**_UNET, "attention_head_dim": (2, 4), "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
              "transformer_layers_per_block": (1, 2), "projection_class_embeddings_input_dim": 80,
              "cross_attention_dim": 64}
_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def _tiny() -> dict:
    from pipelines.fixtures import TINY

    vae, text, vision = (TINY["stable-unclip"][k] for k in ("vae", "text_encoder", "image_encoder"))
    # Latents of about unit variance, as SD's 0.18215 makes the real VAE's (this random VAE's
    # posterior means have a std near 0.3).
    vae = {**vae, "scaling_factor": 3.0}
    common = {"vae": vae, "text_encoder": text, "image_encoder": vision}
    return {"ip-adapter-sd15": {**common, "unet": {**_UNET, "cross_attention_dim": 32}},
            "ip-adapter-sdxl": {**common, "unet": _SDXL_UNET, "text_encoder_2": text}}


TINY_IP_ADAPTER = _tiny()
_LAYOUT = {"ip-adapter-sd15": ("StableDiffusionPipeline", "models", "ip-adapter_sd15.safetensors"),
           "ip-adapter-sdxl": ("StableDiffusionXLPipeline", "sdxl_models",
                               "ip-adapter_sdxl_vit-h.safetensors")}


def _base_pipeline(kind: str, cfg: dict, tokenizer, seed: int, device):
    """The base pipeline with random weights (each component its own seed offset)."""
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.fixtures import _text_config

    builders = {"unet": lambda: UNet2DConditionModel(**cfg["unet"]),
                "vae": lambda: AutoencoderKL(**cfg["vae"]),
                "text_encoder": lambda: CLIPTextModel(_text_config(cfg["text_encoder"], tokenizer))}
    if "text_encoder_2" in cfg:
        builders["text_encoder_2"] = lambda: CLIPTextModelWithProjection(
            _text_config(cfg["text_encoder_2"], tokenizer))
    parts = {}
    with torch.device(device):
        for offset, (name, build) in enumerate(builders.items()):
            torch.manual_seed(seed + offset)
            parts[name] = build().eval()
    _narrow_posterior(parts["vae"])
    if kind == "ip-adapter-sdxl":
        scheduler = EulerDiscreteScheduler(timestep_spacing="leading", **_SCHEDULER)
        parts.update(tokenizer_2=tokenizer)
    else:
        scheduler = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **_SCHEDULER)
        parts.update(safety_checker=None, requires_safety_checker=False)
    pipeline_class = getattr(diffusers, _LAYOUT[kind][0])
    return pipeline_class(tokenizer=tokenizer, scheduler=scheduler, feature_extractor=None,
                          image_encoder=None, **parts)


def _narrow_posterior(vae) -> None:
    """A trained VAE encodes almost deterministically (img2img samples its posterior): a log
    variance of -12 instead of the random encoder's ~0, whose samples would be noise."""
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels:] = -12.0


def adapter_state_dict(unet, embedding_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for ``unet`` in h94's key names and shapes.

    ``image_proj.proj`` maps an embedding to `IMAGE_TOKENS` tokens of the UNet's
    cross-attention width; ``ip_adapter.{2k+1}.to_k_ip``/``to_v_ip`` map those tokens into the
    k-th cross-attention layer (its inner width), as `nn.Linear` initialises them.
    """
    width = unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(seed)

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        bound = in_features ** -0.5
        return (torch.rand(out_features, in_features, generator=g) * 2 - 1) * bound

    state = {"image_proj.proj.weight": linear(width * IMAGE_TOKENS, embedding_dim),
             "image_proj.proj.bias": torch.zeros(width * IMAGE_TOKENS),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    cross = [name[: -len(".processor")] for name in unet.attn_processors if name.endswith("attn2.processor")]
    for k, name in enumerate(cross):
        inner = unet.get_submodule(name).to_k.out_features
        state[f"ip_adapter.{2 * k + 1}.to_k_ip.weight"] = linear(inner, width)
        state[f"ip_adapter.{2 * k + 1}.to_v_ip.weight"] = linear(inner, width)
    return {k: v.to(unet.device).contiguous() for k, v in state.items()}


def _write_adapter(kind: str, directory: Path, unet, encoder, seed: int, dtype) -> None:
    """h94/IP-Adapter's layout: the encoder in models/image_encoder, the weights beside."""
    from safetensors.torch import save_file

    _, subfolder, weights = _LAYOUT[kind]
    encoder_dir = directory / "models" / "image_encoder"
    (encoder.to(dtype) if dtype is not None else encoder).save_pretrained(encoder_dir,
                                                                          safe_serialization=True)
    state = adapter_state_dict(unet, encoder.config.projection_dim, seed)
    (directory / subfolder).mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) if dtype is not None else v for k, v in state.items()},
              str(directory / subfolder / weights))


def write_ip_adapter_model(kind: str, directory: str | os.PathLike, *, config: dict | None = None,
                           seed: int = 0, images: int | None = None, device="cpu",
                           dtype: torch.dtype | None = None, zero_out: bool = False):
    """Write a random-weight IP-Adapter model of ``kind`` (`IP_ADAPTER_KINDS`) into ``directory``:
    ``base/`` and ``IP-Adapter/``. Options as `pipelines.fixtures.write_model`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipelines.fixtures import (
        STATS_IMAGES,
        FixtureModel,
        _feature_extractor,
        _zero_out,
        finish_files,
        fixture_images,
        image_embeddings,
        param_counts,
        write_tokenizer,
    )

    if kind not in IP_ADAPTER_KINDS:
        raise ValueError(f"unknown IP-Adapter fixture kind {kind!r}; known: {', '.join(IP_ADAPTER_KINDS)}")
    config = copy.deepcopy(TINY_IP_ADAPTER[kind] if config is None else config)
    directory = Path(directory)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(Path(tmp) / "tokenizer")
        pipe = _base_pipeline(kind, config, tokenizer, seed, device)
        if zero_out:
            _zero_out(pipe.unet)
        with torch.device(device):
            torch.manual_seed(seed + 3)
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config["image_encoder"])).eval()
        side = config["image_encoder"]["image_size"]
        parts = {"image_encoder": encoder, "feature_extractor": _feature_extractor(side)}
        embeddings = image_embeddings(parts, fixture_images(images or STATS_IMAGES, seed=seed,
                                                            size=min(side, 64)))
        counts = param_counts({**pipe.components, "image_encoder": encoder})
        if dtype is not None:
            pipe.to(dtype=dtype)
        pipe.save_pretrained(directory / "base", safe_serialization=True)
        _write_adapter(kind, directory / "IP-Adapter", pipe.unet, encoder, seed + 7, dtype)
        finish_files(directory, Path(tmp) / "tokenizer")
    return FixtureModel(path=directory, embeddings=embeddings, param_counts=counts)

