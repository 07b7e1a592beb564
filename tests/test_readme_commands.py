"""The README's command lines, run as a reader copies them.

Every `vslerp ...` and `python ...` line of the README's code blocks (and its Python blocks)
runs verbatim, in README order, and must exit 0 and leave the files it promises. Two things
a reader has and our machines do not are stood in for, without touching the commands:

- the model: `karlo` is a random-weight Karlo written as the real repository's snapshot in a
  hub cache (HF_HUB_CACHE), so `--model karlo` and the app's default load it unchanged. It is
  smaller than the other tests' fixture, so the preset's 25 + 7 steps take a moment on a CPU.
- the reference space: open_clip's `ViT-B-32/openai` is random weights in the same hub cache,
  under the repository open_clip downloads it from, of a small stand-in architecture that
  VSLERP_OPEN_CLIP_CONFIG (stats/README.md's way to add an architecture) registers under the
  name ViT-B-32 (the real one costs ~4 GFLOP an image: its stats command took three times a
  plain one's); the loading path, open_clip's own, is the same, and real ViT-B-32 weights
  would not load into it. Its stats file is made with stats/README.md's command, as a reader
  would before scoring in that space;
- the images: cat.png, dog.png, car.png, coco/val2017/, photos/, generated/, unclip-frames/ are
  fixture images written under those names in the working directory; examples/ (the app's
  client script) is the checkout's.

Python blocks run as a reader's session would: each with the imports of the blocks before it;
the gradio_client blocks together, as one script, against the running app.

Subprocesses run with one OpenMP thread (see `reader`). Commands that need a GPU or never
end have a documented way: `python app.py` is started on a free port (GRADIO_SERVER_PORT,
which the README names), must answer HTTP, and the README's gradio_client script then runs
against it (its URL pointed at that port); `python bench/run.py --real karlo` says it needs a
CUDA GPU (its no-GPU exit code) and is run again with `--device cpu` appended, as that
message advises. Lines that are not ours to run here are listed with the reason
(installing, Docker, multi-GPU launch, the test suite itself).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from pipelines.fixtures import TINY, fixture_images
from pipelines.presets import get_preset
from vslerp_app.cli import _join_negative_values, build_parser
from vslerp_app.stats import ModalityStats

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXIT_NO_GPU = 2  # bench/run.py's exit code when --real finds no CUDA device
NOT_RUN_HERE = {
    "pip": "installing: the test environment is installed already",
    "bash": "scripts/test.sh runs this test suite",
    "docker": "Docker is not available on the test machines",
    "accelerate": "`accelerate launch --multi_gpu` needs GPUs (the split itself is tested with torchrun "
                  "in tests/test_cli_render.py)",
}


# -- reading the README --------------------------------------------------------------------
def readme_blocks() -> list[tuple[str, str]]:
    """(info string, content) of every code block, fenced or indented, in order."""
    tokens = MarkdownIt("commonmark").parse(README.read_text(encoding="utf-8"))
    return [(t.info.strip(), t.content) for t in tokens if t.type in ("fence", "code_block")]


COMMANDS = {"vslerp", "python", "python3"}


def command_lines(content: str) -> tuple[list[list[str]], str]:
    """(the commands of a shell block, its JSON lines): continuation lines joined, comments
    dropped, `a && b` split; lines that are no command (a diagram) are left out."""
    commands, jsonl = [], []
    for line in content.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("{"):
            jsonl.append(line.strip())
            continue
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            if words[0] in COMMANDS or words[0] in NOT_RUN_HERE:
                commands.append(words[:cut])
            words = words[cut + 1:]
    return commands, "".join(f"{line}\n" for line in jsonl)


def readme_steps() -> list[tuple[str, object]]:
    """("command", argv), ("python", source) and ("jobs", JSON lines) in README order."""
    steps = []
    for info, content in readme_blocks():
        if info == "python":
            steps.append(("python", content))
        elif info in ("", "bash", "sh", "console"):
            commands, jsonl = command_lines(content)
            if jsonl:
                steps.append(("jobs", jsonl))
            steps.extend(("command", argv) for argv in commands)
    return steps


# -- the reader's machine -----------------------------------------------------------------------
def _small_karlo_config() -> dict:
    """The tests' tiny Karlo, smaller still: an 8 px decoder and 16 px super-resolution."""
    config = copy.deepcopy(TINY["karlo"])
    config["decoder"].update(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4)
    config["text_proj"].update(time_embed_dim=32)  # the decoder's time embedding: 4 x 8 channels
    for name in ("super_res_first", "super_res_last"):
        config[name].update(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REFERENCE = "open_clip:ViT-B-32/openai"
# The stand-in for ViT-B-32: an open_clip config of its shape (a ViT and a text transformer)
# at a size a CPU reads 96 images with in a moment; 3 * 32 = 96 images give it a whitening too.
SMALL_VIT_B_32 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _cache_snapshot(cache: Path, repo_id: str) -> Path:
    """An empty snapshot folder of ``repo_id`` in a hub cache (its refs/main pointing at it)."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def _reference_weights(cache: Path, configs: Path) -> None:
    """The small ViT-B-32's config as ``configs/ViT-B-32.json`` (for VSLERP_OPEN_CLIP_CONFIG), and
    random weights of it where open_clip looks for `ViT-B-32/openai`.

    The model is built from the config directly, not through open_clip's registry: this process
    keeps the real ViT-B-32 for the other tests.
    """
    import open_clip
    from safetensors.torch import save_file

    configs.mkdir(parents=True)
    (configs / "ViT-B-32.json").write_text(json.dumps(SMALL_VIT_B_32))
    hub_id = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].strip("/")
    snapshot = _cache_snapshot(cache, hub_id)
    snapshot.mkdir(parents=True)
    model = open_clip.CLIP(**SMALL_VIT_B_32, quick_gelu=True)  # `openai` weights use QuickGELU
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(snapshot / "open_clip_model.safetensors"))


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """A working directory with the README's images, and the environment of a reader whose hub
    cache holds Karlo (a random-weight stand-in)."""
    from vslerp_app.fixtures import write_fixture

    root = tmp_path_factory.mktemp("readme")
    cache = root / "hub-cache"
    write_fixture("karlo", _cache_snapshot(cache, get_preset("karlo").hub_id), config=_small_karlo_config())
    _reference_weights(cache, root / "open_clip-configs")
    work = root / "work"
    work.mkdir()
    pictures = iter(fixture_images(111, seed=21, size=96))
    for name in ("cat.png", "dog.png", "car.png"):
        next(pictures).save(work / name)
    for folder, count in (("coco/val2017", 96), ("photos", 4), ("generated", 4), ("unclip-frames", 4)):
        (work / folder).mkdir(parents=True)
        for i in range(count):
            next(pictures).save(work / folder / f"{i:012d}.jpg")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "VSLERP_STATS_DIR": str(work / "stats"), "GRADIO_TEMP_DIR": str(root / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(_free_port()),
           "VSLERP_OPEN_CLIP_CONFIG": str(root / "open_clip-configs"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           # Tiny models gain nothing from threads, and on a machine busy with other work
           # OpenMP's spinning threads wait on each other (8 frames: 0.7 s with one, 29 s with two).
           "OMP_NUM_THREADS": "1"}
    # stats/README.md's command for the reference space's stats (without captions).
    _run(_executable(["vslerp", "stats", "--reference", REFERENCE, "--images", "coco/val2017", "--out",
                      "stats/open_clip-ViT-B-32-openai-coco-val2017.safetensors"]), work, env)
    return {"work": work, "env": env}


def _executable(argv: list[str]) -> list[str]:
    """`vslerp` as installed (else `python -m vslerp_app`, the same command); `python` as this one."""
    if argv[0] == "vslerp":
        found = shutil.which("vslerp")
        return ([found] if found else [sys.executable, "-m", "vslerp_app"]) + argv[1:]
    return [sys.executable] + argv[1:]


def _run(argv, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(map(str, argv))}\n{proc.stdout}\n{proc.stderr}"
    return proc


# -- what each command promises -----------------------------------------------------------------
def _check_render(out: Path, args) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["frames_done"] == manifest["frame_count"]
    for entry in manifest["frames"]:
        assert (out / entry["file"]).is_file()
    wanted = {"contact_sheet.png", "conformity.png"}
    wanted |= {f"sequence.{flag}" for flag in ("gif", "mp4", "zip") if getattr(args, flag, False)}
    assert wanted <= {p.name for p in out.iterdir()}
    if args.zip:
        names = zipfile.ZipFile(out / "sequence.zip").namelist()
        assert {"manifest.json", "conformity.png", "contact_sheet.png"} <= set(names)
    inputs = manifest["inputs"]  # the inputs' own readouts, marked on the plot
    if getattr(args, "keyframes", None):
        assert args.frames is None or manifest["frame_count"] == args.frames
        described = inputs["keyframes"]
        assert len(described) == len(args.keyframes)
    else:
        described = [inputs["source"], inputs["target"]]
    assert all(d["readouts"]["conformity"] is not None for d in described)


def check_promises(argv: list[str], cwd: Path, stdout: str) -> str:
    """Assert the files a `vslerp` command promises; return what it was, for the coverage check."""
    args = build_parser().parse_args(_join_negative_values(argv[1:]))
    if args.command == "models":
        assert "karlo (default)" in stdout
    elif args.command == "fixture":
        assert (cwd / args.dir / "model_index.json").is_file()
    elif args.command == "stats":
        stats = ModalityStats.load(cwd / args.out)
        assert stats.n == 96 and stats.whitening is not None and "pearson=" in stdout  # 3 d
    elif args.command == "score" and args.sequence:  # morphs side by side
        summary = json.loads((cwd / args.out / "sequences.json").read_text())
        assert len(summary["sequences"]) == len(args.sequence)
        assert (cwd / args.out / "sequences.png").is_file()
        return "score --sequence"
    elif args.command == "score":
        scores = json.loads((cwd / args.out / "scores.json").read_text())
        assert {"scores.csv", "report.png"} <= {p.name for p in (cwd / args.out).iterdir()}
        assert len(scores["folders"]) == len(args.images) == 2, scores.keys()
    elif args.command == "render" and args.jobs:
        summary = json.loads((cwd / args.out / "jobs.json").read_text())
        assert summary["jobs"] and {j["status"] for j in summary["jobs"]} == {"complete"}
        for job in summary["jobs"]:
            _check_render(cwd / args.out / job["dir"], args)
        return "render --jobs"
    elif args.command == "render":
        _check_render(cwd / args.out, args)
        if args.grid:
            return "render --grid"
    elif getattr(args, "out", None):  # a command added later: at least its output exists
        assert (cwd / args.out).exists()
    return args.command


# -- the two that need a GPU or serve forever ---------------------------------------------------
def run_bench(argv: list[str], env: dict) -> str:
    proc = subprocess.run(_executable(argv), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == EXIT_NO_GPU and "needs a CUDA GPU" in proc.stderr:
        assert "--device cpu" in proc.stderr  # the documented way without a GPU
        proc = _run(_executable(argv) + ["--device", "cpu"], ROOT, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mode"] == "real" and result["checks"]["no_black_or_flat_frame"] is not None
    return "bench --real"


def run_app(argv: list[str], env: dict, client_script: str, log: Path) -> str:
    """Start the app, wait until it answers, run the README's client script against it, stop it."""
    port = env["GRADIO_SERVER_PORT"]
    with open(log, "w") as out:
        server = subprocess.Popen(_executable(argv), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"the app exited ({server.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the app did not answer on port {port}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200 and b"gradio" in response.read().lower()
                    break
            except OSError:
                time.sleep(1)
        script = client_script.replace("http://127.0.0.1:7860/", f"http://127.0.0.1:{port}/")
        _run([sys.executable, "-c", script], ROOT, env)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return "app"


# -- the test -----------------------------------------------------------------------------------
def test_the_readme_has_the_commands_this_test_knows():
    steps = readme_steps()
    commands = [argv for kind, argv in steps if kind == "command"]
    assert len(commands) >= 12 and {argv[0] for argv in commands} >= {"vslerp", "python"}
    assert sum(kind == "jobs" for kind, _ in steps) == 1
    # No placeholder: every line is a command a reader can paste.
    assert not [argv for kind, argv in steps if kind == "command" and ("..." in argv or "DIR" in argv)]


def test_every_readme_command_runs_as_written(reader):
    work, env = reader["work"], reader["env"]
    steps = readme_steps()
    client = [src for kind, src in steps if kind == "python" and "client." in src]
    assert "from gradio_client import" in client[0]
    done, skipped, imports = [], [], []
    for kind, item in steps:
        if kind == "jobs":  # the jobs file the next commands read
            (work / "jobs.jsonl").write_text(item)
        elif kind == "python" and item not in client:
            _run([sys.executable, "-c", "\n".join(imports + [item])], work, env)
            imports += [line for line in item.splitlines() if line.startswith(("import ", "from "))]
            done.append("python block")
        elif kind == "command" and item[0] in NOT_RUN_HERE:
            skipped.append(item[0])
        elif kind == "command" and item[:2] == ["python", "app.py"]:
            done.append(run_app(item, env, "\n".join(client), work.parent / "app.log"))
        elif kind == "command" and item[:2] == ["python", "bench/run.py"]:
            done.append(run_bench(item, env))
        elif kind == "command":
            proc = _run(_executable(item), work, env)
            assert "Traceback" not in proc.stderr and "deprecated" not in proc.stderr
            done.append(check_promises(item, work, proc.stdout))
    assert {"app", "models", "fixture", "stats", "score", "render", "render --grid", "render --jobs",
            "bench --real", "python block"} <= set(done), done
    assert set(skipped) <= set(NOT_RUN_HERE)
    # The Python block's frames, and the stats file the Command line section wrote (then used).
    frames = [f"frame-{t:.2f}.png" for t in (0, 0.25, 0.5, 0.75, 1)]
    assert sorted(p.name for p in work.glob("frame-*.png")) == frames
    manifest = json.loads((work / "runs" / "cat-dog" / "manifest.json").read_text())
    assert re.search(r"karlo-vit-l14-coco-val2017", json.dumps(manifest["pipeline"]["stats"]))
