"""The Hugging Face Space as it is deployed, and the Docker image.

The Space: the README's YAML front matter is its configuration, checked field by field
against the Spaces configuration reference. Then the app file runs as a Gradio Space
outside ZeroGPU runs it: `python app.py` with no arguments, the real `spaces` package
imported, SYSTEM=spaces and SPACE_ID set (gradio takes its Spaces code paths: spaces'
auto-wrap, its reload server), and a hub cache holding exactly what preload_from_hub
lists, offline (tiny random weights written in each repository's layout). `/preview` and
`/sequence` are driven through gradio_client. `spaces.GPU` is wrapped to record what it
decorates and every call of what it returned: the render functions must be decorated, and
what runs on a request must be what the decorator returned.

The Docker image: no Docker daemon here, so the Dockerfile is parsed (dockerfile-parse)
and its instructions checked: the requirements file it installs, the user that runs the
app, the command, the port.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import stop_process
from packaging.requirements import Requirement
from PIL import Image

from pipelines.presets import DEFAULT_MODEL, PRESETS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
STARTUP_TIMEOUT_S = 180
SPACE_ID = "vslerp/vslerp-studio"
FAST = {"steps": 2, "super_res_steps": 2, "preview_steps": 2}  # Karlo's schedulers need two

# https://huggingface.co/docs/hub/spaces-config-reference (2026-03), plus the repository
# card fields a Space's card also takes (license: docs/hub/repositories-licenses).
CONFIG_FIELDS = {
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version",
    "suggested_hardware", "suggested_storage", "app_file", "app_build_command", "app_port",
    "base_path", "fullWidth", "header", "short_description", "models", "datasets", "tags",
    "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes", "hf_oauth_expiration_minutes",
    "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout", "custom_headers",
    "preload_from_hub", "license", "license_name", "license_link", "duplicated_from",
}
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
# A hub repository id: namespace/name, letters, digits, "-", "_", "." (no "--" or "..", no
# "-" or "." at either end of a part), at most 96 characters.
REPO_PART = r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{REPO_PART}/{REPO_PART}")


# -- the front matter ----------------------------------------------------------------------
def front_matter() -> dict:
    text = README.read_text(encoding="utf-8")
    m = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with a YAML front matter block between --- lines"
    data = yaml.safe_load(m.group(1))
    assert isinstance(data, dict)
    return data


def requirement(requirements: Path, package: str) -> Requirement:
    for line in requirements.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            req = Requirement(line)
            if req.name.lower().replace("_", "-") == package.lower().replace("_", "-"):
                return req
    raise AssertionError(f"{package} is not in {requirements.name}")


def preloads(fm: dict) -> list[SimpleNamespace]:
    """preload_from_hub entries: "repo", "repo file1,file2" or "repo file1,file2 commit_sha"."""
    entries = []
    for entry in fm["preload_from_hub"]:
        assert isinstance(entry, str), entry
        parts = entry.split(" ")
        assert 1 <= len(parts) <= 3 and all(parts), f"malformed preload_from_hub entry {entry!r}"
        files = parts[1].split(",") if len(parts) > 1 else None
        assert files is None or all(f and not f.startswith("/") and ".." not in f for f in files), entry
        revision = parts[2] if len(parts) == 3 else None
        assert revision is None or re.fullmatch(r"[0-9a-f]{40}", revision), entry
        entries.append(SimpleNamespace(repo=parts[0], files=files, revision=revision))
    return entries


def test_front_matter_holds_only_documented_fields_with_valid_values():
    from huggingface_hub import SpaceHardware

    fm = front_matter()
    assert set(fm) <= CONFIG_FIELDS, f"not Space configuration fields: {set(fm) - CONFIG_FIELDS}"
    assert fm["sdk"] == "gradio"
    gradio = requirement(ROOT / "requirements.txt", "gradio")
    # The Space runs the newest release of the tested range requirements.txt pins.
    newest = [s.version for s in gradio.specifier if s.operator in ("==", "<=")]
    assert len(newest) == 1 and str(fm["sdk_version"]) == newest[0] and newest[0] in gradio.specifier
    assert isinstance(fm["app_file"], str) and (ROOT / fm["app_file"]).is_file()
    # A string: an unquoted 3.10 would be read as the float 3.1.
    assert isinstance(fm["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", fm["python_version"])
    requires = re.search(r'requires-python\s*=\s*">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires and int(fm["python_version"].split(".")[1]) >= int(requires.group(1))
    # The flavors the hub client knows (the reference's list, plus zero-a10g and rtx-pro-6000*).
    assert fm["suggested_hardware"] in {h.value for h in SpaceHardware}
    assert fm["colorFrom"] in COLORS and fm["colorTo"] in COLORS
    assert isinstance(fm["title"], str) and fm["title"] and isinstance(fm["emoji"], str) and fm["emoji"]
    assert len(fm["short_description"]) <= 60  # the hub refuses longer card one-liners
    assert isinstance(fm.get("pinned", False), bool)
    assert all(isinstance(t, str) for t in fm.get("tags", []))
    licence = re.search(r'license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert licence and fm["license"] == licence.group(1).lower()


def test_models_and_preloads_name_what_the_code_loads():
    fm = front_matter()
    models = fm["models"]
    assert isinstance(models, list) and models
    for name in models:
        assert isinstance(name, str) and len(name) <= 96 and REPO_ID.fullmatch(name), name
    mean_sources = {p.mean_source[0] for p in PRESETS.values() if p.mean_source}
    downloads = {w.repo for p in PRESETS.values() for w in p.downloads}
    loaded = {p.hub_id for p in PRESETS.values()} | mean_sources | downloads
    # Every preset's repositories are declared (the Space card links them).
    assert loaded <= set(models), f"repositories the code loads, not in models: {loaded - set(models)}"
    assert set(models) <= loaded, f"models the code never loads: {set(models) - loaded}"
    default = PRESETS[DEFAULT_MODEL]
    assert default.hub_id in models
    entries = preloads(fm)
    assert {e.repo for e in entries} <= set(models)
    # The default model and the repository its mean comes from are on disk before start.
    assert default.hub_id in {e.repo for e in entries}
    if default.mean_source:
        repo, subfolder = default.mean_source
        entry = next(e for e in entries if e.repo == repo)
        assert entry.files is None or all(f.startswith(f"{subfolder}/") for f in entry.files), \
            f"{repo}: preload only what the mean is read from ({subfolder}/)"


def test_readme_gradio_client_snippet_compiles():
    text = README.read_text(encoding="utf-8")
    section = text.split("## The app and its HTTP API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks and "gradio_client" in blocks[0]
    compile(blocks[0], "README snippet", "exec")
    for endpoint in ("/preview", "/sequence"):
        assert f'api_name="{endpoint}"' in blocks[0]


# -- the Space, running -----------------------------------------------------------------------
# Runs the app file as `python app.py` does, with `spaces.GPU` wrapped: the wrapper calls the
# real decorator, then records (JSON lines) what it decorated and each call of what it returned.
SPACES_GPU_RECORDER = '''
import functools, itertools, json, os, runpy, sys, threading

import spaces

LOG, REAL_GPU, LOCK, CALLS = os.environ["SPACES_GPU_LOG"], spaces.GPU, threading.Lock(), itertools.count()


def record(**event):
    with LOCK, open(LOG, "a") as f:
        f.write(json.dumps(event) + "\\n")


def recording_gpu(task=None, **options):
    def decorate(fn):
        decorated = REAL_GPU(fn, **options)
        name = fn.__qualname__
        record(event="decorated", function=name, options=options, unchanged=decorated is fn)

        @functools.wraps(decorated)
        def run(*args, **kwargs):
            call = next(CALLS)
            record(event="enter", function=name, call=call)
            try:
                return decorated(*args, **kwargs)
            finally:
                record(event="exit", function=name, call=call)
        return run
    return decorate if task is None else decorate(task)


spaces.GPU = recording_gpu
app_file = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(app_file)))
runpy.run_path(app_file, run_name="__main__")
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preload_hub_cache(hub_cache: Path, entries, repositories: dict[str, Path]) -> None:
    """What preload_from_hub leaves in the hub cache: each entry's files (or the whole repository)."""
    for entry in entries:
        source = repositories[entry.repo]
        revision = entry.revision or hashlib.sha1(entry.repo.encode()).hexdigest()
        repo_dir = hub_cache / f"models--{entry.repo.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / revision
        if entry.files is None:
            shutil.copytree(source, snapshot)
        for name in entry.files or []:
            assert (source / name).is_file(), f"preload_from_hub names {entry.repo}/{name}, " \
                                              "which is not in that repository's layout"
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, snapshot / name)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)


