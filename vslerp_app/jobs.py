"""Many sequences from a jobs file, split over processes (`vslerp render --jobs FILE`).

A jobs file has one JSON object per line: {"source", "target", "theta", "alpha", "seed",
"name", "grid"}, or a path through keyframes: {"keyframes": [...], "frames", "loop",
"spacing", "ease", "alpha", "seed", "name"} (`render_path`). `run_jobs` renders each into
out_dir/<name> with `render_sequence` (or `render_path`), split over processes with
accelerate's `PartialState.split_between_processes`
(`accelerate launch -m vslerp_app render --jobs ...`; on CPU,
`torchrun --nproc_per_node N -m vslerp_app render --jobs ...`); each process loads the
model once on its own device. The main process writes out_dir/jobs.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vslerp_app import paths
from vslerp_app.files import OutputDir, RenderError, describe_os_error
from vslerp_app.manifest import MANIFEST_NAME, now
from vslerp_app.render import render_path, render_sequence
from vslerp_app.specs import SpecError, as_values, check_range, check_seed, combine

__all__ = ["JOBS_SUMMARY_NAME", "Job", "read_jobs", "run_jobs"]

JOBS_SUMMARY_NAME = "jobs.json"


@dataclasses.dataclass
class Job:
    """One line of a jobs file: a sequence to render into out_dir/name."""

    index: int
    name: str
    source: str
    target: str
    theta: object
    alpha: object
    seed: int
    grid: bool
    line: int
    path: dict | None = None  # a path job: {"keyframes", "frames", "loop", "spacing", "ease"}


_JOB_KEYS = {"source", "target", "theta", "alpha", "seed", "name", "grid"}
_PATH_JOB_KEYS = {"keyframes", "frames", "loop", "spacing", "ease", "alpha", "seed", "name"}


def read_jobs(path: str | os.PathLike, default_seed: int = 0, default_grid: bool = False) -> list[Job]:
    """Parse and check a JSON-lines jobs file (blank lines and # comments skipped).

    Each line: {"source": ..., "target": ..., "theta": SPEC, "alpha": SPEC (default 0),
    "seed": int (default ``default_seed``), "name": str (default: the job's index as 0000),
    "grid": bool (default ``default_grid``)}. Relative image paths are relative to the jobs file's folder.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RenderError(f"cannot read jobs file {path}: {describe_os_error(e)}") from None
    jobs: list[Job] = []
    names: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise RenderError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise RenderError(f"{where}: each line must be a JSON object")
        unknown = set(obj) - (_PATH_JOB_KEYS if "keyframes" in obj else _JOB_KEYS)
        if unknown:
            raise RenderError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_JOB_KEYS))}")
        for key in () if "keyframes" in obj else ("source", "target", "theta"):
            if key not in obj:
                raise RenderError(f"{where}: missing {key!r}")
        index = len(jobs)
        name = obj.get("name", f"{index:04d}")
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
                or "\\" in name or name.startswith(".")):
            raise RenderError(f"{where}: name must be a plain folder name, got {name!r}")
        if name in names:
            raise RenderError(f"{where}: name {name!r} is already used by job {names[name]}")
        names[name] = index
        if "keyframes" in obj:
            jobs.append(_path_job(obj, where, path.parent, index, name, default_seed, lineno))
            continue
        images = {}
        for key in ("source", "target"):
            value = obj[key]
            if not isinstance(value, str):
                raise RenderError(f"{where}: {key} must be an image path")
            p = Path(value).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise RenderError(f"{where}: {key} image {value!r} does not exist (looked for {p})")
            images[key] = str(p)
        grid = obj.get("grid", default_grid)
        if not isinstance(grid, bool):
            raise RenderError(f"{where}: grid must be true or false")
        seed = obj.get("seed", default_seed)
        try:
            thetas = as_values(obj["theta"], "theta")
            alphas = as_values(obj.get("alpha", 0.0), "alpha")
            check_range(thetas, alphas)
            combine(thetas, alphas, grid)
            seed = check_seed(seed)
        except SpecError as e:
            raise RenderError(f"{where}: {e}") from None
        jobs.append(Job(index=index, name=name, source=images["source"], target=images["target"],
                        theta=obj["theta"], alpha=obj.get("alpha", 0.0), seed=seed, grid=grid,
                        line=lineno))
    if not jobs:
        raise RenderError(f"jobs file {path} has no jobs")
    return jobs


def _path_job(obj: dict, where: str, folder: Path, index: int, name: str, default_seed: int,
              lineno: int) -> Job:
    """A jobs line with "keyframes": a path through them (`render_path`), checked."""
    keyframes = obj["keyframes"]
    if not isinstance(keyframes, list) or not all(isinstance(k, str) for k in keyframes):
        raise RenderError(f"{where}: keyframes must be a list of image paths")
    images = []
    for i, value in enumerate(keyframes):
        p = Path(value).expanduser()
        p = p if p.is_absolute() else folder / p
        if not p.is_file():
            raise RenderError(f"{where}: keyframe {i + 1} of {len(keyframes)} {value!r} does not exist "
                              f"(looked for {p})")
        images.append(str(p))
    options = {"keyframes": images, "frames": obj.get("frames"), "loop": obj.get("loop", False),
               "spacing": obj.get("spacing", "uniform"), "ease": obj.get("ease", False)}
    for key in ("loop", "ease"):
        if not isinstance(options[key], bool):
            raise RenderError(f"{where}: {key} must be true or false")
    try:
        paths.check_values(len(images), options["frames"], obj.get("alpha", 0.0), loop=options["loop"],
                           spacing=options["spacing"])
        seed = check_seed(obj.get("seed", default_seed))
    except SpecError as e:
        raise RenderError(f"{where}: {e}") from None
    return Job(index=index, name=name, source=None, target=None, theta=None, alpha=obj.get("alpha", 0.0),
               seed=seed, grid=False, line=lineno, path=options)


