"""`vslerp render` as users run it: real subprocesses on the tiny Karlo fixture.

Errors (one line, non-zero exit, no traceback), a run killed with SIGKILL and completed by
the next run, a full disk (fault injection in the child process), and jobs split over two
CPU processes with torchrun (accelerate's PartialState gives MULTI_CPU there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image, ImageSequence

from pipelines.fixtures import fixture_images

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--steps", "2", "--super-res-steps", "2"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
       "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
       # One OpenMP thread: the tiny model gains nothing from two, and on a busy machine spinning
       # OpenMP threads wait on each other (torchrun sets the same for its processes).
       "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-render-inputs")
    for name, img in zip(("a.png", "b.png"), fixture_images(2, seed=11), strict=True):
        img.save(root / name)
    (root / "not-an-image.png").write_text("hello, I am text\n")
    return root


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vslerp_app", "render", *map(str, args)]


def _run(cmd, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env or ENV)


def _base(karlo_dir, inputs, out, *extra):
    return _cmd("--model", karlo_dir, "--source", inputs / "a.png", "--target", inputs / "b.png",
                "--out", out, *FAST, *extra)


def _error_line(proc) -> str:
    """The one line a failed command prints about its error (and no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("vslerp render: error: ")
    return errors[0]


def _frames_valid(out: Path) -> list[str]:
    names = sorted(p.name for p in (out / "frames").glob("*.png"))
    for name in names:
        Image.open(out / "frames" / name).load()
    return names


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".partial" in p.name]


# -- errors, all before the model is loaded: exactly one line on stderr ---------------------
@pytest.mark.parametrize("case, words", [
    (dict(source="missing.png"), "source image: 'missing.png' does not exist"),
    (dict(target="not-an-image.png"), "target image: 'not-an-image.png' is not an image"),
    (dict(theta="0:1"), "bad theta SPEC '0:1': a range is start:stop:count"),
    (dict(alpha="one"), "bad alpha SPEC 'one'"),
    (dict(theta="0:1:x"), "count 'x' is not a whole number"),
    (dict(theta="0,1.5"), "theta must be in [0, 1], got 1.5"),
    (dict(theta="0,1", alpha="0,1,2"), "theta has 2 values and alpha 3"),
    (dict(out="{file}/sub"), "cannot create output directory"),
    (dict(out="{file}"), "cannot create output directory"),
    (dict(theta=None), "missing --theta"),
    (dict(fps="0"), "fps must be in (0, 120]"),
])
def test_errors_are_one_clear_line(karlo_dir, inputs, tmp_path, case, words):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    opts = {"source": "a.png", "target": "b.png", "theta": "0,1", "alpha": "0", "out": str(tmp_path / "o"),
            "fps": "4"}
    opts.update(case)
    args = ["--model", karlo_dir]
    for key, value in opts.items():
        if value is not None:
            value = value.format(file=a_file)
            args += [f"--{key}", inputs / value if key in ("source", "target") else value]
    proc = _run(_cmd(*args))
    line = _error_line(proc)
    assert words in line and proc.returncode == 2
    assert proc.stderr.strip() == line
    assert not (tmp_path / "o" / "frames").exists() or not list((tmp_path / "o" / "frames").iterdir())


