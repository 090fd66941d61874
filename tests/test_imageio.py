"""Tests for edgefx.imageio. Every input is generated in tmp_path with numpy, OpenCV or
Pillow, or written byte by byte where those libraries cannot produce it."""

from __future__ import annotations

import inspect
import logging
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import run_edgefx
from PIL import Image, ImageOps

from edgefx import imageio
from edgefx.errors import InputError, OutputError, UsageError
from edgefx.fsutil import TEMP_PREFIX
from edgefx.imageio import (
    FORMATS,
    SUFFIX_FOR_FORMAT,
    EncodeError,
    ImageData,
    encode_image,
    from_float,
    read_image,
    to_float,
    write_image,
)

EXIF_ORIENTATION = 0x0112
HEIGHT, WIDTH = 12, 20


def random_samples(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def make_image(layout: str, dtype: type, seed: int = 0) -> ImageData:
    """Build random gray, rgb, rgba or gray_alpha image data."""
    gray = layout in ("gray", "gray_alpha")
    shape = (HEIGHT, WIDTH) if gray else (HEIGHT, WIDTH, 3)
    pixels = random_samples(shape, dtype, seed)
    alpha = None
    if layout in ("rgba", "gray_alpha"):
        alpha = random_samples((HEIGHT, WIDTH), dtype, seed + 1)
    return ImageData(pixels=pixels, alpha=alpha, format="png")


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """An asymmetric RGB image with gradients and a bright top-left block.

    Lossy codecs keep it within a few levels, and every rotation or mirror of it differs
    from the original.
    """
    rows = np.linspace(0, 255, height)[:, None]
    columns = np.linspace(0, 255, width)[None, :]
    red = np.broadcast_to(rows, (height, width))
    green = np.broadcast_to(columns, (height, width))
    blue = (red + green) / 2
    image = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    image[: height // 4, : width // 4] = 255
    return image


def mean_abs_error(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int32) - second.astype(np.int32)).mean())


def png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + data)
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR, with a correct CRC, declares width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def tiff_bytes(
    samples: np.ndarray,
    photometric: int,
    extra_samples: int | None = None,
    size: tuple[int, int] | None = None,
) -> bytes:
    """An uncompressed little-endian TIFF with one strip, for layouts Pillow cannot
    write.

    ``size`` (width, height) overrides the dimensions in the header, for headers that
    claim more pixels than the file holds.
    """
    height, width = samples.shape[:2]
    if size is not None:
        width, height = size
    per_pixel = 1 if samples.ndim == 2 else samples.shape[2]
    bits = samples.dtype.itemsize * 8
    data = samples.astype(f"<u{samples.dtype.itemsize}").tobytes()

    entry_count = 9 + (extra_samples is not None)
    directory_end = 8 + 2 + 12 * entry_count + 4
    bits_values = struct.pack(f"<{per_pixel}H", *([bits] * per_pixel))
    bits_inline = len(bits_values) <= 4
    data_offset = directory_end + (0 if bits_inline else len(bits_values))

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    bits_field = bits_values.ljust(4, b"\x00") if bits_inline else b""
    if not bits_inline:
        bits_field = struct.pack("<I", directory_end)
    entries = [
        long(256, width),
        long(257, height),
        struct.pack("<HHI", 258, 3, per_pixel) + bits_field,
        short(259, 1),
        short(262, photometric),
        long(273, data_offset),
        short(277, per_pixel),
        long(278, height),
        long(279, len(data)),
    ]
    if extra_samples is not None:
        entries.append(short(338, extra_samples))
    directory = struct.pack("<H", entry_count) + b"".join(entries) + b"\x00" * 4
    out_of_line = b"" if bits_inline else bits_values
    return b"II*\x00" + struct.pack("<I", 8) + directory + out_of_line + data


def no_temporary_files(directory: Path) -> bool:
    return not any(item.name.startswith(TEMP_PREFIX) for item in directory.iterdir())


# --------------------------------------------------------------------------------------
# Format tables and ImageData


def test_format_tables_consistent():
    for suffix, name in FORMATS.items():
        assert name in SUFFIX_FOR_FORMAT, suffix
    for name, suffix in SUFFIX_FOR_FORMAT.items():
        assert FORMATS[suffix] == name
    assert ".gif" not in FORMATS


