"""The keyframe strip of the studio's path panel: its images in order, added, moved, removed
(no Gradio; `vslerp_app.service` re-exports these)."""

from __future__ import annotations

from vslerp_app.requests import MAX_KEYFRAMES, RequestError

__all__ = ["MAX_KEYFRAMES", "add_keyframes", "keyframe_strip", "move_keyframe", "remove_keyframe",
           "strip_paths"]


def strip_paths(value) -> list[str]:
    """The keyframe strip's images in order, from a Gallery value [(path, caption), ...] or paths."""
    return [str(item[0] if isinstance(item, (tuple, list)) else item) for item in value or []]


def keyframe_strip(paths) -> list[tuple[str, str]]:
    """The strip's Gallery value: each image captioned with its place on the path."""
    return [(str(p), f"keyframe {i + 1}") for i, p in enumerate(paths)]


def add_keyframes(value, new_paths, max_keyframes: int = MAX_KEYFRAMES) -> list[tuple[str, str]]:
    """The strip with ``new_paths`` added at its end, or RequestError when they do not fit."""
    paths, new = strip_paths(value), [str(p) for p in new_paths or []]
    if len(paths) + len(new) > max_keyframes:
        room = max_keyframes - len(paths)
        raise RequestError(f"A path has at most {max_keyframes} keyframes: the strip has {len(paths)}, "
                           f"so {room} more {'fits' if room == 1 else 'fit'}; remove one first.")
    return keyframe_strip(paths + new)


def _selected_keyframe(index, count: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise RequestError("Select a keyframe first: click it in the strip.")
    return index


def move_keyframe(value, index, step: int) -> tuple[list[tuple[str, str]], int]:
    """The strip with the selected keyframe moved ``step`` places (-1 earlier, +1 later); its new index."""
    paths = strip_paths(value)
    index = _selected_keyframe(index, len(paths))
    to = min(max(index + step, 0), len(paths) - 1)
    paths.insert(to, paths.pop(index))
    return keyframe_strip(paths), to


def remove_keyframe(value, index) -> list[tuple[str, str]]:
    """The strip without the selected keyframe."""
    paths = strip_paths(value)
    del paths[_selected_keyframe(index, len(paths))]
    return keyframe_strip(paths)
