"""Tests for vslerp_app.images: every kind of input a user may hand us.

All fixtures are built in code (into tmp_path or memory); nothing binary is committed.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from vslerp_app.images import (
    MAX_PIXELS,
    ImageInputError,
    check_image,
    data_url_bytes,
    image_fingerprint,
    load_image,
)

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# ----------------------------------------------------------------------------- helpers


def save(img: Image.Image, path, fmt: str | None = None, **kw):
    img.save(path, fmt, **kw)
    return path


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def close_to(px, want, tol=8) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(px, want, strict=True))


def assert_rgb_loaded(out: Image.Image) -> None:
    assert out.mode == "RGB"
    assert type(out) is Image.Image, "must be detached from any file (not an ImageFile)"
    assert out.info == {}
    out.getpixel((0, 0))  # usable without any file behind it


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grayscale PNG that claims width x height but holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * width, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif


# -------------------------------------------------------------------- basic kinds


def test_path_str_and_pathlike_give_same_rgb(tmp_path):
    p = save(Image.new("RGB", (7, 5), (10, 20, 30)), tmp_path / "a.png")
    for src in (p, str(p)):
        out = load_image(src)
        assert_rgb_loaded(out)
        assert out.size == (7, 5)
        assert out.getpixel((6, 4)) == (10, 20, 30)


def test_result_outlives_the_file(tmp_path):
    p = save(Image.new("RGB", (4, 4), (9, 8, 7)), tmp_path / "gone.png")
    out = load_image(p)
    p.unlink()
    assert out.getpixel((3, 3)) == (9, 8, 7)


def test_bytes_bytearray_memoryview():
    data = encode(Image.new("RGB", (3, 2), GREEN), "PNG")
    for src in (data, bytearray(data), memoryview(data)):
        out = load_image(src)
        assert_rgb_loaded(out)
        assert out.size == (3, 2) and out.getpixel((0, 0)) == GREEN


def test_binary_file_object_left_open_and_in_place(tmp_path):
    p = save(Image.new("RGB", (3, 3), BLUE), tmp_path / "f.png")
    with open(p, "rb") as f:
        f.seek(5)
        out = load_image(f)
        assert not f.closed
        assert f.tell() == 5
    assert out.getpixel((1, 1)) == BLUE


def test_non_seekable_file_object():
    class Pipe(io.RawIOBase):
        def __init__(self, data):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, b):
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    out = load_image(Pipe(encode(Image.new("RGB", (2, 2), RED), "PNG")))
    assert out.getpixel((0, 0)) == RED


def test_text_mode_file_refused(tmp_path):
    p = save(Image.new("RGB", (2, 2)), tmp_path / "t.png")
    with open(p, encoding="latin-1") as f, pytest.raises(ImageInputError, match="binary mode"):
        load_image(f)


def test_pil_image_is_copied_not_mutated():
    src = Image.new("RGB", (5, 5), RED)
    out = load_image(src)
    assert out is not src
    out.putpixel((0, 0), GREEN)
    assert src.getpixel((0, 0)) == RED


def test_lazily_opened_pil_image(tmp_path):
    p = save(Image.new("RGB", (6, 4), (1, 2, 3)), tmp_path / "lazy.png")
    with Image.open(p) as lazy:
        out = load_image(lazy)
    assert_rgb_loaded(out)
    assert out.getpixel((5, 3)) == (1, 2, 3)


def test_one_by_one(tmp_path):
    out = load_image(save(Image.new("RGB", (1, 1), (200, 100, 50)), tmp_path / "px.png"))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (200, 100, 50)


# ------------------------------------------------------------------ EXIF rotation


def test_exif_orientation_6_rotates_20x10_to_10x20(tmp_path):
    img = Image.new("RGB", (20, 10), BLUE)
    img.paste(RED, (0, 0, 4, 10))  # left columns red in the stored file
    p = save(img, tmp_path / "phone.jpg", "JPEG", quality=95, exif=exif_with_orientation(6))
    out = load_image(p)
    assert out.size == (10, 20)
    # Orientation 6 = rotate 90 degrees clockwise to display: the left edge goes on top.
    assert close_to(out.getpixel((5, 0)), RED, tol=40)
    assert close_to(out.getpixel((5, 19)), BLUE, tol=40)


def test_exif_rotation_and_downscale_together(tmp_path):
    img = Image.new("RGB", (2000, 1000), GREEN)
    p = save(img, tmp_path / "big.jpg", "JPEG", exif=exif_with_orientation(8))
    out = load_image(p, max_side=100)
    assert out.size == (50, 100)
    assert close_to(out.getpixel((25, 50)), GREEN, tol=10)


# ------------------------------------------------------------ animation / frames


def _frames():
    return [Image.new("RGB", (8, 8), c) for c in (RED, GREEN, BLUE)]


def test_animated_gif_first_frame(tmp_path):
    first, *rest = _frames()
    p = save(first, tmp_path / "anim.gif", "GIF", save_all=True, append_images=rest, duration=50)
    with Image.open(p) as check:
        assert check.n_frames == 3
    out = load_image(p)
    assert_rgb_loaded(out)
    assert out.getpixel((4, 4)) == RED


def test_animated_png_first_frame(tmp_path):
    first, *rest = _frames()
    p = save(first, tmp_path / "anim.png", "PNG", save_all=True, append_images=rest)
    assert load_image(p).getpixel((4, 4)) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_first_frame(tmp_path):
    first, *rest = _frames()
    p = save(first, tmp_path / "anim.webp", "WEBP", save_all=True, append_images=rest, lossless=True)
    assert load_image(p).getpixel((4, 4)) == RED


# ------------------------------------------------------------------ transparency


def test_rgba_transparent_pixel_becomes_white(tmp_path):
    img = Image.new("RGBA", (4, 1), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = load_image(save(img, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert close_to(out.getpixel((2, 0)), (127, 127, 127), tol=2)


def test_la_transparent_becomes_white(tmp_path):
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (30, 255))
    out = load_image(save(img, tmp_path / "la.png"))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == (30, 30, 30)


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 - 2) * 3)
    img.putpixel((1, 0), 1)
    p = save(img, tmp_path / "p.png", transparency=0)
    out = load_image(p)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == BLUE


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (3, 1), 2)
    img.putpalette([0, 0, 0, 10, 20, 30, 200, 150, 100] + [0] * (256 - 3) * 3)
    img.putpixel((0, 0), 1)
    out = load_image(save(img, tmp_path / "p.gif"))
    assert out.getpixel((0, 0)) == (10, 20, 30)
    assert out.getpixel((2, 0)) == (200, 150, 100)


# ---------------------------------------------------------------- colour modes


def test_cmyk_jpeg_pure_cyan(tmp_path):
    p = save(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), tmp_path / "c.jpg", "JPEG", quality=95)
    out = load_image(p)
    assert_rgb_loaded(out)
    assert close_to(out.getpixel((4, 4)), (0, 255, 255), tol=12)


def test_cmyk_tiff_exact(tmp_path):
    p = save(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "c.tif")
    assert load_image(p).getpixel((0, 0)) == RED


def test_ycbcr_and_lab_to_rgb():
    ycc = Image.new("RGB", (2, 2), RED).convert("YCbCr")
    assert close_to(load_image(ycc).getpixel((0, 0)), RED, tol=3)
    lab_white = Image.new("LAB", (2, 2), (255, 128, 128))  # L max, a = b = 0
    assert close_to(load_image(lab_white).getpixel((0, 0)), WHITE, tol=3)
    r, g, b = load_image(Image.new("LAB", (1, 1), (128, 128, 128))).getpixel((0, 0))
    assert abs(r - g) <= 2 and abs(g - b) <= 2 and 100 < r < 140  # neutral mid grey


def test_grayscale_l_and_1bit(tmp_path):
    out = load_image(save(Image.new("L", (3, 3), 77), tmp_path / "l.png"))
    assert out.getpixel((1, 1)) == (77, 77, 77)
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    out = load_image(save(bw, tmp_path / "bw.png"))
    assert out.getpixel((0, 0)) == BLACK and out.getpixel((1, 0)) == WHITE


# --------------------------------------------------------- 16-bit and float


def test_16bit_png_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 65535, 128 * 257, 1000]], dtype=np.uint16)
    p = save(Image.fromarray(arr), tmp_path / "g16.png")
    with Image.open(p) as check:
        assert check.mode == "I;16"
    out = load_image(p)
    assert [out.getpixel((x, 0))[0] for x in range(4)] == [0, 255, 128, 4]
    assert out.getpixel((1, 0)) == WHITE


def test_16bit_big_endian_and_mode_i():
    arr = np.array([[0, 65535]], dtype=np.uint16)
    be = Image.fromarray(arr.astype(">u2"))
    assert be.mode == "I;16B"
    assert load_image(be).getpixel((1, 0)) == WHITE
    i32 = Image.fromarray(arr.astype(np.int32))
    assert i32.mode == "I"
    out = load_image(i32)
    assert out.getpixel((0, 0)) == BLACK and out.getpixel((1, 0)) == WHITE


def test_mode_i_out_of_16bit_range_refused():
    img = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))
    with pytest.raises(ImageInputError, match="0-65535"):
        load_image(img)


def test_float_tiff_scaled(tmp_path):
    arr = np.array([[0.0, 1.0, 0.5]], dtype=np.float32)
    p = save(Image.fromarray(arr), tmp_path / "f.tif")
    with Image.open(p) as check:
        assert check.mode == "F"
    out = load_image(p)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 255, 128]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_nan_or_inf_refused_like_a_nan_array(tmp_path, bad):
    arr = np.array([[0.0, 0.5, bad]], dtype=np.float32)
    p = save(Image.fromarray(arr), tmp_path / "f.tif")
    with pytest.raises(ImageInputError) as from_file:
        load_image(p)
    with pytest.raises(ImageInputError) as from_array:
        load_image(arr)
    assert from_file.value.problem == from_array.value.problem == "contains NaN or infinite values"


# ------------------------------------------------------------------ numpy input


def test_numpy_uint8_shapes():
    gray = np.array([[0, 100]], dtype=np.uint8)
    assert load_image(gray).getpixel((1, 0)) == (100, 100, 100)
    assert load_image(gray[..., None]).getpixel((1, 0)) == (100, 100, 100)
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[1, 2] = (1, 2, 3)
    out = load_image(rgb)
    assert out.size == (3, 2) and out.getpixel((2, 1)) == (1, 2, 3)
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (0, 255, 0, 255)
    out = load_image(rgba)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == GREEN


def test_numpy_non_contiguous_view():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:, :, 0] = 255
    out = load_image(rgb[::2, ::-1])
    assert out.size == (4, 2) and out.getpixel((0, 0)) == RED


def test_numpy_uint16_float_bool():
    u16 = np.array([[0, 65535]], dtype=np.uint16)
    out = load_image(u16)
    assert out.getpixel((0, 0)) == BLACK and out.getpixel((1, 0)) == WHITE
    rgb16 = np.full((1, 1, 3), 65535, dtype=np.uint16)
    assert load_image(rgb16).getpixel((0, 0)) == WHITE
    f = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float64)
    assert load_image(f).getpixel((0, 0)) == (0, 128, 255)
    assert load_image(f.astype(np.float16)).getpixel((0, 0)) == (0, 128, 255)
    b = np.array([[False, True]])
    assert load_image(b).getpixel((1, 0)) == WHITE


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((2, 2), 255.0), r"\[0, 1\]"),
        (np.array([[np.nan, 0.5]]), "NaN"),
        (np.zeros((2, 2), dtype=np.int64), "dtype int64"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "channels-first"),
        (np.zeros((8,), dtype=np.uint8), "shape"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "no pixels"),
    ],
)
def test_numpy_refusals(arr, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(arr)


# ----------------------------------------------------------------- sizes, bombs


def test_downscale_keeps_aspect_and_max_side_none_keeps_size():
    img = Image.new("RGB", (2000, 1000), RED)
    out = load_image(img)
    assert out.size == (1024, 512) and out.getpixel((500, 250)) == RED
    assert load_image(img, max_side=None).size == (2000, 1000)
    assert load_image(img, max_side=300).size == (300, 150)
    assert load_image(Image.new("RGB", (30, 2048))).size == (15, 1024)
    assert load_image(Image.new("RGB", (1, 5000))).size == (1, 1024)  # never 0 wide
    assert load_image(Image.new("RGB", (300, 200))).size == (300, 200)  # never upscaled


def test_big_jpeg_downscaled(tmp_path):
    p = save(Image.new("RGB", (4000, 3000), (40, 90, 160)), tmp_path / "big.jpg", "JPEG")
    out = load_image(p)
    assert out.size == (1024, 768)
    assert close_to(out.getpixel((512, 384)), (40, 90, 160), tol=6)


def test_max_side_must_be_positive_int():
    for bad in (0, -1, 1.5, True, "1024"):
        with pytest.raises(ValueError, match="max_side"):
            load_image(Image.new("RGB", (2, 2)), max_side=bad)


def test_the_largest_accepted_image_is_downscaled(tmp_path):
    big = Image.new("P", (7071, 7071), 1)
    big.putpalette([0, 0, 0, 30, 60, 90] + [0] * 254 * 3)
    p = save(big, tmp_path / "huge.png", compress_level=1)
    del big
    assert 7071 * 7071 <= MAX_PIXELS < 7072 * 7071  # 50 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak
        out = load_image(p)
    assert out.size == (1024, 1024)
    assert out.getpixel((512, 512)) == (30, 60, 90)


# The worst file the studio accepts for its memory: the most pixels, four bytes each, in the
# format whose decoder holds the most copies (Pillow's WebP: libwebp's frame, its bytes, the image).
MEASURE_PEAK = """
import sys, threading
from pathlib import Path
from vslerp_app.images import load_image

