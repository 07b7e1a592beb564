"""What every model family offers the runner: the one narrow interface.

A family is one kind of unCLIP model (Karlo, Stable unCLIP, Kandinsky 2.2, ...). Its module
subclasses `Family` and says, for its own repositories:

- how to recognise a local directory in its hub layout (`recognises`), check it is
  complete (`check_complete`) and load the components (`load`); a preset's files come
  from the hub as its `ModelPreset.downloads` say (`pipelines.loading.fetch_preset`);
- which CLIP image encoder turns images into the raw embeddings it is driven by
  (`feature_extractor`, `image_encoder`);
- how to denoise a batch of embeddings on one noise path (`denoise`, given one generator
  per row, all seeded alike), what a preview is (`default_settings(preview=True)`), which
  networks run once per step (`denoisers`, for the step callback), and which settings it
  cannot run (`settings_problem`).

What all families share (the NaN retry in float32, the out-of-memory split, the step
counter, device and dtype) lives in `pipelines.runner` and `pipelines.loading`, never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL.Image
import torch

__all__ = ["Family", "RenderSettings"]


@dataclass
class RenderSettings:
    """Sampling settings of one call; defaults come from the model preset.

    Attributes:
        steps: denoising steps (Karlo: the 64 px decoder).
        super_res_steps: Karlo's super-resolution steps (ignored by the other families).
        guidance_scale: classifier-free guidance; 1.0 is off.
        noise_level: Stable unCLIP's embedding noise augmentation (ignored by the others).
        resolution: output side in pixels, or (width, height) for a non-square frame where
            the family renders at any size (Karlo's sizes are fixed by its UNets).
        preview: the family's cheap frame (Karlo: the 64 px decoder alone; the others:
            smaller, fewer steps).
        strength: how far the decoder starts from the source image's own latents
            (img2img); 1.0 starts from pure noise. Only families with `takes_strength`.
        adapter_scale: IP-Adapter's image conditioning scale (ignored by the others).
        prompt: IP-Adapter's text prompt, steering every frame (ignored by the others).
    """

    steps: int
    super_res_steps: int
    guidance_scale: float
    noise_level: int
    resolution: int | tuple[int, int]
    preview: bool = False
    strength: float = 1.0
    adapter_scale: float = 1.0
    prompt: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        r = self.resolution
        return (int(r), int(r)) if isinstance(r, (int, np.integer)) else (int(r[0]), int(r[1]))


def read_index(path: Path) -> dict | None:
    """The parsed model_index.json of ``path``, or None when there is none (or it is broken)."""
    import json

    try:
        data = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Family:
    """One model family: its loading, its encoder and its denoising, behind one interface.

    Subclasses set the class attributes and implement `load`, `denoisers`,
    `default_settings` and `denoise`; an instance wraps one loaded model (`pipe`).

    Attributes:
        name: the family's short name ("karlo"), what `kind` reports.
        default_preset: the preset whose settings a directory that is no preset gets.
        pipeline_classes: the diffusers pipeline classes its model_index.json may name.
        min_steps: fewest steps per stage its schedulers accept.
        takes_strength: it can start from the source image's latents (strength < 1).
        mean_locations: (folder inside the model directory, tensor name) where the mean
            of its image embeddings may be stored (`pipelines.loading.read_embedded_mean`).
    """

    name: ClassVar[str]
    default_preset: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    min_steps: ClassVar[int] = 1
    takes_strength: ClassVar[bool] = False
    mean_locations: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, pipe):
        self.pipe = pipe

    # -- finding and loading ---------------------------------------------------------------
    @classmethod
    def recognises(cls, path: Path) -> bool:
        """Whether ``path`` holds a model of this family in its hub layout."""
        index = read_index(path)
        return index is not None and index.get("_class_name") in cls.pipeline_classes

    @classmethod
    def check_precision(cls, device: torch.device, dtype: torch.dtype) -> None:
        """Refuse (ModelLoadError) a device and dtype this family cannot run, before loading."""

    @classmethod
    def check_complete(cls, path: Path) -> None:
        """Raise ModelLoadError naming what is missing from an incomplete directory."""
        from pipelines.loading import check_components

        check_components(path)

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype) -> Family:
        """The family's components from ``path`` in ``dtype``, on the CPU."""
        raise NotImplementedError

    # -- where it runs ---------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> None:
        """Move every component (the float32 retry flips dtype and back)."""
        self.pipe.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})

    def enable_offload(self, device: torch.device) -> None:
        """Model CPU offload: each component moves to ``device`` only while it runs."""
        self.pipe.enable_model_cpu_offload(device=device)

    def quiet(self) -> None:
        """No progress bars from the stock pipelines."""
        self.pipe.set_progress_bar_config(disable=True)

    # -- the encoder -----------------------------------------------------------------------
    @property
    def feature_extractor(self):
        """The CLIPImageProcessor in front of the image encoder."""
        return self.pipe.feature_extractor

    @property
    def image_encoder(self):
        """The CLIPVisionModelWithProjection whose raw image_embeds drive the decoder."""
        return self.pipe.image_encoder

    def directory_preset(self, preset):
        """The settings of a directory that is no preset (a fixture, a fine-tune): ``preset``
        (the family's default) with what the loaded model says otherwise."""
        return preset

    # -- denoising -------------------------------------------------------------------------
    def denoisers(self) -> list[torch.nn.Module]:
        """The networks called once per denoising step (guidance batches both halves)."""
        raise NotImplementedError

    def default_settings(self, preset, preview: bool) -> RenderSettings:
        """The preset's settings for a full frame or a preview, sizes read off the model."""
        raise NotImplementedError

    def steps_per_batch(self, settings: RenderSettings) -> int:
        """Denoiser calls one batch takes (what the step callback counts to)."""
        return settings.steps

    def settings_problem(self, settings: RenderSettings) -> str | None:
        """Why this family cannot run ``settings`` (a sentence echoing the value), or None."""
        if settings.strength != 1.0 and not self.takes_strength:
            return (f"strength={settings.strength:g} needs a model that starts from the source "
                    f"image's latents (kandinsky-2-2, ip-adapter); {self.name} always starts from noise")
        if not self.takes_strength:
            return None
        if not 0.0 < settings.strength <= 1.0:
            return f"strength must be in (0, 1], got {settings.strength}"
        if settings.strength < 1.0 and int(settings.steps * settings.strength) < 1:
            return (f"strength={settings.strength:g} with {settings.steps} steps leaves no denoising "
                    f"step (int(steps x strength) = 0): raise the steps or the strength")
        return None

    def denoise(self, embeddings: torch.Tensor, settings: RenderSettings,
                generators: list[torch.Generator], source: PIL.Image.Image | None = None) -> np.ndarray:
        """Float pixels in [0, 1] (NaN kept), (B, H, W, 3), one frame per embedding row.

        ``generators`` holds one generator per row, all seeded alike; ``source`` is the
        source image when ``settings.strength`` < 1.
        """
        raise NotImplementedError
