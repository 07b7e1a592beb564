"""Image-modality stats of an encoder over a folder of images (`vslerp stats`).

Streams: images are read, encoded and folded into a `StatsAccumulator` one batch at a
time, so memory does not grow with the number of images (MS-COCO val is 5k, 100k+ works);
the embeddings wait in a temporary file for the population's scale (stats/README.md).
Images are prepared as for generation (`vslerp_app.images.MAX_SIDE`). Too few images for the
embedding dimension gets a warning (`too_few_images`): the whitening behind the likelihood
readout needs three images per dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vslerp_app.images import ImageInputError, load_image
from vslerp_app.stats import WHITENING_MIN_RATIO, ModalityStats, StatsAccumulator, StatsError

__all__ = ["IMAGE_SUFFIXES", "FolderStatsResult", "find_images", "folder_stats", "too_few_images"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class FolderStatsResult:
    stats: ModalityStats
    encoded: int
    skipped: list[tuple[str, str]]  # (file, reason)
    warnings: list[str] = field(default_factory=list)  # one line each, for the user


def too_few_images(n: int, dim: int) -> str | None:
    """A warning when ``n`` images are too few for ``dim``-d whitening, else None.

    Whitening is computed from ``WHITENING_MIN_RATIO`` d images: a new image's whitened
    squared distance is inflated about n / (n - d) over the members' (unbounded as n nears
    d), so with fewer the file carries no whitening (stats/README.md, "Too few images").
    """
    need = WHITENING_MIN_RATIO * dim
    if n >= need:
        return None
    why = ("the covariance is singular" if n <= dim else
           f"a new image's whitened distance would be inflated about n/(n-d) = {n / (n - dim):.2f}x")
    return (f"only {n} image(s) for {dim}-d embeddings: the whitening behind the log-likelihood "
            f"readout needs at least {need} ({WHITENING_MIN_RATIO} d; {why}), so this file has no "
            "whitening and frames get no likelihood"
            + ("; the mean and the Eq. 11 fit are rough with so few images too" if n <= dim else ""))


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under folder, recursively, sorted (so runs are reproducible)."""
    root = Path(folder)
    if not root.is_dir():
        raise StatsError(f"{root}: not a directory of images")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _batches(paths: list[Path], batch_size: int, skipped: list) -> Iterator[list]:
    batch = []
    for path in paths:
        try:
            batch.append(load_image(path))  # the one preparation (images.MAX_SIDE)
        except ImageInputError as e:
            skipped.append((str(path), str(e)))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def folder_stats(encoder, folder: str | os.PathLike, *, batch_size: int = 64,
                 dataset: str | None = None, **provenance) -> FolderStatsResult:
    """Stats of ``encoder`` (anything with ``encode(list[PIL]) -> (N, d)`` and ``name``).

    Unreadable files are skipped and counted; provenance records the encoder, the data set
    (default: the folder name), the image count and how many files were skipped.
    """
    paths = find_images(folder)
    if not paths:
        raise StatsError(f"{folder}: no image files found (looked for {sorted(IMAGE_SUFFIXES)})")
    acc = StatsAccumulator()
    skipped: list[tuple[str, str]] = []
    with tqdm(total=len(paths), desc=f"encoding with {encoder.name}", unit="img") as bar:
        for batch in _batches(paths, batch_size, skipped):
            acc.update(encoder.encode(batch))
            bar.update(len(batch))
            bar.set_postfix(skipped=len(skipped))
    if acc.n < 2:
        raise StatsError(f"{folder}: only {acc.n} readable image(s) of {len(paths)}; "
                         "statistics need at least 2")
    stats = acc.finalize(encoder=encoder.name, dataset=dataset or Path(folder).resolve().name,
                         files_found=len(paths), files_skipped=len(skipped), **provenance)
    warning = too_few_images(acc.n, stats.dim)
    return FolderStatsResult(stats=stats, encoded=acc.n, skipped=skipped,
                             warnings=[warning] if warning else [])