def test_image_data_properties():
    gray = make_image("gray", np.uint16)
    rgb = make_image("rgba", np.uint8)
    assert gray.bit_depth == 16
    assert rgb.bit_depth == 8
    assert gray.height == HEIGHT
    assert gray.width == WIDTH
    assert gray.is_gray
    assert not rgb.is_gray


def test_image_data_rejects_bad_arrays():
    pixels = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ImageData(pixels.astype(np.float32), None, "png")
    with pytest.raises(ValueError, match="shape"):
        ImageData(np.zeros((4, 5, 4), dtype=np.uint8), None, "png")
    with pytest.raises(ValueError, match="alpha must have shape"):
        ImageData(pixels, np.zeros((5, 4), dtype=np.uint8), "png")
    with pytest.raises(ValueError, match="alpha must have dtype"):
        ImageData(pixels, np.zeros((4, 5), dtype=np.uint16), "png")


# --------------------------------------------------------------------------------------
# Round trips

LOSSLESS_CASES = [
    (file_format, dtype, layout)
    for file_format in ("png", "tiff")
    for dtype in (np.uint8, np.uint16)
    for layout in ("gray", "rgb", "rgba", "gray_alpha")
    if not (file_format == "tiff" and dtype == np.uint16 and layout == "gray_alpha")
] + [("bmp", np.uint8, layout) for layout in ("gray", "rgb", "rgba")]


@pytest.mark.parametrize(("file_format", "dtype", "layout"), LOSSLESS_CASES)
def test_round_trip_lossless(tmp_path, file_format, dtype, layout):
    original = make_image(layout, dtype)
    path = tmp_path / f"image{SUFFIX_FOR_FORMAT[file_format]}"
    write_image(path, original)
    result = read_image(path)

    assert result.format == file_format
    assert result.pixels.dtype == dtype
    assert result.pixels.shape == original.pixels.shape
    assert np.array_equal(result.pixels, original.pixels)
    if original.alpha is None:
        assert result.alpha is None
    else:
        assert result.alpha is not None
        assert result.alpha.dtype == dtype
        assert np.array_equal(result.alpha, original.alpha)


@pytest.mark.parametrize(
    ("file_format", "dtype"), [("tiff", np.uint16), ("bmp", np.uint8)]
)
def test_round_trip_gray_alpha_as_rgba(tmp_path, file_format, dtype):
    original = make_image("gray_alpha", dtype)
    path = tmp_path / f"image{SUFFIX_FOR_FORMAT[file_format]}"
    write_image(path, original)
    result = read_image(path)

    assert result.pixels.shape == (HEIGHT, WIDTH, 3)
    assert result.pixels.dtype == dtype
    for channel in range(3):
        assert np.array_equal(result.pixels[:, :, channel], original.pixels)
    assert result.alpha is not None
    assert np.array_equal(result.alpha, original.alpha)


@pytest.mark.parametrize("file_format", ["jpeg", "webp"])
def test_round_trip_lossy_rgb(tmp_path, file_format):
    original = ImageData(smooth_rgb(), None, "png")
    path = tmp_path / f"image{SUFFIX_FOR_FORMAT[file_format]}"
    write_image(path, original)
    result = read_image(path)

    assert result.format == file_format
    assert result.pixels.shape == original.pixels.shape
    assert result.pixels.dtype == np.uint8
    assert result.alpha is None
    assert mean_abs_error(result.pixels, original.pixels) < 2.0


def test_round_trip_jpeg_gray(tmp_path):
    original = ImageData(smooth_rgb()[:, :, 1].copy(), None, "png")
    write_image(tmp_path / "gray.jpg", original)
    result = read_image(tmp_path / "gray.jpg")
    assert result.is_gray
    assert mean_abs_error(result.pixels, original.pixels) < 2.0


def test_round_trip_webp_alpha(tmp_path):
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    original = ImageData(smooth_rgb(), alpha, "png")
    write_image(tmp_path / "alpha.webp", original)
    result = read_image(tmp_path / "alpha.webp")
    assert result.alpha is not None
    assert mean_abs_error(result.alpha, alpha) < 1.0
    assert mean_abs_error(result.pixels, original.pixels) < 2.0


def test_webp_quality_100_is_lossless(tmp_path):
    original = make_image("rgb", np.uint8)
    write_image(tmp_path / "lossless.webp", original, quality=100)
    result = read_image(tmp_path / "lossless.webp")
    assert np.array_equal(result.pixels, original.pixels)


