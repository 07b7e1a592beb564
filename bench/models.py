"""Benchmark pipelines: Karlo and Stable unCLIP architectures at full size or scaled down.

Everything is the real diffusers/transformers class with random weights, written to a
directory in the hub layout and loaded back through `vslerp_app.load_pipeline`, so a
benchmark exercises the same code path as a user's model.

- ``karlo_configs("full")``: the published Karlo configurations. Decoder and both
  super-resolution UNets as in diffusers' ``scripts/convert_kakao_brain_unclip_to_diffusers.py``
  (DECODER_CONFIG, SUPER_RES_UNET_FIRST_STEPS_CONFIG, SUPER_RES_UNET_LAST_STEP_CONFIG; the
  last-step UNet gets the first's sample_size, which the pipeline never reads), text_proj
  as that script builds it, OpenAI CLIP ViT-L/14 image and text towers.
- ``karlo_configs("quick")``: the same block types, layer counts and 4x super-resolution
  factor, with 1/10 of the channels and 1/4 of the side (16 px decoder, 64 px
  super-resolution) so a frame costs well under a second on a 2-core CPU; the decoder
  and super-resolution keep roughly their full-size share of the FLOPs.
- ``karlo_configs("smoke")``: smaller still, for the test that runs the benchmark.
- ``stable_configs("full")``: stabilityai/stable-diffusion-2-1-unclip (-h) at 768 px: its
  UNet (SD 2.1 768-v with a 2048-d class projection), the SD VAE, OpenCLIP ViT-H/14 image
  tower (1024-d embeddings) and text tower (23 layers, as the repository ships it).
- ``kandinsky_configs("full")``: Kandinsky 2.2 at 768 px: the decoder's image-conditioned
  UNet (Kandinsky 2.1/2.2's shape, 1.25 B parameters; the authors publish 1.22 B), the
  MoVQ (67.8 M; published 67 M), OpenCLIP ViT-bigG/14's vision tower (1.84 B, 1280-d
  embeddings). The prior (PriorTransformer) is never run by us: not built.
- ``kandinsky_configs("quick")``: the same block types and layer counts with 1/8 of the
  channels (the MoVQ 1/4, kept in multiples of 32) and 1/4 of the side (192 px frames, 24
  latent cells); ``"smoke"`` the test
  fixture's.

The configurations are data; the components are built, saved and loaded by
`pipelines.fixtures`, the same builders as the test fixtures. Tokenizers are its tiny BPE
(only the empty prompt is ever encoded; the text towers keep CLIP's 49408-token embedding
table).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

__all__ = ["kandinsky_configs", "karlo_configs", "stable_configs", "write_pipeline", "SCALES"]

SCALES = ("full", "quick", "smoke")
CLIP_VOCAB = 49408

# -- Karlo, full size (diffusers' Karlo conversion script) --------------------------------
_KARLO_DECODER = {
    "sample_size": 64,
    "layers_per_block": 3,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "block_out_channels": (320, 640, 960, 1280),
    "in_channels": 3,
    "out_channels": 6,
    "cross_attention_dim": 1536,
    "class_embed_type": "identity",
    "attention_head_dim": 64,
    "resnet_time_scale_shift": "scale_shift",
}
_KARLO_SUPER_RES = {
    "sample_size": 256,
    "layers_per_block": 3,
    "down_block_types": ("ResnetDownsampleBlock2D",) * 4,
    "up_block_types": ("ResnetUpsampleBlock2D",) * 4,
    "block_out_channels": (320, 640, 960, 1280),
    "in_channels": 6,
    "out_channels": 3,
    "add_attention": False,
}
# openai/clip-vit-large-patch14
_VIT_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "projection_dim": 768, "hidden_act": "quick_gelu"}
_CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu",
                "max_position_embeddings": 77, "vocab_size": CLIP_VOCAB}

# -- Stable unCLIP-h, full size (stabilityai/stable-diffusion-2-1-unclip) ------------------
_SD21_UNCLIP_H_UNET = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2048,  # image embedding (1024) + noise-level embedding
    "use_linear_projection": True,
    "upcast_attention": True,
}
_SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
           "down_block_types": ("DownEncoderBlock2D",) * 4,
           "up_block_types": ("UpDecoderBlock2D",) * 4,
           "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32,
           "sample_size": 768, "act_fn": "silu"}
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K towers (the text tower as SD 2.x ships it: 23 layers)
_VIT_H14 = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
            "projection_dim": 1024, "hidden_act": "gelu"}
_OPENCLIP_H_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                    "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu",
                    "max_position_embeddings": 77, "vocab_size": CLIP_VOCAB}


# -- Kandinsky 2.2, full size (kandinsky-community/kandinsky-2-2-decoder, -prior) ---------
_K22_UNET = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 8,  # noise and learned variance
    "layers_per_block": 3,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "block_out_channels": (384, 768, 1152, 1536),
    "attention_head_dim": 64,
    "cross_attention_dim": 768,
    "encoder_hid_dim": 1280,  # the ViT-bigG/14 image embedding
    "encoder_hid_dim_type": "image_proj",
    "addition_embed_type": "image",
    "class_embed_type": None,
    "resnet_time_scale_shift": "scale_shift",
}
_K22_MOVQ = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
             "down_block_types": ("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
             "up_block_types": ("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
             "block_out_channels": (128, 256, 256, 512), "norm_num_groups": 32, "norm_type": "spatial",
             "num_vq_embeddings": 16384, "vq_embed_dim": 4}
# laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's vision tower
_VIT_BIGG14 = {"hidden_size": 1664, "intermediate_size": 8192, "num_hidden_layers": 48,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
               "projection_dim": 1280, "hidden_act": "gelu"}


def kandinsky_configs(scale: str = "full") -> dict:
    """Configurations of Kandinsky 2.2's components at ``scale`` (see the module doc); the
    prior side (text tower, prior) tiny at every scale: the engine never runs it."""
    from pipelines.fixtures import TINY

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    if scale == "smoke":
        return copy.deepcopy(TINY["kandinsky"])
    unet, movq, vision = copy.deepcopy(_K22_UNET), copy.deepcopy(_K22_MOVQ), dict(_VIT_BIGG14)
    if scale == "quick":
        unet.update(sample_size=24, block_out_channels=(48, 96, 144, 192), attention_head_dim=8,
                    cross_attention_dim=96, norm_num_groups=16, encoder_hid_dim=64)
        # SpatialNorm groups by 32 whatever norm_num_groups says: channels stay multiples of 32
        movq.update(block_out_channels=(32, 32, 32, 64), norm_num_groups=8, num_vq_embeddings=256)
        vision = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "image_size": 224, "patch_size": 14, "projection_dim": 64,
                  "hidden_act": "gelu"}
    tiny = TINY["kandinsky"]
    prior = {**tiny["prior"], "embedding_dim": vision["projection_dim"]}
    text = {**tiny["text_encoder"], "projection_dim": vision["projection_dim"]}
    return {"unet": unet, "movq": movq, "image_encoder": vision, "prior": prior, "text_encoder": text}


def karlo_configs(scale: str = "full") -> dict:
    """Configurations of Karlo's trainable components at ``scale`` (see the module doc)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    dec, sr = copy.deepcopy(_KARLO_DECODER), copy.deepcopy(_KARLO_SUPER_RES)
    vision, text = dict(_VIT_L14), dict(_CLIP_L_TEXT)
    emb = vision["projection_dim"]
    if scale != "full":
        small = scale == "smoke"
        channels = (16, 32, 48, 64) if small else (32, 64, 96, 128)
        emb = 32 if small else 64
        for cfg in (dec, sr):
            cfg["block_out_channels"] = channels
            cfg["norm_num_groups"] = 8
        dec.update(sample_size=8 if small else 16, cross_attention_dim=2 * emb,
                   attention_head_dim=16)
        sr["sample_size"] = 32 if small else 64
        if small:
            dec["layers_per_block"] = sr["layers_per_block"] = 1
        vision = {"hidden_size": 32 if small else 64, "intermediate_size": 128 if small else 256,
                  "num_hidden_layers": 2 if small else 4, "num_attention_heads": 4,
                  "image_size": 64 if small else 224, "patch_size": 16 if small else 14,
                  "projection_dim": emb, "hidden_act": "quick_gelu"}
        text = {"hidden_size": emb, "intermediate_size": 4 * emb, "num_hidden_layers": 2,
                "num_attention_heads": 4, "projection_dim": emb, "hidden_act": "quick_gelu",
                "max_position_embeddings": 77, "vocab_size": 1024}
    text["hidden_size"] = emb  # UnCLIPTextProjModel maps text states of the embedding width
    text_proj = {"clip_embeddings_dim": emb, "time_embed_dim": dec["block_out_channels"][0] * 4,
                 "cross_attention_dim": dec["cross_attention_dim"]}
    return {"decoder": dec, "super_res_first": sr, "super_res_last": dict(sr),
            "text_proj": text_proj, "image_encoder": vision, "text_encoder": text}


