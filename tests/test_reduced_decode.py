"""Reduced-scale JPEG decoding for classification, and the fast JPEG header scan.

classify_files decodes a large JPEG at 1/2, 1/4 or 1/8 scale with libjpeg's DCT
scaling. These tests check on real CBSD68 photos that the model input stays close to
the one a full decode gives, and that EXIF orientation, gray JPEGs and the size rules
hold. The header scan that replaces Pillow for plain JPEG files is checked against
Pillow on real CIFAR-10 files and on JPEG variants that Pillow writes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from edgefx.classify import (
    Classifier,
    ClassifyOptions,
    classify_files,
    decode_min_size,
    prepare_image,
)
from edgefx.errors import InputError
from edgefx.imageio import _read_pillow_header, _scan_jpeg_header, read_image
from edgefx.registry import shipped_models
from edgefx.runtime import RuntimeOptions

EXIF_ORIENTATION = 0x0112
# Photos cropped to a multiple of 16 pixels, so that the 1/2 decode has no partial
# blocks, and encoded as OpenCV writes JPEG by default apart from the quality.
PHOTO_QUALITY = 90
# Limits for the prepared input on the 0-1 scale: a 1/2 decode of these photos differed
# from a full decode by at most 0.0021 on average and 0.022 in one value.
MAX_MEAN_DIFFERENCE = 0.003
MAX_DIFFERENCE = 0.04
# Probabilities of the shipped classifier may move by this much. Its top label must
# stay the same where the full decode's best label leads the second by CLEAR_MARGIN.
MAX_PROBABILITY_DIFFERENCE = 0.15
CLEAR_MARGIN = 0.2


def cbsd68_photos(data_dir: Path) -> list[Path]:
    photos = sorted((data_dir / "images" / "test" / "CBSD68").glob("*.png"))
    if not photos:
        pytest.skip(f"no CBSD68 photos under {data_dir}")
    return photos


def write_cropped_jpeg(source: Path, target: Path, block: int = 16) -> Path:
    """Write ``source`` cropped to multiples of ``block`` pixels as a JPEG file."""
    pixels = cv2.imread(str(source), cv2.IMREAD_COLOR)
    height, width = pixels.shape[:2]
    cropped = pixels[: height // block * block, : width // block * block]
    assert cv2.imwrite(str(target), cropped, [cv2.IMWRITE_JPEG_QUALITY, PHOTO_QUALITY])
    return target


@pytest.fixture(scope="module")
def photo_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for photo in cbsd68_photos(data_dir):
        write_cropped_jpeg(photo, folder / f"{photo.stem}.jpg")
    return folder


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    if not shipped_models("classify"):
        pytest.skip("no classify model is shipped with this build")
    return Classifier(None, RuntimeOptions(device="cpu", threads=1))


def test_reduced_decode_close_to_full(
    photo_folder: Path, classifier: Classifier
) -> None:
    preprocess = classifier.preprocess
    std = np.asarray(preprocess.std, np.float32)[:, None, None]
    min_size = decode_min_size(preprocess)
    clear = 0
    for path in sorted(photo_folder.iterdir()):
        full = read_image(path)
        reduced = read_image(path, min_size=min_size)
        assert reduced.reduction == 2, path
        assert reduced.pixels.shape[:2] == (full.height // 2, full.width // 2), path

        full_input = prepare_image(full.pixels, preprocess)
        reduced_input = prepare_image(reduced.pixels, preprocess)
        difference = np.abs(full_input - reduced_input) * std  # back to the 0-1 scale
        assert difference.mean() < MAX_MEAN_DIFFERENCE, path
        assert difference.max() < MAX_DIFFERENCE, path

        probabilities = classifier.run_prepared(np.stack([full_input, reduced_input]))
        change = np.abs(probabilities[0] - probabilities[1]).max()
        assert change < MAX_PROBABILITY_DIFFERENCE, path
        best, second = np.sort(probabilities[0])[::-1][:2]
        if best - second >= CLEAR_MARGIN:
            clear += 1
            assert probabilities[1].argmax() == probabilities[0].argmax(), path
    # The label check means something only if many photos have a clear best label.
    assert clear >= 20


def test_classify_files_labels_like_full_decode(
    photo_folder: Path, classifier: Classifier
) -> None:
    paths = sorted(photo_folder.iterdir())
    options = ClassifyOptions(top_k=2)
    summary, rows = classify_files(
        [str(photo_folder)], options=options, runtime=RuntimeOptions(device="cpu")
    )
    assert summary.done == len(paths)
    assert [row.file for row in rows] == paths

    full_tops = classifier.classify([read_image(p).pixels for p in paths], options)
    clear = 0
    for path, row, full_top in zip(paths, rows, full_tops, strict=True):
        (best_label, best), (_, second) = full_top
        if best - second >= CLEAR_MARGIN:
            clear += 1
            assert row.label == best_label, path
            assert abs(row.score - best) < MAX_PROBABILITY_DIFFERENCE, path
    assert clear >= 20


def test_reduced_decode_applies_exif_orientation(
    data_dir: Path, tmp_path: Path
) -> None:
    upright = write_cropped_jpeg(cbsd68_photos(data_dir)[0], tmp_path / "upright.jpg")
    pixels = np.asarray(Image.open(upright).convert("RGB"))
    # Orientation 6 means the stored pixels display rotated 90 degrees clockwise, so
    # the file stores the photo rotated counterclockwise.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(np.rot90(pixels, 1)).save(
        rotated, quality=PHOTO_QUALITY, exif=exif.tobytes()
    )
    full = read_image(rotated)
    assert full.pixels.shape == pixels.shape

    # The photo displays as height x width. A 1/2 decode needs twice min_size on each
    # side, which the displayed sides allow but the stored ones do not.
    height, width = pixels.shape[:2]
    min_size = (height // 2, max(1, width // 8))
    reduced = read_image(rotated, min_size=min_size)
    assert reduced.reduction == 2
    assert reduced.pixels.shape == (height // 2, width // 2, 3)
    halved = cv2.resize(
        full.pixels, (width // 2, height // 2), interpolation=cv2.INTER_AREA
    )
    error = np.abs(reduced.pixels.astype(np.float64) - halved).mean()
    assert error < 1.5  # levels of 255; a rotation would differ by tens of levels


def test_reduced_decode_keeps_gray(data_dir: Path, tmp_path: Path) -> None:
    color = write_cropped_jpeg(cbsd68_photos(data_dir)[1], tmp_path / "color.jpg")
    gray_path = tmp_path / "gray.jpg"
    Image.open(color).convert("L").save(gray_path, quality=PHOTO_QUALITY)
    full = read_image(gray_path)
    reduced = read_image(gray_path, min_size=(16, 16))
    assert reduced.reduction == 8
    assert reduced.is_gray
    assert reduced.pixels.shape == (full.height // 8, full.width // 8)


def test_reduction_needs_whole_blocks(data_dir: Path, tmp_path: Path) -> None:
    # CBSD68 photos are 481x321, which no reduction factor divides.
    photo = cbsd68_photos(data_dir)[0]
    path = tmp_path / "odd.jpg"
    assert cv2.imwrite(str(path), cv2.imread(str(photo)))
    image = read_image(path, min_size=(8, 8))
    assert image.reduction == 1
    assert image.pixels.shape[:2] in ((321, 481), (481, 321))


def test_reduction_largest_that_fits(data_dir: Path, tmp_path: Path) -> None:
    path = write_cropped_jpeg(cbsd68_photos(data_dir)[0], tmp_path / "photo.jpg")
    height, width = read_image(path).pixels.shape[:2]
    short = min(height, width)
    assert read_image(path, min_size=(short // 8, short // 8)).reduction == 8
    assert read_image(path, min_size=(short // 4, short // 4)).reduction == 4
    assert read_image(path, min_size=(short // 2, short // 2)).reduction == 2
    assert read_image(path, min_size=(short, short)).reduction == 1
    assert read_image(path).reduction == 1


def test_reduction_only_for_jpeg(data_dir: Path) -> None:
    image = read_image(cbsd68_photos(data_dir)[0], min_size=(8, 8))
    assert image.format == "png"
    assert image.reduction == 1


# --------------------------------------------------------------------------------------
# JPEG header scan


def pillow_header(data: bytes, path: Path) -> tuple[int, int, int]:
    header = _read_pillow_header(path, io.BytesIO(data), "jpeg", data[:32])
    return header.width, header.height, header.components


def cifar_jpegs(data_dir: Path, count: int) -> list[bytes]:
    archive_path = data_dir / "cifar10" / "test.zip"
    if not archive_path.is_file():
        pytest.skip(f"{archive_path} not found")
    with zipfile.ZipFile(archive_path) as archive:
        names = [name for name in archive.namelist() if name.endswith(".jpg")]
        # Every 200th file spreads the sample over all ten classes.
        return [archive.read(name) for name in names[::200][:count]]


def test_scan_matches_pillow_on_cifar(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "sample.jpg"
    for data in cifar_jpegs(data_dir, 50):
        scanned = _scan_jpeg_header(data)
        assert scanned is not None
        assert scanned.format == "jpeg"
        assert scanned.orientation == 1
        assert scanned.icc_profile is None
        assert scanned.exif is None
        found = (scanned.width, scanned.height, scanned.components)
        assert found == pillow_header(data, path)


@pytest.mark.parametrize(
    ("mode", "options", "components"),
    [
        ("RGB", {"progressive": True}, 3),
        ("L", {}, 1),
        ("CMYK", {}, 4),
        ("RGB", {"comment": b"a COM segment"}, 3),
    ],
)
def test_scan_matches_pillow_variants(
    data_dir: Path,
    tmp_path: Path,
    mode: str,
    options: dict[str, object],
    components: int,
) -> None:
    photo = Image.open(cbsd68_photos(data_dir)[2]).convert(mode)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=85, **options)
    data = buffer.getvalue()
    scanned = _scan_jpeg_header(data)
    assert scanned is not None
    assert scanned.components == components
    assert (scanned.width, scanned.height, scanned.components) == pillow_header(
        data, tmp_path / "variant.jpg"
    )


def test_scan_skips_fill_bytes(data_dir: Path, tmp_path: Path) -> None:
    data = cifar_jpegs(data_dir, 1)[0]
    # Fill bytes (0xFF) may precede any marker; add three before the second marker.
    second = 2 + 2 + int.from_bytes(data[4:6], "big")
    padded = data[:second] + b"\xff\xff\xff" + data[second:]
    scanned = _scan_jpeg_header(padded)
    assert scanned is not None
    assert (scanned.width, scanned.height) == (32, 32)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(data)
    padded_path = tmp_path / "padded.jpg"
    padded_path.write_bytes(padded)
    assert np.array_equal(read_image(padded_path).pixels, read_image(plain).pixels)


def test_scan_leaves_exif_to_pillow(data_dir: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3
    buffer = io.BytesIO()
    Image.open(cbsd68_photos(data_dir)[0]).save(buffer, "JPEG", exif=exif.tobytes())
    assert _scan_jpeg_header(buffer.getvalue()) is None
    path = tmp_path / "upside_down.jpg"
    path.write_bytes(buffer.getvalue())
    stored = cv2.imdecode(
        np.frombuffer(buffer.getvalue(), np.uint8),
        cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
    )
    expected = cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)[::-1, ::-1]
    assert np.array_equal(read_image(path).pixels, expected)


def test_scan_leaves_zero_height_to_pillow(data_dir: Path, tmp_path: Path) -> None:
    data = bytearray(cifar_jpegs(data_dir, 1)[0])
    # A height of 0 in the frame header means that a DNL segment sets it. Pillow
    # rejects such files, so the scan hands them to Pillow for its error.
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 7] = b"\x00\x00"
    assert _scan_jpeg_header(bytes(data)) is None
    path = tmp_path / "dnl.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not a valid JPEG file"):
        read_image(path)


def test_scan_needs_whole_header(data_dir: Path) -> None:
    data = cifar_jpegs(data_dir, 1)[0]
    start_of_scan = data.index(b"\xff\xda")
    assert _scan_jpeg_header(data[: start_of_scan - 10]) is None
