"""One module per model family, each a `Family` subclass; `FAMILIES` is the one table of them.

Adding a family is one module here (a `Family` subclass, listed below), one preset in
`pipelines.presets` and one fixture builder in `pipelines.fixtures`.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.families.base import Family, RenderSettings
from pipelines.families.ip_adapter import IpAdapter
from pipelines.families.kandinsky import Kandinsky22
from pipelines.families.karlo import Karlo
from pipelines.families.stable_unclip import StableUnclip

__all__ = ["FAMILIES", "Family", "RenderSettings", "family_named", "family_of", "supported_pipelines"]

FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Karlo, StableUnclip, Kandinsky22, IpAdapter)}


def family_named(name: str) -> type[Family]:
    """The family called ``name``; an unknown one raises ValueError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of(path: Path) -> type[Family] | None:
    """The family whose hub layout ``path`` holds, or None."""
    return next((f for f in FAMILIES.values() if f.recognises(Path(path))), None)


def supported_pipelines() -> dict[str, str]:
    """diffusers pipeline class -> family name, of the single-repository families."""
    return {cls: f.name for f in FAMILIES.values() for cls in f.pipeline_classes}