def test_debug_shows_the_traceback(inputs, tmp_path):
    proc = _run(_cmd("--source", inputs / "missing.png", "--target", inputs / "b.png", "--theta", "0",
                     "--out", tmp_path / "o", "--debug"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "does not exist" in proc.stderr


def test_unknown_model_and_bad_jobs_file(inputs, tmp_path):
    proc = _run(_cmd("--model", tmp_path / "no-such-model", "--source", inputs / "a.png",
                     "--target", inputs / "b.png", "--theta", "0", "--out", tmp_path / "o"))
    assert "neither a preset" in _error_line(proc)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"source": "caf\xe9.png", "target": "b.png", "theta": 0}\n')
    proc = _run(_cmd("--jobs", jobs, "--out", tmp_path / "j"))
    assert f"jobs file {jobs} is not UTF-8 text" in _error_line(proc) and proc.returncode == 2


@pytest.mark.parametrize("option, words", [("--fps", "fps must be"),
                                           ("--max-batch", "max_batch must be a whole number >= 1")])
def test_a_jobs_run_refuses_a_bad_fps_or_batch_limit_before_any_job(inputs, karlo_dir, tmp_path, option,
                                                                     words):
    jobs = tmp_path / "jobs.jsonl"
    job = {"source": str(inputs / "a.png"), "target": str(inputs / "b.png"), "theta": 0}
    jobs.write_text(json.dumps(job) + "\n")
    proc = _run(_cmd("--model", karlo_dir, "--jobs", jobs, "--out", tmp_path / "j", option, "0"))
    assert words in _error_line(proc) and proc.returncode == 2, proc.stderr
    assert not (tmp_path / "j" / "0").exists()  # no job rendered


# -- what argparse decides: SPECs with a minus, an empty --out, a missing value ---------------
@pytest.mark.parametrize("argv, theta, alpha", [
    (["--theta", "0.5", "--alpha", "-1:3:16"], "0.5", "-1:3:16"),
    (["--alpha", "-1,0,1", "--theta", "-0.5"], "-0.5", "-1,0,1"),
    (["--alpha=-1:3:16", "--theta=0"], "0", "-1:3:16"),
    (["--alpha", "-.5", "--theta", "0:1:3"], "0:1:3", "-.5"),
    (["--alph", "-1,1", "--thet", "-0"], "-0", "-1,1"),  # unambiguous prefixes, as argparse allows
    (["--debug", "--alpha", "-2", "--verbose"], None, "-2"),
])
def test_specs_that_start_with_a_minus_work_as_written(argv, theta, alpha):
    from vslerp_app.cli import _join_negative_values, build_parser

    args = build_parser().parse_args(_join_negative_values(["render", "--out", "o", *argv]))
    assert (args.theta, args.alpha) == (theta, alpha)


@pytest.mark.parametrize("argv, words", [
    (["--theta", "0", "--alpha", "--seed", "1"], "argument --alpha: expected one argument"),
    (["--theta", "0", "--alpha"], "argument --alpha: expected one argument"),
    (["--theta", "--alpha", "1"], "argument --theta: expected one argument"),
    (["--theta", "0", "--alpha", "-x"], "argument --alpha: expected one argument"),
    (["--theta", "0", "--out", ""], "argument --out: empty; name a folder"),
    (["--theta", "0", "--out", "  "], "argument --out: empty; name a folder"),
])
def test_a_missing_value_or_an_empty_out_is_a_clear_usage_error(tmp_path, capsys, argv, words):
    from vslerp_app.cli import main

    with pytest.raises(SystemExit) as info:  # argparse's usage error, before anything is loaded
        main(["render", "--source", "a.png", "--target", "b.png", "--out", str(tmp_path / "o"), *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"vslerp render: error: {words}" + (
        " ('.' for the current one)" if "--out" in words else "")
    assert not (tmp_path / "o").exists()


def test_a_negative_alpha_sweep_renders_and_start_up_is_quiet(karlo_dir, inputs, tmp_path):
    out = tmp_path / "neg"
    proc = _run(_base(karlo_dir, inputs, out, "--theta", "0.5", "--alpha", "-1,0,1", "--preview"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["alpha"] for e in manifest["frames"]] == [-1.0, 0.0, 1.0]
    # No library chatter: no deprecation warning, no loading bars; only our progress lines.
    assert proc.stderr.splitlines() == ["render: 3/3 frames"], proc.stderr
    # --verbose lets the libraries speak (after the subcommand as before it).
    proc = _run(_base(karlo_dir, inputs, out, "--theta", "0.5", "--alpha", "-1,0,1", "--preview",
                      "--verbose"))
    assert proc.returncode == 0, proc.stderr
    assert "UnCLIPImageVariationPipeline has been deprecated" in proc.stderr


# -- a killed run, resumed ------------------------------------------------------------------
def kill_after_the_first_frame(cmd: list, out: Path, env: dict) -> int:
    """Start a render, SIGKILL it once its manifest counts a frame done; its return code."""
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "manifest.json").read_text())["frames_done"] >= 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the render finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode


def test_a_run_killed_midway_is_completed_by_the_next_run(karlo_dir, inputs, tmp_path):
    out = tmp_path / "killed"
    cmd = _base(karlo_dir, inputs, out, "--theta", "0:1:6", "--alpha", "0.5", "--max-batch", "1", "--gif")
    assert kill_after_the_first_frame(cmd, out, ENV) == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and 1 <= manifest["frames_done"] < 6
    first = {p.name: p.stat().st_mtime_ns for p in (out / "frames").glob("*.png")}
    _frames_valid(out)  # no truncated frame, whenever the kill came
    listed = {Path(e["file"]).name for e in manifest["frames"]}

    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr
    assert "already done" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["frames_done"] == 6
    assert _frames_valid(out) == [f"{i:04d}.png" for i in range(6)] and not _partials(out)
    for name in listed:  # frames the manifest listed were kept, not rewritten
        assert (out / "frames" / name).stat().st_mtime_ns == first[name]
    assert manifest["runs"][-1]["frames_reused"] == len(listed)
    assert sum(1 for _ in ImageSequence.Iterator(Image.open(out / "sequence.gif"))) == 6

    # The same folder with another seed is refused, and nothing is touched.
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = _run(cmd + ["--seed", "1"])
    assert "other settings (seed 0 -> 1)" in _error_line(proc)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    # Asking again with --mp4 only adds the video.
    proc = _run(cmd + ["--mp4", "--zip"])
    assert proc.returncode == 0, proc.stderr
    reader = imageio_ffmpeg.read_frames(str(out / "sequence.mp4"))
    assert next(reader)["size"] == (64, 64) and len(list(reader)) == 6
    assert (out / "sequence.zip").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == {
        k: v for k, v in before.items() if k.endswith(".png") and k[0].isdigit()}


# -- a full disk ---------------------------------------------------------------------------
_FULL_DISK = textwrap.dedent("""
    import errno, os, sys
    from vslerp_app import files
    real, calls = files.atomic_write, []
    def filling_up(path, data):  # test-only fault: the disk fills after FAIL_AFTER files
        calls.append(path)
        if len(calls) > int(os.environ["FAIL_AFTER"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)
    files.atomic_write = filling_up
    from vslerp_app.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_full_disk_is_one_line_and_keeps_finished_frames(karlo_dir, inputs, tmp_path):
    out = tmp_path / "full"
    args = _base(karlo_dir, inputs, out, "--theta", "0:1:3", "--max-batch", "1")[4:]
    # Files written: manifest, frame 0, manifest, frame 1, manifest, then frame 2 fails.
    proc = _run([sys.executable, "-c", _FULL_DISK, "render", *args], env={**ENV, "FAIL_AFTER": "5"})
    line = _error_line(proc)
    assert "no space left on device" in line and "frames/0002.png" in line and "run the same command" in line
    assert _frames_valid(out) == ["0000.png", "0001.png"] and not _partials(out)
    assert json.loads((out / "manifest.json").read_text())["frames_done"] == 2
    proc = _run(_cmd(*args))
    assert proc.returncode == 0, proc.stderr
    assert _frames_valid(out) == ["0000.png", "0001.png", "0002.png"]


# -- many pairs over two processes ----------------------------------------------------------
def test_jobs_are_split_over_two_cpu_processes_with_torchrun(karlo_dir, inputs, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "imgs" / name).write_bytes((inputs / name).read_bytes())
    lines = [
        {"source": "imgs/a.png", "target": "imgs/b.png", "theta": "0,1", "alpha": 0, "seed": 1, "name": "ab"},
        {"source": "imgs/b.png", "target": "imgs/a.png", "theta": 0.5, "alpha": "0,1", "seed": 2},
        {"source": "imgs/missing.png", "target": "imgs/a.png", "theta": 0.5, "name": "no-image"},
        {"source": str(tmp_path / "imgs/a.png"), "target": "imgs/b.png", "theta": "0,1", "alpha": "-1,1",
         "grid": True},
        {"source": "imgs/a.png", "target": "imgs/b.png", "theta": 0, "name": "blocked"},
    ]
    jobs.write_text("\n".join(json.dumps(j) for j in lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked").write_text("a file where the job's folder would go")  # fails when it renders
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vslerp_app", "render", "--jobs", jobs, "--model", karlo_dir, "--out", out,
           "--device", "cpu", *FAST]
    proc = _run([str(c) for c in cmd], timeout=400)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "3 of 5 jobs complete" in proc.stdout and "(1 failed, 1 refused; 2 process(es))" in proc.stdout
    assert f"{jobs}:3: refused: source image" in proc.stderr
    summary = json.loads((out / "jobs.json").read_text())
    assert summary["counts"] == {"complete": 3, "failed": 1, "refused": 1}
    rows = {j["line"]: j for j in summary["jobs"]}
    assert [(j["line"], j["name"], j["status"]) for j in summary["jobs"]] == [
        (1, "ab", "complete"), (2, "0001", "complete"), (3, "no-image", "refused"), (4, "0003", "complete"),
        (5, "blocked", "failed")]
    assert "does not exist" in rows[3]["error"] and rows[3]["dir"] is None
    assert "cannot create output directory" in rows[5]["error"] and rows[5]["process_index"] == 1
    by_rank: dict[int, list[str]] = {}
    for j in summary["jobs"]:
        if j["status"] != "complete":
            continue
        assert j["frames"] == {1: 2, 2: 2, 4: 4}[j["line"]]
        m = json.loads((out / j["dir"] / "manifest.json").read_text())
        assert m["status"] == "complete" and len(_frames_valid(out / j["dir"])) == m["frame_count"]
        assert len(m["runs"]) == 1 and m["runs"][0]["num_processes"] == 2
        assert m["runs"][0]["frames_rendered"] == m["frame_count"]
        by_rank.setdefault(m["runs"][0]["process_index"], []).append(j["name"])
    # split_between_processes over the four valid jobs: two for each process.
    assert by_rank == {0: ["ab", "0001"], 1: ["0003"]}


def test_offload_without_a_gpu_says_it_is_ignored_and_renders(karlo_dir, inputs, tmp_path):
    out = tmp_path / "offload"
    proc = _run(_base(karlo_dir, inputs, out, "--theta", "0,1", "--offload", "--device", "cpu"))
    assert proc.returncode == 0, proc.stderr
    assert "offload applies to CUDA devices only" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"]["offload"] is False and len(manifest["frames"]) == 2


def test_super_res_steps_on_stable_unclip_is_said_to_be_ignored(inputs, tmp_path):
    from vslerp_app.fixtures import write_fixture

    model = write_fixture("stable-unclip", tmp_path / "tiny-stable")
    out = tmp_path / "stable"
    proc = _run(_cmd("--model", model, "--source", inputs / "a.png", "--target", inputs / "b.png",
                     "--out", out, "--theta", "0.5", "--steps", "2", "--super-res-steps", "3"))
    assert proc.returncode == 0, proc.stderr
    assert "--super-res-steps is Karlo's; stable-unclip has no super-resolution stage" in proc.stderr
    assert json.loads((out / "manifest.json").read_text())["frames"][0]["file"]


def test_without_the_hub_render_writes_nothing_and_points_to_the_fixture(inputs, tmp_path):
    """`vslerp render --model karlo` offline: no folder left behind, and the tiny fixture named,
    as `python app.py` does."""
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://hub.invalid")
    out = tmp_path / "offline" / "o"
    proc = _run(_cmd("--model", "karlo", "--source", inputs / "a.png", "--target", inputs / "b.png",
                     "--theta", "0:1:3", "--out", out), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot reach the Hugging Face hub at http://hub.invalid" in proc.stderr
    assert "vslerp fixture karlo /tmp/tiny-karlo" in proc.stderr
    assert "vslerp render --model /tmp/tiny-karlo" in proc.stderr
    assert not (tmp_path / "offline").exists()  # no empty frames/ folder


def test_python_app_py_starts_quietly_with_only_its_url(karlo_dir, tmp_path):
    """`python app.py`: the one line on the terminal is where the studio runs (no library chatter)."""
    from test_app_api import launched_app

    with launched_app(karlo_dir, tmp_path / "app") as app:
        deadline = time.monotonic() + 30  # the line is printed just after the server answers
        while not app.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert app.log.read_text().splitlines() == [f"vSLERP Studio: {app.url}"], app.log.read_text()


def test_a_refused_re_render_says_what_changed_and_how_to_go_on(karlo_dir, inputs, tmp_path):
    out = tmp_path / "used"
    proc = _run(_base(karlo_dir, inputs, out, "--theta", "0:1:5", "--alpha", "1", "--preview"))
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = _run(_base(karlo_dir, inputs, out, "--theta", "0:1:5", "--alpha", "2", "--preview"))
    assert _error_line(proc) == (
        f"vslerp render: error: {out} holds a render with other settings (alpha 1 -> 2); refusing to mix "
        "frames: use another --out folder, or delete this one to start over")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_one_sentence_of_alpha_advice_in_the_help_and_the_readme(capsys):
    """`vslerp render --help` and the README give the same advice on alpha, naming where each
    number comes from (the page's header shows it too: tests/test_app_browser.py)."""
    from vslerp_app.cli import main
    from vslerp_app.specs import ALPHA_ADVICE

    with pytest.raises(SystemExit):
        main(["render", "--help"])
    flat = lambda text: " ".join(text.split())  # noqa: E731 (argparse and Markdown wrap lines)
    assert flat(ALPHA_ADVICE) in flat(capsys.readouterr().out)
    assert flat(ALPHA_ADVICE) in flat((ROOT / "README.md").read_text())
    for source in ("(the paper)", "the authors' demo sweeps -1 to 3 in 16 steps", "slider runs -3 to 3",
                   "takes up to ±10"):
        assert source in ALPHA_ADVICE
