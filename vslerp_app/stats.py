"""Image-modality statistics of one encoder: compute (streaming), save, load, validate.

A stats file is a safetensors file with tensors ``mean`` (raw mean, Eq. 12's m),
optionally ``mean_unit`` (mean of unit-normalised embeddings, exact Eq. 10) and
``whitening`` (W = Sigma^-1/2, whitened-CLIP likelihood), and string metadata: the
fitted a, b of Eq. 11, n, provenance and a sha256 checksum of everything.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path

import torch

from vslerp_app import geometry

__all__ = ["ModalityStats", "StatsAccumulator", "StatsError", "compute_stats"]

FORMAT = "vslerp-stats/1"
STATS_FILENAME = "vslerp-stats.safetensors"
_TENSOR_NAMES = ("mean", "mean_unit", "whitening")
# A variance of cos(m, v) below this fraction of its mean square is float64 rounding.
_NO_SPREAD = 1e-10
# Eigenvalues of the covariance below this fraction of the largest are treated as noise
# when forming Sigma^-1/2, so a nearly singular covariance does not blow up W.
_EIG_FLOOR = 1e-10


class StatsError(ValueError):
    """A stats file or stats object is unusable; the message names the file and the problem."""


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("vslerp-studio", "torch", "safetensors", "transformers", "diffusers", "open_clip_torch"):
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            pass
    return versions


@dataclass
class ModalityStats:
    """Statistics of one modality (normally images) of one encoder's raw embeddings.

    Attributes:
        mean: raw mean m, shape (d,).
        mean_unit: mean of the unit-normalised embeddings, shape (d,); None when only
            the mean is known (then conformity falls back to the Eq. 11 estimate).
        n: number of embeddings the statistics were computed over (None if unknown).
        a, b: the Eq. 11 fit C_hat = a cos(m, v) + b. Mean-only stats carry a = 1,
            b = 0 (uncalibrated: the estimate is then the cosine to the mean).
        whitening: W = Sigma^-1/2 of the mean-subtracted embeddings, shape (d, d), or None.
        pearson: Pearson correlation of C and C_hat over the set (None if not fitted).
        modality: "image" or "text".
        provenance: where the numbers come from (encoder, model id, data set, ...).
    """

    mean: torch.Tensor
    mean_unit: torch.Tensor | None = None
    n: int | None = None
    a: float = 1.0
    b: float = 0.0
    whitening: torch.Tensor | None = None
    pearson: float | None = None
    modality: str = "image"
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- queries ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def has_exact_conformity(self) -> bool:
        return self.mean_unit is not None

    @property
    def calibrated(self) -> bool:
        """True when a and b were fitted on a set (not the mean-only defaults)."""
        return self.pearson is not None

    @property
    def conformity_kind(self) -> str:
        return "exact" if self.has_exact_conformity else "estimated"

    def conformity(self, v: torch.Tensor) -> torch.Tensor:
        """Conformity of v against the set: exact (Eq. 10) if mean_unit is known, else Eq. 11."""
        if self.mean_unit is None:
            return self.estimated_conformity(v)
        return geometry.conformity(v, self.mean_unit.to(v.device))

    def estimated_conformity(self, v: torch.Tensor) -> torch.Tensor:
        """Eq. 11: a cos(m, v) + b."""
        return geometry.estimated_conformity(v, self.mean, self.a, self.b)

    def log_likelihood(self, v: torch.Tensor) -> torch.Tensor | None:
        """Whitened-CLIP log-likelihood up to a constant, or None without a whitening matrix."""
        if self.whitening is None:
            return None
        return geometry.whitened_log_likelihood(v, self.mean, self.whitening)

    def readouts(self, v: torch.Tensor) -> dict:
        """Conformity (with its kind) and log-likelihood (None without whitening) of one vector."""
        ll = self.log_likelihood(v)
        return {"conformity": float(self.conformity(v)), "conformity_kind": self.conformity_kind,
                "log_likelihood": None if ll is None else float(ll)}

    def describe(self) -> str:
        """One line for a UI or a log."""
        p = self.provenance
        parts = [p.get("encoder") or p.get("model_id") or "unknown encoder", f"d={self.dim}"]
        if self.n:
            parts.append(f"n={self.n}")
        if p.get("dataset"):
            parts.append(p["dataset"])
        parts.append("exact conformity" if self.has_exact_conformity else "estimated conformity")
        if self.whitening is not None:
            parts.append("likelihood")
        if p.get("source"):
            parts.append(f"from {p['source']}")
        return ", ".join(parts)

    # -- validation ------------------------------------------------------------------
    def validate(self, expected_dim: int | None = None, where: str = "stats") -> None:
        """Raise StatsError naming ``where`` if shapes, values or the dimension are wrong."""

        def fail(msg):
            raise StatsError(f"{where}: {msg}")

        if not isinstance(self.mean, torch.Tensor) or self.mean.ndim != 1 or self.mean.numel() == 0:
            fail(f"mean must be a non-empty 1-D tensor, got {getattr(self.mean, 'shape', self.mean)}")
        d = self.mean.shape[0]
        if expected_dim is not None and d != expected_dim:
            fail(f"stats are for {d}-d embeddings but the encoder makes {expected_dim}-d ones "
                 "(stats belong to one encoder)")
        if not torch.isfinite(self.mean).all():
            fail("mean has non-finite values")
        if not bool(self.mean.abs().sum() > 0):
            fail("mean is all zeros (no statistics)")
        if self.mean_unit is not None:
            if self.mean_unit.shape != (d,):
                fail(f"mean_unit has shape {tuple(self.mean_unit.shape)}, expected ({d},)")
            if not torch.isfinite(self.mean_unit).all():
                fail("mean_unit has non-finite values")
            if float(torch.linalg.vector_norm(self.mean_unit.double())) > 1 + 1e-4:
                fail("mean_unit is longer than 1, so it is not a mean of unit vectors")
        if self.whitening is not None:
            if self.whitening.shape != (d, d):
                fail(f"whitening has shape {tuple(self.whitening.shape)}, expected ({d}, {d})")
            if not torch.isfinite(self.whitening).all():
                fail("whitening has non-finite values")
        if self.n is not None and self.n < 2:
            fail(f"n must be at least 2, got {self.n}")
        for name in ("a", "b"):
            if not math.isfinite(getattr(self, name)):
                fail(f"{name} is not finite")
        if self.modality not in ("image", "text"):
            fail(f"modality must be 'image' or 'text', got {self.modality!r}")

    # -- persistence -----------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"mean": self.mean}
        if self.mean_unit is not None:
            tensors["mean_unit"] = self.mean_unit
        if self.whitening is not None:
            tensors["whitening"] = self.whitening
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}

    def _scalars(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "modality": self.modality,
            "n": "" if self.n is None else str(self.n),
            "a": repr(float(self.a)),
            "b": repr(float(self.b)),
            "pearson": "" if self.pearson is None else repr(float(self.pearson)),
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }

    def checksum(self) -> str:
        """sha256 over every tensor (name, shape, float32 bytes) and every scalar."""
        h = hashlib.sha256()
        for name, t in sorted(self._tensors().items()):
            h.update(f"{name}:{tuple(t.shape)}:".encode())
            h.update(t.numpy().tobytes())
        h.update(json.dumps(self._scalars(), sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file, then rename) as safetensors with metadata.

        The file gets the usual mode (0644 under the common umask), like every other output.
        """
        from safetensors.torch import save_file

        from vslerp_app.files import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self._scalars(), checksum=self.checksum())
        atomic_write(path, lambda tmp: save_file(self._tensors(), tmp, metadata=meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_dim: int | None = None) -> ModalityStats:
        """Load and validate a stats file; any problem raises StatsError naming the file."""
        from safetensors import safe_open

        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise StatsError(f"{where}: no such stats file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise StatsError(f"{where}: not a readable safetensors stats file "
                             f"(truncated or corrupt?): {e}") from None
        if meta.get("format") != FORMAT:
            raise StatsError(f"{where}: not a vSLERP stats file (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        unknown = set(tensors) - set(_TENSOR_NAMES)
        if unknown or "mean" not in tensors:
            raise StatsError(f"{where}: expected tensors {_TENSOR_NAMES} (mean required), "
                             f"found {sorted(tensors)}")
        try:
            stats = cls(
                mean=tensors["mean"].float(),
                mean_unit=tensors.get("mean_unit"),
                whitening=tensors.get("whitening"),
                n=int(meta["n"]) if meta.get("n") else None,
                a=float(meta["a"]),
                b=float(meta["b"]),
                pearson=float(meta["pearson"]) if meta.get("pearson") else None,
                modality=meta.get("modality", "image"),
                provenance=json.loads(meta.get("provenance") or "{}"),
            )
        except StatsError as e:
            raise StatsError(f"{where}: {str(e).removeprefix('stats: ')}") from None
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise StatsError(f"{where}: malformed metadata ({e})") from None
        if meta.get("checksum") != stats.checksum():
            raise StatsError(f"{where}: checksum mismatch, the file was modified or is corrupt")
        stats.validate(expected_dim, where)
        stats.provenance.setdefault("source", where)
        return stats

    @classmethod
    def from_mean(cls, mean: torch.Tensor, **provenance: str) -> ModalityStats:
        """Stats that know only the raw mean (e.g. embedded in a model); a=1, b=0, uncalibrated."""
        return cls(mean=torch.as_tensor(mean).detach().float().cpu().flatten(),
                   provenance={k: str(v) for k, v in provenance.items()})


class StatsAccumulator:
    """Streaming sums over batches of raw embeddings; memory O(d^2), whatever the count.

    Everything Eq. 10-12 and whitening need comes out of one pass: the raw mean, the
    covariance (merged per batch with Chan's parallel update), the sum of unit vectors
    and their second moment, from which the Eq. 11 least-squares fit of exact
    conformity on cos(m, v) over the whole set is closed-form.
    """

    def __init__(self):
        self.n = 0
        self.mean = None  # float64 running mean of v
        self.m2 = None  # float64 sum of (v - mean)(v - mean)^T
        self.unit_sum = None  # float64 sum of v/|v|
        self.unit_outer = None  # float64 sum of (v/|v|)(v/|v|)^T

    def update(self, embeddings: torch.Tensor) -> None:
        x = torch.as_tensor(embeddings).detach().to("cpu", torch.float64)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[0] == 0:
            raise StatsError(f"embeddings must be a non-empty (N, d) batch, got {tuple(x.shape)}")
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise StatsError(f"batch has {x.shape[1]}-d embeddings, earlier ones were "
                             f"{self.mean.shape[0]}-d")
        if not torch.isfinite(x).all():
            raise StatsError("embeddings contain non-finite values")
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise StatsError("embeddings contain a zero vector (no direction)")
        unit = x / norms
        k = x.shape[0]
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred
        if self.mean is None:
            d = x.shape[1]
            self.mean = torch.zeros(d, dtype=torch.float64)
            self.m2 = torch.zeros(d, d, dtype=torch.float64)
            self.unit_sum = torch.zeros(d, dtype=torch.float64)
            self.unit_outer = torch.zeros(d, d, dtype=torch.float64)
        n = self.n + k
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + torch.outer(delta, delta) * (self.n * k / n)
        self.mean += delta * (k / n)
        self.unit_sum += unit.sum(0)
        self.unit_outer += unit.T @ unit
        self.n = n

    def finalize(self, whitening: bool | None = None, modality: str = "image",
                 **provenance) -> ModalityStats:
        """The statistics so far. whitening=None computes W when n > d (else it is singular)."""
        if self.n < 2:
            raise StatsError(f"statistics need at least 2 embeddings, got {self.n}")
        n, d = self.n, self.mean.shape[0]
        mean_unit = self.unit_sum / n
        a, b, pearson = self._fit_estimate(mean_unit)
        want_w = (n > d) if whitening is None else whitening
        w = _inverse_sqrt(self.m2 / (n - 1)) if want_w else None
        prov = {
            "image_count" if modality == "image" else "caption_count": str(n),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": json.dumps(_library_versions(), sort_keys=True),
        }
        prov.update({k: str(v) for k, v in provenance.items() if v is not None})
        return ModalityStats(mean=self.mean.float(), mean_unit=mean_unit.float(), n=n,
                             a=a, b=b, whitening=None if w is None else w.float(),
                             pearson=pearson, modality=modality, provenance=prov)

    def _fit_estimate(self, mean_unit: torch.Tensor) -> tuple[float, float, float | None]:
        """Least squares C = a cos(m, v) + b over the set (Eq. 11), C the member conformity.

        With u the unit vectors: x = <u, m/|m|> and z = <u, mean_unit> are linear in u, so
        their sums and cross-products come from sum(u) and sum(u u^T); C = (n z - 1)/(n - 1).
        """
        n = self.n
        m_hat = self.mean / torch.linalg.vector_norm(self.mean).clamp_min(1e-300)
        sx, sz = float(self.unit_sum @ m_hat), float(self.unit_sum @ mean_unit)
        q = self.unit_outer
        sxx = float(m_hat @ q @ m_hat)
        sxz = float(m_hat @ q @ mean_unit)
        szz = float(mean_unit @ q @ mean_unit)
        var_x = sxx / n - (sx / n) ** 2
        var_z = szz / n - (sz / n) ** 2
        cov_xz = sxz / n - (sx / n) * (sz / n)
        scale = n / (n - 1)
        # E[x^2] - E[x]^2 cancels: a spread within rounding of the squares (members all
        # equally conformal, e.g. one direction) is no spread, and no slope to fit.
        if var_x <= _NO_SPREAD * sxx / n or var_z <= _NO_SPREAD * szz / n:
            return 0.0, (n * sz / n - 1) / (n - 1), None
        a = scale * cov_xz / var_x
        b = (scale * sz / n - 1 / (n - 1)) - a * sx / n
        pearson = cov_xz / math.sqrt(var_x * var_z)
        return a, b, pearson


def _inverse_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """Sigma^-1/2 by symmetric eigendecomposition, tiny eigenvalues floored."""
    evals, evecs = torch.linalg.eigh(cov)
    floor = float(evals.max()) * _EIG_FLOOR
    return (evecs * evals.clamp_min(floor).rsqrt()) @ evecs.T


def compute_stats(embeddings: torch.Tensor | Iterable[torch.Tensor], *,
                  whitening: bool | None = None, modality: str = "image",
                  batch_size: int = 4096, **provenance) -> ModalityStats:
    """Statistics of raw embeddings: an (N, d) tensor or an iterable of (B, d) batches.

    Keyword arguments other than the options become provenance (encoder=..., model_id=...,
    dataset=...). whitening=None computes W = Sigma^-1/2 only when N > d.
    """
    acc = StatsAccumulator()
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.split(batch_size) if embeddings.ndim == 2 else [embeddings]
    for batch in embeddings:
        acc.update(batch)
    return acc.finalize(whitening=whitening, modality=modality, **provenance)
