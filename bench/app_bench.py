#!/usr/bin/env python
"""vSLERP Studio's app as a user meets it: the running server through `gradio_client`.

    python bench/app_bench.py                # CPU, a few minutes: the quick-scale Karlo model
    python bench/app_bench.py --scale smoke  # seconds: the same code path, tiny

Launches `python app.py --model DIR --max-batch 4` on a random-weight Karlo-shaped model
(`bench/models.py`, scale `quick`) and measures, side by side in each repetition:

- streaming: time to the first frame of a 16-frame theta sweep (4 batches of 4) over time
  to the whole sequence, files included (goal <= 0.25);
- the frame cache: a repeated `/preview` over the first one (goal <= 0.02); the same repeat
  through the plain REST API (`POST /gradio_api/call/preview`, files uploaded each time)
  shows how much of the repeat is gradio_client's own polling;
- the app's overhead: a `/preview` round trip (upload, queue, render, readouts, download)
  over the same frame rendered by the engine alone in this process (goal <= 1.15); the
  render's own seconds inside the app (its readouts' ``seconds``) over the engine's show
  how much of it is transport.

Each repetition uses a new seed, so the first `/preview` and the sequence are never cached.
Prints a table, then as its last line one JSON object. Medians of per-repetition ratios; on
a shared machine only the ratios mean something. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

EXAMPLES = ROOT / "examples"
SOURCE, TARGET = EXAMPLES / "chelsea.jpg", EXAMPLES / "rocket.jpg"
SEQUENCE_FRAMES, MAX_BATCH = 16, 4
GOALS = {"first_frame_ratio": 0.25, "cached_preview_ratio": 0.02, "preview_overhead_ratio": 1.15}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(model_dir: Path, work: Path):
    """`python app.py --model model_dir --max-batch 4` on a free port; yields its url."""
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
           "TMPDIR": str(work), "PYTHONPATH": str(ROOT)}
    env.pop("GRADIO_SERVER_PORT", None)
    log = open(work / "app.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--port", str(port),
                             "--host", "127.0.0.1", "--max-batch", str(MAX_BATCH)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"app.py exited:\n{(work / 'app.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "config", timeout=2):
                break
            if time.monotonic() > deadline:
                raise SystemExit("app.py did not start in 300 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def time_sequence(client, seed: int) -> tuple[float, float]:
    """(seconds to the first frame, seconds to the whole sequence) of a 16-frame theta sweep."""
    from gradio_client import handle_file

    start = time.perf_counter()
    job = client.submit(source=handle_file(SOURCE), target=handle_file(TARGET), sweep="theta",
                        theta_frames=SEQUENCE_FRAMES, alpha=1.0, seed=seed, max_batch=MAX_BATCH,
                        api_name="/sequence")
    first = None
    while not job.done():
        if first is None and any(out[0] for out in job.outputs()):
            first = time.perf_counter() - start
        time.sleep(0.005)
    gallery = job.result()[0]
    whole = time.perf_counter() - start
    if len(gallery) != SEQUENCE_FRAMES:
        raise SystemExit(f"the sequence returned {len(gallery)} frames, not {SEQUENCE_FRAMES}")
    return (whole if first is None else first), whole


def time_previews(client, seed: int) -> tuple[float, float, dict]:
    """(seconds of a first /preview, of the same call again, the first's readouts)."""
    from gradio_client import handle_file

    def call():
        start = time.perf_counter()
        _, readouts = client.predict(source=handle_file(SOURCE), target=handle_file(TARGET), theta=0.5,
                                     alpha=1.0, seed=seed, quality="full", api_name="/preview")
        return time.perf_counter() - start, readouts

    (first, readouts), (again, cached) = call(), call()
    if readouts["cached"] or not cached["cached"]:
        raise SystemExit("the frame cache did not behave: first call cached or the repeat not")
    return first, again, readouts


def time_rest_preview(url: str, defaults: list, seed: int) -> float:
    """A repeated /preview through the REST API: both files uploaded, the call, its result.

    ``defaults`` are the endpoint's parameter defaults (what gradio_client fills in).
    """
    import httpx

    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as http:
        files = []
        for path in (SOURCE, TARGET):
            with open(path, "rb") as f:
                uploaded = http.post("gradio_api/upload", files={"files": (path.name, f, "image/jpeg")})
            files.append({"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}})
        data = [*files, 0.5, 1.0, seed, "full", *defaults[6:]]  # source, target, theta, alpha, seed, quality
        event = http.post("gradio_api/call/preview", json={"data": data}).json()["event_id"]
        with http.stream("GET", f"gradio_api/call/preview/{event}") as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data:")]
    seconds = time.perf_counter() - start
    if '"cached": true' not in lines[-1]:
        raise SystemExit(f"the REST repeat was not served from the frame cache: {lines[-1][:200]}")
    return seconds


def time_engine(pipe, seed: int) -> float:
    """The same frame as a first /preview, by the engine alone in this process."""
    start = time.perf_counter()
    pipe.generate(str(SOURCE), str(TARGET), 0.5, 1.0, seed=seed)
    return time.perf_counter() - start


def one_repetition(url: str, client, pipe, seed: int, rotate: int, defaults: list) -> dict:
    """Seconds of each measurement, in an order rotated per repetition (a slow patch of the
    machine hits each alike)."""
    row: dict[str, float] = {}

    def engine():
        row["engine"] = time_engine(pipe, seed)

    def previews():
        row["preview"], row["cached"], readouts = time_previews(client, seed)
        row["preview_in_server"] = readouts["seconds"]  # the render inside the app, without transport
        row["cached_rest"] = time_rest_preview(url, defaults, seed)

    def sequence():
        row["first_frame"], row["sequence"] = time_sequence(client, seed)

    steps = [engine, previews, sequence]
    k = rotate % len(steps)
    for step in steps[k:] + steps[:k]:
        step()
    return row


def measure(url: str, model_dir: Path, reps: int) -> dict:
    from gradio_client import Client

    from vslerp_app import load_pipeline

    client = Client(url, verbose=False, download_files=False)
    pipe = load_pipeline(model_dir, max_batch=MAX_BATCH)
    time_engine(pipe, 0)  # warm-up (the engine caches the inputs' embeddings; so does the app)
    time_previews(client, 0)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/preview"]
    defaults = [p["parameter_default"] for p in api["parameters"]]
    rows = [one_repetition(url, client, pipe, seed=1000 + rep, rotate=rep, defaults=defaults)
            for rep in range(reps)]
    ratio = {
        "first_frame_ratio": [r["first_frame"] / r["sequence"] for r in rows],
        "cached_preview_ratio": [r["cached"] / r["preview"] for r in rows],
        "cached_preview_ratio_rest": [r["cached_rest"] / r["preview"] for r in rows],
        "preview_overhead_ratio": [r["preview"] / r["engine"] for r in rows],
        "preview_in_server_ratio": [r["preview_in_server"] / r["engine"] for r in rows],
    }
    seconds = {k: statistics.median(r[k] for r in rows)
               for k in ("first_frame", "sequence", "preview", "preview_in_server", "cached", "cached_rest",
                         "engine")}
    return {"ratios": {k: round(statistics.median(v), 4) for k, v in ratio.items()},
            "per_rep": {k: [round(x, 4) for x in v] for k, v in ratio.items()},
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--scale", choices=("quick", "smoke"), default="quick")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)

    from bench.models import write_pipeline

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vslerp-app-bench-") as tmp:
        work = Path(tmp)
        model_dir, params = write_pipeline("karlo", args.scale, work / "model")
        with running_app(model_dir, work) as url:
            result = measure(url, model_dir, args.reps)
    result.update(mode=f"app-{args.scale}", reps=args.reps, goals=GOALS, max_batch=MAX_BATCH,
                  sequence_frames=SEQUENCE_FRAMES, parameters_m=round(sum(params.values()) / 1e6, 1),
                  machine=f"{platform.machine()}, {os.cpu_count()} cpus",
                  wall_s=round(time.perf_counter() - start))
    print(f"vSLERP Studio app benchmark ({args.scale} Karlo, {args.reps} repetitions, medians)")
    for name, value in result["ratios"].items():
        goal = f"goal <= {GOALS[name]}" if name in GOALS else "(where the time goes)"
        print(f"  {name:26s} {value:8.4f}   {goal}")
    for name, value in result["seconds"].items():
        print(f"  {name + ' s':26s} {value:8.3f}")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
