"""Bad and unusual image files in a batch with good ones, via denoise and classify.

The corpus is generated here, once per module. Each command runs once over the whole
corpus, and the assertions then check every file: a good file gets an output with the
input's format, bit depth, size and channels, and a bad file gets exactly one
`failed: PATH: reason` line and no output, while the rest of the batch goes on and the
exit status is 1.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from reliability_helpers import (
    empty_files,
    failure_lines,
    lines_naming,
    permissions_unenforceable,
    run_edgefx_unprivileged,
    temporaries,
)


@dataclass(frozen=True)
class GoodImage:
    """A file that must come out with these properties (after EXIF rotation)."""

    relative: str
    format: str  # Pillow's format name of the output
    mode: str  # Pillow's mode of the output
    size: tuple[int, int]  # (width, height) of the output
    dtype: str  # dtype that cv2.IMREAD_UNCHANGED returns for the output


@dataclass(frozen=True)
class BadImage:
    """A file that must fail alone, with a reason that contains ``reason``."""

    relative: str
    reason: str


def gradient(height: int, width: int, channels: int, dtype: type = np.uint8):
    """A smooth image with mild noise, so that the denoiser has work to do."""
    rng = np.random.default_rng(height * 1000 + width)
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    xs = np.linspace(0.0, 1.0, width)[None, :, None]
    phases = np.arange(channels)[None, None, :]
    values = 0.5 + 0.4 * np.sin(3.0 * ys + 2.0 * xs + phases)
    values = values + rng.normal(0.0, 0.03, values.shape)
    scale = np.iinfo(dtype).max
    pixels = np.clip(np.rint(values * scale), 0, scale).astype(dtype)
    return pixels[:, :, 0] if channels == 1 else pixels


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB, with one tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def bomb_jpeg(jpeg: bytes, width: int, height: int) -> bytes:
    """Return ``jpeg`` with its baseline frame header (SOF0) declaring a new size."""
    marker = jpeg.index(b"\xff\xc0")
    # SOF0: marker, 2-byte length, 1-byte precision, 2-byte height, 2-byte width.
    size = struct.pack(">HH", height, width)
    return jpeg[: marker + 5] + size + jpeg[marker + 9 :]


def build_corpus(folder: Path) -> tuple[list[GoodImage], list[BadImage]]:
    """Write the image corpus into ``folder``; return what each file must give."""
    folder.mkdir(parents=True)
    good: list[GoodImage] = []
    bad: list[BadImage] = []

    def save(relative: str, image: Image.Image, **options) -> Path:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **options)
        return path

    # Tiny and thin images.
    save("one_pixel.png", Image.fromarray(gradient(1, 1, 3)))
    good.append(GoodImage("one_pixel.png", "PNG", "RGB", (1, 1), "uint8"))
    save("thin_row.png", Image.fromarray(gradient(1, 300, 3)))
    good.append(GoodImage("thin_row.png", "PNG", "RGB", (300, 1), "uint8"))
    save("thin_column.jpg", Image.fromarray(gradient(257, 2, 3)), quality=95)
    good.append(GoodImage("thin_column.jpg", "JPEG", "RGB", (2, 257), "uint8"))

    # 16-bit PNG and TIFF, written by OpenCV, which stores 16-bit color (Pillow does
    # not).
    rgb16 = gradient(40, 56, 3, np.uint16)
    assert cv2.imwrite(str(folder / "rgb16.png"), rgb16)
    good.append(GoodImage("rgb16.png", "PNG", "RGB", (56, 40), "uint16"))
    assert cv2.imwrite(str(folder / "rgb16.tif"), rgb16)
    good.append(GoodImage("rgb16.tif", "TIFF", "RGB", (56, 40), "uint16"))
    assert cv2.imwrite(str(folder / "gray16.tif"), gradient(33, 45, 1, np.uint16))
    good.append(GoodImage("gray16.tif", "TIFF", "I;16", (45, 33), "uint16"))

    # Palette, gray+alpha, RGBA and CMYK.
    palette = Image.fromarray(gradient(36, 48, 3)).quantize(colors=64)
    save("palette.png", palette)
    good.append(GoodImage("palette.png", "PNG", "RGB", (48, 36), "uint8"))
    gray_alpha = np.dstack([gradient(30, 40, 1), gradient(30, 40, 1)[::-1]])
    save("gray_alpha.png", Image.fromarray(gray_alpha, "LA"))
    good.append(GoodImage("gray_alpha.png", "PNG", "LA", (40, 30), "uint8"))
    save("rgba.png", Image.fromarray(gradient(32, 44, 4), "RGBA"))
    good.append(GoodImage("rgba.png", "PNG", "RGBA", (44, 32), "uint8"))
    cmyk = Image.fromarray(gradient(30, 42, 3)).convert("CMYK")
    save("cmyk.jpg", cmyk, quality=95)
    good.append(GoodImage("cmyk.jpg", "JPEG", "RGB", (42, 30), "uint8"))
    save("cmyk.tif", cmyk)
    good.append(GoodImage("cmyk.tif", "TIFF", "RGB", (42, 30), "uint8"))

    # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 48 wide and
    # 24 high, displayed 24 wide and 48 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", Image.fromarray(gradient(24, 48, 3)), exif=exif, quality=95)
    good.append(GoodImage("rotated.jpg", "JPEG", "RGB", (24, 48), "uint8"))

    # Spaces and non-ASCII characters in folder and file names.
    save("dir with spaces é/фото 写真 1.png", Image.fromarray(gradient(20, 28, 3)))
    good.append(
        GoodImage("dir with spaces é/фото 写真 1.png", "PNG", "RGB", (28, 20), "uint8")
    )

    # An image that cannot be read because of its permissions, where file modes can
    # stop the CLI (test_unreadable_file_covered reports when they cannot).
    if permissions_unenforceable() is None:
        locked = save("locked.png", Image.fromarray(gradient(20, 20, 3)))
        locked.chmod(0)
        bad.append(BadImage("locked.png", "permission denied"))

    # Empty, text and random files with image suffixes.
    (folder / "empty.png").write_bytes(b"")
    bad.append(BadImage("empty.png", "empty file"))
    (folder / "empty.jpg").write_bytes(b"")
    bad.append(BadImage("empty.jpg", "empty file"))
    (folder / "notes.png").write_text("these are notes, not a picture\n")
    bad.append(BadImage("notes.png", "not a valid PNG file"))
    random_bytes = np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes()
    (folder / "random.jpg").write_bytes(random_bytes)
    bad.append(BadImage("random.jpg", "not a valid JPEG file"))
    (folder / "random.tif").write_bytes(random_bytes)
    bad.append(BadImage("random.tif", "not a valid TIFF file"))

    # Truncated files: the first 60 % of a valid file.
    whole_png = png_bytes(Image.fromarray(gradient(64, 64, 3)))
    (folder / "truncated.png").write_bytes(whole_png[: len(whole_png) * 6 // 10])
    bad.append(BadImage("truncated.png", "truncated"))
    buffer = io.BytesIO()
    Image.fromarray(gradient(64, 64, 3)).save(buffer, format="JPEG", quality=95)
    whole_jpeg = buffer.getvalue()
    (folder / "truncated.jpg").write_bytes(whole_jpeg[: len(whole_jpeg) * 6 // 10])
    bad.append(BadImage("truncated.jpg", "truncated"))

    # Decompression bombs: 100,000 x 100,000 pixels declared in a 100-byte PNG, and
    # 60,000 x 60,000 in the frame header of a small JPEG.
    (folder / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    bad.append(BadImage("bomb.png", "pixels"))
    (folder / "bomb.jpg").write_bytes(bomb_jpeg(whole_jpeg, 60_000, 60_000))
    bad.append(BadImage("bomb.jpg", "pixels"))

    # Animations: an animated PNG in the folder, and a GIF, which is not a supported
    # format, named on the command line.
    frames = [
        Image.fromarray(gradient(16, 16, 3)),
        Image.fromarray(gradient(17, 16, 3)),
    ]
    frames[1] = frames[1].crop((0, 0, 16, 16))
    save("animated.png", frames[0], save_all=True, append_images=frames[1:])
    bad.append(BadImage("animated.png", "animated PNG is not supported"))
    return good, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, list[GoodImage], list[BadImage]]:
    """The corpus folder, an animated GIF beside it, and the expected results."""
    root = tmp_path_factory.mktemp("images")
    folder = root / "in"
    good, bad = build_corpus(folder)
    frames = [
        Image.fromarray(gradient(16, 16, 3)),
        Image.fromarray(gradient(16, 16, 1)),
    ]
    gif = root / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    return folder, gif, good, bad


@pytest.fixture(scope="module")
def denoise_run(corpus) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder, gif, _, _ = corpus
    out = folder.parent / "denoised"
    result = run_edgefx_unprivileged(
        "denoise", folder, gif, "--recursive", "--out", out, "--device", "cpu"
    )
    return result, out


def test_denoise_corpus_exit_1(denoise_run) -> None:
    result, _ = denoise_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_denoise_corpus_summary(denoise_run, corpus) -> None:
    result, _ = denoise_run
    _, _, good, bad = corpus
    expected = f"{len(good)} done, 0 skipped (output exists), {len(bad) + 1} failed"
    assert expected in result.stderr, result.stderr


def test_denoise_corpus_good_outputs(denoise_run, corpus) -> None:
    _, out = denoise_run
    folder, _, good, _ = corpus
    for case in good:
        output = out / case.relative
        assert output.is_file(), case.relative
        with Image.open(output) as image:
            assert image.format == case.format, case.relative
            assert image.mode == case.mode, case.relative
            assert image.size == case.size, case.relative
            assert image.getexif().get(0x0112, 1) == 1, case.relative
        pixels = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
        assert pixels is not None, case.relative
        assert str(pixels.dtype) == case.dtype, case.relative


def test_denoise_corpus_keeps_alpha(denoise_run, corpus) -> None:
    _, out = denoise_run
    folder, _, _, _ = corpus
    for name in ("rgba.png", "gray_alpha.png"):
        with Image.open(folder / name) as source, Image.open(out / name) as output:
            source_alpha = np.asarray(source.getchannel("A"))
            assert np.array_equal(np.asarray(output.getchannel("A")), source_alpha)


def test_denoise_corpus_rotation_applied(denoise_run, corpus) -> None:
    _, out = denoise_run
    folder, _, _, _ = corpus
    with Image.open(folder / "rotated.jpg") as source:
        upright = np.asarray(source.transpose(Image.Transpose.ROTATE_270), np.float64)
    with Image.open(out / "rotated.jpg") as output:
        restored = np.asarray(output, np.float64)
    # The denoised output stays close to the rotated source and far from a wrong turn.
    assert np.mean(np.abs(restored - upright)) < 6.0
    assert np.mean(np.abs(restored - upright[::-1, ::-1])) > 12.0


def test_denoise_corpus_bad_files_one_line(denoise_run, corpus) -> None:
    result, _ = denoise_run
    folder, gif, _, bad = corpus
    for case in bad:
        named = lines_naming(result.stderr, folder / case.relative)
        assert len(named) == 1, f"{case.relative}: {named}\n{result.stderr}"
        assert case.reason in named[0], named[0]
    gif_lines = lines_naming(result.stderr, gif)
    assert len(gif_lines) == 1, result.stderr
    assert "unsupported format .gif" in gif_lines[0]


def test_denoise_corpus_bad_files_no_output(denoise_run, corpus) -> None:
    _, out = denoise_run
    _, gif, _, bad = corpus
    for case in bad:
        assert not (out / case.relative).exists(), case.relative
    assert not (out / gif.name).exists()
    assert temporaries(out) == []
    assert empty_files(out) == []


def test_denoise_corpus_failures_counted(denoise_run, corpus) -> None:
    result, _ = denoise_run
    _, _, _, bad = corpus
    assert len(failure_lines(result.stderr)) == len(bad) + 1, result.stderr


def test_denoise_corpus_rerun_skips_done(denoise_run, corpus) -> None:
    _, out = denoise_run
    folder, _, good, bad = corpus
    rerun = run_edgefx_unprivileged(
        "denoise", folder, "--recursive", "--out", out, "--device", "cpu"
    )
    assert rerun.returncode == 1, rerun.stderr
    expected = f"0 done, {len(good)} skipped (output exists), {len(bad)} failed"
    assert expected in rerun.stderr, rerun.stderr


@pytest.fixture(scope="module")
def classify_run(corpus) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    folder, gif, _, _ = corpus
    results = folder.parent / "classes.jsonl"
    result = run_edgefx_unprivileged(
        "classify",
        folder,
        gif,
        "--recursive",
        "--format",
        "jsonl",
        "--out",
        results,
        "--device",
        "cpu",
    )
    rows = []
    if results.exists():
        rows = [json.loads(line) for line in results.read_text().splitlines()]
    return result, rows


def test_classify_corpus_exit_1(classify_run) -> None:
    result, _ = classify_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_classify_corpus_row_per_good_file(classify_run, corpus) -> None:
    _, rows = classify_run
    folder, _, good, _ = corpus
    assert sorted(row["file"] for row in rows) == sorted(
        str(folder / case.relative) for case in good
    )
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0, row


def test_classify_corpus_bad_files_one_line(classify_run, corpus) -> None:
    result, _ = classify_run
    folder, gif, good, bad = corpus
    for case in bad:
        named = lines_naming(result.stderr, folder / case.relative)
        assert len(named) == 1, f"{case.relative}: {named}\n{result.stderr}"
        assert case.reason in named[0], named[0]
    assert len(lines_naming(result.stderr, gif)) == 1, result.stderr
    assert f"{len(good)} done, {len(bad) + 1} failed" in result.stderr


def test_unreadable_file_covered(corpus) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    bad = corpus[-1]
    assert "locked.png" in [case.relative for case in bad]
