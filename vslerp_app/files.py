"""Files that are never half-written: atomic writes, left-over clean-up, plain OS errors.

Every output (frames, manifest, plots, videos, archives) goes through `atomic_write`: a
temporary file in the same directory, then `os.replace`, so a crash, a kill or a full disk
never leaves a truncated file under the final name. `OutputDir.write` turns an OSError into
a `RenderError` whose one line says what happened and that finished frames are intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TMP_MARK", "OutputDir", "RenderError", "atomic_write", "describe_os_error", "output_path",
           "remove_partials"]

TMP_MARK = ".partial"  # temporary files: .<name>.<random>.partial<ext>
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class RenderError(RuntimeError):
    """A render that cannot go on (output not writable, settings changed, bad jobs file).

    The message is one line a user can act on.
    """


def output_path(value: str | os.PathLike, what: str = "output directory") -> Path:
    """``value`` as a Path; an empty one (which would mean the current directory) is refused."""
    if not str(os.fspath(value)).strip():
        raise RenderError(f"the {what} is empty ({os.fspath(value)!r}); name a folder (use '.' "
                          "to mean the current directory)")
    return Path(value)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None]) -> None:
    """Write ``path`` all at once: a temporary file in the same directory, then os.replace.

    ``data`` is the file's bytes, or a function that writes the file at the temporary
    path it is given (for writers that want a path, like ffmpeg). On any error the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{TMP_MARK}{path.suffix}",
                               dir=path.parent)
    mode = 0o666 & ~_UMASK  # mkstemp makes 0600; finished files get the usual mode
    try:
        os.fchmod(fd, mode)
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
            os.chmod(tmp, mode)  # the writer may have replaced the file (safetensors writes 0600)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_partials(directory: Path) -> int:
    """Delete temporary files a killed run left behind; return how many."""
    removed = 0
    if directory.is_dir():
        for p in directory.glob(f".*{TMP_MARK}*"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


def describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device (disk full)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)


@dataclass
class OutputDir:
    """A folder written to atomically; an OSError becomes a one-line `RenderError`."""

    path: Path

    def write(self, name: str, data: bytes | Callable[[str], None]) -> None:
        try:
            atomic_write(self.path / name, data)
        except OSError as e:
            raise RenderError(
                f"cannot write {self.path / name}: {describe_os_error(e)}; the frames already "
                "written are intact, free space (or fix the directory) and run the same command "
                "again to finish") from None
