#!/usr/bin/env python
"""IP-Adapter benchmarks: Stable Diffusion 1.5 and SDXL with h94's ViT-H adapter.

    python bench/ip_adapter.py --flops    # CPU, ~1 min: SD 1.5 at 512 px, SDXL at 1024 px (meta device)
    python bench/ip_adapter.py --quick    # CPU, a few min: overhead vs stock diffusers, batching
    python bench/ip_adapter.py --smoke    # seconds: the --quick code path, tiny (for tests)
    python bench/ip_adapter.py --full     # GPU: full-size SD 1.5 and SDXL, fp16, random weights

The same conventions as `bench/run.py` (side-by-side contenders, medians, ratios only on a
shared machine; a human-readable table, then one JSON line). The stock contender is
diffusers' own `StableDiffusionPipeline` / `StableDiffusionXLPipeline` on the same
components, one frame per call (the only batch at which the stock pipelines condition
each frame on its own ``ip_adapter_image_embeds``, see `pipelines.families.ip_adapter`), fed
the embeddings the engine computes, with diffusers' zero negative.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.models import _CLIP_L_TEXT, _SD_VAE, _VIT_H14, CLIP_VOCAB  # noqa: E402
from bench.run import SEED, _env, _generated_images, _json_line, _max_diff, _progress, _quiet, _table  # noqa: E402
from bench.timing import count_flops, median, side_by_side  # noqa: E402

__all__ = ["ip_adapter_configs", "ip_adapter_flops", "stock_ip_adapter_frame", "stock_pipeline"]

EXIT_NO_GPU = 2
OVERHEAD_GOAL = 1.05

# -- configurations -----------------------------------------------------------------------
# stable-diffusion-v1-5/stable-diffusion-v1-5's UNet (860 M) and CLIP ViT-L/14 text tower.
_SD15_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
              "block_out_channels": (320, 640, 1280, 1280),
              "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
              "attention_head_dim": 8, "cross_attention_dim": 768}
# stabilityai/stable-diffusion-xl-base-1.0's UNet (2.6 B) and its second text tower
# (OpenCLIP ViT-bigG/14's, 1280-d pooled projection).
_SDXL_UNET = {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
              "block_out_channels": (320, 640, 1280),
              "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
              "cross_attention_dim": 2048, "use_linear_projection": True,
              "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
              "projection_class_embeddings_input_dim": 2816}
_BIGG_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu",
              "max_position_embeddings": 77, "vocab_size": CLIP_VOCAB}
_SDXL_L_TEXT = {**_CLIP_L_TEXT, "projection_dim": 768}


def ip_adapter_configs(base: str, scale: str = "full") -> dict:
    """Configurations for `pipelines.fixtures_ip_adapter.write_ip_adapter_model`.

    ``base``: "sd15" or "sdxl". ``scale``: "full" (the published architectures, ViT-H/14),
    "quick" (SD 1.5's block types and layer counts with 1/10 of the channels, a 128 px
    frame, a small ViT) or "smoke" (the tiny test fixture).
    """
    from pipelines.fixtures_ip_adapter import TINY_IP_ADAPTER

    if scale == "smoke":
        return copy.deepcopy(TINY_IP_ADAPTER[f"ip-adapter-{base}"])
    if scale == "quick" and base == "sd15":
        return {"unet": {**_SD15_UNET, "sample_size": 16, "block_out_channels": (32, 64, 128, 128),
                         "norm_num_groups": 8, "cross_attention_dim": 64},
                "vae": {**_SD_VAE, "block_out_channels": (16, 32, 32, 32), "norm_num_groups": 8,
                        "layers_per_block": 1},
                "text_encoder": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                 "num_attention_heads": 4, "max_position_embeddings": 77,
                                 "vocab_size": 1024},
                "image_encoder": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
                                  "num_attention_heads": 4, "image_size": 224, "patch_size": 14,
                                  "projection_dim": 64}}
    if scale != "full":
        raise ValueError(f"unknown scale {scale!r} for {base!r}; known: full, quick (sd15), smoke")
    vae = {**_SD_VAE, "scaling_factor": 0.13025} if base == "sdxl" else dict(_SD_VAE)
    if base == "sdxl":
        return {"unet": copy.deepcopy(_SDXL_UNET), "vae": vae, "text_encoder": dict(_SDXL_L_TEXT),
                "text_encoder_2": dict(_BIGG_TEXT), "image_encoder": dict(_VIT_H14)}
    return {"unet": copy.deepcopy(_SD15_UNET), "vae": vae, "text_encoder": dict(_CLIP_L_TEXT),
            "image_encoder": dict(_VIT_H14)}


# -- --flops: full size on the meta device --------------------------------------------------
def _unet_with_adapter(cfg: dict, embedding_dim: int):
    """A meta-device UNet with IP-Adapter attention, loaded by diffusers' `load_ip_adapter`
    (from a state dict in h94's layout, through a pipeline holding only the UNet)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from pipelines.fixtures_ip_adapter import adapter_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    flat = adapter_state_dict(unet, embedding_dim)
    state = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")}
             for part in ("image_proj", "ip_adapter")}
    with torch.device("meta"):
        holder = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                         scheduler=None, safety_checker=None, feature_extractor=None,
                                         image_encoder=None, requires_safety_checker=False)
        holder.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    return unet


