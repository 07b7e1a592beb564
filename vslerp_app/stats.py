"""Image-modality statistics of one encoder: compute (streaming), save, load, validate.

A stats file is a safetensors file with tensors ``mean`` (raw mean, Eq. 12's m),
optionally ``mean_unit`` (mean of unit-normalised embeddings, exact Eq. 10),
``whitening`` (W = Sigma^-1/2, whitened-CLIP likelihood, float64) and the population's
scale: ``conformity_quantiles`` and ``log_likelihood_quantiles`` (101 quantiles of the
members' own values, float64), and string metadata: the fitted a, b of Eq. 11, n,
provenance and a sha256 checksum of everything. Files without the quantiles (written
before them, or mean-only) load and give no percentiles.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata as _metadata
from pathlib import Path

import torch

from vslerp_app import geometry

logger = logging.getLogger(__name__)

__all__ = ["CONFORMITY_LABELS", "Readouts", "POPULATION_QUANTILES", "WHITENING_MIN_RATIO", "ModalityStats",
           "StatsAccumulator", "StatsError", "compute_stats", "leave_one_out_log_likelihood",
           "percentile_in", "read_mean_file", "whitening_refusal"]

FORMAT = "vslerp-stats/1"
STATS_FILENAME = "vslerp-stats.safetensors"
_QUANTILE_NAMES = ("conformity_quantiles", "log_likelihood_quantiles")
_TENSOR_NAMES = ("mean", "mean_unit", "whitening", *_QUANTILE_NAMES)
# Quantiles of the members' conformity and log-likelihood kept in a stats file: p = 0, 1%, ..., 100%.
POPULATION_QUANTILES = 101
# What each kind of conformity readout is, in words a UI, a manifest and the API show.
CONFORMITY_LABELS = {
    "exact": "exact conformity (Eq. 10)",
    "estimated": "estimated conformity (Eq. 11)",
    "cosine": "cosine to the image mean (Eq. 11 uncalibrated)",
}
# Rows of spilled member embeddings read back at a time when the statistics are finalised.
_MEMBER_CHUNK = 4096
# A variance of cos(m, v) below this fraction of its mean square is float64 rounding.
_NO_SPREAD = 1e-10
# Eigenvalues of the covariance below this fraction of the largest are treated as noise
# when forming Sigma^-1/2, so a nearly singular covariance does not blow up W.
_EIG_FLOOR = 1e-10
# Whitening by default only from this many images per dimension (n >= 3 d). A new image's
# whitened squared distance is inflated about n / (n - d) over a member's: 1.5 at n = 3 d,
# unbounded as n nears d (stats/README.md, "Too few images"). 3 d keeps every preset's
# encoder (d <= 1280) whitened on MS-COCO val's 5,000 images.
WHITENING_MIN_RATIO = 3
# Metadata value saying the log-likelihood quantiles are leave-one-out (out-of-sample).
_LOO = "leave-one-out"


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


@dataclass(frozen=True, eq=False)
class Readouts(Mapping):
    """What statistics read off one embedding (`ModalityStats.readouts`); all None without stats.

    The one record of these numbers: frames hold one for their interpolated embedding and one
    for the frame re-encoded, and manifests, the API and the page serialise it (`as_dict`). It
    reads as a mapping too (``r["conformity"]``), equal to the dict of its values.

    Attributes:
        conformity: Eq. 10 (exact), its Eq. 11 estimate, or the cosine to the mean (`conformity_kind`).
        conformity_kind, conformity_label: which of those, as a key and in words.
        log_likelihood: whitened-CLIP log-likelihood (up to a constant); None without whitening.
        conformity_percentile, log_likelihood_percentile: where the values sit in the stats'
            population, in percent; None without its scale.
    """

    conformity: float | None = None
    conformity_kind: str | None = None
    conformity_label: str | None = None
    log_likelihood: float | None = None
    conformity_percentile: float | None = None
    log_likelihood_percentile: float | None = None

    def __getitem__(self, key: str):
        if key not in READOUT_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(READOUT_KEYS)

    def __len__(self) -> int:
        return len(READOUT_KEYS)

    def as_dict(self, prefix: str = "", keys: Iterable[str] = ()) -> dict:
        """The values by name (JSON-ready), each name prefixed (``frame_``); ``keys``: only these."""
        return {f"{prefix}{k}": getattr(self, k) for k in (tuple(keys) or READOUT_KEYS)}


READOUT_KEYS = tuple(f.name for f in fields(Readouts))


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
        conformity_quantiles: the population's scale: quantiles at p = 0, 1/(Q-1), ..., 1
            of the members' conformity (Eq. 10, each member against the others), shape
            (Q,), float64; None when unknown (older files, mean-only stats).
        log_likelihood_quantiles: the same for the members' whitened log-likelihood, each
            member left out of the m and W it is measured with (`leave_one_out_log_likelihood`),
            so a new image of the same distribution reads near the 50th percentile.
        likelihood_out_of_sample: False only while a file written before that fix is being
            loaded (its quantiles in-sample); `load` corrects them and sets it True.
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
    conformity_quantiles: torch.Tensor | None = None
    log_likelihood_quantiles: torch.Tensor | None = None
    likelihood_out_of_sample: bool = True

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
        """"exact" (Eq. 10), "estimated" (Eq. 11 with a fitted a, b) or "cosine" (mean only)."""
        if self.has_exact_conformity:
            return "exact"
        return "estimated" if self.calibrated else "cosine"

    @property
    def conformity_label(self) -> str:
        """What the conformity readout is, in words (`CONFORMITY_LABELS`)."""
        return CONFORMITY_LABELS[self.conformity_kind]

    @property
    def has_population(self) -> bool:
        """True when the file carries the members' conformity distribution (percentiles)."""
        return self.conformity_quantiles is not None

    def conformity(self, v: torch.Tensor) -> torch.Tensor:
        """Conformity of v against the set, in float64: exact (Eq. 10) with mean_unit, else Eq. 11."""
        if self.mean_unit is None:
            return self.estimated_conformity(v)
        return geometry.conformity(_f64(v), self.mean_unit.to(v.device, torch.float64))

    def estimated_conformity(self, v: torch.Tensor) -> torch.Tensor:
        """Eq. 11: a cos(m, v) + b, in float64."""
        return geometry.estimated_conformity(_f64(v), self.mean.to(v.device, torch.float64), self.a, self.b)

    def log_likelihood(self, v: torch.Tensor) -> torch.Tensor | None:
        """Whitened-CLIP log-likelihood up to a constant, in float64; None without a whitening matrix.

        float64 because Sigma is often nearly singular (condition numbers near 1e10):
        float32 arithmetic loses ~5e-5 of the value there.
        """
        if self.whitening is None:
            return None
        return geometry.whitened_log_likelihood(_f64(v), self.mean.to(v.device, torch.float64),
                                                self.whitening.to(v.device, torch.float64))

    def conformity_percentile(self, value) -> float | None:
        """Percent of the stats' members less conformal than ``value`` (None without the scale)."""
        return None if self.conformity_quantiles is None else percentile_in(value, self.conformity_quantiles)

    def log_likelihood_percentile(self, value) -> float | None:
        """Percent of the members with a lower log-likelihood than ``value`` (None without it)."""
        if self.log_likelihood_quantiles is None or value is None:
            return None
        return percentile_in(value, self.log_likelihood_quantiles)

    def readouts(self, v: torch.Tensor) -> Readouts:
        """Conformity (its kind, label and percentile) and log-likelihood (and its percentile) of v.

        Percentiles are None when the stats carry no population distribution; the
        log-likelihood is None without whitening.
        """
        ll = self.log_likelihood(v)
        c = float(self.conformity(v))
        ll = None if ll is None else float(ll)
        return Readouts(conformity=c, conformity_kind=self.conformity_kind,
                        conformity_label=self.conformity_label, log_likelihood=ll,
                        conformity_percentile=self.conformity_percentile(c),
                        log_likelihood_percentile=self.log_likelihood_percentile(ll))

    def describe(self) -> str:
        """One line for a UI or a log."""
        p = self.provenance
        parts = [p.get("encoder") or p.get("model_id") or "unknown encoder", f"d={self.dim}"]
        if self.n:
            parts.append(f"n={self.n}")
        if p.get("dataset"):
            parts.append(p["dataset"])
        parts.append(self.conformity_label)
        if self.whitening is not None:
            parts.append("likelihood")
        if self.has_population:
            parts.append("percentiles")
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
        for name in _QUANTILE_NAMES:
            q = getattr(self, name)
            if q is None:
                continue
            if not isinstance(q, torch.Tensor) or q.ndim != 1 or q.shape[0] < 2:
                fail(f"{name} must be a 1-D tensor of at least 2 quantiles, got {getattr(q, 'shape', q)}")
            if not torch.isfinite(q).all():
                fail(f"{name} has non-finite values")
            if bool((q[1:] < q[:-1]).any()):
                fail(f"{name} must be non-decreasing (quantiles in order)")
        if self.n is not None and self.n < 2:
            fail(f"n must be at least 2, got {self.n}")
        for name in ("a", "b"):
            if not math.isfinite(getattr(self, name)):
                fail(f"{name} is not finite")
        if self.modality not in ("image", "text"):
            fail(f"modality must be 'image' or 'text', got {self.modality!r}")

    # -- persistence -----------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        """The tensors as stored: mean and mean_unit float32; W as computed (float64 since the
        population's scale came in, float32 in older files); the quantiles float64."""
        tensors = {"mean": self.mean.to(torch.float32)}
        if self.mean_unit is not None:
            tensors["mean_unit"] = self.mean_unit.to(torch.float32)
        if self.whitening is not None:
            w = self.whitening
            tensors["whitening"] = w if w.dtype == torch.float64 else w.to(torch.float32)
        for name in _QUANTILE_NAMES:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).to(torch.float64)
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def _scalars(self) -> dict[str, str]:
        scalars = {
            "format": FORMAT,
            "modality": self.modality,
            "n": "" if self.n is None else str(self.n),
            "a": repr(float(self.a)),
            "b": repr(float(self.b)),
            "pearson": "" if self.pearson is None else repr(float(self.pearson)),
            "provenance": json.dumps(self.provenance, sort_keys=True),
        }
        if self.log_likelihood_quantiles is not None and self.likelihood_out_of_sample:
            scalars["log_likelihood_population"] = _LOO  # absent in files written before the fix
        return scalars

    def _make_likelihood_out_of_sample(self, where: str) -> None:
        """Correct in-sample log-likelihood quantiles (files written before the fix) to
        leave-one-out ones, and say so in the provenance; without n they are dropped."""
        if self.likelihood_out_of_sample or self.log_likelihood_quantiles is None:
            self.likelihood_out_of_sample = True
            return
        if self.n is None or self.n <= 2:
            logger.warning("%s: in-sample log-likelihood quantiles and no image count to correct "
                           "them: no likelihood percentiles", where)
            self.log_likelihood_quantiles = None
            self.provenance["log_likelihood_quantiles"] = "dropped on load: in-sample, n unknown"
        else:
            corrected = leave_one_out_log_likelihood(self.log_likelihood_quantiles, self.n)
            self.log_likelihood_quantiles = corrected
            self.provenance["log_likelihood_quantiles"] = ("written in-sample, corrected to "
                                                           "leave-one-out on load")
        self.likelihood_out_of_sample = True

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
                conformity_quantiles=tensors.get("conformity_quantiles"),
                log_likelihood_quantiles=tensors.get("log_likelihood_quantiles"),
                n=int(meta["n"]) if meta.get("n") else None,
                a=float(meta["a"]),
                b=float(meta["b"]),
                pearson=float(meta["pearson"]) if meta.get("pearson") else None,
                modality=meta.get("modality", "image"),
                provenance=json.loads(meta.get("provenance") or "{}"),
                likelihood_out_of_sample=meta.get("log_likelihood_population") == _LOO,
            )
        except StatsError as e:
            raise StatsError(f"{where}: {str(e).removeprefix('stats: ')}") from None
        except (KeyError, ValueError, json.JSONDecodeError) as e:
            raise StatsError(f"{where}: malformed metadata ({e})") from None
        if meta.get("checksum") != stats.checksum():
            raise StatsError(f"{where}: checksum mismatch, the file was modified or is corrupt")
        stats._make_likelihood_out_of_sample(where)
        stats.validate(expected_dim, where)
        stats.provenance.setdefault("source", where)
        return stats

    @classmethod
    def from_mean(cls, mean: torch.Tensor, **provenance: str) -> ModalityStats:
        """Stats that know only the raw mean (e.g. embedded in a model); a=1, b=0, uncalibrated."""
        return cls(mean=torch.as_tensor(mean).detach().float().cpu().flatten(),
                   provenance={k: str(v) for k, v in provenance.items()})


