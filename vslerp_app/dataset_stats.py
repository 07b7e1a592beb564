"""Image-modality stats of an encoder over a Hugging Face image dataset, streamed
(`vslerp stats --model M --dataset ID`).

The dataset is read with `datasets.load_dataset(ID, split=S, streaming=True)`: rows arrive
shard by shard, nothing is downloaded in full. ID is a hub id or a local directory in the
same layout (parquet or imagefolder files), read through the same call. Images come from
the dataset's first `Image` column, are prepared as for generation (`images.load_image`)
and encoded in batches into a `StatsAccumulator`.

Resumable: after every batch its embeddings are appended to ``embeddings.f32`` and the
rows consumed written to ``progress.json`` in a state directory (under the user's stats
cache, named after encoder, dataset and split). Run the same command again after an
interruption and it reads those back, skips the rows already seen and goes on; a finished
run deletes the state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm.auto import tqdm

from vslerp_app.files import atomic_write
from vslerp_app.folder_stats import too_few_images
from vslerp_app.images import ImageInputError, load_image
from vslerp_app.registry import encoder_key, user_stats_dir
from vslerp_app.stats import ModalityStats, StatsAccumulator, StatsError

__all__ = ["DatasetStatsResult", "dataset_stats", "open_image_stream", "state_dir_for"]

logger = logging.getLogger(__name__)

# Seconds to wait for the hub's host before saying it cannot be reached (instead of the
# libraries' retries, which take ~30 s to fail when there is no network).
_HUB_TIMEOUT = 5.0


@dataclass
class DatasetStatsResult:
    stats: ModalityStats
    encoded: int
    skipped: list[tuple[str, str]]  # (row, reason)
    resumed_from: int = 0  # images read back from an interrupted run
    warnings: list[str] = field(default_factory=list)


def state_dir_for(encoder: str, dataset: str, split: str) -> Path:
    """Where an unfinished run over ``dataset``/``split`` with ``encoder`` keeps its state."""
    return user_stats_dir() / "partial" / encoder_key(f"{encoder}--{dataset}--{split}")


def _check_hub_reachable(dataset: str) -> None:
    """Fail fast, naming the host, when the hub cannot be reached (offline machines)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return  # the user asked for the local cache only; datasets says if it is not there
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_HUB_TIMEOUT).close()
    except OSError as e:
        raise StatsError(f"cannot reach the Hugging Face hub ({host}:{port}: {e}) to stream the "
                         f"dataset {dataset!r}; connect to the internet, or give a local dataset "
                         "directory (--dataset DIR) or a folder of images (--images DIR)") from None


def open_image_stream(dataset: str, split: str):
    """(the streaming dataset, the name of its image column); StatsError on any problem."""
    import datasets

    if not Path(dataset).is_dir():
        _check_hub_reachable(dataset)
    try:
        stream = datasets.load_dataset(dataset, split=split, streaming=True)
    except ValueError as e:  # an unknown split names the ones there are
        raise StatsError(f"dataset {dataset!r}, split {split!r}: {e}") from None
    except Exception as e:  # network, missing dataset, unreadable files: one line for the user
        raise StatsError(f"could not open the dataset {dataset!r} (split {split!r}): "
                         f"{type(e).__name__}: {e}") from None
    features = stream.features or {}
    columns = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
    if not columns:
        raise StatsError(f"dataset {dataset!r} has no image column (columns: {sorted(features)})")
    return stream, columns[0]