def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1]) * 1024

path, copies = sys.argv[1], int(sys.argv[2])
load_image(path)  # warm up: Pillow's plugins and codecs loaded, first-use buffers allocated
Path("/proc/self/clear_refs").write_text("5")
base = status("VmRSS")
threads = [threading.Thread(target=load_image, args=(path,)) for _ in range(copies)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(status("VmHWM") - base, status("VmRSS") - base)
"""


@pytest.fixture(scope="module")
def worst_webp(tmp_path_factory):
    side = int(MAX_PIXELS ** 0.5)
    path = tmp_path_factory.mktemp("worst") / "rgba.webp"
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(path, lossless=True)
    return path


@pytest.mark.parametrize("copies", [1, 2])
def test_the_worst_accepted_file_decodes_in_bounded_memory(worst_webp, copies):
    """A ~2 KB lossless WebP of 7071 x 7071 RGBA (50 megapixels, 200 MB a copy): alone, and two
    at once from two threads, the process grows by under 1 GB at its peak (two decodes at once
    would take twice that) and holds under 64 MB afterwards. Before: 1.5 GB for one, 261 MB held
    (and 3 GB for the 10000 x 10000 file, accepted then)."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/PID/clear_refs")
    assert worst_webp.stat().st_size < 10_000
    out = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(worst_webp), str(copies)],
                         capture_output=True, text=True, check=True, timeout=120)
    peak, held = (int(v) for v in out.stdout.split())
    print(f"{copies} decode(s) of the 50-megapixel RGBA WebP: peak +{peak / 2**20:.0f} MB, "
          f"held +{held / 2**20:.0f} MB")
    assert peak < 1000 * 2**20, f"peak grew by {peak / 2**20:.0f} MB"
    assert held < 64 * 2**20, f"{held / 2**20:.0f} MB still held after the decode"


