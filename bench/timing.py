"""Timing, FLOP counting and device-peak helpers for the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["side_by_side", "count_flops", "device_peak_tflops", "measure_matmul_tflops",
           "sync", "PEAK_TFLOPS", "median"]

# Nominal dense fp16/bf16 tensor-core peak, TFLOP/s, by a substring of the CUDA device name
# (first match wins, so the more specific names come first). Others: pass --peak-tflops.
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3"); large fp16 matmuls reach ~790
    ("A100", 312.0),
    ("L4", 121.0),
]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median(values) -> float:
    return float(statistics.median(values))


def side_by_side(contenders: dict[str, Callable[[], object]], reps: int, device="cpu", *,
                 warmup: bool | tuple[str, ...] = True) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Wall seconds of each contender, run in turn within every repetition; and its last result.

    The order rotates each repetition, so a slow patch of a shared machine hits every
    contender alike; compare medians (or the ratios per repetition), never single runs.
    With ``warmup`` every contender (or those named) runs once, untimed, first.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, object] = {}
    for name in (names if warmup is True else warmup or ()):
        results[name] = contenders[name]()
    for rep in range(reps):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            start = time.perf_counter()
            results[name] = contenders[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times, results


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """(FLOPs torch's flop counter sees while fn runs, fn's result)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return int(counter.get_total_flops()), out


def device_peak_tflops(name: str) -> float | None:
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def measure_matmul_tflops(device="cuda", dtype=torch.float16, n: int = 8192, iters: int = 20) -> float:
    """What large square matmuls reach on this device (an achievable peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    seconds = time.perf_counter() - start
    return 2 * n**3 * iters / seconds / 1e12
