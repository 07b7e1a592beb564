"""Many sequences from a jobs file, split over processes (`vslerp render --jobs FILE`).

A jobs file has one JSON object per line: {"source", "target", "theta", "alpha", "seed",
"name", "grid"}, or a path through keyframes: {"keyframes": [...], "frames", "loop",
"spacing", "ease", "alpha", "seed", "name"}. `read_jobs` checks every line before anything
renders (JSON, keys, SPECs, seed, every image readable, a name that can be a folder on any
system) and keeps the lines it refuses with their reasons. `run_jobs` renders each valid job
into out_dir/<name> with `render_sequence` (or `render_path`), split over processes with accelerate's
`PartialState.split_between_processes` (`accelerate launch -m vslerp_app render --jobs ...`;
on CPU, `torchrun --nproc_per_node N -m vslerp_app render --jobs ...`); each process loads
the model once on its own device. A job that fails does not stop the others. The main
process writes out_dir/jobs.json: every job with its line, its status (complete, failed,
refused) and, for the last two, why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

from pipelines.presets import DEFAULT_MAX_BATCH
from vslerp_app.files import OutputDir, RenderError, describe_os_error, output_path
from vslerp_app.manifest import MANIFEST_NAME, now
from vslerp_app.outputs import OutputRequest
from vslerp_app.render import check_sweep_request, checked_path_request, render_request
from vslerp_app.requests import PathRequest, Sampling
from vslerp_app.specs import check_fps, check_max_batch, check_seed

__all__ = ["JOBS_SUMMARY_NAME", "MAX_NAME_LENGTH", "Job", "JobsFile", "RefusedJob", "check_job_name",
           "read_jobs", "run_jobs"]

JOBS_SUMMARY_NAME = "jobs.json"
MAX_NAME_LENGTH = 200  # characters; and at most 255 bytes in UTF-8, the usual file system limit

_JOB_KEYS = {"source", "target", "theta", "alpha", "seed", "name", "grid"}
_PATH_JOB_KEYS = {"keyframes", "frames", "loop", "spacing", "ease", "alpha", "seed", "name"}
# Names Windows reserves for devices, with or without an extension (a render may be copied there).
_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                   *(f"LPT{i}" for i in range(1, 10))}
_NOT_IN_NAMES = '/\\<>:"|?*'  # separators, and what Windows and macOS refuse or change


@dataclasses.dataclass
class Job:
    """One valid line of a jobs file: a sequence to render into out_dir/name."""

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
    request: object = None  # the line parsed: a `SweepRequest` or `PathRequest` (sampling: the command's)


@dataclasses.dataclass
class RefusedJob:
    """A line of a jobs file that cannot be rendered, and why (``name`` None if it had none usable)."""

    index: int
    line: int
    name: str | None
    reason: str


@dataclasses.dataclass
class JobsFile:
    """A checked jobs file: the jobs to render and the lines refused, both in file order."""

    path: Path
    jobs: list[Job]
    refused: list[RefusedJob]


_OUTPUT_OPTIONS = ("gif", "mp4", "zip", "fps", "contact", "plot")  # `OutputRequest`'s; the rest is sampling


class _Refused(ValueError):
    """Why one line is refused (internal to `read_jobs`)."""


def check_job_name(name) -> str | None:
    """Why ``name`` cannot be a job's folder (on this or another system), or None if it can."""
    if not isinstance(name, str):
        return f"name must be a string, got {json.dumps(name)}"
    if not name:
        return "name is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "name contains a control character (NUL, newline, ...)"
    bad = sorted({c for c in name if c in _NOT_IN_NAMES})
    if bad:
        return f"name {name!r} contains {' '.join(bad)} (a path separator, or refused by Windows/macOS)"
    if name.startswith("."):
        return f"name {name!r} starts with '.' (the current or parent folder, or a hidden one)"
    if name != name.strip() or name.endswith("."):
        return f"name {name!r} starts or ends with a space, or ends with '.'"
    if len(name) > MAX_NAME_LENGTH:
        return f"name is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"name {name!r} is not valid Unicode"
    if size > 255:
        return f"name is {size} bytes long in UTF-8; at most 255"
    if name.split(".")[0].upper() in _RESERVED_NAMES:
        return f"name {name!r} is a reserved device name on Windows"
    if name.casefold() == JOBS_SUMMARY_NAME:
        return f"name {name!r} would overwrite the jobs summary {JOBS_SUMMARY_NAME}"
    return None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RenderError(f"cannot read jobs file {path}: {describe_os_error(e)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RenderError(f"jobs file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}); save it as UTF-8") from None