@dataclass
class _State:
    """An unfinished run on disk: embeddings so far and the rows consumed."""

    directory: Path
    identity: dict
    rows: int = 0
    encoded: int = 0
    skipped: list = field(default_factory=list)

    @property
    def _progress(self) -> Path:
        return self.directory / "progress.json"

    @property
    def _embeddings(self) -> Path:
        return self.directory / "embeddings.f32"

    def resume(self, acc: StatsAccumulator, dim: int) -> None:
        """Read an earlier run's embeddings into ``acc`` (a run for something else is discarded)."""
        try:
            saved = json.loads(self._progress.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if not saved or saved.get("identity") != self.identity:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True, exist_ok=True)
            return
        data = np.fromfile(self._embeddings, dtype=np.float32, count=saved["encoded"] * dim)
        if data.size != saved["encoded"] * dim:
            raise StatsError(f"{self._embeddings}: cut short; delete {self.directory} to start over")
        with open(self._embeddings, "r+b") as f:  # drop a batch written after the last progress
            f.truncate(data.size * 4)
        self.rows, self.encoded, self.skipped = saved["rows"], saved["encoded"], saved["skipped"]
        if self.encoded:
            acc.update(torch.from_numpy(data.reshape(self.encoded, dim)))

    def append(self, embeddings: torch.Tensor, rows: int) -> None:
        """Record one encoded batch; the progress file is written after the embeddings."""
        with open(self._embeddings, "ab") as f:
            f.write(embeddings.to(torch.float32).contiguous().numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.rows, self.encoded = rows, self.encoded + embeddings.shape[0]
        body = json.dumps({"identity": self.identity, "rows": self.rows, "encoded": self.encoded,
                           "skipped": self.skipped})
        atomic_write(self._progress, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _encode_stream(encoder, rows, column: str, state: _State, acc: StatsAccumulator, *,
                   limit: int | None, batch_size: int, bar) -> None:
    """Encode rows into ``acc`` batch by batch, recording each batch in ``state``."""
    batch, seen = [], state.rows
    for row in rows:
        seen += 1
        try:
            batch.append(load_image(row[column], name=f"row {seen - 1}"))
        except ImageInputError as e:
            state.skipped.append((f"row {seen - 1}", str(e)))
        full = len(batch) == batch_size or (limit is not None and state.encoded + len(batch) >= limit)
        if full:
            _flush(encoder, batch, seen, state, acc, bar)
            batch = []
            if limit is not None and state.encoded >= limit:
                return
    if batch:
        _flush(encoder, batch, seen, state, acc, bar)


def _flush(encoder, batch, seen, state, acc, bar) -> None:
    embeddings = encoder.encode(batch)
    acc.update(embeddings)
    state.append(embeddings, seen)
    bar.update(len(batch))


def dataset_stats(encoder, dataset: str, *, split: str, limit: int | None = None,
                  batch_size: int = 64, state_dir: str | os.PathLike | None = None,
                  **provenance) -> DatasetStatsResult:
    """Stats of ``encoder`` (``encode(list[PIL]) -> (N, d)``, ``name``, ``dim``) over a streamed
    image dataset; resumes an interrupted run kept in ``state_dir`` (default `state_dir_for`).

    Provenance records the dataset id, split, image count, encoder and date.
    """
    if limit is not None and limit < 2:
        raise StatsError(f"--limit must be at least 2 (statistics need 2 images), got {limit}")
    stream, column = open_image_stream(dataset, split)
    identity = {"encoder": encoder.name, "dataset": dataset, "split": split, "dim": encoder.dim}
    state = _State(Path(state_dir) if state_dir else state_dir_for(encoder.name, dataset, split), identity)
    acc = StatsAccumulator()
    state.resume(acc, encoder.dim)
    resumed = state.encoded
    splits = stream.info.splits or {}
    total = limit or (splits[split].num_examples if split in splits else None)
    rows = stream.skip(state.rows) if state.rows else stream
    desc = f"encoding {dataset} with {encoder.name}"
    with tqdm(total=total, initial=resumed, desc=desc, unit="img") as bar:
        if limit is None or state.encoded < limit:
            iterator = iter(rows)
            try:
                _encode_stream(encoder, iterator, column, state, acc, limit=limit,
                               batch_size=batch_size, bar=bar)
            finally:
                getattr(iterator, "close", lambda: None)()
    if acc.n < 2:
        raise StatsError(f"dataset {dataset!r} (split {split!r}): only {acc.n} readable image(s); "
                         "statistics need at least 2")
    stats = acc.finalize(encoder=encoder.name, dataset=dataset, split=split,
                         images_skipped=len(state.skipped), **provenance)
    state.remove()
    warning = too_few_images(acc.n, stats.dim)
    return DatasetStatsResult(stats=stats, encoded=acc.n, skipped=[tuple(s) for s in state.skipped],
                              resumed_from=resumed, warnings=[warning] if warning else [])
