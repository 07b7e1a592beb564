"""The CLIP image encoder a loaded unCLIP pipeline carries: PIL images in, raw embeddings out.

Raw means the projection output before L2 normalisation: the geometry lives there. The
reference encoder for readouts in another CLIP space is `pipelines.reference_encoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

__all__ = ["ClipImageEncoder"]


class ClipImageEncoder:
    """A CLIP vision tower with projection: PIL images in, raw (unnormalised) embeddings out.

    Attributes:
        feature_extractor: the pipeline's CLIPImageProcessor (resize, crop, normalise).
        image_encoder: the pipeline's CLIPVisionModelWithProjection.
        name: what the encoder is, for provenance ("openai/clip-vit-large-patch14").
    """

    def __init__(self, feature_extractor, image_encoder, name: str = "clip"):
        self.feature_extractor = feature_extractor
        self.image_encoder = image_encoder
        self.name = name

    @property
    def dim(self) -> int:
        """Size of the raw embeddings (the projection dimension)."""
        return int(self.image_encoder.config.projection_dim)

    @torch.no_grad()
    def encode(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Raw image embeddings, float32 on the CPU, shape (N, d)."""
        param = next(self.image_encoder.parameters())
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        out = self.image_encoder(pixels.to(param.device, param.dtype)).image_embeds
        return out.float().cpu()

    def encode_batched(self, images: Sequence[PIL.Image.Image], batch_size: int) -> list[torch.Tensor]:
        """Raw embeddings of many images, ``batch_size`` at a time, one (d,) tensor each."""
        out: list[torch.Tensor] = []
        for i in range(0, len(images), batch_size):
            out.extend(self.encode(images[i:i + batch_size]))
        return out
