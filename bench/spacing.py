#!/usr/bin/env python
"""How evenly a path moves under each spacing, and what perceptual spacing's preview pass costs.

    python bench/spacing.py                       # the tiny random-weight Karlo fixture, CPU
    python bench/spacing.py --model karlo         # real weights (GPU + hub): the numbers that matter
    python bench/spacing.py --smoke               # seconds: the same code path, tiny (for tests)

One path (a loop through examples/chelsea, astronaut and coffee, alpha 1, one seed) is
rendered with spacing "uniform", "angle" and "perceptual" in one run. For each it prints the
frames' steps as measured on the re-encoded frames (`vslerp_app.smoothness`, the model's
CLIP space): PDV (the steps' standard deviation; lower is more even), smoothness = 1 - Gini
(higher is more even), the largest step over the mean, and the perceptual preview pass's
seconds as a fraction of the full render's. As its last line, one JSON object. On a shared
machine only the ratio means something; see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SPACINGS = ("uniform", "angle", "perceptual")
KEYFRAMES = ("chelsea.jpg", "astronaut.jpg", "coffee.jpg")
SEED = 42


def run(pipe, out: Path, frames: int, sampling: dict) -> dict:
    """Render the path with every spacing; each one's measures and the preview pass's share."""
    from vslerp_app.render import render_path

    keyframes = [ROOT / "examples" / name for name in KEYFRAMES]
    results = {}
    for spacing in SPACINGS:
        m = render_path(pipe, keyframes, out / spacing, frames=frames, alphas=1.0, seed=SEED, loop=True,
                        spacing=spacing, plot=False, contact=False, **sampling)
        measured = m["smoothness"]["model"]
        jump = measured["largest_jump"]
        results[spacing] = {"pdv": measured["pdv"], "smoothness": measured["smoothness"],
                            "ppl": measured["ppl"], "largest_over_mean": jump["times_mean"],
                            "steps_per_segment": m["path"]["steps"],
                            "render_seconds": m["timings"]["render_seconds"]}
        if spacing == "perceptual":
            results[spacing]["preview_pass_seconds"] = m["path"]["measure_seconds"]
    perceptual = results["perceptual"]
    overhead = perceptual["preview_pass_seconds"] / perceptual["render_seconds"]
    return {"frames": frames, "spacings": results, "preview_pass_fraction": overhead}


def _table(result: dict) -> None:
    print(f"{'spacing':<12}{'PDV':>12}{'1 - Gini':>10}{'max/mean':>10}{'PPL':>12}  steps per segment")
    for spacing, r in result["spacings"].items():
        print(f"{spacing:<12}{r['pdv']:>12.4g}{r['smoothness']:>10.3f}{r['largest_over_mean']:>10.2f}"
              f"{r['ppl']:>12.4g}  {r['steps_per_segment']}")
    print(f"perceptual spacing's preview pass: {result['preview_pass_fraction']:.2f} x the full render's "
          "time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="preset or local pipeline directory (default: the tiny fixture)")
    parser.add_argument("--frames", type=int, default=24, help="the loop's frames (default 24)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: CUDA if available)")
    parser.add_argument("--preview", action="store_true",
                        help="render at preview quality, the quality perceptual spacing measures at")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: 6 frames at preview quality")
    args = parser.parse_args(argv)

    from vslerp_app import load_pipeline
    from vslerp_app.fixtures import write_fixture

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_fixture("karlo", Path(tmp) / "tiny-karlo")
        pipe = load_pipeline(model, device=args.device)
        frames = 6 if args.smoke else args.frames
        sampling = {"preview": True} if args.smoke or args.preview else {}
        result = run(pipe, Path(tmp) / "runs", frames, sampling)
    result.update(model=str(args.model or "tiny karlo fixture"),
                  mode="smoke" if args.smoke else "preview" if args.preview else "full")
    _table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
