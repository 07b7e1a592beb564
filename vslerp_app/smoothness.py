"""How evenly and how directly a sequence of frames moves: the morphing literature's measures.

Every measure starts from the steps between neighbouring frames, d_i = 1 - cos(e_i, e_{i+1}),
the cosine distance of the frames' re-encoded CLIP embeddings (or LPIPS distances):

- path length: sum d_i, how far the sequence travels;
- PPL (perceptual path length, as in StyleGAN and the morphing papers): n * sum d_i^2 over
  the n steps (n = N - 1 for N frames; a loop counts its step back to the first frame),
  equal to the path length squared over n when every step is equal, larger otherwise;
- PDV (perceptual distance variance, IMPUS/DiffMorpher): the standard deviation of d_i;
- smoothness (AID): 1 - Gini(d_i), 1 when every step is equal, towards 0 when one step
  makes the whole change;
- the largest jump: the largest d_i, which frames it lies between and how many mean steps it is;
- directness: the share of steps that move the right way, neither gaining similarity to
  the source nor losing similarity to the target (on a path: the keyframes the step's
  segment runs between).

Pure functions of arrays (float64 numpy); `vslerp_app.render` measures every sequence with
them. `lpips_steps` adds LPIPS (AlexNet) distances where the `lpips` package and its weights
are on the machine, and returns None otherwise without a word.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["cosine_steps", "describe", "describe_sequence", "directness", "gini", "lpips_steps",
           "lpips_weights_present", "markdown", "measure", "summary_line"]


def _rows(embeddings) -> np.ndarray:
    """(N, d) float64 unit rows of embeddings (a torch tensor, an array or a list of vectors)."""
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().double().numpy()
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(norms, np.finfo(np.float64).tiny)


def cosine_steps(embeddings, closed: bool = False) -> np.ndarray:
    """1 - cos(e_i, e_{i+1}) for each pair of neighbouring frames; ``closed``: and last to first."""
    u = _rows(embeddings)
    nxt = np.roll(u, -1, axis=0) if closed else u[1:]
    here = u if closed else u[:-1]
    return np.clip(1.0 - np.sum(here * nxt, axis=1), 0.0, 2.0)


def gini(values) -> float:
    """The Gini coefficient of non-negative values: 0 when all are equal (or all 0), (n - 1) / n at most."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * x.sum()))


def directness(embeddings, sources, targets, closed: bool = False) -> dict:
    """How often a step moves the right way: similarity to its source not rising, to its target not falling.

    Args:
        embeddings: (N, d) frames in order.
        sources, targets: per step the embedding it leaves and the one it heads for, (n, d),
            or one (d,) for every step.
        closed: the steps include last to first (a loop).
    Returns:
        {"directness": share of steps moving the right way, "source_rises": steps whose
        similarity to the source rises, "target_falls": steps whose similarity to the target
        falls, "steps": n}. A change under 1e-9 counts as none.
    """
    u = _rows(embeddings)
    nxt = np.roll(u, -1, axis=0) if closed else u[1:]
    here = u if closed else u[:-1]
    n = len(here)
    src = np.broadcast_to(_rows(np.atleast_2d(sources)), (n, u.shape[1]))
    tgt = np.broadcast_to(_rows(np.atleast_2d(targets)), (n, u.shape[1]))
    rises = np.sum(nxt * src, axis=1) - np.sum(here * src, axis=1) > 1e-9
    falls = np.sum(nxt * tgt, axis=1) - np.sum(here * tgt, axis=1) < -1e-9
    wrong = rises | falls
    return {"directness": float(1.0 - wrong.mean()) if n else 1.0, "source_rises": int(rises.sum()),
            "target_falls": int(falls.sum()), "steps": n}


def measure(steps: Sequence[float], frames: Sequence[tuple[int, int]] | None = None) -> dict:
    """Path length, PPL, PDV, smoothness (1 - Gini) and the largest jump of the step distances.

    ``frames`` names the two frames of each step (default: step i is frames i and i + 1).
    """
    d = np.asarray(steps, dtype=np.float64)
    n = len(d)
    frames = [(i, i + 1) for i in range(n)] if frames is None else [tuple(f) for f in frames]
    if n == 0:
        return {"steps": [], "path_length": 0.0, "ppl": 0.0, "pdv": 0.0, "smoothness": 1.0,
                "largest_jump": None}
    i = int(np.argmax(d))
    mean = float(d.mean())
    return {"steps": d.tolist(), "path_length": float(d.sum()), "ppl": float(n * np.sum(d * d)),
            "pdv": float(d.std()), "smoothness": 1.0 - gini(d),
            "largest_jump": {"step": i, "frames": list(frames[i]), "distance": float(d[i]),
                             "times_mean": float(d[i] / mean) if mean > 0 else None}}