def test_webp_lossless_alpha(tmp_path):
    # libwebp may replace the colors of fully transparent pixels, even when lossless.
    original = make_image("rgba", np.uint8)
    assert original.alpha is not None
    write_image(tmp_path / "lossless.webp", original, quality=100)
    result = read_image(tmp_path / "lossless.webp")
    visible = original.alpha > 0
    assert result.alpha is not None
    assert np.array_equal(result.alpha, original.alpha)
    assert np.array_equal(result.pixels[visible], original.pixels[visible])


def test_webp_gray_reads_back_rgb(tmp_path):
    original = ImageData(smooth_rgb()[:, :, 0].copy(), None, "png")
    write_image(tmp_path / "gray.webp", original, quality=100)
    result = read_image(tmp_path / "gray.webp")
    assert result.pixels.shape == (48, 64, 3)
    assert np.array_equal(result.pixels[:, :, 0], original.pixels)


@pytest.mark.parametrize("file_format", ["jpeg", "webp", "bmp"])
def test_16bit_converted_to_8bit(tmp_path, caplog, file_format):
    pixels = (smooth_rgb().astype(np.uint16) * 257).astype(np.uint16)
    path = tmp_path / f"deep{SUFFIX_FOR_FORMAT[file_format]}"
    with caplog.at_level(logging.WARNING, logger="edgefx.imageio"):
        write_image(path, ImageData(pixels, None, "png"))
    result = read_image(path)

    assert result.bit_depth == 8
    assert "8-bit" in caplog.text
    assert mean_abs_error(result.pixels, smooth_rgb()) < 2.0


def test_16bit_to_8bit_rounds_to_nearest(tmp_path):
    # 65407 is 254.5 * 257, a tie, which rounds up.
    pixels = np.array([[0, 128, 129, 257, 65406, 65407, 65535]], dtype=np.uint16)
    write_image(tmp_path / "levels.bmp", ImageData(pixels, None, "png"))
    result = read_image(tmp_path / "levels.bmp")
    assert result.pixels.tolist() == [[0, 0, 1, 1, 254, 255, 255]]


def test_uppercase_suffix(tmp_path):
    write_image(tmp_path / "upper.PNG", make_image("rgb", np.uint8))
    assert read_image(tmp_path / "upper.PNG").format == "png"


def test_format_from_contents(tmp_path):
    data = encode_image(ImageData(smooth_rgb(), None, "png"), "jpeg")
    (tmp_path / "named.png").write_bytes(data)
    assert read_image(tmp_path / "named.png").format == "jpeg"


def test_non_ascii_path(tmp_path):
    path = tmp_path / "каталог" / "фото с пробелом.png"
    original = make_image("rgba", np.uint8)
    write_image(path, original)
    result = read_image(path)
    assert path.exists()
    assert np.array_equal(result.pixels, original.pixels)


# --------------------------------------------------------------------------------------
# Color models that OpenCV returns in other layouts


def test_palette_png_reads_rgb(tmp_path):
    palette_image = Image.fromarray(smooth_rgb()).convert("P")
    palette_image.save(tmp_path / "palette.png")
    result = read_image(tmp_path / "palette.png")
    assert result.pixels.shape == (48, 64, 3)
    assert result.alpha is None
    assert np.array_equal(result.pixels, np.asarray(palette_image.convert("RGB")))


def test_palette_png_transparency(tmp_path):
    palette_image = Image.fromarray(smooth_rgb()).convert("P")
    palette_image.save(tmp_path / "palette.png", transparency=0)
    result = read_image(tmp_path / "palette.png")
    expected = np.asarray(palette_image.convert("RGBA"))
    assert result.alpha is not None
    assert np.array_equal(result.alpha, expected[:, :, 3])
    assert np.array_equal(result.pixels, expected[:, :, :3])


def test_gray_alpha_png_from_pillow(tmp_path):
    samples = random_samples((HEIGHT, WIDTH, 2), np.uint8)
    Image.fromarray(samples).save(tmp_path / "la.png")
    result = read_image(tmp_path / "la.png")
    assert result.is_gray
    assert np.array_equal(result.pixels, samples[:, :, 0])
    assert result.alpha is not None
    assert np.array_equal(result.alpha, samples[:, :, 1])


