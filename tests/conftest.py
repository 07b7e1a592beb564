"""Shared test setup: no test may reach the Hugging Face hub (our machines cannot), and the
app launched once per configuration (`launch_app`, `app`, `client`)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

# Set before diffusers/huggingface_hub are imported, so a download attempt fails at once
# with the hub's offline error instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def karlo_dir(tmp_path_factory):
    """A tiny Karlo pipeline in the hub layout, written once per session."""
    from vslerp_app.fixtures import write_fixture

    return write_fixture("karlo", tmp_path_factory.getbasetemp() / "tiny-karlo")


# -- a launched app ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(model_dir: Path, work: Path, extra_env: dict | None = None, *, args: tuple = (),
                 prefix: tuple = ()):
    """`python app.py --model model_dir --port P [args]` in a subprocess; yields its url and log.

    The app's temporary files (its request folders: ``work/vslerp-studio``) live in ``work``;
    ``prefix`` is a command line the app is started under (e.g. unshare).
    """
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(work), "MPLCONFIGDIR": str(work / "mpl"), **(extra_env or {})}
    env.pop("GRADIO_SERVER_PORT", None)
    log_path = work / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "app.py", "--model", str(model_dir), "--port", str(port),
             "--host", "127.0.0.1", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not start in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, proc=proc, log=log_path, work=work)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a server the tests started, killed if it has not ended 15 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def launch_app(tmp_path_factory):
    """``launch_app(model_dir, **options)``: the app on ``model_dir`` (options as in
    `launched_app`), started once per module for each model and set of options and stopped
    at the module's end. A launch costs ~25 s on CI (Python, torch, diffusers and Gradio
    imported, the model loaded); tests that change an app for good (its quota, its disk)
    launch their own."""
    running, stack = {}, contextlib.ExitStack()

    def launch(model_dir: Path, *, extra_env: dict | None = None, args: tuple = (), prefix: tuple = ()):
        key = (str(model_dir), tuple(sorted((extra_env or {}).items())), tuple(args), tuple(prefix))
        if key not in running:
            running[key] = stack.enter_context(launched_app(model_dir, tmp_path_factory.mktemp("app"),
                                                            extra_env, args=args, prefix=prefix))
        return running[key]

    with stack:
        yield launch


@pytest.fixture(scope="session")
def app(karlo_dir, tmp_path_factory):
    """The app with its default settings on the tiny Karlo, launched once for the session: the
    API, aiming and browser tests share it."""
    with launched_app(karlo_dir, tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture(scope="session")
def client(app, tmp_path_factory):
    """A gradio_client `Client` of the shared `app`."""
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
