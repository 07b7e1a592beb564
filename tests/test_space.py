"""The Hugging Face Space and the Docker image, checked statically (no hub, no Docker daemon).

The README's YAML front matter is the Space's configuration: it must parse, name the
gradio version pinned in requirements.txt, and point at an app file that builds `demo`.
The Dockerfile must run the app as user 1000 on port 7860 from a CUDA runtime base.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# https://huggingface.co/docs/hub/spaces-config-reference
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small",
            "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "zero-a10g"}


def front_matter() -> dict:
    text = README.read_text(encoding="utf-8")
    m = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with a YAML front matter block between --- lines"
    data = yaml.safe_load(m.group(1))
    assert isinstance(data, dict)
    return data


def pinned(requirements: Path, package: str) -> str:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^\s*{re.escape(package)}\s*==\s*([^\s;#]+)", line, re.I)
        if m:
            return m.group(1)
    raise AssertionError(f"{package} is not pinned with == in {requirements.name}")


def test_front_matter_parses_and_matches_requirements():
    fm = front_matter()
    assert fm["sdk"] == "gradio"
    assert str(fm["sdk_version"]) == pinned(ROOT / "requirements.txt", "gradio")
    assert (ROOT / fm["app_file"]).is_file() and fm["app_file"] == "app.py"
    # A string: an unquoted 3.10 would be read as the float 3.1.
    assert isinstance(fm["python_version"], str) and re.fullmatch(r"3\.\d+(\.\d+)?", fm["python_version"])
    minor = int(fm["python_version"].split(".")[1])
    requires = re.search(r'requires-python\s*=\s*">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires and minor >= int(requires.group(1))
    assert fm["suggested_hardware"] in HARDWARE
    assert fm["colorFrom"] in COLORS and fm["colorTo"] in COLORS
    assert fm["title"] and fm["emoji"]
    assert len(fm["short_description"]) <= 60  # the hub's limit for the card's one-liner


def test_front_matter_names_and_preloads_the_default_model():
    from pipelines.presets import DEFAULT_MODEL, PRESETS

    fm = front_matter()
    models = fm["models"]
    default = PRESETS[DEFAULT_MODEL]
    assert default.hub_id in models
    preload_repos = [entry.split()[0] for entry in fm["preload_from_hub"]]
    assert default.hub_id in preload_repos
    # Karlo's preset reads its ViT-L/14 mean from another repository: preloaded too.
    if default.mean_source is not None:
        repo, subfolder = default.mean_source
        entry = next(e for e in fm["preload_from_hub"] if e.split()[0] == repo)
        files = entry.split()[1].split(",") if len(entry.split()) > 1 else []
        assert not files or all(f.startswith(f"{subfolder}/") for f in files)
    assert set(preload_repos) <= set(models)
    for name in models:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", name), name


def test_app_file_builds_demo_with_the_named_endpoints_and_spaces_gpu():
    source = (ROOT / "app.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    def binds_demo(item) -> bool:
        return isinstance(item.optional_vars, ast.Name) and item.optional_vars.id == "demo"

    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.With) and any(map(binds_demo, n.items))]
    assert blocks, "app.py must build `with gr.Blocks(...) as demo:` at import time"
    api_names = {kw.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                 for kw in n.keywords if kw.arg == "api_name" and isinstance(kw.value, ast.Constant)}
    assert {"preview", "sequence"} <= api_names
    assert "import spaces" in source and "spaces.GPU" in source
    assert "max_file_size" in source and "default_concurrency_limit=1" in source
    assert "delete_cache" in source and "allowed_paths=[]" in source


def test_readme_gradio_client_snippet_compiles():
    text = README.read_text(encoding="utf-8")
    section = text.split("## The app and its HTTP API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks and "gradio_client" in blocks[0]
    compile(blocks[0], "README snippet", "exec")
    for endpoint in ("/preview", "/sequence"):
        assert f'api_name="{endpoint}"' in blocks[0]


def test_dockerfile_has_the_required_parts():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    base = next(ln for ln in lines if ln.upper().startswith("FROM "))
    assert re.match(r"FROM nvidia/cuda:[\w.-]*runtime[\w.-]*", base), base
    assert re.search(r"useradd[^\n]*--uid 1000|useradd[^\n]*-u 1000", text)
    user = [ln for ln in lines if ln.upper().startswith("USER ")]
    assert user and user[-1].split()[1] in {"1000", "user"}, "the app must not run as root"
    assert "EXPOSE 7860" in lines
    assert re.search(r"GRADIO_SERVER_NAME=0\.0\.0\.0", text)
    assert re.search(r"pip install[^\n]*-r requirements\.txt", text)
    cmd = next(ln for ln in reversed(lines) if ln.upper().startswith("CMD"))
    assert "app.py" in cmd
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "test-artifacts" in ignored


def test_examples_are_bundled_small_and_licensed():
    licences = (ROOT / "examples" / "LICENSES.md").read_text()
    photos = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in {".jpg", ".png"})
    assert len(photos) >= 3
    from PIL import Image

    for p in photos:
        assert f"`{p.name}`" in licences, f"{p.name} has no licence entry"
        with Image.open(p) as im:
            assert max(im.size) <= 512, p.name
        assert p.stat().st_size < 200_000, p.name