def describe(embeddings, *, closed: bool = False, sources=None, targets=None, space: str = "clip") -> dict:
    """Every measure of one sequence of (re-encoded) frame embeddings, JSON-ready.

    ``sources``/``targets`` (per step, or one for all) add directness; ``closed`` counts a
    loop's step back to its first frame.
    """
    steps = cosine_steps(embeddings, closed)
    n = len(steps)
    pairs = [(i, (i + 1) % (n if closed else n + 1)) for i in range(n)]
    out = {"space": space, "distance": "cosine", **measure(steps, pairs)}
    if sources is not None and targets is not None:
        out["directness"] = directness(embeddings, sources, targets, closed)
    return out


def describe_sequence(embeddings, *, space: str = "clip", grid: tuple[int, int] | None = None,
                      segments: Sequence[int] | None = None, keyframe_frames: Sequence[int] | None = None,
                      loop: bool = False) -> dict:
    """`describe` for the layout of a render: a sweep, a path or a grid.

    A sweep: its steps in order, directness toward its last frame and away from its first.
    A path (``segments``: each frame's segment; ``keyframe_frames``: the frame of each
    keyframe; ``loop``: the step back to the first frame counts): each step's directness
    against the frames of the keyframes its segment runs between. A grid (``grid`` = (rows,
    cols), row major): {"space", "rows": [...], "columns": [...]}, each row (one theta,
    alpha changing) and each column (one alpha, theta changing) a sweep of its own.
    """
    u = _rows(embeddings)
    if grid is not None:
        rows, cols = grid
        cells = u.reshape(rows, cols, -1)
        return {"space": space,
                "rows": [describe(cells[r], sources=cells[r, 0], targets=cells[r, -1], space=space)
                         for r in range(rows)],
                "columns": [describe(cells[:, c], sources=cells[0, c], targets=cells[-1, c], space=space)
                            for c in range(cols)]}
    if segments is None:
        return describe(u, sources=u[0], targets=u[-1], space=space)
    k = len(keyframe_frames)
    steps = len(u) if loop else len(u) - 1
    starts = [keyframe_frames[segments[i]] for i in range(steps)]
    ends = [keyframe_frames[(segments[i] + 1) % k] for i in range(steps)]
    return describe(u, closed=loop, sources=u[starts], targets=u[ends], space=space)


def summary_line(m: dict | None) -> str:
    """One sentence in plain words of `describe`'s result."""
    if m and "rows" in m:  # a grid
        rows = [r["smoothness"] for r in m["rows"] if r["steps"]]
        cols = [c["smoothness"] for c in m["columns"] if c["steps"]]
        kinds = (("Grid rows (one theta each):", rows), ("columns (one alpha each):", cols))
        parts = [f"{what} smoothness {min(v):.3f} to {max(v):.3f} (1 − Gini of the steps; 1 = even)"
                 for what, v in kinds if v]
        return ("; ".join(parts) or "Smoothness: too few frames to measure") + f" [{m['space']}]."
    if not m or not m.get("steps"):
        return "Smoothness: too few frames to measure."
    jump = m["largest_jump"]
    times = "" if jump["times_mean"] is None else f", {jump['times_mean']:.1f}× the mean step"
    words = (f"Smoothness {m['smoothness']:.3f} (1 − Gini of the steps; 1 is perfectly even), step spread "
             f"PDV {m['pdv']:.3g}, path length {m['path_length']:.3g}, PPL {m['ppl']:.3g}; largest jump "
             f"between frames {jump['frames'][0] + 1} and {jump['frames'][1] + 1} "
             f"({jump['distance']:.3g}{times})")
    if m.get("directness") is not None:
        d = m["directness"]
        words += (f"; {100 * d['directness']:.0f}% of steps head straight from source to target "
                  f"({d['source_rises']} back toward the source, {d['target_falls']} away from the target)")
    return words + f" [{m['space']}]."


def markdown(measured: dict | None) -> str:
    """A render's ``smoothness`` (model space, reference space, LPIPS) as Markdown lines for the page."""
    if not measured:
        return ""
    names = {"model": "the model's CLIP", "reference": "the reference CLIP", "lpips": "LPIPS (AlexNet)"}
    return "\n\n".join(f"**Smoothness in {names.get(key, key)}:** {summary_line(m)}"
                        for key, m in measured.items() if isinstance(m, dict))


# -- LPIPS, where the user has it --------------------------------------------------------------
_ALEXNET = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def lpips_weights_present() -> bool:
    """The `lpips` package is installed and AlexNet's weights are in the torch hub cache (the
    file torchvision would download on first use); nothing is downloaded here."""
    try:
        import lpips  # noqa: F401
        import torch
    except ImportError:
        return False
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(_ALEXNET))
    return os.path.isfile(path)


def lpips_steps(images, closed: bool = False) -> np.ndarray | None:
    """LPIPS (AlexNet) distance of each pair of neighbouring PIL frames; None without the package
    or its weights (not downloaded: the user's machine fetches them once with ``lpips.LPIPS()``)."""
    if not lpips_weights_present():
        return None
    import lpips
    import torch

    net = lpips.LPIPS(net="alex", verbose=False).eval()
    frames = [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
              for im in images]
    pairs = list(zip(frames, frames[1:] + (frames[:1] if closed else []), strict=False))
    with torch.no_grad():
        return np.array([float(net(a[None], b[None]).flatten()[0]) for a, b in pairs])
