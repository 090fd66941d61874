"""Tests for the ICC profile and EXIF tags that read_image returns and encode_image
writes back. Every input is built with Pillow in tmp_path."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from edgefx import imageio
from edgefx.imageio import ImageData, encode_image, read_image, write_image

EXIF_MAKE = 0x010F
EXIF_MODEL = 0x0110
EXIF_DATETIME = 0x0132
EXIF_ORIENTATION = 0x0112
HEIGHT, WIDTH = 24, 32
ICC_CHUNK_BYTES = 65519


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def asymmetric_rgb() -> np.ndarray:
    """An RGB image whose bright top-left block shows any rotation."""
    image = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
    image[: HEIGHT // 3, : WIDTH // 4] = 230
    return image


def camera_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_MAKE] = "EdgeCam"
    exif[EXIF_MODEL] = "Model 7"
    exif[EXIF_DATETIME] = "2024:05:06 07:08:09"
    exif[EXIF_ORIENTATION] = orientation
    return exif


def save_jpeg(path: Path, **options: object) -> None:
    Image.fromarray(asymmetric_rgb()).save(path, "JPEG", quality=95, **options)


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """Return (marker, payload) for each segment before the SOS marker."""
    segments = []
    position = 2
    while data[position + 1] != 0xDA:
        marker = data[position + 1]
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segments.append((marker, data[position + 4 : position + 2 + length]))
        position += 2 + length
    return segments


def png_chunk_types(data: bytes) -> list[bytes]:
    types = []
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        types.append(data[position + 4 : position + 8])
        position += 12 + length
    return types


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_jpeg_metadata_round_trip(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "photo.jpg"
    profile = srgb_profile()
    save_jpeg(source, icc_profile=profile, exif=camera_exif().tobytes())

    image = read_image(source)
    assert image.icc_profile == profile
    assert image.exif is not None
    output = tmp_path / f"out{suffix}"
    write_image(output, image)

    with Image.open(output) as reopened:
        reopened.load()
        exif = reopened.getexif()
        assert reopened.info.get("icc_profile") == profile
        assert exif.get(EXIF_MAKE) == "EdgeCam"
        assert exif.get(EXIF_MODEL) == "Model 7"
        assert exif.get(EXIF_DATETIME) == "2024:05:06 07:08:09"
        assert exif.get(EXIF_ORIENTATION, 1) == 1
        pixels = np.asarray(reopened.convert("RGB"))
    # Orientation 6 rotates the 24x32 image clockwise, which moves the bright block to
    # the top-right corner.
    assert pixels.shape == (WIDTH, HEIGHT, 3)
    assert pixels[2, -2].mean() > 200
    assert pixels[2, 2].mean() < 80
    assert pixels[-2, -2].mean() < 80


def test_jpeg_output_segment_order(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    save_jpeg(source, icc_profile=srgb_profile(), exif=camera_exif().tobytes())
    data = encode_image(read_image(source), "jpeg")
    markers = [marker for marker, _ in jpeg_segments(data)]
    assert markers[:3] == [0xE0, 0xE1, 0xE2]


def test_png_output_chunk_order(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    save_jpeg(source, icc_profile=srgb_profile(), exif=camera_exif().tobytes())
    data = encode_image(read_image(source), "png")
    assert png_chunk_types(data)[:3] == [b"IHDR", b"iCCP", b"eXIf"]


def test_png_iccp_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "wide.png"
    profile = srgb_profile()
    Image.fromarray(asymmetric_rgb()).save(source, icc_profile=profile)

    image = read_image(source)
    assert image.icc_profile == profile
    assert image.exif is None
    output = tmp_path / "out.png"
    write_image(output, image)
    with Image.open(output) as reopened:
        reopened.load()
        assert reopened.info.get("icc_profile") == profile
        assert np.array_equal(np.asarray(reopened), asymmetric_rgb())


def test_gray_alpha_png_keeps_icc(tmp_path: Path) -> None:
    gray = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH)
    profile = srgb_profile()
    image = ImageData(gray, gray.copy(), "png", icc_profile=profile)
    output = tmp_path / "gray_alpha.png"
    write_image(output, image)
    with Image.open(output) as reopened:
        reopened.load()
        assert reopened.mode == "LA"
        assert reopened.info.get("icc_profile") == profile


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_no_metadata_stays_absent(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"plain{suffix}"
    Image.fromarray(asymmetric_rgb()).save(source)

    image = read_image(source)
    assert image.icc_profile is None
    assert image.exif is None
    output = tmp_path / f"out{suffix}"
    write_image(output, image)
    with Image.open(output) as reopened:
        assert "icc_profile" not in reopened.info
        assert "exif" not in reopened.info
        assert len(reopened.getexif()) == 0


@pytest.mark.parametrize("suffix", [".webp", ".tif", ".bmp"])
def test_other_formats_drop_metadata(tmp_path: Path, suffix: str) -> None:
    source = tmp_path / "photo.jpg"
    save_jpeg(source, icc_profile=srgb_profile(), exif=camera_exif().tobytes())
    output = tmp_path / f"out{suffix}"
    write_image(output, read_image(source))
    with Image.open(output) as reopened:
        assert reopened.info.get("icc_profile") is None
        assert reopened.getexif().get(EXIF_MAKE) is None


def test_large_icc_profile_split(tmp_path: Path) -> None:
    # A real profile padded past one APP2 segment, with its header size field updated.
    padded = bytearray(srgb_profile())
    padded += bytes(ICC_CHUNK_BYTES + 1000 - len(padded))
    padded[:4] = struct.pack(">I", len(padded))
    profile = bytes(padded)
    source = tmp_path / "large_icc.jpg"
    save_jpeg(source, icc_profile=profile)

    image = read_image(source)
    assert image.icc_profile == profile
    data = encode_image(image, "jpeg")
    icc_segments = [
        payload
        for marker, payload in jpeg_segments(data)
        if marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00")
    ]
    assert len(icc_segments) == 2
    assert [segment[12] for segment in icc_segments] == [1, 2]
    assert [segment[13] for segment in icc_segments] == [2, 2]
    assert len(icc_segments[0]) - 14 == ICC_CHUNK_BYTES
    assert b"".join(segment[14:] for segment in icc_segments) == profile
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.info.get("icc_profile") == profile


def test_oversized_exif_dropped(caplog: pytest.LogCaptureFixture) -> None:
    exif = b"Exif\x00\x00" + bytes(70_000)
    image = ImageData(asymmetric_rgb(), None, "jpeg", exif=exif)
    with caplog.at_level("DEBUG", logger="edgefx.imageio"):
        data = encode_image(image, "jpeg")
    assert all(marker != 0xE1 for marker, _ in jpeg_segments(data))
    assert "dropping the EXIF block" in caplog.text


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f",  # truncated IFD
        b"Exif\x00\x00MM\x00*\xff\xff\xff\xff",  # IFD offset past the end
        b"Exif\x00\x00XX\x00*\x00\x00\x00\x08",  # invalid byte order
    ],
)
def test_corrupt_exif_read(tmp_path: Path, exif: bytes) -> None:
    source = tmp_path / "corrupt.jpg"
    save_jpeg(source, exif=exif)
    image = read_image(source)
    assert image.pixels.shape == (HEIGHT, WIDTH, 3)
    assert image.exif is None


def test_exif_encode_error_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "photo.jpg"
    save_jpeg(source, exif=camera_exif().tobytes())

    def fail(self: Image.Exif, offset: int = 8) -> bytes:
        raise struct.error("damaged tag")

    monkeypatch.setattr(Image.Exif, "tobytes", fail)
    with caplog.at_level("DEBUG", logger=imageio.__name__):
        image = read_image(source)
    assert image.exif is None
    # The orientation was parsed before the failure, so it is still applied.
    assert image.pixels.shape == (WIDTH, HEIGHT, 3)
    assert "dropping damaged EXIF data" in caplog.text
