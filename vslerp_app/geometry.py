"""Pure tensor math of CLIP's double-ellipsoid geometry (Levi & Gilboa, ICML 2025).

Every function takes *raw* embeddings (the projection output before L2
normalisation) and works in at least float32: float16/bfloat16 inputs are
upcast for the arithmetic and cast back, float64 stays float64. SLERP and vSLERP
work in float64 for every input dtype (continuity near antipodal pairs).

Shapes: a vector is (d,) or a batch (B, d); per-frame parameters (theta, alpha)
are Python scalars, 0-d tensors or 1-D tensors of length B that broadcast over
the batch.
"""

from __future__ import annotations

import torch

__all__ = [
    "arc_angle",
    "slerp",
    "vslerp",
    "cosine",
    "conformity",
    "member_conformity",
    "estimated_conformity",
    "whitened_log_likelihood",
]

# Eq. 12 is evaluated in float64 whatever the input dtype (inputs are exact in float64;
# the result is rounded once to the input dtype). Within this angle (radians) of 0 or pi,
# SLERP falls back to linear interpolation: near 0 its deviation from the great circle is
# O(W^2) ~ 1e-16, below float64 resolution; near pi the great circle's in-plane direction
# is the difference of two terms of size |p|/sin(W), so float64 rounding puts an error of
# about 1e-16 / (pi - W) |p| on it, 1e-8 |p| at this threshold (float32's resolution), and
# the rotation plane is undefined at pi itself. Closer than that is where float64 fails.
_DEGENERATE_ANGLE = 1e-8
# For float32 (or half) inputs the plane near pi is decided by the inputs' own rounding:
# ~6e-8 |v| per vector, more relative to v - alpha m once the centre is subtracted, so a
# pair antiparallel before rounding sits up to ~1e-7 from pi. Antipodal from here on.
_ANTIPODAL_ANGLE_LOW_PRECISION = 1e-6


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_batch_param(value, batch: int | None, dtype: torch.dtype, device, name: str):
    """A scalar or 1-D per-frame parameter as a (B, 1) or (1,) column that broadcasts."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim == 0:
        return t.reshape(1, 1) if batch is not None else t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D tensor, got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] not in (1, batch):
        raise ValueError(f"{name} has {t.shape[0]} values for a batch of {batch}")
    return t.reshape(-1, 1)


def _broadcast_pair(v0: torch.Tensor, v1: torch.Tensor, *params) -> int | None:
    """The batch size implied by the vectors and the 1-D parameters (None: a single vector)."""
    if v0.ndim not in (1, 2) or v1.ndim not in (1, 2):
        raise ValueError(f"vectors must be (d,) or (B, d), got {tuple(v0.shape)} and {tuple(v1.shape)}")
    if v0.shape[-1] != v1.shape[-1]:
        raise ValueError(f"vector sizes differ: {v0.shape[-1]} and {v1.shape[-1]}")
    sizes = {v.shape[0] for v in (v0, v1) if v.ndim == 2}
    sizes |= {torch.as_tensor(p).numel() for p in params if torch.as_tensor(p).ndim == 1}
    sizes.discard(1)
    if len(sizes) > 1:
        raise ValueError(f"batch sizes do not broadcast: {sorted(sizes)}")
    if sizes:
        return sizes.pop()
    if v0.ndim == 2 or v1.ndim == 2 or any(torch.as_tensor(p).ndim == 1 for p in params):
        return 1
    return None


def _angle(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """The angle between p0 and p1 (..., d) in their dtype, shape (..., 1)."""
    tiny = torch.finfo(p0.dtype).tiny
    u0 = p0 / torch.linalg.vector_norm(p0, dim=-1, keepdim=True).clamp_min(tiny)
    u1 = p1 / torch.linalg.vector_norm(p1, dim=-1, keepdim=True).clamp_min(tiny)
    # One angle per pair. 2 atan2(|u0 - u1|, |u0 + u1|) is accurate near 0 and pi, where
    # arccos of the dot product is not: in float32 one rounding step of the dot next to
    # -1 reads as pi - 3.5e-4, so exactly antiparallel vectors missed the fallback below.
    return 2.0 * torch.atan2(torch.linalg.vector_norm(u0 - u1, dim=-1, keepdim=True),
                             torch.linalg.vector_norm(u0 + u1, dim=-1, keepdim=True))


def _slerp(p0: torch.Tensor, p1: torch.Tensor, t: torch.Tensor,
           antipodal: float = _DEGENERATE_ANGLE) -> torch.Tensor:
    """SLERP in float64; p0, p1 of (..., d), t broadcastable to (..., 1); linear within
    ``antipodal`` of pi."""
    omega = _angle(p0, p1)
    sin_omega = torch.sin(omega)
    degenerate = (omega < _DEGENERATE_ANGLE) | (omega > torch.pi - antipodal)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_omega), sin_omega)
    w0 = torch.where(degenerate, 1.0 - t, torch.sin((1.0 - t) * omega) / safe_sin)
    w1 = torch.where(degenerate, t, torch.sin(t * omega) / safe_sin)
    out = w0 * p0 + w1 * p1
    # The endpoints are returned exactly, not up to rounding.
    out = torch.where(t == 0, p0, out)
    return torch.where(t == 1, p1, out)


def slerp(v0: torch.Tensor, v1: torch.Tensor, theta) -> torch.Tensor:
    """Spherical linear interpolation of raw vectors (PAPER.md; Eq. 12 with alpha = 0).

    SLERP(p0, p1, t) = sin((1-t)W)/sin(W) p0 + sin(tW)/sin(W) p1, W the single angle
    between p0 and p1. Norms are interpolated along with directions (the formula is
    applied to the raw vectors). Degenerate inputs never give NaN: for identical or
    parallel vectors (W < 1e-8) and for antiparallel ones (W > pi - 1e-8, where the rotation
    plane is undefined or lost to float64 rounding; pi - 1e-6 for float32 or half inputs, whose
    own rounding decides the plane there), the result is the linear interpolation
    (1-t) p0 + t p1. theta = 0 and theta = 1 return v0 and v1 exactly.
    """
    return vslerp(v0, v1, theta, 0.0, None)


def vslerp(v0: torch.Tensor, v1: torch.Tensor, theta, alpha, mean: torch.Tensor | None):
    """Vertical SLERP about alpha * mean, Eq. 12: SLERP(v0 - a m, v1 - a m, theta) + a m.

    alpha = 0 is plain SLERP about the origin, alpha = 1 rotates about the ellipsoid
    centre. ``mean`` may be None only when every alpha is 0. Returns the input dtype,
    shape (B, d) when any input is batched, else (d,). Computed in float64 and rounded once,
    so the result is continuous in the angle up to the antipodal fallback (`slerp`).
    """
    v0 = torch.as_tensor(v0)
    v1 = torch.as_tensor(v1)
    out_dtype = v0.dtype if v0.is_floating_point() else torch.get_default_dtype()
    batch = _broadcast_pair(v0, v1, theta, alpha)
    dtype = torch.float64
    device = v0.device
    p0 = v0.to(dtype)
    p1 = v1.to(device=device, dtype=dtype)
    t = _as_batch_param(theta, batch, dtype, device, "theta")
    a = _as_batch_param(alpha, batch, dtype, device, "alpha")
    if mean is None:
        if bool((a != 0).any()):
            raise ValueError("alpha != 0 needs the image-modality mean (mean=None given)")
        centre = torch.zeros((), dtype=dtype, device=device)
    else:
        m = torch.as_tensor(mean).to(device=device, dtype=dtype)
        if m.shape != (p0.shape[-1],):
            raise ValueError(f"mean has shape {tuple(m.shape)}, expected ({p0.shape[-1]},)")
        centre = a * m
    low_precision = any(x.is_floating_point() and x.dtype != torch.float64 for x in (v0, v1))
    antipodal = _ANTIPODAL_ANGLE_LOW_PRECISION if low_precision else _DEGENERATE_ANGLE
    out = _slerp(p0 - centre, p1 - centre, t, antipodal) + centre
    # Adding the centre back can round off the endpoints; pin them exactly.
    out = torch.where(t == 0, p0, out)
    out = torch.where(t == 1, p1, out)
    if batch is not None:
        out = out.reshape(-1, out.shape[-1]).expand(batch, -1)
    return out.to(out_dtype).contiguous()


def arc_angle(v0: torch.Tensor, v1: torch.Tensor, alpha=0.0, mean: torch.Tensor | None = None):
    """The angle W (radians) vSLERP turns through from v0 to v1, Eq. 12: between v0 - a m and v1 - a m.

    The same W as in `vslerp`; 0 for equal vectors. Shapes as in `vslerp`: (B,) for a
    batch, 0-d otherwise.
    """
    v0, v1 = torch.as_tensor(v0), torch.as_tensor(v1)
    dtype = _compute_dtype(v0, v1, *([torch.as_tensor(mean)] if mean is not None else []))
    p0, p1 = v0.to(dtype), v1.to(device=v0.device, dtype=dtype)
    a = torch.as_tensor(alpha, dtype=dtype, device=v0.device)
    a = a.reshape(-1, 1) if a.ndim else a
    if mean is not None:
        centre = a * torch.as_tensor(mean).to(device=v0.device, dtype=dtype)
        p0, p1 = p0 - centre, p1 - centre
    elif bool((a != 0).any()):
        raise ValueError("alpha != 0 needs the image-modality mean (mean=None given)")
    return _angle(p0, p1).squeeze(-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension, in at least float32."""
    dtype = _compute_dtype(a, b)
    a = a.to(dtype)
    b = b.to(device=a.device, dtype=dtype)
    na = torch.linalg.vector_norm(a, dim=-1).clamp_min(torch.finfo(dtype).tiny)
    nb = torch.linalg.vector_norm(b, dim=-1).clamp_min(torch.finfo(dtype).tiny)
    return (a * b).sum(-1) / (na * nb)


