"""Where statistics files live: the repository's `stats/` folder and the file of each preset.

A preset's registered stats are the image-modality statistics of its encoder over MS-COCO
val2017 (see stats/README.md for how to compute them). `VSLERP_STATS_DIR` points elsewhere
(an installed package has no repository beside it).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRESET_STATS", "STATS_DIR", "preset_stats_path"]

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
}


def preset_stats_path(name: str) -> Path | None:
    """The registered stats file of preset ``name`` (it may not exist yet), or None."""
    file = PRESET_STATS.get(name)
    return None if file is None else STATS_DIR / file