@contextmanager
def running_space(app_file: str, hf_home: Path, work: Path):
    """`python <app_file>` as a Gradio Space outside ZeroGPU starts it; yields url, log, records."""
    recorder, gpu_log, log_path = work / "spaces_gpu_recorder.py", work / "spaces_gpu.jsonl", work / "app.log"
    recorder.write_text(SPACES_GPU_RECORDER)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSLERP_", "GRADIO_", "SPACES_"))}
    env.update(SYSTEM="spaces", SPACE_ID=SPACE_ID, SPACE_AUTHOR_NAME=SPACE_ID.split("/")[0],
               SPACE_REPO_NAME=SPACE_ID.split("/")[1], HF_HOME=str(hf_home), HF_HUB_OFFLINE="1",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_TEMP_DIR=str(work / "gradio"), GRADIO_ANALYTICS_ENABLED="False",
               TMPDIR=str(work), SPACES_GPU_LOG=str(gpu_log))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(recorder), app_file], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{app_file} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    config = json.load(r)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{app_file} did not start in {STARTUP_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)

        def records():  # none yet when spaces.GPU was never used
            lines = gpu_log.read_text().splitlines() if gpu_log.exists() else []
            return [json.loads(line) for line in lines]

        yield SimpleNamespace(url=url, log=log_path, config=config, records=records, hf_home=hf_home)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    from vslerp_app.fixtures import write_fixture

    fm = front_matter()
    entries = preloads(fm)
    # Each preloaded repository, as tiny random weights in its real layout (a Karlo repository
    # carries no stats of ours, so the mean must come from where its preset says).
    by_repo = {p.hub_id: p for p in PRESETS.values()}
    assert {e.repo for e in entries} <= set(by_repo), "a preloaded repository that is no preset"
    repositories = {e.repo: write_fixture(by_repo[e.repo].kind, tmp_path_factory.mktemp("repo"),
                                          write_stats=False) for e in entries}
    hf_home = tmp_path_factory.mktemp("hf-home")
    preload_hub_cache(hf_home / "hub", entries, repositories)
    with running_space(fm["app_file"], hf_home, tmp_path_factory.mktemp("space")) as running:
        yield running