def test_cmyk_jpeg_reads_rgb(tmp_path):
    Image.fromarray(smooth_rgb()).convert("CMYK").save(
        tmp_path / "cmyk.jpg", quality=95
    )
    result = read_image(tmp_path / "cmyk.jpg")
    assert result.pixels.shape == (48, 64, 3)
    assert result.alpha is None
    assert mean_abs_error(result.pixels, smooth_rgb()) < 3.0


def test_cmyk_tiff_reads_rgb(tmp_path):
    Image.fromarray(smooth_rgb()).convert("CMYK").save(tmp_path / "cmyk.tif")
    result = read_image(tmp_path / "cmyk.tif")
    assert result.pixels.shape == (48, 64, 3)
    assert result.alpha is None
    assert np.array_equal(result.pixels, smooth_rgb())


def test_rgba_tiff_not_premultiplied(tmp_path):
    # Pillow marks the alpha as unassociated (ExtraSamples 2), and OpenCV alone would
    # premultiply the colors.
    samples = random_samples((HEIGHT, WIDTH, 4), np.uint8)
    Image.fromarray(samples).save(tmp_path / "rgba.tif")
    result = read_image(tmp_path / "rgba.tif")
    assert np.array_equal(result.pixels, samples[:, :, :3])
    assert result.alpha is not None
    assert np.array_equal(result.alpha, samples[:, :, 3])


@pytest.mark.parametrize("extra_samples", [None, 2])
def test_rgba16_tiff(tmp_path, extra_samples):
    samples = random_samples((HEIGHT, WIDTH, 4), np.uint16)
    path = tmp_path / "rgba16.tif"
    path.write_bytes(tiff_bytes(samples, photometric=2, extra_samples=extra_samples))
    result = read_image(path)
    assert np.array_equal(result.pixels, samples[:, :, :3])
    assert result.alpha is not None
    assert np.array_equal(result.alpha, samples[:, :, 3])


def test_gray_alpha_tiff_from_pillow(tmp_path):
    samples = random_samples((HEIGHT, WIDTH, 2), np.uint8)
    Image.fromarray(samples).save(tmp_path / "la.tif")
    result = read_image(tmp_path / "la.tif")
    assert result.is_gray
    assert np.array_equal(result.pixels, samples[:, :, 0])
    assert result.alpha is not None
    assert np.array_equal(result.alpha, samples[:, :, 1])


def test_gray_alpha_tiff_16bit_rejected(tmp_path):
    samples = random_samples((HEIGHT, WIDTH, 2), np.uint16)
    path = tmp_path / "la16.tif"
    path.write_bytes(tiff_bytes(samples, photometric=1, extra_samples=2))
    with pytest.raises(InputError, match="16-bit gray.alpha TIFF is not supported"):
        read_image(path)


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (HEIGHT, WIDTH, 3)])
def test_float_tiff_rejected(tmp_path, shape):
    samples = np.random.default_rng(0).random(shape, dtype=np.float32)
    ok, buffer = cv2.imencode(".tiff", samples)
    assert ok
    (tmp_path / "float.tif").write_bytes(buffer.tobytes())
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "float.tif")
    assert caught.value.reason == "unsupported sample format float32"


def test_multipage_tiff_reads_first(tmp_path, caplog):
    first = Image.fromarray(smooth_rgb())
    second = Image.fromarray(smooth_rgb()[::-1].copy())
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    with caplog.at_level(logging.WARNING, logger="edgefx.imageio"):
        result = read_image(tmp_path / "pages.tif")
    assert np.array_equal(result.pixels, smooth_rgb())
    assert "more than one page" in caplog.text


# --------------------------------------------------------------------------------------
# EXIF orientation


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **options):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_png_all(tmp_path, orientation):
    path = tmp_path / f"oriented{orientation}.png"
    save_with_orientation(path, smooth_rgb(), orientation)
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored))
    result = read_image(path)
    assert result.pixels.shape == expected.shape
    assert np.array_equal(result.pixels, expected)


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (3, 2), (8, 1)])
def test_orientation_jpeg(tmp_path, orientation, turns):
    path = tmp_path / f"oriented{orientation}.jpg"
    save_with_orientation(path, smooth_rgb(), orientation, quality=95)
    expected = np.rot90(smooth_rgb(), turns)
    result = read_image(path)
    assert result.pixels.shape == expected.shape
    assert mean_abs_error(result.pixels, expected) < 3.0