def conformity(v: torch.Tensor, mean_unit: torch.Tensor) -> torch.Tensor:
    """Exact conformity of a new vector against a set S, Eq. 10: mean over u in S of cos(v, u).

    Equal to <v/|v|, mean_unit>, mean_unit being the mean of the unit-normalised
    members of S. Shape (B,) for (B, d) input, a 0-d tensor for (d,).
    """
    dtype = _compute_dtype(v, mean_unit)
    v = v.to(dtype)
    unit = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return unit @ mean_unit.to(device=v.device, dtype=dtype)


def member_conformity(v: torch.Tensor, mean_unit: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 10 for a member of S (itself excluded): (n <v/|v|, mean_unit> - 1) / (n - 1)."""
    if n < 2:
        raise ValueError(f"conformity within a set needs at least 2 members, got n={n}")
    return (n * conformity(v, mean_unit) - 1.0) / (n - 1)


def estimated_conformity(v: torch.Tensor, mean: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Estimated conformity, Eq. 11: C_hat(v) = a cos(m, v) + b."""
    return a * cosine(v, mean.to(v.device)) + b


def whitened_log_likelihood(v: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor):
    """Whitened-CLIP log-likelihood up to a constant: -1/2 ||W (v - m)||^2 (Betser et al.)."""
    dtype = _compute_dtype(v, mean, whitening)
    centred = v.to(dtype) - mean.to(device=v.device, dtype=dtype)
    z = centred @ whitening.to(device=v.device, dtype=dtype).T
    return -0.5 * (z * z).sum(-1)