@pytest.fixture(scope="module")
def client(space, tmp_path_factory):
    from gradio_client import Client

    return Client(space.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def _calls(records, function: str) -> list[int]:
    return [r["call"] for r in records if r["event"] == "enter" and r["function"] == function]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_the_space_loads_the_default_model_and_its_mean_from_the_preloaded_cache(space):
    details = next(c["props"]["value"] for c in space.config["components"]
                   if c["type"] == "json" and c["props"].get("label") == "details")
    assert details["model"] == DEFAULT_MODEL
    repo, subfolder = PRESETS[DEFAULT_MODEL].mean_source
    assert details["stats_note"] == f"mean from {repo}/{subfolder}"
    assert space.config["space_id"] == SPACE_ID  # gradio took it for a Space


def test_spaces_gpu_decorates_the_three_render_functions(space):
    decorated = [r for r in space.records() if r["event"] == "decorated"]
    assert sorted(r["function"] for r in decorated) == ["Studio._run_frame", "Studio._run_path",
                                                        "Studio._run_sequence"]
    for r in decorated:
        assert r["options"].keys() == {"duration"} and r["options"]["duration"] > 0, r
        # Outside ZeroGPU the real decorator hands the function back untouched.
        assert r["unchanged"] is True, r


def test_preview_through_gradio_client_runs_in_the_decorated_function(space, client):
    from gradio_client import handle_file

    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == \
        {"/preview", "/sequence", "/path"}
    before = _calls(space.records(), "Studio._run_frame")
    image, readouts = client.predict(
        source=handle_file(EXAMPLES / "chelsea.jpg"), target=handle_file(EXAMPLES / "rocket.jpg"),
        theta=0.5, alpha=1.0, seed=7, quality="full", api_name="/preview", **FAST)
    with Image.open(image) as im:
        assert im.format == "PNG" and min(im.size) > 0
    # alpha 1 needs stats: the mean preloaded from the other repository.
    assert readouts["alpha"] == 1.0
    assert _finite(readouts["conformity"]) and _finite(readouts["frame_conformity"])
    assert len(_calls(space.records(), "Studio._run_frame")) == len(before) + 1


def test_path_through_gradio_client_runs_in_the_decorated_function(space, client):
    from gradio_client import handle_file

    before = _calls(space.records(), "Studio._run_path")
    gallery, plot, mp4, gif, zip_path, smoothness = client.predict(
        keyframe_1=handle_file(EXAMPLES / "coffee.jpg"), keyframe_2=handle_file(EXAMPLES / "astronaut.jpg"),
        frames=4, loop=True, alpha="0.5", seed=3, quality="preview", api_name="/path", **FAST)
    assert len(gallery) == 4 and Image.open(gif).n_frames == 4
    assert len(_calls(space.records(), "Studio._run_path")) == len(before) + 1


def test_sequence_through_gradio_client_runs_in_the_decorated_function_with_progress(space, client):
    import asyncio

    from gradio_client import handle_file

    before = _calls(space.records(), "Studio._run_sequence")
    job = client.submit(
        source=handle_file(EXAMPLES / "coffee.jpg"), target=handle_file(EXAMPLES / "astronaut.jpg"),
        sweep="theta", alpha=0.5, theta_start=0.0, theta_stop=1.0, theta_frames=3, seed=3, fps=4,
        quality="preview", api_name="/sequence", **FAST)
    gallery, plot, mp4, gif, zip_path, smoothness = job.result(timeout=300)
    assert len(gallery) == 3
    with zipfile.ZipFile(zip_path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        Image.open(io.BytesIO(zf.read("frames/0002.png"))).verify()
    assert manifest["frame_count"] == 3 and manifest["status"] == "complete"
    assert len(_calls(space.records(), "Studio._run_sequence")) == len(before) + 1

    async def updates():
        return [u async for u in job]

    progress = [unit for u in asyncio.run(updates()) for unit in (getattr(u, "progress_data", None) or [])]
    # Outside ZeroGPU the frames' progress reaches the client (on ZeroGPU it cannot be pickled).
    assert any(p.unit == "frames" and p.index == 3 and p.length == 3 for p in progress), progress


def test_one_gpu_job_runs_at_a_time(space, client):
    from gradio_client import handle_file

    start = len(space.records())
    frame = {"source": handle_file(EXAMPLES / "chelsea.jpg"), "target": handle_file(EXAMPLES / "coffee.jpg"),
             "theta": 0.3, "alpha": 0.0, "quality": "preview", "api_name": "/preview", **FAST}
    jobs = [client.submit(seed=s, **frame) for s in (1, 2)]
    jobs.append(client.submit(source=handle_file(EXAMPLES / "rocket.jpg"),
                              target=handle_file(EXAMPLES / "coffee.jpg"), sweep="alpha", theta=0.5,
                              alpha_start=0.0, alpha_stop=1.0, alpha_frames=2,
                              quality="preview", api_name="/sequence", **FAST))
    for job in jobs:
        job.result(timeout=300)
    events = [r for r in space.records()[start:] if r["event"] in ("enter", "exit")]
    assert len(events) == 6
    # The GPU functions never overlap: each call exits before the next one enters.
    pairs = list(zip(events[::2], events[1::2], strict=True))
    assert all(a["event"] == "enter" and b["event"] == "exit" and a["call"] == b["call"]
               for a, b in pairs), events


def test_the_space_serves_no_file_outside_its_own_outputs(space):
    snapshot = next((space.hf_home / "hub").glob("models--*/snapshots/*/model_index.json"))
    for path in (ROOT / "app.py", ROOT / "requirements.txt", snapshot):
        url = f"{space.url}gradio_api/file={urllib.request.pathname2url(str(path))}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code in (403, 404), (path, refused.value.code)


def test_the_space_log_has_no_traceback_through_our_code(space):
    log = space.log.read_text()
    ours = [line for line in log.splitlines() if line.strip().startswith("File ") and str(ROOT) in line]
    assert not ours, log[-3000:]


# -- the Docker image -------------------------------------------------------------------------
def dockerfile():
    from dockerfile_parse import DockerfileParser

    parsed = DockerfileParser(str(ROOT / "Dockerfile"), env_replace=True)
    return parsed, [i for i in parsed.structure if i["instruction"] != "COMMENT"]


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line split into its simple commands (on &&, ||, ;), each as argv."""
    words = shlex.split(run.replace("(", " ").replace(")", " "))
    commands, current = [], []
    for word in words:
        if word in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in [*commands, current] if c]


def copied_into(instructions, path: str) -> str | None:
    """The build-context file that these instructions' COPYs put at ``path`` (relative to WORKDIR)."""
    workdir, landed = "/", {}
    for i in instructions:
        if i["instruction"] == "WORKDIR":
            workdir = os.path.join(workdir, i["value"])
        elif i["instruction"] == "COPY":
            *sources, dest = [w for w in shlex.split(i["value"]) if not w.startswith("--")]
            for src in sources:
                if src == ".":  # the whole context: every file lands under dest
                    continue
                where = os.path.join(workdir, dest, os.path.basename(src)) if dest.endswith("/") \
                    else os.path.join(workdir, dest)
                landed[os.path.normpath(where)] = os.path.normpath(src)
    return landed.get(os.path.normpath(os.path.join(workdir, path)))


def test_dockerfile_installs_the_space_requirements_and_runs_the_app_as_a_non_root_user():
    parsed, instructions = dockerfile()
    assert re.fullmatch(r"nvidia/cuda:[\w.-]*runtime[\w.-]*", parsed.baseimage), parsed.baseimage
    # The file pip installs is the repository's requirements.txt, copied in before.
    pips = [(n, c) for n, i in enumerate(instructions) if i["instruction"] == "RUN"
            for c in shell_commands(i["value"])
            if c[:2] == ["pip", "install"] or c[1:4] == ["-m", "pip", "install"]]
    assert len(pips) == 1 and "-r" in pips[0][1], pips
    run_at, pip = pips[0]
    assert copied_into(instructions[:run_at], pip[pip.index("-r") + 1]) == "requirements.txt"
    # ... the same file `pip install -e .` reads (the README) and a Space installs.
    assert re.search(r'dependencies\s*=\s*\{\s*file\s*=\s*\["requirements.txt"\]\s*\}',
                     (ROOT / "pyproject.toml").read_text())

    # The last USER before CMD is the non-root user the image creates.
    cmd_at = max(n for n, i in enumerate(instructions) if i["instruction"] == "CMD")
    users = [i["value"] for i in instructions[:cmd_at] if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    created = [c for i in instructions if i["instruction"] == "RUN" for c in shell_commands(i["value"])
               if c[0] == "useradd"]
    assert created and users[-1] in {created[0][-1], created[0][created[0].index("--uid") + 1]}

    cmd = json.loads(instructions[cmd_at]["value"])  # exec form: signals reach python
    assert cmd[0].startswith("python") and cmd[1] == "app.py", cmd
    envs = parsed.envs
    exposed = [i["value"] for i in instructions if i["instruction"] == "EXPOSE"]
    assert exposed == [envs["GRADIO_SERVER_PORT"]] and envs["GRADIO_SERVER_NAME"] == "0.0.0.0"
    health = next(i["value"] for i in instructions if i["instruction"] == "HEALTHCHECK")
    assert re.search(rf"//127\.0\.0\.1:{envs['GRADIO_SERVER_PORT']}/", health)


def test_dockerignore_keeps_the_app_and_drops_the_rest():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for needed in ("app.py", "requirements.txt", "pipelines/loading.py", "vslerp_app/service.py",
                   "examples/chelsea.jpg", "examples/LICENSES.md"):
        assert not ignored(needed), needed
    for dropped in (".git", "tests/test_space.py", "test-artifacts", "bench/run.py"):
        assert ignored(dropped), dropped


def test_examples_are_bundled_small_and_licensed():
    licences = (EXAMPLES / "LICENSES.md").read_text()
    photos = sorted(p for p in EXAMPLES.iterdir() if p.suffix in {".jpg", ".png"})
    assert len(photos) >= 3
    for p in photos:
        assert f"`{p.name}`" in licences, f"{p.name} has no licence entry"
        with Image.open(p) as im:
            assert max(im.size) <= 512, p.name
        assert p.stat().st_size < 200_000, p.name