def run_jobs(model, jobs_file, out_dir, *, device=None, dtype=None, stats=None, offload: bool = False,
             reference: str | None = None, reference_stats=None,
             default_seed: int = 0, default_grid: bool = False, max_batch: int | None = None,
             log: Callable[[str], None] | None = None, **render_kwargs) -> dict:
    """Render every job of ``jobs_file`` into out_dir/<name>, split over processes.

    Under `accelerate launch` (or torchrun) the jobs are split with accelerate's
    `PartialState().split_between_processes`; each process loads the model once on its own
    device and renders its share. A job that fails is reported and the others go on. The
    main process writes out_dir/jobs.json (every job's status) once all are done.

    Returns {"process_index", "num_processes", "jobs": [this process's results], "failed": n,
    "summary": the jobs.json content on the main process, else None}.
    """
    import torch
    from accelerate import PartialState

    jobs = read_jobs(jobs_file, default_seed, default_grid)
    out_dir = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    state = PartialState(cpu=(device == "cpu" or not torch.cuda.is_available()))
    load_device = device or state.device
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create output directory {out_dir}: {describe_os_error(e)}") from None

    from vslerp_app.models import load_pipeline

    results = []
    with state.split_between_processes(jobs) as mine:
        mine = list(mine)
        tag = f"[process {state.process_index}/{state.num_processes}]" if state.num_processes > 1 else ""
        log(f"{tag} {len(mine)} of {len(jobs)} jobs on {load_device}".strip())
        pipe = load_pipeline(model, device=load_device, dtype=dtype, stats=stats, offload=offload,
                             max_batch=max_batch or 8, reference=reference,
                             reference_stats=reference_stats) if mine else None
        for job in mine:
            job_dir = out_dir / job.name
            t0 = time.perf_counter()
            try:
                m = _render_job(pipe, job, job_dir, max_batch, render_kwargs)
            except Exception as e:
                msg = " ".join(str(e).split())
                log(f"{tag} job {job.index} ({job.name}, line {job.line}) failed: {msg}".strip())
                results.append({"index": job.index, "name": job.name, "status": "failed", "error": msg})
                continue
            results.append({"index": job.index, "name": job.name, "status": m["status"],
                            "frames": m["frame_count"], "seconds": round(time.perf_counter() - t0, 3)})
            log(f"{tag} job {job.index} ({job.name}): {m['frame_count']} frames -> {job_dir}".strip())
    state.wait_for_everyone()
    summary = None
    if state.is_main_process:
        summary = _jobs_summary(jobs, out_dir, Path(jobs_file), model)
        OutputDir(out_dir).write(JOBS_SUMMARY_NAME, json.dumps(summary, indent=1).encode())
    state.wait_for_everyone()
    failed = sum(r["status"] != "complete" for r in results)
    if summary is not None:
        failed = max(failed, sum(j["status"] != "complete" for j in summary["jobs"]))
    result = {"process_index": state.process_index, "num_processes": state.num_processes,
              "jobs": results, "failed": failed, "summary": summary}
    if state.use_distributed:
        with contextlib.suppress(Exception):
            state.destroy_process_group()
    return result


def _render_job(pipe, job: Job, job_dir: Path, max_batch, render_kwargs: dict) -> dict:
    """One job's render (a sequence, or a path through keyframes); its manifest."""
    if job.path is not None:
        options = {k: v for k, v in job.path.items() if k != "keyframes"}
        return render_path(pipe, job.path["keyframes"], job_dir, alphas=job.alpha, seed=job.seed,
                           max_batch=max_batch, **options, **render_kwargs)
    return render_sequence(pipe, job.source, job.target, job.theta, job.alpha, job.seed, job_dir,
                           grid=job.grid, max_batch=max_batch, **render_kwargs)


def _jobs_summary(jobs: list[Job], out_dir: Path, jobs_file: Path, model) -> dict:
    rows = []
    for job in jobs:
        row = {"index": job.index, "name": job.name, "dir": job.name, "line": job.line}
        try:
            m = json.loads((out_dir / job.name / MANIFEST_NAME).read_text())
            last = m.get("runs", [{}])[-1]
            row.update(status=m.get("status"), frames=m.get("frame_count"),
                       frames_done=m.get("frames_done"), process_index=last.get("process_index"))
        except (OSError, ValueError):
            row.update(status="missing")
        rows.append(row)
    return {"format": "vslerp-jobs/1", "jobs_file": str(jobs_file), "model": str(model),
            "updated": now(), "jobs": rows}
