"""Turn whatever image a user hands us into a plain RGB PIL image, or refuse it clearly.

Everything that feeds the engine (the Gradio upload boxes, the CLI, the Python API,
`gradio_client` calls) goes through :func:`load_image`, so odd inputs are dealt with
once, here: paths, bytes, file objects, PIL images and numpy arrays; EXIF rotation;
animations; transparency; CMYK/YCbCr/LAB; 16-bit and float grayscale; huge images.
A file we cannot use raises :class:`ImageInputError`, whose message names the input
and says what is wrong in words a user can act on (never a PIL traceback).

Decompression bombs (a small file that claims billions of pixels) are refused from
the header alone, before any pixel data is decoded, by a per-call check against
:data:`MAX_PIXELS`. :func:`check_image` runs every check that needs no pixels (byte
size, format allow-list, pixel count from the header) without decoding anything, and
:func:`data_url_bytes` measures an inline ``data:`` URL before decoding its base64; a
server uses the two to refuse a hostile input the moment it arrives, with the same
message :func:`load_image` would give. We never change ``PIL.Image.MAX_IMAGE_PIXELS`` or
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: other code in the same process keeps
Pillow's defaults.

Depends on Pillow and numpy only (no torch, diffusers or gradio), so it is cheap to
import from the UI and from tests.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import io
import math
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "MAX_SIDE", "ImageHeader", "ImageInputError", "check_image", "data_url_bytes",
           "image_fingerprint", "load_image"]

#: The one image preparation: every image that is encoded (generation inputs, `vslerp
#: stats`, `vslerp score`, the app's uploads) is loaded with this longer-side limit, so the
#: same photo gets the same embedding on every path.
MAX_SIDE = 1024

#: Largest accepted image, in pixels (width * height): a 50-megapixel photo (8660x5773, or
#: 7071x7071) is accepted; one pixel more is refused before decoding as a possible
#: decompression bomb. Models render at most 768x768 and every input is shrunk to MAX_SIDE,
#: so this leaves room for photos while bounding a decode's memory (the worst accepted
#: file, a 50-megapixel RGBA WebP, peaks near 810 MB: tests/test_images.py measures it).
MAX_PIXELS = 50_000_000

# Formats a user may upload. Restricting Image.open to these keeps Pillow away from
# plugins that shell out or parse exotic containers on untrusted input (EPS runs
# Ghostscript, for one). Formats this Pillow build lacks (AVIF before 11.2) are
# dropped at call time, because asking Image.open for an unregistered one raises.
_ALLOWED_FORMATS = (
    "PNG", "JPEG", "MPO", "GIF", "WEBP", "AVIF", "BMP", "DIB", "TIFF", "PPM", "TGA",
    "ICO", "JPEG2000", "QOI",
)  # fmt: skip

# Errors Pillow (and the codecs under it) raise on damaged data. Seen in practice:
# OSError "image file is truncated", SyntaxError "broken PNG file", EOFError, struct
# and zlib errors from half-written headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

_WHITE = 255


class ImageInputError(ValueError):
    """An input that cannot be used as an image; the message says which and why.

    ``name`` is the label of the input (e.g. ``'photo.jpg'``) and ``problem`` the
    reason on its own, for UIs that lay them out separately.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def load_image(
    src: Any,
    *,
    name: str | None = None,
    max_side: int | None = MAX_SIDE,
) -> Image.Image:
    """Load ``src`` as a fully decoded RGB image, or raise :class:`ImageInputError`.

    ``src`` may be a path (``str`` or ``os.PathLike``), ``bytes``/``bytearray``/
    ``memoryview`` holding an encoded file, a binary file object, a PIL image, or a
    numpy array of shape HxW, HxWx1, HxWx3 or HxWx4 with dtype uint8, uint16, bool
    or float (values in [0, 1]). ``name`` labels the input in error messages (the
    file name is used when known).

    The result is always mode ``"RGB"``, loaded, and independent of any file or of
    the caller's image object: EXIF orientation applied; animations reduced to
    their first frame; transparency composited on white; CMYK, YCbCr, LAB and HSV
    converted; 16-bit and float grayscale scaled to 8 bit by their full range
    (65535 -> 255); images whose longer side exceeds ``max_side`` downscaled with
    LANCZOS, keeping the aspect ratio (``max_side=None`` keeps the size).
    """
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive int or None, got {max_side!r}")

    if isinstance(src, Image.Image):
        label = _quote(name) if name else f"the PIL image ({src.mode}, {_dims(src.size)})"
        return _from_pil(src, label, max_side)
    if isinstance(src, np.ndarray):
        label = _quote(name) if name else f"the array ({_shape(src.shape)}, {src.dtype})"
        return _from_array(src, label, max_side)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageInputError(_quote(name) if name else "the image data", "is empty (0 bytes)")
        label = _quote(name) if name else f"the image data ({len(data):,} bytes)"
        return _decode(io.BytesIO(data), label, max_side)
    if isinstance(src, (str, os.PathLike)):
        return _from_path(src, name, max_side)
    if hasattr(src, "read"):
        return _from_file_object(src, name, max_side)
    raise ImageInputError(
        _quote(name) if name else f"the {type(src).__name__} object",
        "is not an image (expected a file path, bytes, a binary file object, "
        "a PIL image or a numpy array)",
    )