def short_jpeg(width: int, height: int) -> bytes:
    """An 8 x 8 JPEG whose header claims width x height (libjpeg fills the rest with grey)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (200, 30, 30)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize("size", [(7000, 7000), (1024, 700), (300, 200)])
def test_a_jpeg_missing_its_data_is_refused_not_rendered_grey(tmp_path, size):
    p = tmp_path / "grey.jpg"
    p.write_bytes(short_jpeg(*size))
    with pytest.raises(ImageInputError) as err:
        load_image(p)
    assert "is truncated or corrupt" in str(err.value) and f"{size[0]}x{size[1]}" in str(err.value)


@pytest.mark.parametrize("kind", ["flat baseline", "flat progressive", "noise"])
def test_complete_jpegs_pass_the_missing_data_check(tmp_path, kind):
    """The lower bound is one bit per 8x8 block: even a flat grey 4000 x 3000 file is above it."""
    size = (4000, 3000) if kind.startswith("flat") else (512, 384)
    img = Image.new("RGB", size, (128, 128, 128)) if kind.startswith("flat") else _noisy(size)
    p = save(img, tmp_path / "ok.jpg", "JPEG", quality=1 if kind.startswith("flat") else 90,
             progressive=kind.endswith("progressive"), optimize=True)
    assert load_image(p).size == ((1024, 768) if kind.startswith("flat") else size)


def _refuse_quickly(data: bytes, tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(data)
    assert len(data) < 4096
    stats_before = Image.core.get_stats()["new_count"] if hasattr(Image.core, "get_stats") else None
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageInputError) as info:
            load_image(p)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 2**20
    # tracemalloc cannot see Pillow's C allocations; Pillow's own counter can: no image
    # core (pixel buffer) was created at all.
    if stats_before is not None:
        assert Image.core.get_stats()["new_count"] == stats_before
    msg = str(info.value)
    assert "'bomb.png'" in msg and "too large" in msg and "decompression bomb" in msg
    return msg


def test_decompression_bomb_refused_before_decoding(tmp_path):
    msg = _refuse_quickly(bomb_png(50000, 50000), tmp_path)
    assert "2,500,000,000" in msg


def test_bomb_refused_even_with_pillow_limit_disabled(tmp_path, monkeypatch):
    # Other code may switch Pillow's guard off; ours is per call and still holds.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    msg = _refuse_quickly(bomb_png(50000, 50000), tmp_path)
    assert "50000x50000" in msg


def test_just_over_limit_refused_without_pillow_warning(tmp_path):
    # 100,010,000 pixels: above our limit, but only a *warning* for Pillow.
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = _refuse_quickly(bomb_png(10001, 10000), tmp_path)
    assert "10001x10000" in msg
    assert Image.MAX_IMAGE_PIXELS == before  # we never touch the global
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_oversized_array_refused():
    # A view with a huge shape but no memory behind it (stride 0).
    arr = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (10001, 10000), (0, 0))
    with pytest.raises(ImageInputError, match="too large"):
        load_image(arr)


# ------------------------------------------------------------------- bad inputs


def _noisy(size=(64, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("frac", [0.02, 0.5, 0.95])
def test_truncated_files(tmp_path, fmt, frac):
    data = encode(_noisy(), fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: max(12, int(len(data) * frac))])
    with pytest.raises(ImageInputError, match="truncated or corrupt") as info:
        load_image(p)
    assert f"'cut.{fmt.lower()}'" in str(info.value)
    assert "0x" not in str(info.value)  # no object reprs


def test_random_bytes_not_an_image(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert data[:2] != b"BM"
    p = tmp_path / "noise.bin"
    p.write_bytes(data)
    with pytest.raises(ImageInputError) as info:
        load_image(p)
    msg = str(info.value)
    assert msg.startswith("'noise.bin' is not an image (")
    assert "BytesIO" not in msg and "0x" not in msg and "BUFR" not in msg


def test_text_pdf_svg_heic_explained(tmp_path):
    cases = {
        "notes.txt": (b"just some notes\n", "looks like text"),
        "doc.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        "logo.svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        "IMG_0001.HEIC": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    }
    for fname, (data, want) in cases.items():
        p = tmp_path / fname
        p.write_bytes(data)
        with pytest.raises(ImageInputError, match=want) as info:
            load_image(p)
        assert str(info.value).startswith(repr(fname))


def test_eps_not_opened(tmp_path):
    # EPS would make Pillow run Ghostscript on untrusted input; it is not accepted.
    p = tmp_path / "x.eps"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(ImageInputError, match="PostScript"):
        load_image(p)


def test_empty_file_and_empty_bytes(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"'empty.png' is empty"):
        load_image(p)
    with pytest.raises(ImageInputError, match="is empty"):
        load_image(b"")
    with pytest.raises(ImageInputError, match="is empty"):
        load_image(io.BytesIO())


def test_directory_path(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    with pytest.raises(ImageInputError, match="'photos' is a directory"):
        load_image(d)


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="'nope.jpg' does not exist") as info:
        load_image(tmp_path / "nope.jpg")
    assert str(tmp_path) in str(info.value)


def test_name_overrides_label_and_error_is_valueerror():
    with pytest.raises(ValueError, match="^'upload #3' is not an image") as info:
        load_image(b"\x00\x01\x02\x03\x04\x05\x06\x07", name="upload #3")
    assert isinstance(info.value, ImageInputError)
    assert info.value.name == "'upload #3'"
    assert info.value.problem.startswith("is not an image")


def test_unsupported_python_object():
    with pytest.raises(ImageInputError, match="expected a file path"):
        load_image(12345)


# ------------------------------------------------------------------ fingerprint


def test_fingerprint_equal_for_equal_pixels(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    from_array = load_image(arr)
    from_file = load_image(save(Image.fromarray(arr), tmp_path / "same.png"))
    fp = image_fingerprint(from_array)
    assert fp == image_fingerprint(from_file)
    assert len(fp) == 64 and int(fp, 16) >= 0


def test_fingerprint_differs_for_different_pixels_size_mode_palette():
    base = Image.new("RGB", (4, 4), (1, 2, 3))
    other = base.copy()
    other.putpixel((3, 3), (1, 2, 4))
    prints = {
        image_fingerprint(base),
        image_fingerprint(other),
        image_fingerprint(Image.new("RGB", (2, 8), (1, 2, 3))),  # same bytes, other shape
        image_fingerprint(Image.new("RGBA", (4, 3), (1, 2, 3, 1))),  # same byte count
    }
    assert len(prints) == 4
    p1, p2 = Image.new("P", (2, 2), 0), Image.new("P", (2, 2), 0)
    p1.putpalette([0, 0, 0] * 256)
    p2.putpalette([255, 255, 255] * 256)
    assert image_fingerprint(p1) != image_fingerprint(p2)


# ------------------------------------------- checks before decoding (a server's gate)

def _hostile_files() -> dict[str, bytes]:
    """What a server must refuse before decoding: each as the bytes of a file."""
    small = Image.new("RGB", (8, 8), RED)
    return {
        "text": b"these are my holiday notes, not a picture\n",
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "sgi": encode(small, "SGI"),
        "pcx": encode(small, "PCX"),
        "bomb-12000": bomb_png(12000, 12000),
        "bomb-30000": bomb_png(30000, 30000),
    }


@pytest.mark.parametrize("kind", list(_hostile_files()))
def test_check_image_refuses_as_load_image_does_without_decoding(tmp_path, kind):
    data = _hostile_files()[kind]
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    with pytest.raises(ImageInputError) as decoded:
        load_image(path)
    new_count = Image.core.get_stats()["new_count"] if hasattr(Image.core, "get_stats") else None
    with pytest.raises(ImageInputError) as from_file:
        check_image(path)
    with pytest.raises(ImageInputError) as from_bytes:
        check_image(data, name="upload.bin")
    if new_count is not None:  # no pixel buffer was made by either check
        assert Image.core.get_stats()["new_count"] == new_count
    assert from_file.value.problem == from_bytes.value.problem == decoded.value.problem
    assert str(from_file.value).startswith("'upload.bin' ")


def test_check_image_reads_the_header_of_a_good_file_and_the_byte_limit(tmp_path):
    data = encode(_noisy((40, 30)), "PNG")
    path = tmp_path / "ok.png"
    path.write_bytes(data)
    header = check_image(path, max_bytes=len(data))
    assert (header.format, header.size) == ("PNG", (40, 30))
    assert check_image(data) == header
    with pytest.raises(ImageInputError, match=r"^'ok.png' is too large \(.* MB\); files up to .* MB"):
        check_image(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageInputError, match="is empty"):
        check_image(b"")
    with pytest.raises(ImageInputError, match="is a directory"):
        check_image(tmp_path)


def test_data_url_measured_before_its_base64_is_decoded():
    import base64

    data = encode(_noisy((16, 16)), "PNG")
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert data_url_bytes(url, max_bytes=len(data)) == data
    assert data_url_bytes("data:image/svg+xml,%3Csvg%2F%3E") == b"<svg/>"
    # 30 MB of base64 (22.5 MB of data) over a 20 MB limit: refused from the length alone.
    huge = "data:image/png;base64," + "A" * (30 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError, match=r"is too large \(22\.5 MB\); files up to 20 MB"):
            data_url_bytes(huge, name="source", max_bytes=20 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak
    with pytest.raises(ImageInputError, match="not valid base64"):
        data_url_bytes("data:image/png;base64,@@@@")
    with pytest.raises(ImageInputError, match="not a data: URL"):
        data_url_bytes("https://example.com/cat.png")
    with pytest.raises(ImageInputError, match="is empty"):
        data_url_bytes("data:image/png;base64,")
