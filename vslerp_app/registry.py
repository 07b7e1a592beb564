"""Where statistics files live: the repository's `stats/` folder, the file of each preset,
and the user's cache of stats made by `vslerp stats --dataset` (one file per encoder).

A preset's registered stats are the image-modality statistics of its encoder over MS-COCO
val2017 (see stats/README.md for how to compute them). `VSLERP_STATS_DIR` points elsewhere
(an installed package has no repository beside it). The user cache is
``$VSLERP_STATS_CACHE``, else ``$XDG_CACHE_HOME/vslerp-studio/stats`` (``~/.cache/...``);
a file there is named after the encoder, so models sharing an encoder share it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_DATASET", "DEFAULT_SPLIT", "PRESET_STATS", "STATS_DIR", "encoder_key",
           "full_stats_command", "preset_stats_path", "user_stats_dir", "user_stats_path"]

# The default image set of `vslerp stats --dataset`: MS-COCO 2017 validation (the paper's
# 5,000 images) as parquet with an `image` column on the hub.
DEFAULT_DATASET = "AKCIT/coco2017-captioning"
DEFAULT_SPLIT = "validation"

STATS_DIR = Path(os.environ.get("VSLERP_STATS_DIR", Path(__file__).resolve().parent.parent / "stats"))

# Preset name -> its stats file under STATS_DIR. Karlo and Stable unCLIP-small share
# the ViT-L/14 encoder, so they share its statistics.
PRESET_STATS = {
    # IP-Adapter's image encoder is Stable unCLIP-h's OpenCLIP ViT-H/14, whatever the base.
    "ip-adapter-sd15": "stable-unclip-h-vit-h14-coco-val2017.safetensors",
    "ip-adapter-sdxl": "stable-unclip-h-vit-h14-coco-val2017.safetensors",
    "karlo": "karlo-vit-l14-coco-val2017.safetensors",
    "stable-unclip-h": "stable-unclip-h-vit-h14-coco-val2017.safetensors",
    "stable-unclip-l": "karlo-vit-l14-coco-val2017.safetensors",
    "kandinsky-2-2": "kandinsky-2-2-vit-bigg14-coco-val2017.safetensors",
}


def preset_stats_path(name: str) -> Path | None:
    """The registered stats file of preset ``name`` (it may not exist yet), or None."""
    file = PRESET_STATS.get(name)
    return None if file is None else STATS_DIR / file


def user_stats_dir() -> Path:
    """The user's cache of stats files (read at call time, so the environment can move it)."""
    if os.environ.get("VSLERP_STATS_CACHE"):
        return Path(os.environ["VSLERP_STATS_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vslerp-studio" / "stats"


def encoder_key(encoder: str) -> str:
    """A file name for an encoder's name: "openai/clip-vit-large-patch14" ->
    "openai--clip-vit-large-patch14" (anything but letters, digits, '.', '_', '-' -> '--')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", encoder).strip("-") or "encoder"


def user_stats_path(encoder: str) -> Path:
    """Where `vslerp stats --dataset` writes, and `load_pipeline` looks for, ``encoder``'s stats."""
    return user_stats_dir() / f"{encoder_key(encoder)}.safetensors"


def full_stats_command(model: str) -> str:
    """The one command that makes full statistics for ``model`` in the user cache."""
    return f"vslerp stats --model {model} --dataset {DEFAULT_DATASET} --split {DEFAULT_SPLIT}"