def _parse(line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise _Refused(f"not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise _Refused("each line must be a JSON object")
    known = _PATH_JOB_KEYS if "keyframes" in obj else _JOB_KEYS
    unknown = set(obj) - known
    if unknown:
        also = "" if "keyframes" in obj else " (or a path: keyframes, frames, loop, spacing, ease)"
        raise _Refused(f"unknown key(s) {', '.join(sorted(unknown))}; "
                       f"known: {', '.join(sorted(known))}{also}")
    missing = [key for key in ("source", "target", "theta") if key not in obj and "keyframes" not in obj]
    if missing:
        raise _Refused(f"missing {', '.join(map(repr, missing))}")
    return obj


def _claim_name(obj: dict, index: int, names: dict[str, int], lineno: int) -> str:
    """The job's folder name (default: its index as 0000), claimed for this line."""
    name = obj.get("name", f"{index:04d}")
    reason = check_job_name(name)
    if reason:
        raise _Refused(reason)
    # Folders that differ only in case or Unicode form are one folder on macOS and Windows.
    key = unicodedata.normalize("NFC", name).casefold()
    if key in names:
        raise _Refused(f"name {name!r} is already used by line {names[key]} (names must differ in "
                       "more than letter case)")
    names[key] = lineno
    return name


def _image_path(value, what: str, base: Path) -> str:
    """An image path of a jobs line, resolved against the jobs file's folder."""
    if not isinstance(value, str) or not value:
        raise _Refused(f"{what} must be an image path (a string), got {json.dumps(value)}")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _check_path_job(obj: dict, base: Path, default_seed: int) -> dict:
    """A path job's fields (keyframes resolved, checked as `render_path` checks them)."""
    keyframes = obj["keyframes"]
    if not isinstance(keyframes, list):
        raise _Refused(f"keyframes must be a list of image paths, got {json.dumps(keyframes)}")
    images = [_image_path(v, f"keyframe {i + 1}", base) for i, v in enumerate(keyframes)]
    options = {"keyframes": images, "frames": obj.get("frames"), "loop": obj.get("loop", False),
               "spacing": obj.get("spacing", "uniform"), "ease": obj.get("ease", False)}
    for key in ("loop", "ease"):
        if not isinstance(options[key], bool):
            raise _Refused(f"{key} must be true or false, got {json.dumps(options[key])}")
    seed, alpha = obj.get("seed", default_seed), obj.get("alpha", 0.0)
    try:
        request = checked_path_request(PathRequest.parse(
            None, keyframes=images, frames=options["frames"], alphas=alpha, seed=seed, loop=options["loop"],
            spacing=options["spacing"], ease=options["ease"]))
    except ValueError as e:
        raise _Refused(" ".join(str(e).split())) from None
    return dict(source=None, target=None, theta=None, alpha=alpha, seed=check_seed(seed), grid=False,
                path=options, request=request)


def _check_job(obj: dict, base: Path, default_seed: int, default_grid: bool) -> dict:
    """The job's fields with image paths resolved; _Refused naming the first problem."""
    if "keyframes" in obj:
        return _check_path_job(obj, base, default_seed)
    images = {}
    for key in ("source", "target"):
        images[key] = _image_path(obj[key], key, base)
    grid = obj.get("grid", default_grid)
    if not isinstance(grid, bool):
        raise _Refused(f"grid must be true or false, got {json.dumps(grid)}")
    seed, alpha = obj.get("seed", default_seed), obj.get("alpha", 0.0)
    try:  # SPECs, ranges, seed, and both images readable: what a render checks before it starts
        request = check_sweep_request(images["source"], images["target"], obj["theta"], alpha, seed,
                                      grid=grid)
    except ValueError as e:
        raise _Refused(" ".join(str(e).split())) from None
    return dict(source=images["source"], target=images["target"], theta=obj["theta"], alpha=alpha,
                seed=check_seed(seed), grid=grid, request=request)


def read_jobs(path: str | os.PathLike, default_seed: int = 0, default_grid: bool = False) -> JobsFile:
    """Check every line of a JSON-lines jobs file (blank lines and # comments skipped).

    Each line: {"source": ..., "target": ..., "theta": SPEC, "alpha": SPEC (default 0),
    "seed": int (default ``default_seed``), "name": str (default: the job's index as 0000),
    "grid": bool (default ``default_grid``)}. Relative image paths are relative to the jobs
    file's folder. A line with a problem is refused (kept with its reason), the others are
    jobs; an unreadable or non-UTF-8 file, or one without any job line, raises RenderError.
    """
    path = Path(path)
    jobs, refused, names = [], [], {}
    lines = [(n, line) for n, line in enumerate(_read_text(path).splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    for index, (lineno, line) in enumerate(lines):
        name = None
        try:
            obj = _parse(line)
            name = _claim_name(obj, index, names, lineno)
            jobs.append(Job(index=index, name=name, line=lineno,
                            **_check_job(obj, path.parent, default_seed, default_grid)))
        except _Refused as e:
            refused.append(RefusedJob(index=index, line=lineno, name=name, reason=str(e)))
    if not lines:
        raise RenderError(f"jobs file {path} has no jobs")
    return JobsFile(path=path, jobs=jobs, refused=refused)


def _process_state(device):
    """accelerate's PartialState: one process, or this one's rank under accelerate launch/torchrun."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=(device == "cpu" or not torch.cuda.is_available()))


def _render_share(state, jobs: list[Job], out_dir: Path, load_engine: Callable[[], object],
                  log: Callable[[str], None], sampling: Sampling, outputs: OutputRequest,
                  where: str) -> list[dict]:
    """Render this process's share of the jobs; one result row per job (a failure is a row too)."""
    results = []
    with state.split_between_processes(jobs) as mine:
        mine = list(mine)
        tag = f"[process {state.process_index}/{state.num_processes}] " if state.num_processes > 1 else ""
        log(f"{tag}{len(mine)} of {len(jobs)} jobs on {where}")
        engine = load_engine() if mine else None
        for job in mine:
            row = {"index": job.index, "name": job.name, "line": job.line,
                   "process_index": state.process_index}
            t0 = time.perf_counter()
            try:
                m = _render_job(engine, job, out_dir / job.name, sampling, outputs)
            except Exception as e:
                row.update(status="failed", error=" ".join(str(e).split()) or type(e).__name__)
                log(f"{tag}job {job.index} ({job.name}, line {job.line}) failed: {row['error']}")
            else:
                row.update(status=m["status"], frames=m["frame_count"])
                log(f"{tag}job {job.index} ({job.name}): {m['frame_count']} frames -> {out_dir / job.name}")
            row["seconds"] = round(time.perf_counter() - t0, 3)
            results.append(row)
    return results


def _render_job(engine, job: Job, job_dir: Path, sampling: Sampling, outputs: OutputRequest) -> dict:
    """One job's render (a sweep, or a path through keyframes) with the command's sampling; its manifest."""
    request = dataclasses.replace(job.request, sampling=sampling, fps=outputs.fps)
    return render_request(engine, request, job_dir, outputs)


def _jobs_summary(jobs_file: JobsFile, results: list[dict], out_dir: Path, model) -> dict:
    """jobs.json: every job line in file order with its status, and why for the others."""
    rows = [{"index": r.index, "name": r.name, "line": r.line, "dir": None, "status": "refused",
             "error": r.reason} for r in jobs_file.refused]
    for row in results:
        row = {**row, "dir": row["name"]}
        with contextlib.suppress(OSError, ValueError, AttributeError, IndexError):
            m = json.loads((out_dir / row["name"] / MANIFEST_NAME).read_text())
            row.update(frames=m.get("frame_count"), frames_done=m.get("frames_done"))
        rows.append(row)
    rows.sort(key=lambda r: r["line"])
    counts = {status: sum(r["status"] == status for r in rows)
              for status in ("complete", "failed", "refused")}
    return {"format": "vslerp-jobs/2", "jobs_file": str(jobs_file.path), "model": str(model),
            "updated": now(), "counts": counts, "jobs": rows}


def run_jobs(model, jobs_file, out_dir, *, device=None, dtype=None, stats=None, offload: bool = False,
             reference: str | None = None, reference_stats=None,
             default_seed: int = 0, default_grid: bool = False, max_batch: int | None = None,
             log: Callable[[str], None] | None = None, **render_kwargs) -> dict:
    """Render every valid job of ``jobs_file`` into out_dir/<name>, split over processes.

    Every line is checked first (`read_jobs`); refused lines are reported and the valid
    jobs render. Under `accelerate launch` (or torchrun) the jobs are split with
    accelerate's `PartialState().split_between_processes`; each process loads the model once
    on its own device. A job that fails is reported and the others go on. The main process
    writes out_dir/jobs.json (every job's line and status, and why for failed and refused
    ones) once all are done.

    Returns {"process_index", "num_processes", "jobs": [every rendered job's result],
    "refused": n, "failed": n (failed or refused, over all processes), "summary": the
    jobs.json content on the main process, else None}.
    """
    from accelerate.utils import gather_object

    from vslerp_app.models import load_pipeline

    if max_batch is not None:  # refused before any job, not quietly the default
        check_max_batch(max_batch)
    if "fps" in render_kwargs:
        check_fps(render_kwargs["fps"])
    checked = read_jobs(jobs_file, default_seed, default_grid)
    out_dir = output_path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RenderError(f"cannot create output directory {out_dir}: {describe_os_error(e)}") from None
    state = _process_state(device)
    if state.is_main_process:
        for r in checked.refused:
            log(f"{checked.path}:{r.line}: refused: {r.reason}")

    where = device or state.device

    def load_engine():
        return load_pipeline(model, device=where, dtype=dtype, stats=stats, offload=offload,
                             max_batch=max_batch or DEFAULT_MAX_BATCH, reference=reference,
                             reference_stats=reference_stats)

    outputs = OutputRequest(**{k: render_kwargs.pop(k) for k in _OUTPUT_OPTIONS if k in render_kwargs})
    sampling = Sampling.from_options(max_batch=max_batch, **render_kwargs)
    mine = _render_share(state, checked.jobs, out_dir, load_engine, log, sampling, outputs, where)
    results = sorted(gather_object(mine), key=lambda r: r["line"])
    summary = None
    if state.is_main_process:
        summary = _jobs_summary(checked, results, out_dir, model)
        OutputDir(out_dir).write(JOBS_SUMMARY_NAME, json.dumps(summary, indent=1).encode())
    state.wait_for_everyone()
    failed = sum(r["status"] != "complete" for r in results) + len(checked.refused)
    if state.use_distributed:
        with contextlib.suppress(Exception):
            state.destroy_process_group()
    return {"process_index": state.process_index, "num_processes": state.num_processes,
            "jobs": results, "refused": len(checked.refused), "failed": failed, "summary": summary}