def test_orientation_rotates_alpha(tmp_path):
    samples = random_samples((HEIGHT, WIDTH, 4), np.uint8)
    save_with_orientation(tmp_path / "oriented.png", samples, 6)
    result = read_image(tmp_path / "oriented.png")
    assert result.alpha is not None
    assert np.array_equal(result.alpha, np.rot90(samples[:, :, 3], -1))
    assert np.array_equal(result.pixels, np.rot90(samples[:, :, :3], -1))


@pytest.mark.parametrize("layout", ["rgb", "gray_alpha"])
def test_orientation_tiff(tmp_path, layout):
    # OpenCV applies the TIFF tag itself and Pillow decodes gray+alpha, so this checks
    # that each path rotates exactly once.
    channels = {"rgb": 3, "gray_alpha": 2}[layout]
    samples = random_samples((HEIGHT, WIDTH, channels), np.uint8)
    Image.fromarray(samples).save(tmp_path / "oriented.tif", tiffinfo={274: 6})
    result = read_image(tmp_path / "oriented.tif")
    rotated = np.rot90(samples, -1)
    if layout == "rgb":
        assert np.array_equal(result.pixels, rotated)
    else:
        assert np.array_equal(result.pixels, rotated[:, :, 0])
        assert result.alpha is not None
        assert np.array_equal(result.alpha, rotated[:, :, 1])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_output_has_no_orientation(tmp_path, suffix):
    save_with_orientation(tmp_path / "oriented.jpg", smooth_rgb(), 6, quality=95)
    image = read_image(tmp_path / "oriented.jpg")
    write_image(tmp_path / f"out{suffix}", image, quality=100)
    with Image.open(tmp_path / f"out{suffix}") as written:
        assert written.getexif().get(EXIF_ORIENTATION) in (None, 1)
        displayed = np.asarray(ImageOps.exif_transpose(written).convert("RGB"))
    assert displayed.shape == image.pixels.shape
    assert mean_abs_error(displayed, image.pixels) < 2.0


# --------------------------------------------------------------------------------------
# Read failures


def read_error(path: Path, **options) -> InputError:
    with pytest.raises(InputError) as caught:
        read_image(path, **options)
    assert caught.value.path == path
    assert "\n" not in caught.value.reason
    return caught.value


def test_missing_file(tmp_path):
    assert read_error(tmp_path / "missing.png").reason == "file not found"


def test_directory(tmp_path):
    (tmp_path / "folder.png").mkdir()
    assert "directory" in read_error(tmp_path / "folder.png").reason


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert read_error(tmp_path / "empty.png").reason == "empty file"


def test_random_bytes(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(4096))
    reason = read_error(tmp_path / "noise.png").reason
    assert reason.startswith("cannot decode image: not a valid PNG")


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        (".png", "truncated PNG file: it ends inside chunk IDAT"),
        (".jpg", "cannot decode image: not a valid JPEG file, or truncated"),
    ],
)
def test_truncated(tmp_path, suffix, expected):
    data = (tmp_path / "full").with_suffix(suffix)
    write_image(data, ImageData(smooth_rgb(), None, "png"))
    contents = data.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(contents[: len(contents) // 2])
    reason = read_error(truncated).reason
    assert reason == expected


def png_chunk_offset(contents: bytes, kind: bytes) -> int:
    """Return the offset of the first chunk of this type (its length field)."""
    return contents.index(kind) - 4


def test_png_without_iend_is_truncated(tmp_path):
    write_image(tmp_path / "full.png", ImageData(smooth_rgb(), None, "png"))
    contents = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(contents[: png_chunk_offset(contents, b"IEND")])

    reason = read_error(tmp_path / "cut.png").reason

    assert reason == "truncated PNG file: it ends before the IEND chunk"


def test_png_crc_error_in_critical_chunk(tmp_path):
    write_image(tmp_path / "full.png", ImageData(smooth_rgb(), None, "png"))
    damaged = bytearray((tmp_path / "full.png").read_bytes())
    damaged[png_chunk_offset(damaged, b"IDAT") + 10] ^= 0x55
    (tmp_path / "damaged.png").write_bytes(bytes(damaged))

    reason = read_error(tmp_path / "damaged.png").reason

    assert reason == "damaged PNG file: CRC error in chunk IDAT"


def test_truncated_png_cli_prints_one_line(tmp_path):
    write_image(tmp_path / "full.png", ImageData(smooth_rgb(), None, "png"))
    contents = (tmp_path / "full.png").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.png").write_bytes(contents[: len(contents) // 2])

    result = run_edgefx("denoise", tmp_path / "in", "--out", tmp_path / "out")

    assert result.returncode == 1
    assert "libpng" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "cut.png" in x]
    assert line.endswith("truncated PNG file: it ends inside chunk IDAT")


# Adam7 passes: first column, first row, column step, row step (PNG section 8.2).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4))
ADAM7 += ((1, 0, 2, 2), (0, 1, 1, 2))


def png_image_data(pixels: np.ndarray, depth: int, interlaced: bool) -> bytes:
    """The uncompressed IDAT stream of ``pixels`` (rows, columns, samples), every
    row with filter type 0, packed MSB first where ``depth`` is under 8 bits."""
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    stream = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub.reshape(sub.shape[0], -1):
            if depth == 16:
                packed = row.astype(">u2").tobytes()
            elif depth == 8:
                packed = row.astype(np.uint8).tobytes()
            else:
                bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)
                packed = np.packbits(bits[:, 8 - depth :].ravel()).tobytes()
            stream += b"\x00" + packed
    return stream


