"""Tests for edgefx.denoise and edgefx.noise on the shipped model and sample photos.

Foreign models are tiny ONNX graphs that the tests write with onnx.helper.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import CLI_TIMEOUT_SECONDS, run_edgefx
from onnx import TensorProto, helper, numpy_helper

import edgefx
from edgefx import imageio
from edgefx.denoise import MAX_SIGMA, DenoiseOptions, Denoiser
from edgefx.errors import InferenceError, ModelError, UsageError
from edgefx.noise import PATCH, estimate_sigma
from edgefx.runtime import RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"

# Tiled and untiled outputs may differ by float32 rounding only, because each tile's
# margin (tile_margin = 24 px in the shipped model) covers the receptive field: 12 3x3
# convolutions at half resolution reach 24 px, and tiles start at even pixels. Measured
# with onnxruntime 1.31.1 on a 2-core x86_64 CPU: no difference at all (with 22 px,
# up to 2.3e-5).
FLOAT_TILE_TOLERANCE = 1e-5
# On uint8 output, a float32 rounding difference can flip one rounding step.
UINT8_MAX_TILE_DIFFERENCE = 1
UINT8_MIN_IDENTICAL_FRACTION = 0.999

# Largest relative error of estimate_sigma on a clean sample photo with Gaussian noise
# of a known sigma added, then rounded and clipped to uint8 as in samples/noisy.
# Measured over the four clean samples, sigma 15/25/50 and three seeds: at most 15 %
# (astronaut at sigma 50 reads 42.6), and the estimate is low on three of the four.
SIGMA_RELATIVE_TOLERANCE = 0.2
# Upper bound for estimate_sigma on the clean sample photos, a fifth of the sigma 25 of
# samples/noisy. Measured: 0.0 on all four.
CLEAN_SIGMA_LIMIT = 5.0


def read_pixels(path: Path) -> np.ndarray:
    return imageio.read_image(path).pixels


def save_model(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_box_blur(path: Path, channels: int = 3, pads: int = 1) -> Path:
    """Write a blind "denoiser" that box-blurs each channel with a 3x3 mean.

    With ``pads=0`` the output loses one pixel on every side.
    """
    weight = np.full((channels, 1, 3, 3), 1 / 9, np.float32)
    conv = helper.make_node(
        "Conv",
        ["input", "weight"],
        ["output"],
        group=channels,
        kernel_shape=[3, 3],
        pads=[pads] * 4,
    )
    return save_model(
        path,
        [conv],
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["N", channels, "H", "W"]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["N", channels, "H_out", "W_out"]
            )
        ],
        [numpy_helper.from_array(weight, "weight")],
    )


def write_identity(
    path: Path,
    shape: list[int | str],
    elem_type: int = TensorProto.FLOAT,
    metadata: dict[str, str] | None = None,
) -> Path:
    return save_model(
        path,
        [helper.make_node("Identity", ["input"], ["output"])],
        [helper.make_tensor_value_info("input", elem_type, shape)],
        [helper.make_tensor_value_info("output", elem_type, shape)],
        metadata=metadata,
    )


def box_mean_interior(pixels: np.ndarray) -> np.ndarray:
    """Return the 3x3 mean of each pixel that has all eight neighbors."""
    values = pixels.astype(np.float64)
    height, width = values.shape[:2]
    total = sum(
        values[dy : height - 2 + dy, dx : width - 2 + dx]
        for dy in range(3)
        for dx in range(3)
    )
    return total / 9


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    return Denoiser(None, RuntimeOptions(device="cpu"))


# Tiling


TILING_CASES = {
    "coffee_rgb_full": ("coffee.png", None),
    "astronaut_rgb_201x157": ("astronaut.png", (201, 157)),
    "camera_gray_201x157": ("camera.png", (201, 157)),
}


@pytest.mark.parametrize("case", TILING_CASES)
def test_tiling_uint8_matches_one_tile(denoiser: Denoiser, case: str) -> None:
    name, crop = TILING_CASES[case]
    pixels = read_pixels(SAMPLES / "noisy" / name)
    if crop is not None:
        pixels = np.ascontiguousarray(pixels[: crop[0], : crop[1]])

    tiled, _ = denoiser.denoise(pixels, DenoiseOptions(sigma=25, tile=64))
    whole, _ = denoiser.denoise(pixels, DenoiseOptions(sigma=25, tile=4096))

    difference = np.abs(tiled.astype(np.int32) - whole.astype(np.int32))
    assert difference.max() <= UINT8_MAX_TILE_DIFFERENCE
    assert np.mean(difference == 0) > UINT8_MIN_IDENTICAL_FRACTION


def test_tiling_float_matches_one_tile(denoiser: Denoiser) -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:201, :157]
    pixels = pixels.astype(np.float32) / 255

    tiled, _ = denoiser.denoise(pixels, DenoiseOptions(sigma=25, tile=64))
    whole, _ = denoiser.denoise(pixels, DenoiseOptions(sigma=25, tile=4096))

    assert np.max(np.abs(tiled - whole)) <= FLOAT_TILE_TOLERANCE


# Shapes, dtypes and options


def as_dtype(pixels: np.ndarray, dtype: type) -> np.ndarray:
    if dtype is np.uint16:
        return pixels.astype(np.uint16) * 257
    if dtype is np.float32:
        return pixels.astype(np.float32) / 255
    return pixels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(
    ("layout", "name"), [("gray", "camera.png"), ("rgb", "coffee.png")]
)
def test_denoise_keeps_shape_and_dtype(
    denoiser: Denoiser, dtype: type, layout: str, name: str
) -> None:
    pixels = as_dtype(read_pixels(SAMPLES / "noisy" / name)[:64, :80], dtype)
    expected_shape = (64, 80) if layout == "gray" else (64, 80, 3)
    assert pixels.shape == expected_shape

    result, sigma = denoiser.denoise(pixels, DenoiseOptions(sigma=25))

    assert result.shape == pixels.shape
    assert result.dtype == pixels.dtype
    assert sigma == 25


def test_denoise_float_stays_in_unit_range(denoiser: Denoiser) -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:64, :80] / 255
    result, _ = denoiser.denoise(pixels.astype(np.float32), DenoiseOptions(sigma=50))
    assert result.min() >= 0.0
    assert result.max() <= 1.0


def test_denoise_uint16_keeps_precision(denoiser: Denoiser) -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "coffee_16bit.png")[:64, :80]
    assert pixels.dtype == np.uint16
    result, _ = denoiser.denoise(pixels, DenoiseOptions(sigma=25))
    # Output rounded to 8 bits and scaled back would be all multiples of 257.
    assert np.mean(result % 257 != 0) > 0.9


def test_denoise_improves_noisy_sample(denoiser: Denoiser) -> None:
    noisy = read_pixels(SAMPLES / "noisy" / "coffee.png")
    clean = read_pixels(SAMPLES / "clean" / "coffee.png")
    result, sigma = denoiser.denoise(noisy)
    assert sigma == pytest.approx(25, rel=SIGMA_RELATIVE_TOLERANCE)
    assert psnr(result, clean) > psnr(noisy, clean) + 2


@pytest.mark.parametrize("sigma", [-1.0, -0.001, 75.001, 100.0, float("nan")])
def test_options_reject_sigma(sigma: float) -> None:
    with pytest.raises(UsageError, match="invalid sigma"):
        DenoiseOptions(sigma=sigma)


@pytest.mark.parametrize("sigma", [0.0, MAX_SIGMA])
def test_options_accept_sigma_limits(denoiser: Denoiser, sigma: float) -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:32, :32]
    result, used = denoiser.denoise(pixels, DenoiseOptions(sigma=sigma))
    assert used == sigma
    assert result.shape == pixels.shape


@pytest.mark.parametrize("model", ["denoise-s", "denoise-s-int8"])
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 2, 3), (3, 5), (64, 96, 3)])
def test_sigma_zero_returns_the_image(
    model: str, shape: tuple[int, ...], samples_dir: Path
) -> None:
    photo = read_pixels(samples_dir / "noisy" / "coffee.png")
    pixels = np.ascontiguousarray(photo[: shape[0], : shape[1]])
    if len(shape) == 2:
        pixels = np.ascontiguousarray(pixels[:, :, 0])
    denoiser = Denoiser(model, RuntimeOptions(device="cpu", threads=1))

    result, used = denoiser.denoise(pixels, DenoiseOptions(sigma=0))

    assert used == 0
    np.testing.assert_array_equal(result, pixels)
    assert result is not pixels


def test_options_reject_small_tile() -> None:
    with pytest.raises(UsageError, match="invalid tile size 31"):
        DenoiseOptions(tile=31)


@pytest.mark.parametrize("shape", [(16,), (8, 8, 2), (8, 8, 5), (2, 8, 8, 3)])
def test_denoise_rejects_shape(denoiser: Denoiser, shape: tuple[int, ...]) -> None:
    with pytest.raises(UsageError, match="expected an \\(H, W\\), \\(H, W, 1\\)"):
        denoiser.denoise(np.zeros(shape, np.uint8), DenoiseOptions(sigma=10))


def test_denoise_rgba_keeps_alpha(denoiser: Denoiser, samples_dir: Path) -> None:
    rgb = read_pixels(samples_dir / "noisy" / "coffee.png")[:64, :96]
    alpha = np.linspace(0, 255, 64 * 96).reshape(64, 96, 1).astype(np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)

    restored, _ = denoiser.denoise(rgba, DenoiseOptions(sigma=25))
    color_only, _ = denoiser.denoise(rgb, DenoiseOptions(sigma=25))

    assert restored.shape == rgba.shape
    assert np.array_equal(restored[:, :, 3:], alpha)
    assert np.array_equal(restored[:, :, :3], color_only)


def test_denoise_single_channel_axis(denoiser: Denoiser) -> None:
    gray = np.random.default_rng(0).integers(0, 256, (40, 56), dtype=np.uint8)

    with_axis, _ = denoiser.denoise(gray[:, :, None], DenoiseOptions(sigma=25))
    without_axis, _ = denoiser.denoise(gray, DenoiseOptions(sigma=25))

    assert with_axis.shape == (40, 56, 1)
    assert np.array_equal(with_axis[:, :, 0], without_axis)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.bool_])
def test_denoise_rejects_dtype(denoiser: Denoiser, dtype: type) -> None:
    with pytest.raises(UsageError, match="unsupported pixel dtype"):
        denoiser.denoise(np.zeros((8, 8, 3), dtype), DenoiseOptions(sigma=10))


# Noise estimation


@pytest.mark.parametrize("sigma", [15, 25, 50])
@pytest.mark.parametrize("name", ["coffee.png", "astronaut.png", "camera.png"])
def test_estimate_sigma_synthetic_noise(name: str, sigma: int) -> None:
    clean = read_pixels(SAMPLES / "clean" / name)
    noise = np.random.default_rng(7).standard_normal(clean.shape) * sigma
    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
    assert estimate_sigma(noisy) == pytest.approx(sigma, rel=SIGMA_RELATIVE_TOLERANCE)


@pytest.mark.parametrize(
    "name", ["coffee.png", "astronaut.png", "camera.png", "chelsea_rgba.png"]
)
def test_estimate_sigma_clean_is_small(name: str) -> None:
    assert estimate_sigma(read_pixels(SAMPLES / "clean" / name)) < CLEAN_SIGMA_LIMIT


def test_estimate_sigma_same_for_dtypes() -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "camera.png")
    reference = estimate_sigma(pixels)
    assert estimate_sigma(pixels.astype(np.uint16) * 257) == pytest.approx(reference)
    assert estimate_sigma(pixels.astype(np.float32) / 255) == pytest.approx(
        reference, abs=1e-3
    )


def test_estimate_sigma_tiny_image_is_zero() -> None:
    assert estimate_sigma(np.full((PATCH - 1, 40, 3), 128, np.uint8)) == 0.0


def noisy_jpeg(path: Path, sampling: int, sigma: float = 25) -> np.ndarray:
    """Write the astronaut sample with noise as a JPEG; return the clean RGB pixels."""
    clean = read_pixels(SAMPLES / "clean" / "astronaut.png")
    noise = np.random.default_rng(11).standard_normal(clean.shape) * sigma
    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    assert cv2.imwrite(str(path), noisy[:, :, ::-1], params)
    return clean


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [(0x221111, (2, 2)), (0x211111, (2, 1)), (0x111111, (1, 1))],
)
def test_read_image_reports_chroma_subsampling(
    tmp_path: Path, sampling: int, expected: tuple[int, int]
) -> None:
    from PIL import Image

    plain = tmp_path / "plain.jpg"
    noisy_jpeg(plain, sampling)
    # A JPEG with EXIF takes the other header path, through Pillow.
    with_exif = tmp_path / "exif.jpg"
    exif = Image.Exif()
    exif[0x010F] = "edgefx test"  # Make
    pillow_sampling = {(2, 2): 2, (2, 1): 1, (1, 1): 0}[expected]
    Image.open(plain).save(with_exif, exif=exif, subsampling=pillow_sampling)

    assert imageio.read_image(plain).chroma_subsampling == expected
    assert imageio.read_image(with_exif).chroma_subsampling == expected
    assert imageio.read_image(with_exif).exif is not None


def test_gray_jpeg_png_no_subsampling(tmp_path: Path) -> None:
    gray = tmp_path / "gray.jpg"
    assert cv2.imwrite(str(gray), read_pixels(SAMPLES / "clean" / "camera.png"))

    assert imageio.read_image(gray).chroma_subsampling == (1, 1)
    assert imageio.read_image(SAMPLES / "noisy" / "coffee.png").chroma_subsampling == (
        1,
        1,
    )


def test_blind_estimate_raised_for_subsampled_jpeg(tmp_path: Path) -> None:
    # Noise saved with 4:2:0 chroma reads about a third low, so the CLI raises the
    # estimate. The result is closer to the clean photo than at the raw estimate.
    source = tmp_path / "in" / "astronaut.jpg"
    source.parent.mkdir()
    clean = noisy_jpeg(source, 0x221111)
    decoded = imageio.read_image(source).pixels
    raw = estimate_sigma(decoded)

    result = run_edgefx(
        "-v", "denoise", source, "--out", tmp_path / "out", "--format", "png"
    )

    assert result.returncode == 0, result.stderr
    logged = float(result.stderr.split("noise sigma ")[1].split()[0])
    assert logged == pytest.approx(raw * 1.3, abs=0.06)
    restored = read_pixels(tmp_path / "out" / "astronaut.png")
    at_raw, _ = Denoiser().denoise(decoded, DenoiseOptions(sigma=raw))
    assert psnr(restored, clean) > psnr(at_raw, clean) + 0.5


# Foreign models


def test_foreign_blur_runs_as_blind_model(tmp_path: Path) -> None:
    path = write_box_blur(tmp_path / "blur.onnx")
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:64, :80]

    denoiser = Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))
    result, _ = denoiser.denoise(pixels)

    assert denoiser.signature.level_input is None
    assert denoiser.signature.channels == 3
    assert result.shape == pixels.shape
    assert result.dtype == np.uint8
    expected = np.round(box_mean_interior(pixels))
    assert np.abs(result[1:-1, 1:-1] - expected).max() <= 1


def test_foreign_gray_model_on_rgb(tmp_path: Path) -> None:
    path = write_box_blur(tmp_path / "blur_gray.onnx", channels=1)
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:64, :80]

    denoiser = Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))
    result, _ = denoiser.denoise(pixels)

    assert denoiser.signature.channels == 1
    assert result.shape == pixels.shape
    expected = np.round(box_mean_interior(pixels))
    assert np.abs(result[1:-1, 1:-1] - expected).max() <= 1


def test_foreign_blur_through_cli(tmp_path: Path) -> None:
    path = write_box_blur(tmp_path / "blur.onnx")
    source = SAMPLES / "noisy" / "coffee.png"
    out = tmp_path / "out"

    result = run_edgefx(
        "denoise", source, "--out", out, "--model", path, "--device", "cpu"
    )

    assert result.returncode == 0, result.stderr
    written = cv2.imread(str(out / source.name), cv2.IMREAD_UNCHANGED)
    assert written is not None
    assert written.shape == read_pixels(source).shape


def test_foreign_2d_input_rejected(tmp_path: Path) -> None:
    path = write_identity(tmp_path / "flat.onnx", ["N", 3])
    with pytest.raises(ModelError, match="do not fit a denoiser") as caught:
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))
    assert "(N, C, H, W)" in str(caught.value)
    assert str(path) in str(caught.value)


def test_foreign_five_channels_rejected(tmp_path: Path) -> None:
    path = write_identity(tmp_path / "five.onnx", ["N", 5, "H", "W"])
    with pytest.raises(ModelError, match="5 channels; expected 1 or 3"):
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))


def test_foreign_integer_input_rejected(tmp_path: Path) -> None:
    path = write_identity(
        tmp_path / "uint8.onnx", ["N", 3, "H", "W"], TensorProto.UINT8
    )
    with pytest.raises(ModelError, match="expected float"):
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))


def test_foreign_unknown_input_range_rejected(tmp_path: Path) -> None:
    path = write_identity(
        tmp_path / "range.onnx", ["N", 3, "H", "W"], metadata={"input_range": "0-100"}
    )
    with pytest.raises(ModelError, match="unsupported input_range '0-100'"):
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))


def test_foreign_size_change_rejected(tmp_path: Path) -> None:
    path = write_box_blur(tmp_path / "valid_conv.onnx", pads=0)
    denoiser = Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:40, :48]
    with pytest.raises(InferenceError, match="differs from the input shape") as caught:
        denoiser.denoise(pixels, DenoiseOptions(sigma=10))
    assert "[1, 3, 38, 46]" in str(caught.value)


# Public API


def test_denoise_image_public_api() -> None:
    noisy = read_pixels(SAMPLES / "noisy" / "coffee.png")
    clean = read_pixels(SAMPLES / "clean" / "coffee.png")
    result = edgefx.denoise_image(noisy)
    assert "denoise_image" in edgefx.__all__
    assert result.shape == noisy.shape
    assert result.dtype == noisy.dtype
    assert psnr(result, clean) > psnr(noisy, clean)


def test_denoise_image_rejects_sigma() -> None:
    pixels = read_pixels(SAMPLES / "noisy" / "coffee.png")[:32, :32]
    with pytest.raises(UsageError, match="invalid sigma"):
        edgefx.denoise_image(pixels, sigma=80)


def test_import_loads_no_runtime() -> None:
    code = (
        "import json, sys, edgefx; "
        "print(json.dumps([m for m in ('onnxruntime', 'torch') if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=True,
    )
    loaded = json.loads(result.stdout)
    assert "onnxruntime" not in loaded
    assert "torch" not in loaded


@pytest.mark.parametrize("value", ["abc", "0", "-2", "99999"])
def test_foreign_bad_size_multiple_rejected(tmp_path: Path, value: str) -> None:
    # Invalid tiling metadata in a foreign model once gave a traceback ("abc") or a
    # ZeroDivisionError per file ("0") instead of one model error.
    path = write_identity(
        tmp_path / "identity.onnx",
        ["N", 3, "H", "W"],
        metadata={"size_multiple": value},
    )

    with pytest.raises(ModelError, match="size_multiple"):
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))


def test_foreign_model_of_other_task(tmp_path: Path) -> None:
    path = write_identity(
        tmp_path / "classifier.onnx", ["N", 3, "H", "W"], metadata={"task": "classify"}
    )

    with pytest.raises(ModelError, match="classify model"):
        Denoiser(model=str(path), runtime=RuntimeOptions(device="cpu"))
