"""`vslerp models` (the presets, whether each is in the local hub cache, their stats) and `--version`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from pipelines import PRESETS, get_preset
from vslerp_app.registry import PRESET_STATS


def vslerp(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_models_lists_every_preset_with_its_settings(tmp_path):
    result = vslerp("models", env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 0, result.stderr
    for name, preset in PRESETS.items():
        assert preset.hub_id in result.stdout and f"{name}" in result.stdout
    assert "karlo (default)" in result.stdout
    assert result.stdout.count("not downloaded yet") == len(PRESETS)
    assert "25 + 7 super-res steps" in result.stdout  # Karlo's published settings


def test_models_json_says_which_preset_is_in_the_hub_cache(karlo_dir, tmp_path):
    cache = tmp_path / "hub"
    revision = "1" * 40
    snapshot = cache / "models--kakaobrain--karlo-v1-alpha-image-variations" / "snapshots" / revision
    shutil.copytree(karlo_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(revision)
    result = vslerp("models", "--json", env={"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    presets = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(presets) == set(PRESETS)
    assert presets["karlo"]["local_snapshot"] == str(snapshot)
    assert presets["stable-unclip-h"]["local_snapshot"] is None
    karlo = get_preset("karlo")
    assert presets["karlo"]["embedding_dim"] == karlo.embedding_dim == 768
    assert presets["karlo"]["stats_path"].endswith(PRESET_STATS["karlo"])
    assert presets["karlo"]["stats_present"] is False  # no COCO stats are shipped in stats/


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    result = vslerp("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vslerp {version('vslerp-studio')}"


def test_every_command_and_argument_explains_itself():
    import argparse

    from vslerp_app.cli import build_parser
    from vslerp_app.outputs import DEFAULT_FPS

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"models", "fixture", "stats", "render"} <= set(sub.choices)
    for name, command in sub.choices.items():
        assert command.description and len(command.description) > 40, name
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    assert sub.choices["render"].get_default("fps") == DEFAULT_FPS


def test_help_is_printed_for_each_command():
    result = vslerp("fixture", "--help")
    assert result.returncode == 0
    assert "karlo (UnCLIPImageVariationPipeline)" in result.stdout and "folder to write" in result.stdout
    assert "seed of the random weights" in result.stdout
    result = vslerp("stats", "--help")
    assert "images encoded at once" in result.stdout
    assert "from 3 images per dimension" in " ".join(result.stdout.split())
    result = vslerp("render", "--help")
    assert "--verbose" in result.stdout and "may start with a minus" in result.stdout