def handmade_png(
    pixels: np.ndarray, depth: int, color: int, interlaced: bool, stream: bytes
) -> bytes:
    ihdr = struct.pack(
        ">IIBBBBB", pixels.shape[1], pixels.shape[0], depth, color, 0, 0, interlaced
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(stream))
        + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize(
    ("depth", "color", "samples"),
    [(1, 0, 1), (2, 0, 1), (4, 0, 1), (8, 2, 3), (16, 0, 1), (16, 6, 4)],
)
@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 5), (11, 13)])
def test_png_image_data_check_accepts_valid_layouts(
    tmp_path, interlaced, depth, color, samples, height, width
):
    """Odd sizes, sub-byte depths and Adam7 passes where some passes are empty:
    the image data check must agree with libpng on every valid layout."""
    rng = np.random.default_rng(height * width + depth)
    pixels = rng.integers(0, 2**depth, (height, width, samples))
    stream = png_image_data(pixels, depth, interlaced)
    path = tmp_path / "valid.png"
    path.write_bytes(handmade_png(pixels, depth, color, interlaced, stream))

    decoded = read_image(path).pixels

    assert decoded.shape[:2] == (height, width)
    if depth in (8, 16) and samples < 4:
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)
    # One byte fewer is the shortest damage libpng reports as "Not enough image data".
    path.write_bytes(handmade_png(pixels, depth, color, interlaced, stream[:-1]))
    assert read_error(path).reason == (
        "damaged PNG file: the image data ends before the last row"
    )


def test_png_chunk_order_and_stream_end(tmp_path):
    pixels = smooth_rgb(8, 8)
    stream = png_image_data(pixels, 8, False)
    valid = handmade_png(pixels, 8, 2, False, stream)
    ihdr = valid[8:33]  # signature, then IHDR: length, type, 13 bytes, CRC
    rest = valid[33:]
    idat = rest[: rest.index(b"IEND") - 4]
    iend = png_chunk(b"IEND", b"")
    cases = {
        "twice.png": (valid[:33] + ihdr + rest, "more than one IHDR chunk"),
        "order.png": (valid[:8] + idat + ihdr + iend, "IDAT chunk before IHDR"),
        "adler.png": (
            valid[:33] + png_chunk(b"IDAT", zlib.compress(stream)[:-4]) + iend,
            "the compressed image data is incomplete",
        ),
    }
    for name, (contents, problem) in cases.items():
        (tmp_path / name).write_bytes(contents)
        assert read_error(tmp_path / name).reason == f"damaged PNG file: {problem}"


def test_png_bad_filter_type(tmp_path):
    pixels = smooth_rgb(8, 8)
    stream = bytearray(png_image_data(pixels, 8, False))
    stream[5 * (1 + 8 * 3)] = 9  # the filter type of the sixth row
    (tmp_path / "filter.png").write_bytes(handmade_png(pixels, 8, 2, False, stream))

    reason = read_error(tmp_path / "filter.png").reason

    assert reason == "damaged PNG file: invalid row filter type 9 in the image data"


