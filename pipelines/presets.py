"""Model presets as data: one `ModelPreset` per supported unCLIP checkpoint.

Everything is overridable per call; the defaults reproduce the published settings
(Karlo: the vSLERP authors' demo, 25 decoder + 7 super-resolution steps, guidance off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MODEL", "HubFiles", "ModelPreset", "PRESETS", "get_preset",
           "list_presets"]

DEFAULT_MAX_BATCH = 8  # frames denoised at once unless asked otherwise (a GPU's sweet spot)


@dataclass(frozen=True)
class HubFiles:
    """What to download of one hub repository (`pipelines.loading.weight_files` picks the weights).

    Attributes:
        repo: the hub repository.
        folders: component folders needed: their configurations and one weights format each.
        files: top-level files needed.
        into: the folder of the model directory the repository becomes ("" for the root).
    """

    repo: str
    folders: tuple[str, ...]
    files: tuple[str, ...] = ("model_index.json",)
    into: str = ""


@dataclass(frozen=True)
class ModelPreset:
    """A supported checkpoint and its default settings.

    Attributes:
        name: the short name users type (`--model karlo`).
        hub_id: the Hugging Face hub repository (the decoder's, for a model of several).
        kind: the model family (`pipelines.families`): "karlo" (two-stage pixel unCLIP),
            "stable-unclip" (latent diffusion), "kandinsky-2-2" (latent, MoVQ) or
            "ip-adapter" (a Stable Diffusion 1.5 or SDXL base with h94's adapter).
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
        downloads: the repositories and files a model of several repositories needs (empty:
            every diffusers file of ``hub_id``).
        max_resolution: the largest side a frame may have (``resolution`` when fixed).
        description: one line for the UI.
        adapter_scale: IP-Adapter's image conditioning scale (1.0: the image prompt alone).
        prompt: IP-Adapter's text prompt for every frame ("" for none).
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
    downloads: tuple[HubFiles, ...] = ()
    max_resolution: int = 0
    description: str = ""
    adapter_scale: float = 1.0
    prompt: str = ""


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
    max_resolution=256,
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
    max_resolution=768,
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

_KANDINSKY_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
# Guidance 4 and the DDPM decoder as diffusers' Kandinsky 2.2 pipelines default to; 50 steps
# as their examples; a 256 px, 12-step preview (~1/25 of a full frame's UNet work).
_KANDINSKY_2_2 = ModelPreset(
    name="kandinsky-2-2",
    hub_id="kandinsky-community/kandinsky-2-2-decoder",
    kind="kandinsky-2-2",
    pipeline_class="KandinskyV22Pipeline",
    encoder="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
    embedding_dim=1280,
    resolution=768,
    steps=50,
    guidance_scale=4.0,
    preview_steps=12,
    preview_resolution=256,
    mean_source=(_KANDINSKY_PRIOR, "prior"),
    downloads=(HubFiles("kandinsky-community/kandinsky-2-2-decoder", ("unet", "movq", "scheduler"),
                        into="decoder"),
               HubFiles(_KANDINSKY_PRIOR, ("image_encoder", "image_processor"), into="prior")),
    max_resolution=1024,
    description="Kandinsky 2.2 (ViT-bigG/14, 768 px, up to 1024, any multiple of 64)",
)

# IP-Adapter (pipelines.families.ip_adapter): h94's ViT-H/14 adapters on a Stable Diffusion
# 1.5 or SDXL base; ViT-H/14 is Stable unCLIP-h's encoder, so the two share statistics. Steps
# and guidance as diffusers' pipelines default to (50; 7.5 for SD 1.5, 5.0 for SDXL); scale
# 1.0, which diffusers' IP-Adapter guide calls conditioning "only on the image prompt".
_IP_ADAPTER_SD15 = ModelPreset(
    name="ip-adapter-sd15",
    hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    kind="ip-adapter",
    pipeline_class="StableDiffusionPipeline",
    encoder=_STABLE_UNCLIP_H.encoder,
    embedding_dim=1024,
    resolution=512,
    steps=50,
    guidance_scale=7.5,
    preview_steps=12,
    preview_resolution=256,
    downloads=(HubFiles("stable-diffusion-v1-5/stable-diffusion-v1-5",
                        ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), into="base"),
               HubFiles("h94/IP-Adapter", ("models/image_encoder",),
                        files=("models/ip-adapter_sd15.safetensors",), into="IP-Adapter")),
    max_resolution=2048,
    description="IP-Adapter on Stable Diffusion 1.5 (ViT-H/14, 512 px; any SD 1.5 checkpoint "
                "as ip-adapter:BASE)",
)
_IP_ADAPTER_SDXL = replace(
    _IP_ADAPTER_SD15,
    name="ip-adapter-sdxl",
    hub_id="stabilityai/stable-diffusion-xl-base-1.0",
    pipeline_class="StableDiffusionXLPipeline",
    resolution=1024,
    guidance_scale=5.0,
    preview_resolution=512,
    downloads=(HubFiles("stabilityai/stable-diffusion-xl-base-1.0",
                        ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                         "scheduler"), into="base"),
               HubFiles("h94/IP-Adapter", ("models/image_encoder",),
                        files=("sdxl_models/ip-adapter_sdxl_vit-h.safetensors",), into="IP-Adapter")),
    description="IP-Adapter on SDXL 1.0 (ViT-H/14, 1024 px; any SDXL checkpoint as ip-adapter:BASE)",
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (_KARLO, _STABLE_UNCLIP_H, _STABLE_UNCLIP_L,
                                                       _KANDINSKY_2_2, _IP_ADAPTER_SD15, _IP_ADAPTER_SDXL)}

DEFAULT_MODEL = "karlo"


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
