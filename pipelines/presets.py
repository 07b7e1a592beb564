"""Model presets as data: one `ModelPreset` per supported unCLIP checkpoint.

Everything is overridable per call; the defaults reproduce the published settings
(Karlo: the vSLERP authors' demo, 25 decoder + 7 super-resolution steps, guidance off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["ModelPreset", "PRESETS", "get_preset", "list_presets", "DEFAULT_MODEL"]


@dataclass(frozen=True)
class ModelPreset:
    """A supported checkpoint and its default settings.

    Attributes:
        name: the short name users type (`--model karlo`).
        hub_id: the Hugging Face hub repository.
        kind: "karlo" (two-stage pixel unCLIP) or "stable-unclip" (latent diffusion).
        pipeline_class: the diffusers class the repository holds.
        encoder: the CLIP image encoder whose embeddings drive generation.
        embedding_dim: the size of those raw image embeddings.
        resolution: output side in pixels of a full frame.
        steps: denoising steps (Karlo: the 64 px decoder).
        super_res_steps: Karlo's 256 px super-resolution steps (0 for Stable unCLIP).
        guidance_scale: classifier-free guidance (1.0 means off).
        noise_level: Stable unCLIP's image-embedding noise augmentation.
        preview_steps: steps of a preview frame (slider drags).
        preview_resolution: output side of a preview frame.
        mean_source: (hub repository, subfolder) holding the mean of this encoder's
            image embeddings over its training set, for a repository that carries none
            itself, or None. Karlo's image-variation repository ships no prior, but Stable
            unCLIP-small's image_normalizer holds the same ViT-L/14 mean as Karlo's prior
            `clip_mean`, a 6 KB download.
        description: one line for the UI.
    """

    name: str
    hub_id: str
    kind: str
    pipeline_class: str
    encoder: str
    embedding_dim: int
    resolution: int
    steps: int
    super_res_steps: int = 0
    guidance_scale: float = 1.0
    noise_level: int = 0
    preview_steps: int = 10
    preview_resolution: int = 64
    mean_source: tuple[str, str] | None = None
    description: str = ""


_KARLO = ModelPreset(
    name="karlo",
    hub_id="kakaobrain/karlo-v1-alpha-image-variations",
    kind="karlo",
    pipeline_class="UnCLIPImageVariationPipeline",
    encoder="openai/clip-vit-large-patch14",
    embedding_dim=768,
    resolution=256,
    steps=25,
    super_res_steps=7,
    guidance_scale=1.0,
    preview_steps=10,
    preview_resolution=64,
    mean_source=("stabilityai/stable-diffusion-2-1-unclip-small", "image_normalizer"),
    description="Karlo unCLIP image variations (ViT-L/14, 64 px decoder + 256 px SR)",
)
_STABLE_UNCLIP_H = ModelPreset(
    name="stable-unclip-h",
    hub_id="stabilityai/stable-diffusion-2-1-unclip",
    kind="stable-unclip",
    pipeline_class="StableUnCLIPImg2ImgPipeline",
    encoder="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    embedding_dim=1024,
    resolution=768,
    steps=20,
    guidance_scale=10.0,
    noise_level=0,
    preview_steps=8,
    preview_resolution=384,
    description="Stable unCLIP 2.1-h (ViT-H/14, 768 px)",
)
# The -small checkpoint samples like -h; only its encoder (ViT-L/14, Karlo's) differs.
_STABLE_UNCLIP_L = replace(
    _STABLE_UNCLIP_H,
    name="stable-unclip-l",
    hub_id="stabilityai/stable-diffusion-2-1-unclip-small",
    encoder=_KARLO.encoder,
    embedding_dim=_KARLO.embedding_dim,
    description="Stable unCLIP 2.1-small (ViT-L/14, 768 px)",
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (_KARLO, _STABLE_UNCLIP_H, _STABLE_UNCLIP_L)}

DEFAULT_MODEL = "karlo"

# Settings of a directory whose pipeline class is known but which is no preset (the tiny
# fixtures, a user's fine-tune): the preset of the same kind, minus the hub.
KIND_DEFAULTS = {"karlo": PRESETS["karlo"], "stable-unclip": PRESETS["stable-unclip-h"]}


def list_presets() -> list[str]:
    """Names of the known presets."""
    return list(PRESETS)


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)} "
            "(or pass a local directory in the hub layout)"
        ) from None