def test_png_damaged_zlib_cli_one_line(tmp_path):
    """Damage inside the compressed data, with every chunk CRC recomputed, gets past
    the chunk walk. Unless the stream is checked, libpng prints its own line."""
    pixels = smooth_rgb()
    compressed = bytearray(zlib.compress(png_image_data(pixels, 8, False)))
    compressed[len(compressed) // 2] ^= 0xFF
    ihdr = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 2, 0, 0, 0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zlib.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", bytes(compressed))
        + png_chunk(b"IEND", b"")
    )

    result = run_edgefx("denoise", tmp_path / "in", "--out", tmp_path / "out")

    assert result.returncode == 1
    assert "libpng" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "zlib.png" in x]
    assert "damaged PNG file: " in line


def test_truncated_header(tmp_path):
    (tmp_path / "short.png").write_bytes(png_claiming_size(4, 4)[:20])
    assert read_error(tmp_path / "short.png").reason.startswith("cannot decode image")


def test_huge_dimensions_rejected(tmp_path):
    (tmp_path / "huge.png").write_bytes(png_claiming_size(100_000, 100_000))
    reason = read_error(tmp_path / "huge.png").reason
    assert reason == (
        "image is 100000x100000 pixels, above the limit of 250000000 pixels"
    )


def test_readme_states_pixel_limit(repo_root):
    limit = inspect.signature(read_image).parameters["max_pixels"].default
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS
    readme = " ".join((repo_root / "README.md").read_text(encoding="utf-8").split())
    assert f"more than {limit // 1_000_000} million pixels" in readme
    assert f"({pillow_limit:,} pixels by default)" in readme


def test_max_pixels_boundary(tmp_path):
    write_image(tmp_path / "small.png", make_image("rgb", np.uint8))
    pixels = HEIGHT * WIDTH
    assert read_image(tmp_path / "small.png", max_pixels=pixels).width == WIDTH
    reason = read_error(tmp_path / "small.png", max_pixels=pixels - 1).reason
    assert reason.startswith(f"image is {WIDTH}x{HEIGHT} pixels, above the limit")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_pillow_bomb_limit_ignored(tmp_path, monkeypatch, recwarn, suffix):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. read_image
    # applies its own max_pixels instead.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    write_image(tmp_path / f"image{suffix}", make_image("rgb", np.uint8))
    assert read_image(tmp_path / f"image{suffix}").width == WIDTH
    assert not [w for w in recwarn if w.category is Image.DecompressionBombWarning]