def stable_configs(scale: str = "full") -> dict:
    """Configurations of Stable unCLIP-h's trainable components (full size only)."""
    if scale != "full":
        raise ValueError("Stable unCLIP configurations exist at full size only "
                         "(the tiny one is pipelines.fixtures)")
    return {"unet": copy.deepcopy(_SD21_UNCLIP_H_UNET), "vae": dict(_SD_VAE),
            "image_encoder": dict(_VIT_H14), "text_encoder": dict(_OPENCLIP_H_TEXT),
            "image_normalizer": {"embedding_dim": _VIT_H14["projection_dim"]},
            "scheduler": {"clip_sample": False}}


def write_pipeline(kind: str, scale: str, directory: str | Path, *, device="cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Path, dict]:
    """Build a random-weight pipeline, save it in the hub layout; (directory, parameter counts).

    Weights are initialised on ``device`` (a GPU initialises full size in seconds) and
    saved in ``dtype``; a ``vslerp-stats.safetensors`` beside them (48 generated images, no
    whitening) makes alpha != 0 work. Built by `pipelines.fixtures`, as the test fixtures.
    """
    from pipelines.fixtures import write_model
    from vslerp_app.stats import STATS_FILENAME, compute_stats

    config = {"karlo": lambda: karlo_configs(scale), "stable-unclip": lambda: stable_configs(scale),
              "kandinsky": lambda: kandinsky_configs(scale)}
    if kind not in config:
        raise ValueError(f"unknown kind {kind!r}")
    written = write_model(kind, directory, config=config[kind](), seed=seed, images=48, device=device,
                          dtype=dtype, zero_out=True, embedded_mean="zeros")
    compute_stats(written.embeddings, whitening=False, encoder="random CLIP vision tower (benchmark)",
                  dataset="generated images").save(written.path / STATS_FILENAME)
    return written.path, written.param_counts
