"""The manifest of a render: its format, settings fingerprint, frame checks, versions.

``manifest.json`` pins a fingerprint of the settings (model, the inputs' content hashes,
theta/alpha values, seed, steps, ...). A re-run keeps every frame that is still valid on
disk (it decodes and matches its entry's checksum and size), and a run with other settings
in the same folder is refused with the difference named, instead of mixing frames.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin

from vslerp_app.files import RenderError

__all__ = ["FRAMES_DIR", "MANIFEST_FORMAT", "MANIFEST_NAME", "differences", "fingerprint",
           "frame_valid", "library_versions", "model_id", "now", "png_bytes", "read_manifest",
           "refuse_if_changed", "short"]

MANIFEST_NAME = "manifest.json"
FRAMES_DIR = "frames"
MANIFEST_FORMAT = "vslerp-render/1"


def library_versions() -> dict:
    """Versions of Python and of every library that shapes a frame."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("vslerp-studio", "torch", "diffusers", "transformers", "accelerate", "numpy",
                 "pillow", "safetensors", "imageio", "imageio-ffmpeg", "matplotlib", "open_clip_torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def fingerprint(settings: dict) -> str:
    """sha256 of the settings as canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def short(value) -> str:
    """A value as JSON, cut to 60 characters (for messages)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: dict, new: dict, keys=None) -> list[str]:
    """`key old -> new` for every key whose value differs."""
    keys = keys if keys is not None else sorted(set(old) | set(new))
    return [f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in keys
            if old.get(k) != new.get(k)]


def model_id(model) -> str:
    """A model directory as its real path (so ./m and /abs/m are one model), a preset as named."""
    text = str(model)
    return os.path.realpath(text) if os.path.isdir(text) else text


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest in out_dir, None if there is none; RenderError if it is not ours."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RenderError(f"{path} is unreadable ({e}); delete it (and {out_dir / FRAMES_DIR}) "
                          "to start this render over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise RenderError(f"{path} is not a vslerp render manifest; use another --out directory")
    return manifest


def refuse_if_changed(old: dict | None, settings: dict, out_dir: Path, keys=None) -> None:
    """RenderError naming every difference between the old render's settings and these."""
    if old is None:
        return
    old_settings = old.get("settings", {})
    diffs = differences(old_settings, settings, keys)
    if diffs:
        raise RenderError(
            f"{out_dir} holds a render with other settings ({'; '.join(diffs)}); refusing to "
            "mix frames: use another --out directory, or delete this one to start over")


def frame_valid(out_dir: Path, entry: dict) -> bool:
    """The frame file exists, matches its manifest entry's checksum and size, and decodes."""
    path = out_dir / entry.get("file", "")
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return False
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
            return list(im.size) == [entry.get("width"), entry.get("height")]
    except Exception:
        return False


def png_bytes(image: PIL.Image.Image, text: dict) -> bytes:
    """The frame as PNG bytes, with ``text`` as JSON in a "vslerp" text chunk."""
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("vslerp", json.dumps(text, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
