"""The layers point one way: pipelines/ <- vslerp_app/ <- app.py (and bench/ uses public names).

Every import is read with `ast`, the ones inside functions included, so a lazy import cannot
hide a dependency against the grain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "vslerp_app", "bench")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) of every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _offending(paths: list[Path], bad) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line}: {module}" for p in paths
            for line, module, names in _imports(p) if bad(module, names)]


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_files_are_found():
    assert len(_sources("pipelines")) >= 5 and len(_sources("vslerp_app")) >= 10
    assert (ROOT / "app.py").is_file()


def test_pipelines_knows_nothing_of_vslerp_app():
    assert _offending(_sources("pipelines"), lambda m, _: _top(m) in ("vslerp_app", "app", "gradio")) == []


def test_vslerp_app_imports_no_diffusers_transformers_or_gradio():
    bad = {"diffusers", "transformers", "gradio", "gradio_client", "spaces", "app"}
    assert _offending(_sources("vslerp_app"), lambda m, _: _top(m) in bad) == []


def test_nothing_imports_the_app():
    everything = _sources(*PACKAGES, "tests")
    assert _offending([p for p in everything if p.parent.name != "tests"],
                      lambda m, _: _top(m) == "app") == []


# The app benchmark drives the running app as its users' scripts do: gradio_client, no Gradio.
APP_CLIENTS = {ROOT / "bench" / "app_bench.py"}


@pytest.mark.parametrize("folder", ["pipelines", "vslerp_app", "bench"])
def test_gradio_only_in_app_py(folder):
    sources = _sources(folder)
    assert _offending([p for p in sources if p not in APP_CLIENTS],
                      lambda m, _: _top(m) in ("gradio", "gradio_client", "spaces")) == []
    assert _offending([p for p in sources if p in APP_CLIENTS],
                      lambda m, _: _top(m) in ("gradio", "spaces")) == []


def test_bench_uses_only_public_names():
    def private(module: str, names: list[str]) -> bool:
        ours = _top(module) in ("pipelines", "vslerp_app")
        return ours and (any(part.startswith("_") for part in module.split("."))
                         or any(name.startswith("_") for name in names))

    assert _offending(_sources("bench"), private) == []
    # Attribute access counts too: no `obj._private` on our objects from the benchmark.
    leaks = [f"{p.relative_to(ROOT)}:{node.lineno}: .{node.attr}" for p in _sources("bench")
             for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(node, ast.Attribute) and node.attr.startswith("_")
             and not node.attr.startswith("__")]
    assert leaks == []