_MEAN_KEYS = ("mean", "clip_mean", "image_mean")


def _pick_mean(tensors: dict, where: str) -> torch.Tensor:
    """The one tensor of a file, or the one named like a mean."""
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    for key in _MEAN_KEYS:
        if key in tensors:
            return tensors[key]
    raise StatsError(f"{where}: holds {sorted(tensors)}; expected one tensor or one named "
                     f"{' or '.join(_MEAN_KEYS)}")


def read_mean_file(path: str | os.PathLike) -> torch.Tensor:
    """A mean vector from .pt/.pth (torch.load with weights_only=True: no code runs), .npy
    (no pickles) or .safetensors: one tensor, or one named mean/clip_mean/image_mean; a
    (1, d) shape is flattened. StatsError names the file and the problem."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise StatsError(f"{where}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pt", ".pth", ".bin"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            value = _pick_mean(loaded, where) if isinstance(loaded, dict) else loaded
        elif suffix == ".npy":
            import numpy as np

            value = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            value = _pick_mean(load_file(str(path)), where)
        else:
            raise StatsError(f"{where}: unknown suffix {suffix!r} (expected .pt, .npy or .safetensors)")
    except StatsError:
        raise
    except Exception as e:  # pickles refused by weights_only, corrupt files: one line
        raise StatsError(f"{where}: could not read a mean from it: {type(e).__name__}: {e}") from None
    if not isinstance(value, torch.Tensor) or value.squeeze().ndim != 1:
        raise StatsError(f"{where}: expected a mean vector (d,) or (1, d), got "
                         f"{tuple(getattr(value, 'shape', ())) or type(value).__name__}")
    return value.detach().squeeze().to(torch.float32)


def _f64(v) -> torch.Tensor:
    return torch.as_tensor(v).to(torch.float64)


def percentile_in(value, quantiles) -> float | None:
    """Percent of a population below ``value``, read off its quantiles (the inverse of their
    piecewise-linear interpolation); in [0, 100], non-decreasing in value; None for None/NaN.

    ``quantiles`` are at p = 0, 1/(Q-1), ..., 1. Below the smallest: 0; above the largest:
    100; on a run of equal quantiles (a tie): the middle of the run.
    """
    if value is None:
        return None
    x = float(value)
    if math.isnan(x):
        return None
    q = torch.as_tensor(quantiles, dtype=torch.float64)
    k = q.shape[0] - 1
    lo = int(torch.searchsorted(q, torch.tensor([x], dtype=torch.float64), right=False)[0])
    hi = int(torch.searchsorted(q, torch.tensor([x], dtype=torch.float64), right=True)[0]) - 1
    if hi >= lo:  # x equals quantiles lo..hi
        rank = (lo + hi) / 2
    elif lo == 0:
        rank = 0.0
    elif lo > k:
        rank = float(k)
    else:  # q[hi] < x < q[lo], lo = hi + 1
        rank = hi + (x - float(q[hi])) / (float(q[lo]) - float(q[hi]))
    return 100.0 * rank / k


def leave_one_out_log_likelihood(log_likelihood, n: int) -> torch.Tensor:
    """A member's whitened log-likelihood with m and W refitted without it, from the in-sample one.

    With D = ||W (x - m)||^2 = -2 ll over the n members (Sigma = scatter / (n - 1)), leaving
    x out moves m by (x - m)/(n - 1) and downdates the scatter by n/(n-1) (x - m)(x - m)^T;
    Sherman-Morrison gives D_loo = (n-2) n^2 D / ((n-1)^3 - n (n-1) D) exactly. In-sample,
    E[D] = d (n-1)/n while a new image has about d n/(n - d): D_loo is on the new image's
    scale. It is increasing in D, so it maps quantiles to quantiles. D at its bound
    (n-1)^2/n (a member alone in a direction) has no finite D_loo and is capped there.
    """
    if n <= 2:
        raise StatsError(f"leave-one-out needs at least 3 members, got n={n}")
    d = -2.0 * torch.as_tensor(log_likelihood, dtype=torch.float64)
    denominator = (n - 1) ** 3 - n * (n - 1) * d
    denominator = denominator.clamp_min((n - 1) ** 3 * 1e-12)
    return -0.5 * (n - 2) * n * n * d / denominator


def whitening_refusal(n: int, dim: int) -> str | None:
    """Why ``n`` embeddings in ``dim`` dimensions cannot be whitened at all (n <= d), else None."""
    if n > dim:
        return None
    return (f"whitening needs more embeddings than dimensions, got n={n} for d={dim}: the covariance "
            f"has rank at most {n - 1}, so W = Sigma^-1/2 would be noise and every likelihood "
            f"meaningless (use at least {WHITENING_MIN_RATIO * dim} = {WHITENING_MIN_RATIO} d images)")


def quantiles_of(values: torch.Tensor, count: int = POPULATION_QUANTILES) -> torch.Tensor:
    """``count`` quantiles at p = 0, 1/(count-1), ..., 1 (linear interpolation between order
    statistics, numpy's default), float64; torch.sort, so no size limit."""
    x = torch.sort(values.to(torch.float64).flatten()).values
    h = torch.linspace(0, 1, count, dtype=torch.float64) * (x.shape[0] - 1)
    lo = h.floor().long().clamp(max=x.shape[0] - 1)
    hi = (lo + 1).clamp(max=x.shape[0] - 1)
    out = x[lo] + (h - lo) * (x[hi] - x[lo])
    return out.cummax(0).values  # rounding never unorders them


class StatsAccumulator:
    """Streaming sums over batches of raw embeddings; memory O(d^2), whatever the count.

    Everything Eq. 10-12 and whitening need comes out of one pass: the raw mean, the
    covariance (merged per batch with Chan's parallel update), the sum of unit vectors
    and their second moment, from which the Eq. 11 least-squares fit of exact
    conformity on cos(m, v) over the whole set is closed-form.

    The population's scale (each member's conformity and log-likelihood, whose quantiles
    the stats keep) needs the final mean_unit, m and W, known only at the end: with
    ``population=True`` every embedding is also written, as float32, to an anonymous
    temporary file (4 d bytes each: 15 MB for 5k embeddings at d = 768), read back in
    chunks by `finalize`; memory then holds two float64 values per member.
    """

    def __init__(self, population: bool = True):
        self.n = 0
        self.mean = None  # float64 running mean of v
        self.m2 = None  # float64 sum of (v - mean)(v - mean)^T
        self.unit_sum = None  # float64 sum of v/|v|
        self.unit_outer = None  # float64 sum of (v/|v|)(v/|v|)^T
        self._spill = tempfile.TemporaryFile(prefix="vslerp-members-") if population else None

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
        if self._spill is not None:
            self._spill.seek(0, os.SEEK_END)
            self._spill.write(memoryview(x.to(torch.float32).contiguous().numpy()))

    def finalize(self, whitening: bool | None = None, modality: str = "image",
                 **provenance) -> ModalityStats:
        """The statistics so far.

        whitening=None computes W when n >= WHITENING_MIN_RATIO * d; True forces it for any
        n > d and raises StatsError naming n and d when n <= d (W would be noise).
        """
        if self.n < 2:
            raise StatsError(f"statistics need at least 2 embeddings, got {self.n}")
        n, d = self.n, self.mean.shape[0]
        if whitening and whitening_refusal(n, d):
            raise StatsError(whitening_refusal(n, d))
        mean_unit = self.unit_sum / n
        a, b, pearson = self._fit_estimate(mean_unit)
        want_w = (n >= WHITENING_MIN_RATIO * d) if whitening is None else whitening
        w = _inverse_sqrt(self.m2 / (n - 1)) if want_w else None
        prov = {
            "image_count" if modality == "image" else "caption_count": str(n),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": json.dumps(_library_versions(), sort_keys=True),
        }
        prov.update({k: str(v) for k, v in provenance.items() if v is not None})
        stats = ModalityStats(mean=self.mean.float(), mean_unit=mean_unit.float(), n=n, a=a, b=b,
                              whitening=w, pearson=pearson, modality=modality, provenance=prov)
        if self._spill is not None:
            conformity, log_likelihood = self.member_values(stats)
            stats.conformity_quantiles = quantiles_of(conformity)
            if log_likelihood is not None:  # in-sample -> out-of-sample, as a new image is read
                stats.log_likelihood_quantiles = quantiles_of(leave_one_out_log_likelihood(log_likelihood, n))
            stats.validate()
        return stats

    def member_values(self, stats: ModalityStats) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each member's conformity (Eq. 10, itself excluded) and in-sample whitened
        log-likelihood (m and W include it; `leave_one_out_log_likelihood` corrects it) under
        ``stats`` (as stored: float32 m and mean_unit, W), float64, in the order fed."""
        if self._spill is None:
            raise StatsError("this accumulator keeps no members (population=False)")
        n, d = self.n, stats.dim
        conformity = torch.empty(n, dtype=torch.float64)
        log_likelihood = None if stats.whitening is None else torch.empty(n, dtype=torch.float64)
        mean_unit = stats.mean_unit.double()
        chunk = torch.empty(_MEMBER_CHUNK, d, dtype=torch.float32)
        self._spill.seek(0)
        done = 0
        while done < n:
            rows = min(_MEMBER_CHUNK, n - done)
            view = chunk[:rows]
            if self._spill.readinto(memoryview(view.numpy()).cast("B")) != rows * d * 4:
                raise StatsError("the temporary file of member embeddings was cut short")
            conformity[done:done + rows] = geometry.member_conformity(view.double(), mean_unit, n)
            if log_likelihood is not None:
                log_likelihood[done:done + rows] = stats.log_likelihood(view)
            done += rows
        return conformity, log_likelihood

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
                  batch_size: int = 4096, population: bool = True, **provenance) -> ModalityStats:
    """Statistics of raw embeddings: an (N, d) tensor or an iterable of (B, d) batches.

    Keyword arguments other than the options become provenance (encoder=..., model_id=...,
    dataset=...). whitening=None computes W = Sigma^-1/2 only when N >= 3 d (`finalize`). population=True
    also records the members' conformity and log-likelihood quantiles (percentiles).
    """
    acc = StatsAccumulator(population=population)
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.split(batch_size) if embeddings.ndim == 2 else [embeddings]
    for batch in embeddings:
        acc.update(batch)
    return acc.finalize(whitening=whitening, modality=modality, **provenance)