def test_pillow_bomb_warning_hidden_webp(tmp_path, monkeypatch, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", HEIGHT * WIDTH - 1)
    write_image(tmp_path / "image.webp", make_image("rgb", np.uint8))
    assert read_image(tmp_path / "image.webp").width == WIDTH
    assert not [w for w in recwarn if w.category is Image.DecompressionBombWarning]


def test_pillow_bomb_error_webp(tmp_path, monkeypatch):
    # WebPImageFile applies Pillow's error limit while parsing the header.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    write_image(tmp_path / "image.webp", make_image("rgb", np.uint8))
    reason = read_error(tmp_path / "image.webp").reason
    assert reason == "image is above Pillow's limit of 200 pixels for WebP headers"


def test_pillow_bomb_warning_hidden_tiff(tmp_path, monkeypatch, recwarn):
    # 8-bit gray+alpha TIFF is decoded by Pillow, which checks its own limit on load.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", HEIGHT * WIDTH - 1)
    samples = random_samples((HEIGHT, WIDTH, 2), np.uint8)
    Image.fromarray(samples).save(tmp_path / "la.tif")
    assert read_image(tmp_path / "la.tif").is_gray
    assert not [w for w in recwarn if w.category is Image.DecompressionBombWarning]


def test_pillow_bomb_error_tiff(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    samples = random_samples((HEIGHT, WIDTH, 2), np.uint8)
    Image.fromarray(samples).save(tmp_path / "la.tif")
    reason = read_error(tmp_path / "la.tif").reason
    assert reason.startswith(f"image is {WIDTH}x{HEIGHT} pixels, above Pillow's limit")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root can read files without read permission",
)
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.png"
    write_image(path, make_image("rgb", np.uint8))
    path.chmod(0)
    try:
        assert read_error(path).reason == "permission denied"
    finally:
        path.chmod(0o644)


def test_permission_error_mapped(tmp_path, monkeypatch):
    # Runs as root too, where chmod cannot make a file unreadable.
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    write_image(tmp_path / "locked.png", make_image("rgb", np.uint8))
    monkeypatch.setattr(imageio, "open", deny, raising=False)
    assert read_error(tmp_path / "locked.png").reason == "permission denied"


def test_gif_rejected(tmp_path):
    frames = [Image.fromarray(smooth_rgb()), Image.fromarray(smooth_rgb()[::-1].copy())]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    reason = read_error(tmp_path / "animated.gif").reason
    assert reason.startswith("unsupported format .gif; supported: .bmp, .jpeg, .jpg")


@pytest.mark.parametrize(("suffix", "label"), [(".png", "PNG"), (".webp", "WebP")])
def test_animated_rejected(tmp_path, suffix, label):
    frames = [Image.fromarray(smooth_rgb()), Image.fromarray(smooth_rgb()[::-1].copy())]
    path = tmp_path / f"animated{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert read_error(path).reason.startswith(f"animated {label} is not supported")


# --------------------------------------------------------------------------------------
# Write failures


def test_jpeg_alpha_rejected(tmp_path):
    with pytest.raises(UsageError) as caught:
        write_image(tmp_path / "alpha.jpg", make_image("rgba", np.uint8))
    assert str(caught.value) == "JPEG cannot store an alpha channel; use --format png"
    assert not (tmp_path / "alpha.jpg").exists()


def test_unknown_format_rejected(tmp_path):
    with pytest.raises(UsageError, match="unsupported image format 'gif'"):
        encode_image(make_image("rgb", np.uint8), "gif")
    with pytest.raises(UsageError, match="cannot infer the image format"):
        write_image(tmp_path / "image.gif", make_image("rgb", np.uint8))


@pytest.mark.parametrize("quality", [0, 101])
def test_quality_out_of_range(quality):
    with pytest.raises(UsageError, match="quality must be between 1 and 100"):
        encode_image(make_image("rgb", np.uint8), "jpeg", quality=quality)


@pytest.mark.parametrize(("file_format", "width"), [("webp", 16384), ("jpeg", 65501)])
def test_dimension_limit(file_format, width):
    image = ImageData(np.zeros((1, width, 3), dtype=np.uint8), None, "png")
    with pytest.raises(UsageError, match="width and height must be at most"):
        encode_image(image, file_format)


def test_encoder_failure_becomes_output_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "imencode", lambda *args: (False, None))
    with pytest.raises(EncodeError, match="cannot encode the image as PNG"):
        encode_image(make_image("rgb", np.uint8), "png")
    with pytest.raises(OutputError):
        write_image(tmp_path / "image.png", make_image("rgb", np.uint8))
    assert not (tmp_path / "image.png").exists()


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "image.png"
    target.write_bytes(b"previous")

    def fail_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OutputError):
        write_image(target, make_image("rgb", np.uint8))
    assert target.read_bytes() == b"previous"
    assert no_temporary_files(tmp_path)


def test_write_under_file_parent(tmp_path):
    (tmp_path / "plain").write_bytes(b"not a directory")
    with pytest.raises(OutputError):
        write_image(tmp_path / "plain" / "image.png", make_image("rgb", np.uint8))
    assert no_temporary_files(tmp_path)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root can write into read-only directories",
)
def test_write_into_read_only_directory(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            write_image(folder / "image.png", make_image("rgb", np.uint8))
        assert no_temporary_files(folder)
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------------------
# Sample conversion


def test_to_float_range():
    assert to_float(np.array([0, 255], dtype=np.uint8)).tolist() == [0.0, 1.0]
    assert to_float(np.array([0, 65535], dtype=np.uint16)).tolist() == [0.0, 1.0]
    assert to_float(np.zeros((2, 3, 3), dtype=np.uint8)).shape == (2, 3, 3)
    assert to_float(np.zeros(3, dtype=np.uint16)).dtype == np.float32


def test_to_float_rejects_other_dtypes():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        to_float(np.zeros(3, dtype=np.int16))


@pytest.mark.parametrize(("dtype", "bit_depth"), [(np.uint8, 8), (np.uint16, 16)])
def test_float_round_trip_every_level(dtype, bit_depth):
    levels = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    result = from_float(to_float(levels), bit_depth)
    assert result.dtype == dtype
    assert np.array_equal(result, levels)


def test_from_float_clips_and_rounds():
    values = np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.5, np.nan, np.inf])
    assert from_float(values, 8).tolist() == [0, 0, 0, 1, 255, 255, 0, 255]
    assert from_float(np.array([2.0]), 16).tolist() == [65535]


def test_from_float_rejects_bit_depth():
    with pytest.raises(ValueError, match="bit_depth must be 8 or 16"):
        from_float(np.zeros(3), 12)