def image_fingerprint(img: Image.Image) -> str:
    """Return a sha256 hex digest of ``img``'s mode, size and pixels.

    Equal pixels give equal fingerprints, whatever file or object they came from,
    so the digest keys caches of embeddings by content. Palette images also hash
    their palette, and any ``transparency`` entry, because those change what the
    pixel bytes (indices) mean.
    """
    h = hashlib.sha256()
    # Length-prefixed header so mode/size/pixel boundaries can never be confused.
    header = f"{img.mode}|{img.width}x{img.height}|".encode()
    h.update(len(header).to_bytes(4, "big") + header)
    if img.mode in ("P", "PA") and img.palette is not None:
        h.update(b"palette|" + img.palette.mode.encode() + b"|" + img.palette.tobytes())
    if "transparency" in img.info:
        h.update(b"transparency|" + repr(img.info["transparency"]).encode())
    h.update(b"pixels|")
    h.update(img.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ImageHeader:
    """What :func:`check_image` read from a file's header: Pillow's format name and the size."""

    format: str
    size: tuple[int, int]


def check_image(src: str | os.PathLike | bytes, *, name: str | None = None,
                max_bytes: int | None = None) -> ImageHeader:
    """Refuse what :func:`load_image` would refuse from the file alone, decoding no pixel.

    ``src`` is a path or the encoded bytes. Checked: the byte size (at most ``max_bytes``
    when given), the format (the same allow-list as :func:`load_image`, so Pillow's
    plugins for other formats never run) and the pixel count the header claims
    (:data:`MAX_PIXELS`). Raises :class:`ImageInputError` with the message
    :func:`load_image` gives for the same file; a file that passes may still turn out
    truncated when decoded.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        label = _quote(name) if name else f"the image data ({len(data):,} bytes)"
        if not data:
            raise ImageInputError(label, "is empty (0 bytes)")
        _check_bytes(len(data), max_bytes, label)
        with _open_checked(io.BytesIO(data), label) as im:
            return ImageHeader(im.format, im.size)
    path = Path(os.fspath(src))
    label = _quote(name or path.name or str(path))
    size = _regular_file_size(path, label)
    _check_bytes(size, max_bytes, label)
    with open(path, "rb") as fp, _open_checked(fp, label) as im:
        return ImageHeader(im.format, im.size)


def data_url_bytes(url: str, *, name: str | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of an inline ``data:`` URL, measured before its base64 is decoded.

    A URL whose data would exceed ``max_bytes`` is refused from its length alone, with
    the message an upload of that size gets; so is one that is not a data URL or whose
    base64 is broken. The bytes are not checked as an image: pass them to
    :func:`check_image`.
    """
    label = _quote(name) if name else "the inline image"
    comma = url.find(",")
    head = url[:comma] if comma >= 0 else ""
    if not head.lower().startswith("data:"):
        raise ImageInputError(label, "is not a data: URL (expected data:image/png;base64,...)")
    # Measured in place: slicing or stripping a huge URL would copy it before the refusal.
    length = len(url) - comma - 1
    if head.lower().endswith(";base64"):
        spaces = sum(url.count(c, comma) for c in " \t\r\n")
        size = (length - spaces) * 3 // 4 - (2 if url.endswith("==") else 1 if url.endswith("=") else 0)
        _check_bytes(size, max_bytes, label)
        try:
            data = base64.b64decode("".join(url[comma + 1:].split()), validate=True)
        except (binascii.Error, ValueError):
            raise ImageInputError(label, "is not valid base64 data") from None
    else:
        _check_bytes(length, max_bytes, label)  # percent-escapes only shrink it
        data = unquote_to_bytes(url[comma + 1:])
    if not data:
        raise ImageInputError(label, "is empty (0 bytes)")
    return data


# --------------------------------------------------------------------------- sources


def _from_path(src: str | os.PathLike[str], name: str | None, max_side: int | None) -> Image.Image:
    path = Path(os.fspath(src))
    label = _quote(name or path.name or str(path))
    _regular_file_size(path, label)
    try:
        fp = open(path, "rb")  # closed by the with below, after decoding
    except OSError as e:
        raise ImageInputError(label, f"cannot be read ({e.strerror or e})") from None
    with fp:
        return _decode(fp, label, max_side)


def _regular_file_size(path: Path, label: str) -> int:
    """The size of a non-empty regular file, or ImageInputError saying what it is instead."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageInputError(label, f"does not exist (no file at {str(path)!r})") from None
    except PermissionError:
        raise ImageInputError(label, "cannot be read (permission denied)") from None
    except OSError as e:
        raise ImageInputError(label, f"cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageInputError(label, "is a directory, not an image file")
    # FIFOs and devices (/dev/zero, /dev/stdin) could block or never end.
    if not stat.S_ISREG(st.st_mode):
        raise ImageInputError(label, "is not a regular file")
    if st.st_size == 0:
        raise ImageInputError(label, "is empty (0 bytes)")
    return st.st_size


def _from_file_object(fobj: IO[Any], name: str | None, max_side: int | None) -> Image.Image:
    fname = getattr(fobj, "name", None)
    label = _quote(name or (os.path.basename(fname) if isinstance(fname, str) else "the file"))
    if isinstance(fobj, io.TextIOBase):
        raise ImageInputError(label, "was opened in text mode; open it in binary mode ('rb')")
    seekable = False
    try:
        seekable = bool(fobj.seekable()) if hasattr(fobj, "seekable") else False
    except (OSError, ValueError):
        seekable = False
    if not seekable:
        # Pillow needs to seek; a pipe or HTTP body is read whole (bounded by its size).
        data = fobj.read()
        if isinstance(data, str):
            raise ImageInputError(label, "was opened in text mode; open it in binary mode ('rb')")
        if not data:
            raise ImageInputError(label, "is empty (0 bytes)")
        return _decode(io.BytesIO(data), label, max_side)

    start = fobj.tell()
    try:
        fobj.seek(0, io.SEEK_END)
        size = fobj.tell()
        fobj.seek(0)
        probe = fobj.read(1)
        if isinstance(probe, str):
            raise ImageInputError(label, "was opened in text mode; open it in binary mode ('rb')")
        if size == 0:
            raise ImageInputError(label, "is empty (0 bytes)")
        return _decode(fobj, label, max_side)
    finally:
        # Leave the caller's file where it was; Pillow reads from offset 0 anyway.
        try:
            fobj.seek(start)
        except (OSError, ValueError):
            pass


def _from_pil(src: Image.Image, label: str, max_side: int | None) -> Image.Image:
    _check_pixels(src.size, label)
    # Lazily opened images (Image.open by the caller) may still fail to decode.
    try:
        src.load()
    except _DECODE_ERRORS as e:
        raise ImageInputError(label, f"is truncated or corrupt ({_reason(e)})") from None
    return _finish(src, label, max_side, target=_fit(src.size, max_side))


def _from_array(arr: np.ndarray, label: str, max_side: int | None) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = "; it looks channels-first, use arr.transpose(1, 2, 0)"
        raise ImageInputError(
            label, f"has an unsupported shape (expected HxW, HxWx3 or HxWx4{hint})"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageInputError(label, "has no pixels")
    _check_pixels((arr.shape[1], arr.shape[0]), label)

    if arr.dtype == np.bool_:
        arr8 = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        arr8 = arr
    elif arr.dtype == np.uint16:
        arr8 = _u16_to_u8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ImageInputError(label, "contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        # A hair of tolerance for resampling overshoot; anything more is a range mix-up
        # (0..255 floats are the usual one) that we will not guess about.
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageInputError(
                label,
                f"has float values in [{lo:g}, {hi:g}]; float images must be in [0, 1] "
                "(divide by 255, or pass uint8)",
            )
        arr8 = _unit_float_to_u8(arr)
    else:
        raise ImageInputError(
            label,
            f"has unsupported dtype {arr.dtype}; use uint8 (0-255), uint16 (0-65535) "
            "or float in [0, 1]",
        )
    im = Image.fromarray(np.ascontiguousarray(arr8))
    return _finish(im, label, max_side, target=_fit(im.size, max_side))


# ----------------------------------------------------------------------- decoding


def _open_checked(fp: IO[bytes], label: str) -> Image.Image:
    """Open ``fp`` lazily with the allowed formats and refuse bombs from the header alone."""
    try:
        # Pillow warns (not errors) between its own limit (~89.5 Mpx) and twice that;
        # our MAX_PIXELS check below is the one that decides, so hide that warning.
        # catch_warnings is process-global: a concurrent thread's warning filters can
        # be disturbed for these few microseconds, which is harmless.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_formats())
    except Image.DecompressionBombError as e:
        raise ImageInputError(label, _too_large_msg(_claimed_pixels(e))) from None
    except UnidentifiedImageError:
        fp.seek(0)
        raise ImageInputError(label, _unidentified_msg(fp.read(64))) from None
    except _DECODE_ERRORS as e:
        raise ImageInputError(label, f"is truncated or corrupt ({_reason(e)})") from None
    try:
        _check_pixels(im.size, label)
    except ImageInputError:
        im.close()
        raise
    return im


def _decode(fp: IO[bytes], label: str, max_side: int | None) -> Image.Image:
    """Open ``fp`` lazily, refuse bombs from the header, then decode the first frame.

    One decode at a time in the process (`_FULL_DECODES`): a server's upload checks and
    renders never hold two big decodes in memory at once. Inside it, a big image is
    reduced right after decoding (`_shrink`), before any conversion copies it, and the
    memory is handed back to the system afterwards (`_give_memory_back`).
    """
    with _FULL_DECODES:
        try:
            return _decode_one(fp, label, max_side)
        finally:
            _give_memory_back()


def _decode_one(fp: IO[bytes], label: str, max_side: int | None) -> Image.Image:
    im = _open_checked(fp, label)
    # The context manager closes the file only if Pillow opened it itself; im.close()
    # would also close a file object the caller still owns.
    with im:
        target = _fit(im.size, max_side)
        # Animated GIF/APNG/WebP and multi-page TIFF/MPO open on frame 0 already, and we
        # never seek, so what is decoded below is the first frame.
        if target is not None and im.format in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below target): much
            # less memory and time for big photos; LANCZOS does the rest. Same trick
            # as Image.thumbnail.
            im.draft(None, target)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageInputError(label, _too_large_msg(_claimed_pixels(e))) from None
        except _DECODE_ERRORS as e:
            raise ImageInputError(label, f"is truncated or corrupt ({_reason(e)})") from None
        if im.format in ("JPEG", "MPO"):
            _check_jpeg_data(fp, label)
        im.fp = None  # decoded: WebP kept a copy of the whole frame as its "file" (fp stays open)
        orientation = _orientation(im)
        small = _shrink(im, target)
        if small is not im:
            Image.Image.close(im)  # the full-size pixels go now (ImageFile.close would close fp)
        return _finish(small, label, max_side, target=target, orientation=orientation)


def _shrink(im: Image.Image, target: tuple[int, int] | None) -> Image.Image:
    """``im`` box-reduced by whole factors to within 3x of ``target``, or ``im`` itself.

    The same reduction `Image.resize(..., reducing_gap=3.0)` starts with, done before the
    mode conversions (transparency on white, 16-bit and float scaling) so they work on a
    few megapixels instead of the whole decode. Palette, bilevel and 16-bit images (which
    Pillow cannot average) and HSV (whose hue cannot be averaged) are left whole.
    """
    if target is None or im.mode in ("1", "P", "PA", "HSV") or im.mode.startswith("I;16"):
        return im
    factors = (int(im.width / target[0] / 3) or 1, int(im.height / target[1] / 3) or 1)
    return im if factors == (1, 1) else im.reduce(factors)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 to 8) of ``im``; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF must not cost the user the image
        return 1
    return value if isinstance(value, int) else 1


def _check_jpeg_data(fp: IO[bytes], label: str) -> None:
    """Refuse a Huffman-coded JPEG whose coded data is too short for its header's size.

    libjpeg fills what is missing with grey and only warns (a file that claims 10000x10000
    and holds 8x8 of data decodes as flat grey); Pillow does not pass the warning on.
    Every 8x8 block of the full-resolution component costs at least one bit (its DC
    code), so scan data (everything after the first scan header) with fewer bits than
    blocks is missing data. Arithmetic-coded JPEGs (SOF9-SOF15, rare), which can code a
    block in less, are not judged.
    """
    fp.seek(0)
    frame = _jpeg_frame(fp.read(1 << 20))
    size = fp.seek(0, io.SEEK_END)
    if frame is None or frame[0] in _ARITHMETIC_SOF:
        return
    _, w, h, scan_start = frame
    if (size - scan_start) * 8 < math.ceil(w / 8) * math.ceil(h / 8):
        raise ImageInputError(label, f"is truncated or corrupt (its {size:,} bytes cannot hold the "
                                     f"{_dims((w, h))} pixels its header declares)")


_ARITHMETIC_SOF = (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _jpeg_frame(head: bytes) -> tuple[int, int, int, int] | None:
    """(SOF marker, width, height, where the first scan's data starts: 0 if not in ``head``)
    of a JPEG, its header walked segment by segment; None without a frame header."""
    i, frame = 2, None
    while i + 4 <= len(head) and head[i] == 0xFF:
        marker, length = head[i + 1], struct.unpack(">H", head[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(head):
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            frame = (marker, width, height)
        if marker == 0xDA:
            return None if frame is None else (*frame, i + 2 + length)
        i += 2 + length
    return None if frame is None else (*frame, 0)


def _give_memory_back() -> None:
    """Hand freed heap memory back to the system (glibc keeps it for reuse otherwise, which
    after one big decode can hold gigabytes); nothing where malloc_trim does not exist."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
_FULL_DECODES = threading.Lock()


def _finish(
    im: Image.Image, label: str, max_side: int | None, *, target: tuple[int, int] | None,
    orientation: int | None = None,
) -> Image.Image:
    """Orientation, colour mode, size; always returns a new, detached RGB image.

    ``orientation`` is the EXIF orientation when ``im`` no longer carries it (a reduced
    decode); by default it is read from ``im``.
    """
    orig_size = im.size
    method = _TRANSPOSE.get(_orientation(im) if orientation is None else orientation)
    out = im if method is None else im.transpose(method)
    if target is not None and out.size != orig_size and out.size == orig_size[::-1]:
        target = (target[1], target[0])  # orientation 5-8 swapped width and height

    out = _to_l_or_rgb(out, label)
    # Resize in L when grayscale: a quarter of the memory of RGB for huge scans.
    if target is not None and out.size != target:
        out = out.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if out.mode != "RGB":
        out = out.convert("RGB")
    if out is im:
        out = out.copy()
    # Drop file metadata (EXIF, ICC, GIF loop/duration, transparency) that no longer
    # describes these pixels.
    out.info = {}
    return out


# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_l_or_rgb(im: Image.Image, label: str) -> Image.Image:
    """Reduce any Pillow mode to 8-bit ``L`` or ``RGB``, transparency on white."""
    mode = im.mode
    if mode == "1":
        return im.convert("L")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return Image.fromarray(_u16_to_u8(np.asarray(im)))
    if mode == "I":
        return Image.fromarray(_int32_to_u8(np.asarray(im), label))
    if mode == "F":
        return Image.fromarray(_float_image_to_u8(np.asarray(im), label))
    if mode in ("LA", "La"):
        la = im.convert("LA") if mode == "La" else im
        bg = Image.new("L", la.size, _WHITE)
        bg.paste(la.getchannel("L"), mask=la.getchannel("A"))
        return bg
    if mode in ("RGBA", "RGBa", "PA") or "transparency" in im.info:
        # convert("RGBA") also turns a tRNS colour key (P, L, RGB) into alpha.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (_WHITE, _WHITE, _WHITE, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("L", "RGB"):
        return im
    if mode == "LAB":
        try:
            return im.convert("RGB")
        except ValueError:
            # Older Pillow cannot convert LAB directly; littleCMS can.
            lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
            transform = ImageCms.buildTransform(lab, srgb, "LAB", "RGB")
            return ImageCms.applyTransform(im, transform)
    try:
        # P, CMYK, YCbCr, HSV, RGBX: Pillow's own conversions (CMYK naively, no ICC).
        return im.convert("RGB")
    except ValueError as e:
        raise ImageInputError(label, f"uses an unsupported colour mode {mode!r} ({e})") from None


# ---------------------------------------------------------------- value scaling


def _u16_to_u8(arr: np.ndarray) -> np.ndarray:
    # Round(v * 255 / 65535) == round(v / 257): 65535 -> 255, 0 -> 0, no clipping.
    a = arr.astype(np.uint32)
    a *= 255  # in place: a 50-megapixel scan needs no second and third copy
    a += 32767
    a //= 65535
    return a.astype(np.uint8)


def _unit_float_to_u8(arr: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _int32_to_u8(arr: np.ndarray, label: str) -> np.ndarray:
    # Pillow's "I" mode is how 16-bit files (PPM/PGM, some TIFFs, older Pillow PNGs)
    # arrive, so 0..65535 is the range to scale by. Wider values have no range we could
    # honestly assume.
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise ImageInputError(
            label,
            f"has 32-bit integer values in [{lo}, {hi}]; only 0-65535 (16-bit) is supported",
        )
    return _u16_to_u8(arr)


def _float_image_to_u8(arr: np.ndarray, label: str) -> np.ndarray:
    # Float files (TIFF, FITS) conventionally hold [0, 1]; Pillow's own convert("F")
    # from 8-bit keeps 0..255, so that range is recognised too. Anything else is refused
    # rather than silently clipped or stretched; NaN and inf as for a float array.
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ImageInputError(label, "contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= -1e-3 and hi <= 1 + 1e-3:
        return _unit_float_to_u8(arr)
    if lo >= -0.5 and hi <= 255.5:
        return np.rint(np.clip(arr, 0.0, 255.0)).astype(np.uint8)
    raise ImageInputError(
        label, f"has float values in [{lo:g}, {hi:g}]; expected [0, 1] (or 0-255)"
    )


# ----------------------------------------------------------------------- helpers


def _formats() -> list[str]:
    Image.init()
    return [f for f in _ALLOWED_FORMATS if f in Image.OPEN]


def _fit(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """Target size with the longer side exactly ``max_side``, or None if it fits."""
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return None
    if w >= h:
        return max_side, max(1, round(h * max_side / w))
    return max(1, round(w * max_side / h)), max_side


def _check_pixels(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageInputError(label, f"has no pixels ({_dims(size)})")
    if w * h > MAX_PIXELS:
        raise ImageInputError(label, _too_large_msg(w * h, size))


def _check_bytes(size: int, max_bytes: int | None, label: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ImageInputError(
            label, f"is too large ({_megabytes(size)}); files up to {_megabytes(max_bytes)} are accepted"
        )


def _megabytes(n: int) -> str:
    mb = n / 2**20
    return f"{mb:.1f} MB" if mb < 100 and mb != int(mb) else f"{mb:.0f} MB"


def _too_large_msg(pixels: int | None, size: tuple[int, int] | None = None) -> str:
    claimed = ""
    if size is not None:
        claimed = f" ({_dims(size)} = {pixels:,} pixels)"
    elif pixels is not None:
        claimed = f" ({pixels:,} pixels)"
    return (
        f"is too large{claimed}; the limit is {MAX_PIXELS:,} pixels (e.g. 8660x5773), "
        "a guard against decompression bombs"
    )


def _claimed_pixels(err: Exception) -> int | None:
    # Pillow's message reads "Image size (N pixels) exceeds limit ..."; only used to
    # make our message specific, so a format change just drops the number.
    m = re.search(r"\((\d+) pixels\)", str(err))
    return int(m.group(1)) if m else None


_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _unidentified_msg(head: bytes) -> str:
    """Say what the bytes look like, since Pillow only says it cannot identify them."""
    for sig, fmt in _IMAGE_SIGNATURES:
        if head.startswith(sig):
            return f"is truncated or corrupt (it starts like a {fmt} file but cannot be read)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "is truncated or corrupt (it starts like a WebP file but cannot be read)"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return (
                "is a HEIC/HEIF photo, which cannot be read here; export it as JPEG or PNG"
            )
        if brand in (b"avif", b"avis"):
            return "is an AVIF image, which this installation cannot read; use JPEG or PNG"
        return "is not an image (it looks like a video or other media file)"
    if head.startswith(b"%PDF"):
        return "is not an image (it looks like a PDF document)"
    if head.startswith(b"%!PS") or head.startswith(b"\xc5\xd0\xd3\xc6"):
        return "is not an image we accept (it looks like PostScript/EPS); export it as PNG"
    if head.startswith(b"PK\x03\x04"):
        return "is not an image (it looks like a ZIP archive or office document)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) and b"svg" in head.lower():
        return "is not an image we accept (it looks like an SVG drawing); export it as PNG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "is not an image (it looks like an HTML page)"
    if head and _looks_like_text(head):
        return "is not an image (it looks like text)"
    return (
        "is not an image (the file format is not recognised; "
        "use PNG, JPEG, WebP, GIF, BMP or TIFF)"
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError:
        # Cut in the middle of a multi-byte character: judge the rest.
        s = head[:-3].decode("utf-8", errors="replace")
        if "\ufffd" in s:
            return False
    return all(c.isprintable() or c in "\t\r\n" for c in s)


def _reason(err: BaseException) -> str:
    # Pillow messages name object reprs ("<_io.BytesIO object at 0x...>"); cut them.
    msg = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip()
    return msg or type(err).__name__


def _quote(name: str) -> str:
    return repr(str(name))


def _dims(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