def _unet_step(unet, side: int, sdxl: bool) -> int:
    """FLOPs of one UNet call with guidance (batch 2) at ``side`` px: 77 text tokens and the
    adapter's image tokens (SDXL: plus its pooled text and time ids)."""
    ctx, dim = unet.config.cross_attention_dim, unet.encoder_hid_proj.image_projection_layers[0]
    added = {"image_embeds": [torch.empty(2, 1, dim.image_embeds.in_features)]}
    if sdxl:
        added.update(text_embeds=torch.empty(2, 1280), time_ids=torch.empty(2, 6))
    return count_flops(lambda: unet(torch.empty(2, 4, side // 8, side // 8), torch.tensor(999),
                                    encoder_hidden_states=torch.empty(2, 77, ctx),
                                    added_cond_kwargs=added))[0]


def _components_flops(base: str) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = ip_adapter_configs(base, "full")
    sdxl, full = base == "sdxl", (1024 if base == "sdxl" else 512)
    unet = _unet_with_adapter(cfg["unet"], cfg["image_encoder"]["projection_dim"])
    with torch.device("meta"), torch.no_grad():
        vae = AutoencoderKL(**cfg["vae"])
        texts = [CLIPTextModel(CLIPTextConfig(**cfg[k], eos_token_id=2))
                 for k in ("text_encoder", "text_encoder_2") if k in cfg]
        out = {f"{base}_unet_step_cfg_{side}px": _unet_step(unet, side, sdxl) for side in (full, full // 2)}
        for side in (full, full // 2):
            latents = torch.empty(1, 4, side // 8, side // 8)
            out[f"{base}_vae_decode_{side}px"] = count_flops(lambda latents=latents: vae.decode(latents))[0]
        out[f"{base}_text_encoders"] = sum(count_flops(lambda t=t: t(torch.zeros(2, 77, dtype=torch.long)))[0]
                                          for t in texts)
        if not sdxl:
            vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
            out["vit_h14_encode"] = count_flops(lambda: vit(torch.empty(1, 3, 224, 224)))[0]
    return out


def ip_adapter_flops() -> dict:
    """TFLOP of one call of each full-size component, and per frame and preview of each preset.

    A frame: the preset's UNet calls with guidance (SD 1.5's PNDM scheduler takes steps + 1),
    the prompt and negative through the text encoders, one VAE decode and one ViT-H/14
    encode (the engine's readout of the frame). The preview: half the side, its steps.
    """
    from pipelines.presets import PRESETS

    counts = {**_components_flops("sd15"), **_components_flops("sdxl")}
    t = {k: v / 1e12 for k, v in counts.items()}
    for base, calls_extra in (("sd15", 1), ("sdxl", 0)):
        p = PRESETS[f"ip-adapter-{base}"]
        full, half = p.resolution, p.preview_resolution
        fixed = t[f"{base}_text_encoders"] + t["vit_h14_encode"]
        t[f"{base}_frame_{full}px"] = ((p.steps + calls_extra) * t[f"{base}_unet_step_cfg_{full}px"]
                                       + t[f"{base}_vae_decode_{full}px"] + fixed)
        t[f"{base}_preview_{half}px"] = ((p.preview_steps + calls_extra) * t[f"{base}_unet_step_cfg_{half}px"]
                                         + t[f"{base}_vae_decode_{half}px"] + fixed)
    return {key: round(v, 4) for key, v in t.items()}


def run_flops(args) -> int:
    start = time.perf_counter()
    tflop = ip_adapter_flops()
    _table("IP-Adapter full-size FLOPs per call (meta device, torch.utils.flop_counter)",
           [(k, f"{v:.4f}") for k, v in tflop.items()])
    frames = [k for k in tflop if "_frame_" in k or "_preview_" in k]
    _table(f"Floors at {args.achievable_tflops:g} TFLOP/s (large fp16 matmuls on an H100)",
           [(k, f"{tflop[k]:.2f} TFLOP", f"floor {tflop[k] / args.achievable_tflops * 1000:.1f} ms")
            for k in frames])
    _json_line({"mode": "ip-adapter-flops", "tflop": tflop, "achievable_tflops": args.achievable_tflops,
                "wall_s": round(time.perf_counter() - start, 1)})
    return 0


# -- --quick / --smoke / --full: ours against the stock pipeline ------------------------------
def stock_pipeline(vp):
    """diffusers' stock pipeline class on the loaded model's components (no weights copied)."""
    import diffusers

    sdxl = isinstance(vp.diffusers_pipe, diffusers.StableDiffusionXLPipeline)
    stock_cls = diffusers.StableDiffusionXLPipeline if sdxl else diffusers.StableDiffusionPipeline
    stock = stock_cls(**vp.diffusers_pipe.components, **({} if sdxl else {"requires_safety_checker": False}))
    stock.set_progress_bar_config(disable=True)
    return stock


def stock_ip_adapter_frame(stock, vp, embedding: torch.Tensor, seed: int, settings):
    """One frame from the stock pipeline (`stock_pipeline`): what a user without us would
    call, with diffusers' zero negative when guidance is on."""
    emb = embedding.reshape(1, 1, -1).to(vp.device, vp.dtype)
    if settings.guidance_scale > 1.0:
        emb = torch.cat([torch.zeros_like(emb), emb])
    stock.set_ip_adapter_scale(settings.adapter_scale)
    width, height = settings.size
    return stock(prompt=settings.prompt, ip_adapter_image_embeds=[emb], height=height, width=width,
                 num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def _write(base: str, scale: str, directory: Path, device: str, dtype) -> Path:
    from pipelines.fixtures_ip_adapter import write_ip_adapter_model
    from vslerp_app.stats import STATS_FILENAME, compute_stats

    written = write_ip_adapter_model(f"ip-adapter-{base}", directory, config=ip_adapter_configs(base, scale),
                                     images=48, device=device, dtype=dtype, zero_out=scale == "full")
    compute_stats(written.embeddings, whitening=False, encoder="random CLIP vision tower (benchmark)",
                  dataset="generated images").save(written.path / STATS_FILENAME)
    return written.path


def _measure(vp, frames: int, reps: int, steps: dict, device: str) -> dict:
    """Ours one frame per batch (the stock pipeline's work) and batched, against the stock
    pipeline per frame, fed the engine's embeddings; frames compared pixel by pixel."""
    source, target = _generated_images(2, 256)
    thetas = np.linspace(0.0, 1.0, frames).tolist()
    settings = vp.settings_for(False, **steps)
    embeddings = vp.interpolate(source, target, thetas, 0.0)[1]
    stock = stock_pipeline(vp)
    inner: list[float] = []  # seconds inside the diffusers pipeline's __call__ during one of ours
    outside: list[float] = []  # seconds of ours spent outside it (the engine), per run

    def ours_per_frame():
        inner.clear()
        start = time.perf_counter()
        frames_ = vp.generate(source, target, thetas, 0.0, SEED, max_batch=1, **steps)
        outside.append(time.perf_counter() - start - sum(inner))
        return frames_

    contenders = {
        "ours_per_frame": ours_per_frame,
        "ours_batched": lambda: vp.generate(source, target, thetas, 0.0, SEED, max_batch=frames, **steps),
        "stock_per_frame": lambda: [stock_ip_adapter_frame(stock, vp, e, SEED, settings) for e in embeddings],
    }
    _progress(f"{frames}-frame sweep at {settings.size[0]} px, {settings.steps} steps: ours vs stock, "
              f"{reps} repetitions")
    pipe_class = type(vp.diffusers_pipe)  # ours: diffusers' __call__, inherited unchanged
    call = pipe_class.__call__

    def timed_call(self, *a, **k):
        start = time.perf_counter()
        try:
            return call(self, *a, **k)
        finally:
            inner.append(time.perf_counter() - start)

    pipe_class.__call__ = timed_call
    try:
        t, res = side_by_side(contenders, reps, device, warmup=True)
    finally:
        pipe_class.__call__ = call
    ours, stock = median(t["ours_per_frame"]), median(t["stock_per_frame"])
    return {"frames": frames, "steps": settings.steps, "side": settings.size[0],
            "overhead_ratio": round(ours / stock, 4),
            "overhead_ratio_per_rep": [round(a / b, 4) for a, b in
                                       zip(t["ours_per_frame"], t["stock_per_frame"], strict=True)],
            # What the engine adds around the pipeline calls (encode, Eq. 12, readouts): the
            # overhead a busy machine's noise does not swamp.
            "engine_share_outside_pipeline_call": round(median(outside[-reps:]) / ours, 5),
            "batch_speedup_vs_stock": round(stock / median(t["ours_batched"]), 3),
            "ours_s_per_frame": round(ours / frames, 4), "stock_s_per_frame": round(stock / frames, 4),
            "max_pixel_diff_vs_stock": _max_diff([f.image for f in res["ours_per_frame"]],
                                                 res["stock_per_frame"]),
            "max_pixel_diff_batched_vs_single": _max_diff([f.image for f in res["ours_batched"]],
                                                          [f.image for f in res["ours_per_frame"]])}


def run_cpu(args) -> int:
    from vslerp_app import load_pipeline

    smoke = args.mode == "smoke"
    wall = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vslerp-bench-ipa-") as tmp:
        for base in (("sd15", "sdxl") if smoke else ("sd15",)):
            model = _write(base, "smoke" if smoke else "quick", Path(tmp) / base, "cpu", None)
            vp = load_pipeline(model, device="cpu", dtype=torch.float32)
            rows[base] = _measure(vp, frames=2 if smoke else 4, reps=1 if smoke else 3,
                                  steps={"steps": 2 if smoke else 20}, device="cpu")
    _table("IP-Adapter on the CPU: ours vs stock diffusers, same embeddings",
           [(base, f"overhead {r['overhead_ratio']:.3f} (goal <= {OVERHEAD_GOAL})",
             f"engine share {r['engine_share_outside_pipeline_call']:.4f}",
             f"batched {r['batch_speedup_vs_stock']:.2f}x stock",
             f"max px diff {r['max_pixel_diff_vs_stock']}")
            for base, r in rows.items()])
    _json_line({"mode": f"ip-adapter-{args.mode}", "env": _env("cpu"), "results": rows,
                "overhead_goal": OVERHEAD_GOAL, "wall_s": round(time.perf_counter() - wall, 1)})
    return 0


def run_full(args) -> int:
    from vslerp_app import load_pipeline

    if not torch.cuda.is_available():
        print("bench/ip_adapter.py --full needs a CUDA GPU (full-size SD 1.5 and SDXL in fp16); none "
              "is available here. On a CPU run --quick (ratios) or --flops (full-size FLOPs).",
              file=sys.stderr)
        return EXIT_NO_GPU
    wall = time.perf_counter()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vslerp-bench-ipa-") as tmp:
        for base in ("sd15", "sdxl"):
            _progress(f"{base}: building full-size random weights on the GPU")
            model = _write(base, "full", Path(tmp) / base, "cuda", torch.float16)
            vp = load_pipeline(model, device="cuda", dtype=torch.float16, max_batch=args.frames)
            full = vp.settings_for(False)
            rows[base] = _measure(vp, frames=args.frames, reps=args.reps, steps={}, device="cuda")
            rows[base]["resolution"] = full.resolution
            del vp
            torch.cuda.empty_cache()
    _table("IP-Adapter on the GPU (fp16, random weights): ours vs stock diffusers",
           [(base, f"{r['ours_s_per_frame']:.3f} s/frame", f"overhead {r['overhead_ratio']:.3f}",
             f"batched {r['batch_speedup_vs_stock']:.2f}x") for base, r in rows.items()])
    _json_line({"mode": "ip-adapter-full", "env": _env("cuda"), "results": rows,
                "wall_s": round(time.perf_counter() - wall, 1)})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    for name in ("flops", "quick", "smoke", "full"):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    parser.add_argument("--achievable-tflops", type=float, default=790.0,
                        help="matmul rate for the --flops floors (default: an H100's fp16)")
    parser.add_argument("--frames", type=int, default=8, help="--full: frames per sweep and batch")
    parser.add_argument("--reps", type=int, default=3, help="--full: repetitions")
    args = parser.parse_args(argv)
    _quiet()
    return {"flops": run_flops, "quick": run_cpu, "smoke": run_cpu, "full": run_full}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
