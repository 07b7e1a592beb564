"""Tiny random-weight pipelines with their statistics: what `vslerp fixture` writes.

`pipelines.fixtures.write_model` writes the model in the hub layout; here the statistics of
its image encoder over generated images are written beside it as
``vslerp-stats.safetensors``, so alpha != 0 and conformity work on the fixture as on a
real model with its stats.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.fixtures import FIXTURE_KINDS, write_model
from vslerp_app.stats import STATS_FILENAME, compute_stats

__all__ = ["FIXTURE_KINDS", "write_fixture"]


def write_fixture(kind: str, directory: str | os.PathLike, *, layout: str = "hub", seed: int = 0,
                  embedded_mean: str = "stats", write_stats: bool = True, whitening: bool | None = None,
                  encoder: str = "tiny-random-clip-vit", **model_kwargs) -> Path:
    """Write a random-weight pipeline of ``kind`` into ``directory`` (and its stats); return its path.

    Args:
        kind, layout, seed, embedded_mean: as `pipelines.fixtures.write_model`.
        write_stats: also write ``vslerp-stats.safetensors`` (statistics of the image
            encoder over the generated images); False removes a stale one.
        whitening: passed to `compute_stats` (None: when there are more images than dimensions).
        encoder: the encoder's name in the statistics' provenance.
        model_kwargs: the rest of `write_model`'s options (config, images, device, dtype, ...).
    """
    written = write_model(kind, directory, layout=layout, seed=seed, embedded_mean=embedded_mean,
                          **model_kwargs)
    stats_path = written.path / STATS_FILENAME
    if write_stats:
        compute_stats(written.embeddings, whitening=whitening, encoder=encoder,
                      model_id=f"{kind} fixture",
                      dataset=f"generated fixture images (seed {seed})").save(stats_path)
    else:
        stats_path.unlink(missing_ok=True)
    return written.path
