"""Reference-space readouts: conformity and likelihood of frames under any open_clip model.

A reference space (``open_clip:MODEL/PRETRAINED``, see `pipelines.reference_encoder`)
gives readouts comparable across generators and with the papers (OpenAI ViT-B/32 on
MS-COCO). `ReferenceReadout` pairs its encoder with image statistics of that space.

Stats of a reference space are computed with
``vslerp stats --reference SPEC --images DIR --out FILE`` and found, when not given
explicitly, in the repository's ``stats/`` folder under `reference_stats_filename(SPEC)`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch

from pipelines.reference_encoder import OpenClipEncoder, ReferenceSpaceError, parse_reference
from vslerp_app.registry import STATS_DIR
from vslerp_app.stats import ModalityStats, StatsError

__all__ = ["DEFAULT_DATASET", "ReferenceReadout", "ReferenceSpaceError", "reference_stats_filename",
           "reference_stats_path"]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "coco-val2017"


def reference_stats_filename(spec: str, dataset: str = DEFAULT_DATASET) -> str:
    """The file name stats of ``spec`` are registered under in ``stats/``.

    ``open_clip:ViT-B-32/openai`` -> ``open_clip-ViT-B-32-openai-coco-val2017.safetensors``:
    every run of characters other than letters, digits, ``.``, ``_`` and ``-`` becomes ``-``.
    """
    parse_reference(spec)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{spec}-{dataset}").strip("-.")
    return f"{stem}.safetensors"


def reference_stats_path(spec: str, dataset: str = DEFAULT_DATASET) -> Path:
    """Where the registered stats of ``spec`` live (``stats/`` or ``$VSLERP_STATS_DIR``)."""
    return STATS_DIR / reference_stats_filename(spec, dataset)


class ReferenceReadout:
    """Per-frame readouts in a reference CLIP space: an encoder and its image stats.

    `readouts(images)` gives, per image, a dict with:
        space: the spec (``open_clip:MODEL/PRETRAINED``).
        frame_conformity: conformity of the image's raw embedding against the stats'
            image set (Eq. 10, exact when the stats carry ``mean_unit``; else Eq. 11).
        conformity_kind: "exact", "estimated" or "cosine" (mean-only stats), and
            conformity_label, the same in words.
        estimated_conformity: Eq. 11, a cos(m, v) + b, always (comparable with the paper).
        frame_log_likelihood: whitened-CLIP log-likelihood up to a constant, None when the
            stats have no whitening matrix.
        frame_conformity_percentile, frame_log_likelihood_percentile: where the image sits
            among the stats' own images, in percent (None without their distribution).
    """

    def __init__(self, encoder: OpenClipEncoder, stats: ModalityStats, *, batch_size: int = 16):
        stats.validate(encoder.dim, f"stats for {encoder.name}")
        if stats.modality != "image":
            raise ReferenceSpaceError(f"stats for {encoder.name} are {stats.modality}-modality "
                                      "stats; frame readouts need image stats")
        stats_encoder = stats.provenance.get("encoder")
        self.stats_mismatch = bool(stats_encoder) and stats_encoder != encoder.name
        if self.stats_mismatch:
            logger.warning("stats (%s) were computed with %s, not %s: readouts may be meaningless",
                           stats.provenance.get("source", "given"), stats_encoder, encoder.name)
        self.encoder = encoder
        self.stats = stats
        self.batch_size = batch_size

    @property
    def space(self) -> str:
        return self.encoder.name

    @classmethod
    def load(cls, spec: str, stats=None, device=None) -> ReferenceReadout:
        """Build the encoder of ``spec`` and pair it with stats.

        Args:
            spec: ``open_clip:MODEL/PRETRAINED``.
            stats: a stats file or `ModalityStats`; default: the file registered in
                ``stats/`` under `reference_stats_filename(spec)`.
            device: where the encoder runs (default: CUDA if available).
        """
        model_name, pretrained = parse_reference(spec)
        if stats is None:
            path = reference_stats_path(spec)
            if not path.is_file():
                raise ReferenceSpaceError(
                    f"no stats for the reference space {spec}: none given and {path} does not "
                    f"exist. Compute them over a representative image set (the papers: MS-COCO "
                    f"val2017) with `vslerp stats --reference {spec} --images DIR --out {path}` "
                    "(add --captions FILE for text stats too), or pass the file with "
                    "--reference-stats FILE")
            stats = path
        encoder = OpenClipEncoder(model_name, pretrained, device, spec=spec)
        if not isinstance(stats, ModalityStats):
            try:
                stats = ModalityStats.load(stats, expected_dim=encoder.dim)
            except StatsError as e:
                raise ReferenceSpaceError(f"stats for {spec}: {e}") from None
        return cls(encoder, stats)

    def readouts(self, images: Sequence[PIL.Image.Image]) -> list[dict]:
        """One dict per image (see the class docstring); images encoded in batches."""
        out = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self.readouts_of_embeddings(self.encoder.encode(images[i:i + self.batch_size])))
        return out

    def readouts_of_embeddings(self, embeddings: torch.Tensor) -> list[dict]:
        """The readouts of raw embeddings of this space, (N, d) or (d,)."""
        emb = embeddings.detach().float().cpu()
        if emb.ndim == 1:
            emb = emb.unsqueeze(0)
        s = self.stats
        conf = s.conformity(emb)
        est = s.estimated_conformity(emb)
        ll = s.log_likelihood(emb)
        return [{"space": self.space,
                 "frame_conformity": float(conf[i]),
                 "conformity_kind": s.conformity_kind,
                 "conformity_label": s.conformity_label,
                 "estimated_conformity": float(est[i]),
                 "frame_log_likelihood": None if ll is None else float(ll[i]),
                 "frame_conformity_percentile": s.conformity_percentile(float(conf[i])),
                 "frame_log_likelihood_percentile": s.log_likelihood_percentile(
                     None if ll is None else float(ll[i]))}
                for i in range(emb.shape[0])]

    def info(self) -> dict:
        """What the space is and where its stats come from (for the UI, manifests, logs)."""
        s = self.stats
        return {
            "space": self.space,
            "model": self.encoder.model_name,
            "pretrained": self.encoder.pretrained,
            "embedding_dim": s.dim,
            "device": str(self.encoder.device),
            "stats": {
                "describe": s.describe(),
                "conformity_kind": s.conformity_kind,
                "likelihood": s.whitening is not None,
                "a": s.a, "b": s.b, "pearson": s.pearson, "n": s.n,
                "provenance": s.provenance,
                "checksum": s.checksum(),
                "encoder_mismatch": self.stats_mismatch,
            },
        }
