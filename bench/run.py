#!/usr/bin/env python
"""vSLERP Studio benchmarks: what a frame costs, against the stock pipeline and the hardware.

    python bench/run.py --quick               # CPU, < 3 min: overhead, preview and grid ratios
    python bench/run.py --quick --cpu-model kandinsky-2-2   # the same on a Kandinsky-shaped model
    python bench/run.py --smoke               # seconds: the same code path, tiny (for tests)
    python bench/run.py --flops               # CPU, seconds: full-size FLOP arithmetic (meta device)
    python bench/run.py --full                # GPU: full-size Karlo, Stable unCLIP-h, Kandinsky 2.2, fp16
    python bench/run.py --real karlo          # GPU + hub: real weights, checks only they can show

Every mode prints a human-readable table and, as its last line, one JSON object.
Contenders are timed side by side in one run (order rotated per repetition) and compared
by their medians: on a shared machine only ratios mean something. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from bench.timing import (  # noqa: E402
    count_flops,
    device_peak_tflops,
    measure_matmul_tflops,
    median,
    side_by_side,
)

EXIT_NO_GPU = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SEED = 42  # the vSLERP authors' demo seed

# Goals (issue 6, BENCHMARKS.md).
GOALS = {
    "overhead_ratio": 1.05,  # at most
    "preview_speedup": 3.0,  # at least
    "fraction_of_peak": 0.40,  # at least, batched full Karlo frames
    "karlo_frame_s_h100": 0.250,  # at most
    "preview_s": 0.060,  # at most
    "karlo_batch8_peak_gb": 12.0,  # at most
}


# -- shared helpers ----------------------------------------------------------------------
def _quiet() -> None:
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()


def _env(device: str) -> dict:
    import diffusers
    import transformers

    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "device": device,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info


def _generated_images(n: int, side: int, seed: int = 5) -> list:
    from pipelines.fixtures import fixture_images

    return fixture_images(n, seed=seed, size=side)


def _example_images() -> list[Path]:
    folder = ROOT / "examples"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _max_diff(a: list, b: list) -> int:
    return max(int(np.abs(_pixels(x) - _pixels(y)).max()) for x, y in zip(a, b, strict=True))


def stock_frame(vp, embedding: torch.Tensor, seed: int, settings):
    """One frame from the stock diffusers pipeline: what a user without us would call."""
    emb = embedding.reshape(1, -1).to(vp.device, vp.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    pipe = vp.diffusers_pipe
    if vp.kind == "karlo":
        return pipe(image_embeddings=emb, decoder_num_inference_steps=settings.steps,
                    super_res_num_inference_steps=settings.super_res_steps,
                    decoder_guidance_scale=settings.guidance_scale, generator=generator).images[0]
    if vp.kind == "kandinsky-2-2":  # diffusers' image-variation negative: the zero image's embedding
        width, height = settings.size
        negative = vp.runner.family.negative.to(vp.device, vp.dtype)
        return pipe(image_embeds=emb, negative_image_embeds=negative, height=height, width=width,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, generator=generator).images[0]
    return pipe(image_embeds=emb, prompt="", height=settings.resolution, width=settings.resolution,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                noise_level=settings.noise_level, generator=generator).images[0]


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def _table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    width = max(len(str(r[0])) for r in rows) + 2
    for row in rows:
        print("  " + str(row[0]).ljust(width) + "  ".join(str(c) for c in row[1:]))


def _json_line(result: dict) -> None:
    print(json.dumps(result, sort_keys=True, default=lambda o: str(o)))


# -- full-size FLOP arithmetic on the meta device (CPU, seconds) --------------------------
def _karlo_flops(kc: dict) -> dict:
    from diffusers import UNet2DConditionModel, UNet2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    dec = UNet2DConditionModel(**kc["decoder"])
    sr = UNet2DModel(**kc["super_res_first"])
    vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**kc["image_encoder"]))
    text = CLIPTextModelWithProjection(CLIPTextConfig(**kc["text_encoder"], eos_token_id=2))
    ctx, temb = kc["text_proj"]["cross_attention_dim"], kc["text_proj"]["time_embed_dim"]
    return {
        "karlo_decoder_step": count_flops(lambda: dec(
            torch.empty(1, 3, 64, 64), torch.tensor(999), encoder_hidden_states=torch.empty(1, 81, ctx),
            class_labels=torch.empty(1, temb), attention_mask=torch.ones(1, 81, dtype=torch.bool)))[0],
        "karlo_super_res_step": count_flops(lambda: sr(torch.empty(1, 6, 256, 256), torch.tensor(999)))[0],
        "vit_l14_encode": count_flops(lambda: vit(torch.empty(1, 3, 224, 224)))[0],
        "karlo_text_encoder": count_flops(lambda: text(torch.zeros(1, 77, dtype=torch.long)))[0],
    }


def _stable_flops(sc: dict) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel(**sc["unet"])
    vae = AutoencoderKL(**sc["vae"])
    vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**sc["image_encoder"]))
    dim, ctx = sc["unet"]["projection_class_embeddings_input_dim"], sc["unet"]["cross_attention_dim"]

    def unet_step(side):  # guidance on: the batch doubles
        return count_flops(lambda: unet(torch.empty(2, 4, side // 8, side // 8), torch.tensor(999),
                                        encoder_hidden_states=torch.empty(2, 77, ctx),
                                        class_labels=torch.empty(2, dim)))[0]

    return {
        "stable_h_unet_step_cfg": unet_step(768),
        "stable_h_unet_step_cfg_384px": unet_step(384),
        "stable_h_vae_decode": count_flops(lambda: vae.decode(torch.empty(1, 4, 96, 96)))[0],
        "stable_h_vae_decode_384px": count_flops(lambda: vae.decode(torch.empty(1, 4, 48, 48)))[0],
        "vit_h14_encode": count_flops(lambda: vit(torch.empty(1, 3, 224, 224)))[0],
    }


def _kandinsky_flops(kc: dict) -> dict:
    from diffusers import UNet2DConditionModel, VQModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet, movq = UNet2DConditionModel(**kc["unet"]), VQModel(**kc["movq"])
    vit = CLIPVisionModelWithProjection(CLIPVisionConfig(**kc["image_encoder"]))
    dim = kc["unet"]["encoder_hid_dim"]

    def unet_step(side):  # guidance on (the zero image's embedding): the batch doubles
        return count_flops(lambda: unet(torch.empty(2, 4, side // 8, side // 8), torch.tensor(999),
                                        encoder_hidden_states=None,
                                        added_cond_kwargs={"image_embeds": torch.empty(2, dim)}))[0]

    def decode(side):
        latents = torch.empty(1, 4, side // 8, side // 8)
        return count_flops(lambda: movq.decode(latents, force_not_quantize=True))[0]

    return {
        "kandinsky_unet_step_cfg_768px": unet_step(768), "kandinsky_unet_step_cfg_1024px": unet_step(1024),
        "kandinsky_unet_step_cfg_256px": unet_step(256),
        "kandinsky_movq_decode_768px": decode(768), "kandinsky_movq_decode_1024px": decode(1024),
        "kandinsky_movq_decode_256px": decode(256),
        "vit_bigg14_encode": count_flops(lambda: vit(torch.empty(1, 3, 224, 224)))[0],
    }


def full_size_flops() -> dict:
    """TFLOP of one call of each full-size component, counted on the meta device.

    Nothing is allocated: torch's flop counter sees the shapes only. Karlo: decoder step
    at 64 px (guidance off: batch 1), super-resolution step at 256 px, ViT-L/14 encode,
    text encoder (the empty prompt). Stable unCLIP-h: UNet step at 768 px with guidance
    (batch 2), the same at the 384 px preview, VAE decode, ViT-H/14 encode. Kandinsky 2.2:
    UNet step with guidance at 768 and 1024 px and at the 256 px preview, MoVQ decode at
    each, ViT-bigG/14 encode. Per frame: the preset's step counts, plus one re-encode of
    the frame (the engine's readout).
    """
    from bench.models import kandinsky_configs, karlo_configs, stable_configs
    from pipelines.presets import PRESETS

    with torch.device("meta"), torch.no_grad():
        counts = {**_karlo_flops(karlo_configs("full")), **_stable_flops(stable_configs("full")),
                  **_kandinsky_flops(kandinsky_configs("full"))}
    t = {k: v / 1e12 for k, v in counts.items()}
    k, s = PRESETS["karlo"], PRESETS["stable-unclip-h"]
    t["karlo_frame"] = (k.steps * t["karlo_decoder_step"] + k.super_res_steps * t["karlo_super_res_step"]
                        + t["vit_l14_encode"] + t["karlo_text_encoder"])
    t["karlo_frame_super_res_share"] = k.super_res_steps * t["karlo_super_res_step"] / t["karlo_frame"]
    t["karlo_preview"] = (k.preview_steps * t["karlo_decoder_step"] + t["vit_l14_encode"]
                          + t["karlo_text_encoder"])
    t["stable_h_frame"] = (s.steps * t["stable_h_unet_step_cfg"] + t["stable_h_vae_decode"]
                           + t["vit_h14_encode"])
    t["stable_h_preview"] = (s.preview_steps * t["stable_h_unet_step_cfg_384px"]
                             + t["stable_h_vae_decode_384px"] + t["vit_h14_encode"])
    kd = PRESETS["kandinsky-2-2"]
    for side in (768, 1024):
        t[f"kandinsky_frame_{side}px"] = (kd.steps * t[f"kandinsky_unet_step_cfg_{side}px"]
                                          + t[f"kandinsky_movq_decode_{side}px"] + t["vit_bigg14_encode"])
    t["kandinsky_preview"] = (kd.preview_steps * t["kandinsky_unet_step_cfg_256px"]
                              + t["kandinsky_movq_decode_256px"] + t["vit_bigg14_encode"])
    return {key: round(v, 4) for key, v in t.items()}


def _floor_rows(tflop: dict, tflops_per_s: float) -> list[tuple]:
    return [(name, f"{tflop[name]:.2f} TFLOP", f"floor {tflop[name] / tflops_per_s * 1000:.1f} ms")
            for name in ("karlo_frame", "karlo_preview", "stable_h_frame", "stable_h_preview",
                         "kandinsky_frame_768px", "kandinsky_frame_1024px", "kandinsky_preview")]


def run_flops(args) -> int:
    start = time.perf_counter()
    tflop = full_size_flops()
    _table("Full-size FLOPs per call (meta device, torch.utils.flop_counter)",
           [(k, f"{v:.4f}") for k, v in tflop.items()])
    _table(f"Floors at {args.achievable_tflops:g} TFLOP/s (large fp16 matmuls on an H100)",
           _floor_rows(tflop, args.achievable_tflops))
    _json_line({"mode": "flops", "tflop": tflop, "achievable_tflops": args.achievable_tflops,
                "karlo_frame_floor_ms": round(tflop["karlo_frame"] / args.achievable_tflops * 1000, 1),
                "karlo_preview_floor_ms": round(tflop["karlo_preview"] / args.achievable_tflops * 1000, 1),
                "kandinsky_frame_768px_floor_ms":
                    round(tflop["kandinsky_frame_768px"] / args.achievable_tflops * 1000, 1),
                "wall_s": round(time.perf_counter() - start, 1)})
    return 0


# -- --quick / --smoke: a Karlo-shaped pipeline on the CPU --------------------------------
@dataclass
class Plan:
    scale: str
    frames: int  # theta-sweep length for the overhead ratio
    reps: int
    preview_reps: int
    grid: int  # grid side (grid x grid theta-alpha cells)
    grid_reps: int
    steps: dict = field(default_factory=dict)  # overrides of the preset's full-frame settings
    preview_steps: dict = field(default_factory=dict)
    grid_steps: dict = field(default_factory=dict)
    image_side: int = 256
    full_size_flops: bool = True
    warmup: bool = True  # run every contender once, untimed, first


PLANS = {
    # Preset settings (25 + 7 steps, preview 10) for the overhead and preview ratios; the grid
    # (42 frames a repetition) at 5 + 2 steps to stay within 3 minutes: its ratio comes from
    # deduplication and batching, not from the step count.
    "quick": Plan("quick", frames=8, reps=3, preview_reps=5, grid=5, grid_reps=3,
                  grid_steps={"steps": 5, "super_res_steps": 2}),
    "smoke": Plan("smoke", frames=2, reps=1, preview_reps=1, grid=2, grid_reps=1,
                  steps={"steps": 2, "super_res_steps": 2}, preview_steps={"steps": 2},
                  grid_steps={"steps": 2, "super_res_steps": 2}, image_side=64,
                  full_size_flops=False, warmup=False),
}


# Kandinsky 2.2's preset runs 50 steps at guidance 4 (the UNet twice a step); the quick plan
# times 20 so the run stays within minutes: the ratios compare equal work either way.
KANDINSKY_STEPS = {"quick": ({"steps": 20}, {}, {"steps": 4}),
                   "smoke": ({"steps": 2}, {"steps": 2}, {"steps": 2})}


def cpu_plan(scale: str, model: str) -> Plan:
    """The --quick / --smoke plan for a model: Karlo's as it is, Kandinsky's step counts."""
    plan = PLANS[scale]
    if model != "kandinsky-2-2":
        return plan
    steps, preview, grid = KANDINSKY_STEPS[scale]
    return dataclasses.replace(plan, steps=steps, preview_steps=preview, grid_steps=grid)


def run_cpu(plan: Plan, args) -> int:
    with tempfile.TemporaryDirectory(prefix="vslerp-bench-") as tmp:
        return _run_cpu(plan, args, Path(tmp))


def _measure_overhead(vp, plan: Plan, source, target, thetas: list[float]) -> SimpleNamespace:
    """Our sequence (max_batch=1: the same work) against the stock pipeline per frame, fed the
    embeddings the engine computes (Eq. 12), checked equal frame by frame."""
    inner: list[float] = []  # seconds inside the stock pipeline's __call__ during one of ours
    outside: list[float] = []  # seconds of ours spent in the engine itself, per repetition

    def ours():
        inner.clear()
        start = time.perf_counter()
        frames = vp.generate(source, target, thetas, 0.0, SEED, max_batch=1, **plan.steps)
        outside.append(time.perf_counter() - start - sum(inner))
        return frames

    embeddings = vp.interpolate(source, target, thetas, 0.0)[1]
    settings = vp.settings_for(False, **plan.steps)

    def stock():
        return [stock_frame(vp, e, SEED, settings) for e in embeddings]

    blank = [PIL.Image.new("RGB", (settings.resolution,) * 2)] * len(thetas)

    def reencode():  # the frame-conformity readout alone: re-encode every frame with CLIP
        return vp.encoder.encode_batched(blank, 1)

    if plan.warmup:  # first calls pay one-off kernel set-up: one frame each, untimed
        vp.generate(source, target, thetas[1], 0.0, SEED, max_batch=1, **plan.steps)
        stock_frame(vp, embeddings[1], SEED, settings)
    _progress(f"overhead: {len(thetas)}-frame sweep, ours vs stock, {plan.reps} repetitions")
    pipe_class = type(vp.diffusers_pipe)
    stock_call = pipe_class.__call__

    def timed_call(self, *a, **k):
        start = time.perf_counter()
        try:
            return stock_call(self, *a, **k)
        finally:
            inner.append(time.perf_counter() - start)

    pipe_class.__call__ = timed_call
    try:
        t, res = side_by_side({"ours": ours, "stock": stock, "reencode": reencode}, plan.reps, "cpu",
                              warmup=False)
    finally:
        pipe_class.__call__ = stock_call
    return SimpleNamespace(ours_s=median(t["ours"]), stock_s=median(t["stock"]),
                           reencode_s=median(t["reencode"]), engine_s=median(outside[-plan.reps:]),
                           max_diff=_max_diff([f.image for f in res["ours"]], res["stock"]),
                           per_rep=[a / b for a, b in zip(t["ours"], t["stock"], strict=True)])


def _measure_grid(vp, plan: Plan, source, target) -> SimpleNamespace:
    """A grid in one call (deduplicated, batched) against every cell alone."""
    g_thetas = np.linspace(0.0, 1.0, plan.grid).tolist()
    g_alphas = np.linspace(-1.0, 3.0, plan.grid).tolist()
    cells = [(th, al) for al in g_alphas for th in g_thetas]
    gt, ga = [c[0] for c in cells], [c[1] for c in cells]

    def one_call(max_batch=None):
        return lambda: vp.generate(source, target, gt, ga, SEED, max_batch=max_batch, **plan.grid_steps)

    per_cell = lambda: [vp.generate(source, target, th, al, SEED, **plan.grid_steps)[0]  # noqa: E731
                        for th, al in cells]
    _progress(f"grid: {len(cells)} cells in one call vs one call per cell, {plan.grid_reps} repetitions")
    tg, res = side_by_side({"one_call": one_call(), "one_call_unbatched": one_call(1), "per_cell": per_cell},
                           plan.grid_reps, "cpu",
                           warmup=("one_call",) if plan.warmup else False)  # batches are a new shape
    grid_frames = res["one_call"]
    return SimpleNamespace(
        cells=len(cells), alphas=g_alphas, grid_s=median(tg["one_call"]), cells_s=median(tg["per_cell"]),
        unbatched_s=median(tg["one_call_unbatched"]),
        unique=len({f.embedding.numpy().tobytes() for f in grid_frames}),
        max_diff=_max_diff([f.image for f in grid_frames], [f.image for f in res["per_cell"]]))


def _run_cpu(plan: Plan, args, tmp: Path) -> int:
    from bench.models import write_pipeline
    from vslerp_app import load_pipeline

    wall = time.perf_counter()
    kind = FULL_MODELS[args.cpu_model]
    model_dir, counts = write_pipeline(kind, plan.scale, tmp / f"{kind}-{plan.scale}")
    vp = load_pipeline(model_dir, device="cpu", dtype=torch.float32)
    build_s = time.perf_counter() - wall
    source, target = _generated_images(2, plan.image_side)

    # 1. Overhead against the stock pipeline
    over = _measure_overhead(vp, plan, source, target, np.linspace(0.0, 1.0, plan.frames).tolist())

    # 2. Preview against a full frame (preset settings)
    full = lambda: vp.generate(source, target, 0.5, 0.0, SEED, **plan.steps)  # noqa: E731
    prev = lambda: vp.generate(source, target, 0.5, 0.0, SEED, preview=True, **plan.preview_steps)  # noqa: E731
    _progress(f"preview: full frame vs preview frame, {plan.preview_reps} repetitions")
    tp, _ = side_by_side({"full": full, "preview": prev}, plan.preview_reps, "cpu", warmup=plan.warmup)
    preview = SimpleNamespace(full_s=median(tp["full"]), prev_s=median(tp["preview"]))

    # 3. A grid in one call against every cell alone
    grid = _measure_grid(vp, plan, source, target)

    # 4. FLOPs per frame as torch's counter sees them (this scaled-down pipeline)
    _progress("FLOPs: torch.utils.flop_counter on one full frame and one preview")
    flops = SimpleNamespace(frame=count_flops(full)[0], preview=count_flops(prev)[0],
                            full_size=full_size_flops() if plan.full_size_flops else None)

    result = {"model": args.cpu_model, **_cpu_result(plan, over, preview, grid, flops, counts, build_s)}
    _cpu_tables(plan, over, preview, grid, flops, args)
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    print(f"\nwall {result['wall_s']} s")
    _json_line(result)
    return 0


def _cpu_result(plan: Plan, over, preview, grid, flops, counts: dict, build_s: float) -> dict:
    """The JSON line of --quick / --smoke."""
    n, overhead = plan.frames, over.ours_s / over.stock_s
    result = {
        "mode": plan.scale,
        "overhead_ratio": round(overhead, 4),
        "preview_speedup": round(preview.full_s / preview.prev_s, 3),
        "grid_speedup": round(grid.cells_s / grid.grid_s, 3),
        "overhead_ratio_per_rep": [round(r, 4) for r in over.per_rep],
        "overhead_ratio_median_of_reps": round(median(over.per_rep), 4),
        "engine_share_outside_stock_call": round(over.engine_s / over.ours_s, 5),
        "frames_equal": over.max_diff <= 1,
        "max_pixel_diff_vs_stock": over.max_diff,
        "grid_frames_equal_to_cells": grid.max_diff <= 1,
        "max_pixel_diff_grid_vs_cells": grid.max_diff,
        "grid_cells": grid.cells,
        "grid_unique_frames": grid.unique,
        "grid_ideal_speedup_from_dedup": round(grid.cells / grid.unique, 3),
        "grid_speedup_dedup_only": round(grid.cells_s / grid.unbatched_s, 3),
        "grid_speedup_from_batching": round(grid.unbatched_s / grid.grid_s, 3),
        "seconds": {
            "ours_sweep": round(over.ours_s, 4), "stock_sweep": round(over.stock_s, 4),
            "ours_per_frame": round(over.ours_s / n, 4), "stock_per_frame": round(over.stock_s / n, 4),
            "reencode_per_frame": round(over.reencode_s / n, 5),
            "engine_outside_stock_call_per_frame": round(over.engine_s / n, 5),
            "full_frame": round(preview.full_s, 4), "preview_frame": round(preview.prev_s, 4),
            "grid_one_call": round(grid.grid_s, 3), "grid_per_cell": round(grid.cells_s, 3),
            "grid_one_call_max_batch_1": round(grid.unbatched_s, 3),
            "build": round(build_s, 2),
        },
        "settings": {"frames": n, "reps": plan.reps, "full": plan.steps or "preset (25 + 7 steps)",
                     "preview": plan.preview_steps or "preset (10 decoder steps)",
                     "grid": plan.grid_steps, "grid_alphas": grid.alphas},
        "flops_per_frame": flops.frame,
        "flops_per_preview": flops.preview,
        "achieved_gflops_full_frame": round(flops.frame / preview.full_s / 1e9, 2),
        "params_m": {k: round(v / 1e6, 3) for k, v in counts.items()},
        "goals": {"overhead_ratio_max": GOALS["overhead_ratio"],
                  "preview_speedup_min": GOALS["preview_speedup"]},
        "meets": {"overhead_ratio": overhead <= GOALS["overhead_ratio"],
                  "preview_speedup": preview.full_s / preview.prev_s >= GOALS["preview_speedup"]},
        **_env("cpu"),
    }
    if flops.full_size is not None:
        result["full_size_tflop"] = flops.full_size
    return result


def _cpu_tables(plan: Plan, over, preview, grid, flops, args) -> None:
    """The human-readable tables of --quick / --smoke."""
    n, overhead = plan.frames, over.ours_s / over.stock_s
    full_s, prev_s = preview.full_s, preview.prev_s
    _table(f"vSLERP bench --{plan.scale}: {args.cpu_model}-shaped pipeline, random weights, cpu, "
           f"{torch.get_num_threads()} threads (medians of {plan.reps}/{plan.preview_reps}/{plan.grid_reps})",
           [("measure", "ours", "reference", "ratio", "goal"),
            (f"{n}-frame theta sweep vs stock per frame", _fmt_s(over.ours_s), _fmt_s(over.stock_s),
             f"x{overhead:.3f}", f"<= {GOALS['overhead_ratio']}"),
            ("full frame vs preview frame", _fmt_s(prev_s), _fmt_s(full_s), f"x{full_s / prev_s:.2f}",
             f">= {GOALS['preview_speedup']:g}"),
            (f"{plan.grid}x{plan.grid} grid, one call vs per cell", _fmt_s(grid.grid_s), _fmt_s(grid.cells_s),
             f"x{grid.cells_s / grid.grid_s:.2f}", f"dedup ideal x{grid.cells / grid.unique:.2f}"),
            ("  of which: dedup (one call, max_batch=1)", _fmt_s(grid.unbatched_s), _fmt_s(grid.cells_s),
             f"x{grid.cells_s / grid.unbatched_s:.2f}", ""),
            ("  of which: batching (max_batch=8 vs 1)", _fmt_s(grid.grid_s), _fmt_s(grid.unbatched_s),
             f"x{grid.unbatched_s / grid.grid_s:.2f}", "")])
    _table("checks and costs", [
        ("frames equal to stock (max pixel diff)", f"{over.max_diff}"),
        ("grid frames equal to cells alone (max diff)", f"{grid.max_diff}"),
        ("engine time outside the stock __call__", f"{_fmt_s(over.engine_s / n)}/frame "
         f"({100 * over.engine_s / over.ours_s:.2f}% of ours)"),
        ("  of which re-encode (frame conformity)", f"{_fmt_s(over.reencode_s / n)}/frame"),
        ("FLOPs per frame / preview (this pipeline)",
         f"{flops.frame / 1e9:.2f} / {flops.preview / 1e9:.2f} GFLOP"),
        ("achieved on a full frame", f"{flops.frame / full_s / 1e9:.1f} GFLOP/s"),
    ])
    if flops.full_size is not None:
        _table("full-size arithmetic (meta device)", _floor_rows(flops.full_size, args.achievable_tflops))


# -- --full: full-size architectures on a GPU ---------------------------------------------
FULL_MODELS = {"karlo": "karlo", "stable-unclip-h": "stable-unclip", "kandinsky-2-2": "kandinsky"}
TOGGLES = ("channels_last", "compile", "compile-cudagraphs")


def _unets(vp) -> list:
    p = vp.diffusers_pipe
    if vp.kind == "karlo":
        return [p.decoder, p.super_res_first, p.super_res_last]
    return [p.unet, p.movq if vp.kind == "kandinsky-2-2" else p.vae]


def _apply_toggle(vp, toggle: str) -> None:
    if toggle == "baseline":
        return
    if toggle == "channels_last":
        for m in _unets(vp):
            m.to(memory_format=torch.channels_last)
        return
    mode = "reduce-overhead" if toggle == "compile-cudagraphs" else None  # CUDA graphs / default
    for m in _unets(vp):
        if m is getattr(vp.diffusers_pipe, "vae", None) or m is getattr(vp.diffusers_pipe, "movq", None):
            m.decoder.compile(mode=mode, dynamic=False)  # only its decoder runs per frame
        else:
            m.compile(mode=mode, dynamic=False)


def _measure_toggle(vp, toggle: str, args, source, target, flops: dict) -> dict:
    """One loaded pipeline with one toggle applied: its row of the --full table."""
    n, device = args.frames, args.device
    thetas = np.linspace(0.0, 1.0, n).tolist()
    row: dict = {}
    start = time.perf_counter()
    vp.generate(source, target, thetas, 0.0, SEED)  # warm-up (and compile) at every shape
    vp.generate(source, target, 0.5, 0.0, SEED)
    vp.generate(source, target, 0.5, 0.0, SEED, preview=True)
    row["warmup_s"] = round(time.perf_counter() - start, 2)

    def sequence(batch):
        return lambda: vp.generate(source, target, thetas, 0.0, SEED, max_batch=batch)

    contenders = {"batched": sequence(n), "per_frame": sequence(1)}
    if toggle == "baseline":
        settings = vp.settings_for(False)
        embeddings = vp.interpolate(source, target, thetas, 0.0)[1]
        contenders["stock_per_frame"] = lambda: [stock_frame(vp, e, SEED, settings) for e in embeddings]
    t, res = side_by_side(contenders, args.reps, device, warmup=False)
    for key, values in t.items():
        row[f"{key}_s_per_frame"] = round(median(values) / n, 4)
    if "stock_per_frame" in t:
        row["overhead_ratio"] = round(median(t["per_frame"]) / median(t["stock_per_frame"]), 4)
        row["max_pixel_diff_vs_stock"] = _max_diff([f.image for f in res["per_frame"]],
                                                   res["stock_per_frame"])
    row["max_pixel_diff_batched_vs_single"] = _max_diff([f.image for f in res["batched"]],
                                                        [f.image for f in res["per_frame"]])
    row["batch_speedup"] = round(median(t["per_frame"]) / median(t["batched"]), 3)
    tp, _ = side_by_side({"preview": lambda: vp.generate(source, target, 0.5, 0.0, SEED, preview=True),
                          "single": lambda: vp.generate(source, target, 0.5, 0.0, SEED)},
                         args.preview_reps, device, warmup=False)
    row["preview_s"] = round(median(tp["preview"]), 4)
    row["single_frame_s"] = round(median(tp["single"]), 4)
    if toggle == "baseline":
        if vp.device.type == "cuda":
            torch.cuda.synchronize()
            row["weights_gb"] = round(torch.cuda.memory_allocated() / 1e9, 2)
            for batch in (n, 1):
                torch.cuda.reset_peak_memory_stats()
                vp.generate(source, target, thetas[:batch], 0.0, SEED, max_batch=batch)
                row[f"peak_gb_batch{batch}"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        flops["frame"] = count_flops(lambda: vp.generate(source, target, 0.5, 0.0, SEED))[0]
        flops["preview"] = count_flops(lambda: vp.generate(source, target, 0.5, 0.0, SEED, preview=True))[0]
    if flops:
        rate = flops["frame"] / row["batched_s_per_frame"] / 1e12
        row["achieved_tflops"] = round(rate, 1)
        if args.peak:
            row["fraction_of_peak"] = round(rate / args.peak, 3)
        if args.matmul_tflops:
            row["fraction_of_matmul"] = round(rate / args.matmul_tflops, 3)
    return row


def _full_one(name: str, model_dir: Path, args) -> dict:
    from pipelines import GenerationError
    from vslerp_app import load_pipeline

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    source, target = _generated_images(2, 256 if name == "karlo" else 768)
    out: dict = {"toggles": {}}
    flops: dict = {}
    for toggle in ["baseline", *args.toggles]:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _progress(f"{name}: {toggle}")
        vp = load_pipeline(model_dir, device=args.device, dtype=dtype, max_batch=args.frames)
        _apply_toggle(vp, toggle)
        try:
            out["toggles"][toggle] = _measure_toggle(vp, toggle, args, source, target, flops)
        except (GenerationError, RuntimeError) as e:  # report it, go on with the next toggle
            out["toggles"][toggle] = {"error": f"{type(e).__name__}: {e}"[:500]}
        del vp
    if flops:
        out["flops_per_frame"], out["flops_per_preview"] = flops["frame"], flops["preview"]
    return out


def _write_full(model: str, scale: str, model_dir: Path, args):
    """Random weights for --full: the full-size builders, or for a dry run (--scale) on the CPU
    the scaled-down Karlo / the tiny Stable unCLIP fixture."""
    from bench.models import write_pipeline

    if scale == "full" or model != "stable-unclip-h":
        return write_pipeline(FULL_MODELS[model], scale, model_dir, device=args.device,
                              dtype=torch.float16 if scale == "full" else torch.float32)[1]
    from vslerp_app.fixtures import write_fixture

    write_fixture("stable-unclip", model_dir)
    return None


def run_full(args) -> int:
    cuda = args.device.startswith("cuda")
    if (args.scale == "full" and not cuda) or (cuda and not torch.cuda.is_available()):
        print("bench --full needs a CUDA GPU (full-size Karlo and Stable unCLIP-h in fp16); none is "
              "available here. On a CPU run `python bench/run.py --quick` (ratios) or "
              "`python bench/run.py --flops` (full-size FLOP arithmetic); `--full --scale smoke "
              "--device cpu` only checks this mode's code path.", file=sys.stderr)
        return EXIT_NO_GPU
    if not cuda:
        args.dtype = "fp32"

    wall = time.perf_counter()
    name = torch.cuda.get_device_name() if cuda else _env(args.device)["device_name"]
    args.peak = peak = args.peak_tflops or (device_peak_tflops(name) if cuda else None)
    args.matmul_tflops = achievable = None
    if cuda:
        _progress("measuring what large fp16 matmuls reach here")
        args.matmul_tflops = achievable = round(measure_matmul_tflops(args.device, torch.float16), 1)
    result = {"mode": "full", "scale": args.scale, "peak_tflops": peak, "matmul_tflops_measured": achievable,
              "dtype": args.dtype, "frames": args.frames, "reps": args.reps, "models": {},
              **_env(args.device)}
    weights_root = Path(args.weights_dir or tempfile.mkdtemp(prefix="vslerp-full-"))
    try:
        _full_models(args, weights_root, name, result)
    finally:
        if args.weights_dir is None:
            import shutil

            shutil.rmtree(weights_root, ignore_errors=True)
    karlo = result["models"].get("karlo", {}).get("toggles", {}).get("baseline", {})
    if karlo and "error" not in karlo and cuda and args.scale == "full":
        result["meets"] = {
            "fraction_of_peak": karlo.get("fraction_of_peak", 0) >= GOALS["fraction_of_peak"],
            "preview_s": karlo["preview_s"] <= GOALS["preview_s"],
            f"karlo_batch{args.frames}_peak_gb":
                karlo.get(f"peak_gb_batch{args.frames}", 1e9) <= GOALS["karlo_batch8_peak_gb"],
        }
        if "H100" in name:
            result["meets"]["karlo_frame_s_h100"] = (karlo["batched_s_per_frame"]
                                                     <= GOALS["karlo_frame_s_h100"])
    result["goals"] = GOALS
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    _json_line(result)
    return 0


def _full_models(args, weights_root: Path, name: str, result: dict) -> None:
    for model in args.models:
        model_dir = weights_root / model
        start = time.perf_counter()
        if not any(model_dir.rglob("model_index.json")):
            _progress(f"{model}: writing {args.scale}-size random weights to {model_dir}")
            counts = _write_full(model, args.scale, model_dir, args)
        else:
            counts = None
        entry = {"write_s": round(time.perf_counter() - start, 1)}
        if counts:
            entry["params_m"] = {k: round(v / 1e6, 1) for k, v in counts.items()}
        entry.update(_full_one(model, model_dir, args))
        result["models"][model] = entry
        rows = [("toggle", "batched/frame", "per frame", "stock/frame", "preview", "TFLOP/s",
                 "of peak", "peak GB (8 / 1)")]
        for toggle, r in entry["toggles"].items():
            if "error" in r:
                rows.append((toggle, r["error"][:100]))
                continue
            rows.append((toggle, _fmt_s(r["batched_s_per_frame"]), _fmt_s(r["per_frame_s_per_frame"]),
                         _fmt_s(r.get("stock_per_frame_s_per_frame")), _fmt_s(r["preview_s"]),
                         r.get("achieved_tflops", "-"), r.get("fraction_of_peak", "-"),
                         f"{r.get(f'peak_gb_batch{args.frames}', '-')} / {r.get('peak_gb_batch1', '-')}"))
        _table(f"{model} ({args.scale} size, random weights, {args.dtype}) on {name}: "
               f"{entry.get('flops_per_frame', 0) / 1e12:.1f} TFLOP/frame, "
               f"{entry.get('flops_per_preview', 0) / 1e12:.2f} TFLOP/preview", rows)
        if args.weights_dir is None:
            import shutil

            shutil.rmtree(model_dir, ignore_errors=True)


# -- --real: the real weights (GPU + hub) -------------------------------------------------
def _mad(a, b) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


def _real_checks(vp, photos, sweep, alpha_frames, thetas) -> dict:
    """What only real weights can show: no black frame, smooth along theta, the path followed,
    generated frames more conformal than the real photos (the paper's finding)."""
    frames = sweep + alpha_frames
    stats_px = [(float(_pixels(f.image).mean()), float(_pixels(f.image).std())) for f in frames]
    black = [i for i, (m, s) in enumerate(stats_px) if m < 8 or s < 2]
    neighbours = [_mad(a.image, b.image) for a, b in zip(sweep, sweep[1:], strict=False)]
    far = [_mad(sweep[i].image, sweep[j].image) for i in range(len(sweep))
           for j in range(i + 2, len(sweep))]
    smooth_ratio = float(np.mean(neighbours) / np.mean(far)) if far and np.mean(far) > 0 else None
    v0, v1 = vp.encode(photos[0]), vp.encode(photos[1])
    cos = torch.nn.functional.cosine_similarity
    toward = [float(cos(f.frame_embedding, v1, dim=0) - cos(f.frame_embedding, v0, dim=0)) for f in sweep]
    follows = float(np.corrcoef(thetas, toward)[0, 1]) if len(thetas) > 2 and np.std(toward) > 0 else None
    conformity = None
    if vp.stats is not None:
        real_c = [float(vp.stats.conformity(vp.encode(p))) for p in photos]
        gen_c = [f.frame_conformity for f in frames if f.frame_conformity is not None]
        conformity = {"real_mean": round(float(np.mean(real_c)), 4),
                      "generated_mean": round(float(np.mean(gen_c)), 4),
                      "generated_more_conformal": float(np.mean(gen_c)) > float(np.mean(real_c)),
                      "kind": vp.stats.conformity_kind}
    return {
        "no_black_or_flat_frame": not black, "black_or_flat_frames": black,
        "smoothness_neighbour_vs_far_mad": None if smooth_ratio is None else round(smooth_ratio, 3),
        "smooth_along_theta": smooth_ratio is not None and smooth_ratio < 1.0,
        "frames_follow_theta_corr": None if follows is None else round(follows, 3),
        "frames_follow_theta": follows is not None and follows > 0.5,
        "conformity": conformity,
    }


def run_real(args) -> int:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench --real {args.real} needs a CUDA GPU and the Hugging Face hub; no GPU here "
              "(pass --device cpu to run it anyway, slowly).", file=sys.stderr)
        return EXIT_NO_GPU
    from vslerp_app import load_pipeline
    from vslerp_app.images import load_image

    wall = time.perf_counter()
    start = time.perf_counter()
    vp = load_pipeline(args.real, device=device)
    load_s = time.perf_counter() - start
    paths = _example_images()
    if len(paths) >= 2:
        photos = [load_image(p) for p in paths]
        inputs = f"{len(paths)} images from examples/"
    else:
        photos = _generated_images(4, 256)
        inputs = "generated colour fields (no examples/ images found): the conformity check is moot"
    source, target = photos[0], photos[1]
    thetas = np.linspace(0.0, 1.0, args.frames).tolist()
    alphas = [-1.0, 0.0, 1.0, 2.0, 3.0]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    vp.generate(source, target, 0.5, 0.0, SEED, preview=True)  # warm-up
    start = time.perf_counter()
    sweep = vp.generate(source, target, thetas, 0.0, SEED)
    sync()
    sweep_s = time.perf_counter() - start
    alpha_frames, alpha_s = [], None
    if vp.stats is not None:
        start = time.perf_counter()
        alpha_frames = vp.generate(source, target, 0.5, alphas, SEED)
        sync()
        alpha_s = time.perf_counter() - start
    tp, _ = side_by_side({"preview": lambda: vp.generate(source, target, 0.5, 0.0, SEED, preview=True)},
                      3, device)
    checks = _real_checks(vp, photos, sweep, alpha_frames, thetas)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(sweep):
            f.image.save(out / f"theta-{i:02d}-{f.theta:.3f}.png")
        for i, f in enumerate(alpha_frames):
            f.image.save(out / f"alpha-{i:02d}-{f.alpha:+.2f}.png")

    smooth_ratio, follows = checks["smoothness_neighbour_vs_far_mad"], checks["frames_follow_theta_corr"]
    conformity = checks["conformity"]
    result = {
        "mode": "real", "model": args.real, "inputs": inputs, "stats": vp.stats_note,
        "load_s": round(load_s, 1),
        "seconds": {"theta_sweep_per_frame": round(sweep_s / len(sweep), 4),
                    "alpha_sweep_per_frame": (None if alpha_s is None
                                              else round(alpha_s / len(alpha_frames), 4)),
                    "preview": round(median(tp["preview"]), 4)},
        "checks": checks,
        "frame_conformity": [f.frame_conformity for f in sweep + alpha_frames],
        **_env(device),
    }
    _table(f"--real {args.real} ({inputs})", [
        ("theta sweep", f"{len(sweep)} frames", _fmt_s(sweep_s / len(sweep)) + "/frame"),
        ("alpha sweep", f"{len(alpha_frames)} frames",
         "-" if alpha_s is None else _fmt_s(alpha_s / len(alpha_frames)) + "/frame"),
        ("preview", _fmt_s(result["seconds"]["preview"])),
        ("black or flat frames", str(checks["black_or_flat_frames"] or "none")),
        ("neighbour / far pixel difference",
         "-" if smooth_ratio is None else f"{smooth_ratio:.3f} (< 1: smooth)"),
        ("corr(theta, toward-target)",
         "-" if follows is None else f"{follows:.3f} (near 1: follows the path)"),
        ("conformity real / generated", "-" if conformity is None else
         f"{conformity['real_mean']} / {conformity['generated_mean']} (paper: generated higher)"),
    ])
    result["wall_s"] = round(time.perf_counter() - wall, 1)
    _json_line(result)
    return 0


# -- command line ------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CPU ratios (the default)")
    mode.add_argument("--smoke", action="store_true", help="the quick path, tiny, in seconds")
    mode.add_argument("--flops", action="store_true", help="full-size FLOP arithmetic on the meta device")
    mode.add_argument("--full", action="store_true", help="full-size architectures on a CUDA GPU")
    mode.add_argument("--real", metavar="MODEL",
                      help="real weights on a GPU: karlo, stable-unclip-h, stable-unclip-l (from the hub) "
                           "or a local pipeline directory")
    p.add_argument("--device", default="cuda", help="--full/--real device (default cuda)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"], help="--full dtype")
    p.add_argument("--scale", default="full", choices=["full", "quick", "smoke"],
                   help="--full: architecture size; quick/smoke run anywhere (a code-path check)")
    p.add_argument("--models", nargs="+", default=list(FULL_MODELS), choices=list(FULL_MODELS),
                   help="--full: which architectures")
    p.add_argument("--cpu-model", default="karlo", choices=["karlo", "kandinsky-2-2"],
                   help="--quick/--smoke: the architecture scaled down (default karlo)")
    p.add_argument("--toggles", nargs="*", default=["channels_last", "compile"], choices=TOGGLES,
                   help="--full: variants measured beside the baseline, each on a fresh load")
    p.add_argument("--frames", type=int, default=8, help="--full/--real: sequence length")
    p.add_argument("--reps", type=int, default=3, help="--full: repetitions")
    p.add_argument("--preview-reps", type=int, default=10, help="--full: preview repetitions")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense fp16 peak, TFLOP/s (default: from a table by device name)")
    p.add_argument("--achievable-tflops", type=float, default=790.0,
                   help="--flops/--quick floors: what large fp16 matmuls reach (H100: ~790)")
    p.add_argument("--weights-dir", default=None, help="--full: keep/reuse the random weights here")
    p.add_argument("--out", default=None, help="--real: save the frames here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        return run_full(args)
    if args.real:
        return run_real(args)
    if args.flops:
        return run_flops(args)
    return run_cpu(cpu_plan("smoke" if args.smoke else "quick", args.cpu_model), args)


if __name__ == "__main__":
    sys.exit(main())
