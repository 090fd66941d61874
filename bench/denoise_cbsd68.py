"""Benchmark edgefx denoising against OpenCV non-local means (NLM) and BM3D.

Test sets: the 68 CBSD68 color photos, their 68 grayscale versions (BSD68) and the 12
grayscale Set12 images. Each clean 8-bit image gets additive white Gaussian noise of
standard deviation sigma on the 0-255 scale from a fixed seed, computed in float and
not clipped, as in the DnCNN, FFDNet and CBM3D papers. Because real files are 8-bit,
every tool then gets the same noisy image clipped to [0, 255] and rounded to uint8. That
costs a little PSNR against the unclipped protocol, equally for every tool. PSNR is
computed over the whole image on the 0-255 scale against the clean image, with every
output in uint8, and averaged over the images.

edgefx runs through one CPU Denoiser session: blind (sigma estimated) and with the true
sigma on the uint8 input, and once more with the true sigma on the unclipped float
image (the papers' protocol, untimed). Gray images go in as (H, W) arrays. OpenCV's
fastNlMeansDenoisingColored (hColor = h) or fastNlMeansDenoising runs on every image.
Its h grid is swept on a subset of the images, and the best h then runs on all of them.
The bm3d package (bm3d_rgb for color, bm3d for gray, given the true sigma) is slow, so
it runs on a few evenly spaced images per set, and edgefx is reported on the same
images beside it. Speed is the wall time of the denoise call alone, after one untimed
warm-up call per tool, and only the final run is timed.

The published numbers printed beside the measured ones are from:
- K. Zhang, W. Zuo and L. Zhang, "FFDNet: Toward a fast and flexible solution for
  CNN-based image denoising", IEEE Transactions on Image Processing 27(9), 2018
  (CBSD68: CBM3D and FFDNet);
- K. Zhang, W. Zuo, Y. Chen, D. Meng and L. Zhang, "Beyond a Gaussian denoiser:
  residual learning of deep CNN for image denoising", IEEE Transactions on Image
  Processing 26(7), 2017 (BSD68 and the Set12 averages: BM3D and DnCNN-S).
Both papers add unclipped float noise, so they match the "unclipped" edgefx column.

Run: python bench/denoise_cbsd68.py [--limit N] [--bm3d-limit N] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import cv2
import numpy as np
import onnxruntime

from edgefx.denoise import MAX_SIGMA, DenoiseOptions, Denoiser
from edgefx.errors import EdgefxError
from edgefx.imageio import read_image
from edgefx.quality import psnr
from edgefx.registry import sha256_of
from edgefx.runtime import RuntimeOptions, provider_name

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SUBFOLDER = Path("images", "test", "CBSD68")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / DATA_SUBFOLDER
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

DEFAULT_SIGMAS = (15.0, 25.0, 50.0)
# The default NLM grid is these multiples of sigma, because the best h grows with the
# noise level.
DEFAULT_GRID_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2)
DEFAULT_TUNE_IMAGES = 17
NLM_TEMPLATE_WINDOW = 7
NLM_SEARCH_WINDOW = 21
# bm3d 4.0.3 took 20 to 30 s per 0.15-megapixel color photo and 8 to 11 s per gray
# one on a busy 2-core machine, so 4 images per set at three sigmas add an estimated 7
# to 10 minutes there.
DEFAULT_BM3D_LIMIT = 4
BM3D_PROFILE = "np"  # the package's default settings
BM3D_WARM_UP_SIDE = 64
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

FFDNET_PAPER = (
    "Zhang, Zuo and Zhang, FFDNet: Toward a fast and flexible solution for CNN-based "
    "image denoising, IEEE TIP 27(9), 2018"
)
DNCNN_PAPER = (
    "Zhang, Zuo, Chen, Meng and Zhang, Beyond a Gaussian denoiser: residual learning "
    "of deep CNN for image denoising, IEEE TIP 26(7), 2017"
)


@dataclass(frozen=True)
class PublishedBaseline:
    """Mean PSNRs (dB) that a paper reports for one method on one test set."""

    method: str
    psnr_by_sigma: dict[float, float]
    source: str


@dataclass(frozen=True)
class TestSet:
    """A folder of clean test images under images/test and its published results."""

    name: str
    color: bool
    full_size: int
    # The first baseline is the BM3D family that the difference column compares with.
    baselines: tuple[PublishedBaseline, ...]


TEST_SETS = {
    "CBSD68": TestSet(
        "CBSD68",
        color=True,
        full_size=68,
        baselines=(
            PublishedBaseline("CBM3D", {15: 33.52, 25: 30.71, 50: 27.38}, FFDNET_PAPER),
            PublishedBaseline(
                "FFDNet", {15: 33.87, 25: 31.21, 50: 27.96}, FFDNET_PAPER
            ),
        ),
    ),
    "BSD68": TestSet(
        "BSD68",
        color=False,
        full_size=68,
        baselines=(
            PublishedBaseline("BM3D", {15: 31.07, 25: 28.57, 50: 25.62}, DNCNN_PAPER),
            PublishedBaseline(
                "DnCNN-S", {15: 31.73, 25: 29.23, 50: 26.23}, DNCNN_PAPER
            ),
        ),
    ),
    "Set12": TestSet(
        "Set12",
        color=False,
        full_size=12,
        baselines=(
            PublishedBaseline("BM3D", {15: 32.37, 25: 29.97, 50: 26.72}, DNCNN_PAPER),
            PublishedBaseline(
                "DnCNN-S", {15: 32.86, 25: 30.44, 50: 27.18}, DNCNN_PAPER
            ),
        ),
    ),
}


@dataclass
class ImageResult:
    """PSNRs (dB) and denoise times (seconds) of one image at one sigma.

    The unclipped and bm3d fields are None where that run did not happen.
    """

    name: str
    megapixels: float
    noisy_psnr: float  # the uint8 input that every tool gets
    noisy_psnr_unclipped: float  # the float noisy image of the published protocol
    nlm_psnr: float
    nlm_seconds: float
    blind_psnr: float
    blind_seconds: float
    estimated_sigma: float
    known_psnr: float
    known_seconds: float
    known_unclipped_psnr: float | None  # edgefx given the float image, not timed
    bm3d_psnr: float | None
    bm3d_seconds: float | None


@dataclass
class SigmaResult:
    """Means over the images of one set at one sigma, and the per-image rows."""

    sigma: float
    nlm_grid: list[float]
    nlm_sweep_psnr: list[float]  # mean PSNR on the tuning images, one per grid value
    nlm_best_h: float
    noisy_psnr: float
    noisy_psnr_unclipped: float
    nlm_psnr: float
    blind_psnr: float
    known_psnr: float
    known_unclipped_psnr: float | None
    estimated_sigma: float
    nlm_mps: float
    blind_mps: float
    known_mps: float
    # On the bm3d images only; None when bm3d did not run.
    bm3d_psnr: float | None
    bm3d_mps: float | None
    bm3d_subset_known_psnr: float | None
    bm3d_subset_known_mps: float | None
    published_psnr: dict[str, float]  # method name to dB, empty for other sigmas
    images: list[ImageResult]


@dataclass
class SetResult:
    """Results of one test set at every sigma."""

    name: str
    color: bool
    folder: str
    image_count: int
    full_size: int
    tune_images: list[str]
    bm3d_images: list[str]
    sigmas: list[SigmaResult] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Data and noise


def find_data_folder(requested: Path | None) -> Path:
    """Return the CBSD68 folder: --data, else $EDGEFX_DATA, else ../shared/data.

    Exits with status 2 and a message when the folder does not exist.
    """
    if requested is not None:
        folder = requested
    elif os.environ.get("EDGEFX_DATA"):
        folder = Path(os.environ["EDGEFX_DATA"]).expanduser() / DATA_SUBFOLDER
    else:
        folder = DEFAULT_DATA
    if not folder.is_dir():
        print(
            f"error: CBSD68 data folder not found: {folder}\n"
            f"Pass --data DIR, or set EDGEFX_DATA to a folder that contains "
            f"{DATA_SUBFOLDER}.",
            file=sys.stderr,
        )
        sys.exit(2)
    return folder


def find_set_folder(cbsd68_folder: Path, test_set: TestSet) -> Path:
    """Return the folder of ``test_set``: the CBSD68 folder or its sibling by name.

    Exits with status 2 and a message when the folder does not exist.
    """
    if test_set.name == "CBSD68":
        return cbsd68_folder
    folder = cbsd68_folder.parent / test_set.name
    if not folder.is_dir():
        print(
            f"error: {test_set.name} data folder not found: {folder}\n"
            f"It is read from beside the CBSD68 folder; leave {test_set.name} out of "
            "--sets to run without it.",
            file=sys.stderr,
        )
        sys.exit(2)
    return folder


def load_images(
    folder: Path, color: bool, limit: int | None
) -> list[tuple[str, np.ndarray]]:
    """Read the clean uint8 images in ``folder``, sorted by file name.

    Color sets must contain RGB images, and gray sets single-channel (H, W) images.
    """
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"error: no image files found in {folder}")
    if limit is not None:
        paths = paths[:limit]
    expected_ndim = 3 if color else 2
    kind = "an 8-bit RGB image" if color else "an 8-bit grayscale image"
    images = []
    for path in paths:
        pixels = read_image(path).pixels
        if pixels.ndim != expected_ndim or pixels.dtype != np.uint8:
            sys.exit(
                f"error: {path}: expected {kind}, got {pixels.dtype} samples of "
                f"shape {pixels.shape}"
            )
        images.append((path.name, pixels))
    return images


def add_noise(
    clean: np.ndarray, sigma: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return the unclipped float noisy image and its clipped, rounded uint8 copy.

    The generator is seeded from (seed, file name, sigma), so an image's noise does not
    depend on which other images or sigmas run, nor on their order.
    """
    entropy = [seed, zlib.crc32(name.encode("utf-8")), round(sigma * 1000)]
    rng = np.random.default_rng(entropy)
    noisy = clean.astype(np.float64) + rng.normal(0.0, sigma, clean.shape)
    return noisy, to_uint8(noisy)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Clip float pixels on the 0-255 scale to [0, 255] and round them to uint8."""
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def evenly_spaced_indices(count: int, size: int) -> list[int]:
    """Pick ``size`` evenly spaced indices out of ``count``; a size of 0 picks all.

    For 17 out of 68 this is every 4th image, starting with the first.
    """
    picked = count if size == 0 else min(size, count)
    return [i * count // picked for i in range(picked)]


def bm3d_indices(count: int, bm3d_limit: int) -> list[int]:
    """Pick the images that bm3d runs on; a limit of 0 picks none."""
    if bm3d_limit == 0:
        return []
    return evenly_spaced_indices(count, bm3d_limit)


# --------------------------------------------------------------------------------------
# Denoisers


def nlm_denoise(noisy: np.ndarray, h: float) -> np.ndarray:
    """Denoise an RGB or gray uint8 image with OpenCV's non-local means."""
    if noisy.ndim == 2:
        return cv2.fastNlMeansDenoising(
            noisy, None, h, NLM_TEMPLATE_WINDOW, NLM_SEARCH_WINDOW
        )
    bgr = cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR)
    restored = cv2.fastNlMeansDenoisingColored(
        bgr, None, h, h, NLM_TEMPLATE_WINDOW, NLM_SEARCH_WINDOW
    )
    return cv2.cvtColor(restored, cv2.COLOR_BGR2RGB)


def load_bm3d() -> ModuleType:
    """Import the bm3d package, or exit with status 2 and how to install it."""
    try:
        return importlib.import_module("bm3d")
    except ImportError:
        print(
            "error: the bm3d package is not installed. Install it with "
            "pip install 'edgefx[bench]' (or pip install bm3d), or pass "
            "--bm3d-limit 0 to run without it.",
            file=sys.stderr,
        )
        sys.exit(2)


def bm3d_denoise(bm3d: ModuleType, noisy: np.ndarray, sigma: float) -> np.ndarray:
    """Denoise an RGB or gray uint8 image with BM3D, given the true sigma (0-255).

    bm3d reads sigma on the scale of its input array, so the image goes in on [0, 1]
    with sigma / 255. Color images use bm3d_rgb, which denoises in the opponent color
    space (its default colorspace 'opp').
    """
    image = noisy.astype(np.float64) / 255.0
    if noisy.ndim == 3:
        restored = bm3d.bm3d_rgb(image, sigma / 255.0, profile=BM3D_PROFILE)
    else:
        restored = bm3d.bm3d(image, sigma / 255.0, profile=BM3D_PROFILE)
    return to_uint8(np.asarray(restored) * 255.0)


def edgefx_denoise_unclipped(
    denoiser: Denoiser, noisy: np.ndarray, sigma: float
) -> np.ndarray:
    """Denoise the unclipped float noisy image with edgefx and return it as uint8.

    Denoiser treats float32 input as the [0, 1] scale and feeds it to the network
    without clipping (edgefx/denoise.py). It clips only the output to [0, 1].
    """
    image = (noisy / 255.0).astype(np.float32)
    restored, _ = denoiser.denoise(image, DenoiseOptions(sigma=sigma))
    return to_uint8(restored.astype(np.float64) * 255.0)


def float_input_reaches_model(denoiser: Denoiser) -> bool:
    """Check that Denoiser passes float32 values outside [0, 1] to the network.

    When it clipped them first, the unclipped column would repeat the clipped one, so
    it is left out. The probe is a noisy gray ramp that crosses 0 and 1.
    """
    rng = np.random.default_rng(0)
    ramp = np.linspace(-0.2, 1.2, 64, dtype=np.float32)
    image = np.tile(ramp, (64, 1)) + rng.normal(0.0, 0.1, (64, 64)).astype(np.float32)
    options = DenoiseOptions(sigma=25.0)
    as_given, _ = denoiser.denoise(image, options)
    clipped, _ = denoiser.denoise(np.clip(image, 0.0, 1.0), options)
    return not np.array_equal(as_given, clipped)


def timed(function: Callable[..., T], *arguments: object) -> tuple[T, float]:
    """Call ``function`` and return its result with the wall time in seconds."""
    start = time.perf_counter()
    result = function(*arguments)
    return result, time.perf_counter() - start


def nlm_grid_for(sigma: float, grid: Sequence[float] | None) -> list[float]:
    if grid:
        return sorted(set(grid))
    return [round(factor * sigma, 1) for factor in DEFAULT_GRID_FACTORS]


def sweep_nlm(
    clean_images: Sequence[np.ndarray],
    noisy_images: Sequence[np.ndarray],
    grid: Sequence[float],
) -> list[float]:
    """Return the mean NLM PSNR over the images for each h in ``grid``."""
    means = []
    for h in grid:
        scores = [
            psnr(clean, nlm_denoise(noisy, h))
            for clean, noisy in zip(clean_images, noisy_images, strict=True)
        ]
        means.append(float(np.mean(scores)))
    return means


# --------------------------------------------------------------------------------------
# Benchmark


@dataclass
class Tools:
    """The denoisers of one run and the settings that every image shares."""

    denoiser: Denoiser
    bm3d: ModuleType | None  # None when --bm3d-limit is 0
    unclipped: bool  # whether the unclipped edgefx run is meaningful


def bench_image(
    name: str,
    clean: np.ndarray,
    noisy_pair: tuple[np.ndarray, np.ndarray],
    sigma: float,
    nlm_h: float,
    tools: Tools,
    run_bm3d: bool,
) -> ImageResult:
    """Time NLM, both edgefx modes and optionally bm3d on one noisy image."""
    noisy, noisy_uint8 = noisy_pair
    denoiser = tools.denoiser
    nlm_output, nlm_seconds = timed(nlm_denoise, noisy_uint8, nlm_h)
    (blind_output, estimated), blind_seconds = timed(
        denoiser.denoise, noisy_uint8, DenoiseOptions()
    )
    (known_output, _), known_seconds = timed(
        denoiser.denoise, noisy_uint8, DenoiseOptions(sigma=sigma)
    )

    known_unclipped_psnr = None
    if tools.unclipped:
        unclipped_output = edgefx_denoise_unclipped(denoiser, noisy, sigma)
        known_unclipped_psnr = psnr(clean, unclipped_output)

    bm3d_psnr = bm3d_seconds = None
    if run_bm3d and tools.bm3d is not None:
        bm3d_output, bm3d_seconds = timed(bm3d_denoise, tools.bm3d, noisy_uint8, sigma)
        bm3d_psnr = psnr(clean, bm3d_output)

    return ImageResult(
        name=name,
        megapixels=clean.shape[0] * clean.shape[1] / 1e6,
        noisy_psnr=psnr(clean, noisy_uint8),
        noisy_psnr_unclipped=psnr(clean, noisy),
        nlm_psnr=psnr(clean, nlm_output),
        nlm_seconds=nlm_seconds,
        blind_psnr=psnr(clean, blind_output),
        blind_seconds=blind_seconds,
        estimated_sigma=float(estimated),
        known_psnr=psnr(clean, known_output),
        known_seconds=known_seconds,
        known_unclipped_psnr=known_unclipped_psnr,
        bm3d_psnr=bm3d_psnr,
        bm3d_seconds=bm3d_seconds,
    )


def mean_of(rows: Sequence[ImageResult], name: str) -> float:
    return float(np.mean([getattr(row, name) for row in rows]))


def speed_of(rows: Sequence[ImageResult], seconds_field: str) -> float:
    """Return megapixels per second: all pixels over the summed times."""
    megapixels = sum(row.megapixels for row in rows)
    return megapixels / sum(getattr(row, seconds_field) for row in rows)


def bench_sigma(
    test_set: TestSet,
    sigma: float,
    images: Sequence[tuple[str, np.ndarray]],
    tools: Tools,
    args: argparse.Namespace,
) -> SigmaResult:
    """Sweep NLM's h, then time every tool on every image of one set."""
    noisy_pairs = [add_noise(clean, sigma, args.seed, name) for name, clean in images]
    noisy_inputs = [pair[1] for pair in noisy_pairs]

    grid = nlm_grid_for(sigma, args.nlm_grid)
    tune = evenly_spaced_indices(len(images), args.tune_images)
    log(
        f"{test_set.name} sigma {sigma:g}: sweeping NLM h over {grid} on "
        f"{images_label(len(tune))}"
    )
    sweep = sweep_nlm(
        [images[i][1] for i in tune], [noisy_inputs[i] for i in tune], grid
    )
    best_h = grid[int(np.argmax(sweep))]

    bm3d_set = set(bm3d_indices(len(images), args.bm3d_limit))
    log(
        f"{test_set.name} sigma {sigma:g}: timed run, NLM h {best_h:g}, "
        f"{images_label(len(images))}, bm3d on {len(bm3d_set)}"
    )
    rows = [
        bench_image(name, clean, pair, sigma, best_h, tools, index in bm3d_set)
        for index, ((name, clean), pair) in enumerate(
            zip(images, noisy_pairs, strict=True)
        )
    ]
    subset = [rows[i] for i in sorted(bm3d_set)]
    has_bm3d = bool(subset) and tools.bm3d is not None

    return SigmaResult(
        sigma=sigma,
        nlm_grid=list(grid),
        nlm_sweep_psnr=sweep,
        nlm_best_h=best_h,
        noisy_psnr=mean_of(rows, "noisy_psnr"),
        noisy_psnr_unclipped=mean_of(rows, "noisy_psnr_unclipped"),
        nlm_psnr=mean_of(rows, "nlm_psnr"),
        blind_psnr=mean_of(rows, "blind_psnr"),
        known_psnr=mean_of(rows, "known_psnr"),
        known_unclipped_psnr=(
            mean_of(rows, "known_unclipped_psnr") if tools.unclipped else None
        ),
        estimated_sigma=mean_of(rows, "estimated_sigma"),
        nlm_mps=speed_of(rows, "nlm_seconds"),
        blind_mps=speed_of(rows, "blind_seconds"),
        known_mps=speed_of(rows, "known_seconds"),
        bm3d_psnr=mean_of(subset, "bm3d_psnr") if has_bm3d else None,
        bm3d_mps=speed_of(subset, "bm3d_seconds") if has_bm3d else None,
        bm3d_subset_known_psnr=mean_of(subset, "known_psnr") if has_bm3d else None,
        bm3d_subset_known_mps=speed_of(subset, "known_seconds") if has_bm3d else None,
        published_psnr={
            baseline.method: baseline.psnr_by_sigma[sigma]
            for baseline in test_set.baselines
            if sigma in baseline.psnr_by_sigma
        },
        images=rows,
    )


def warm_up(tools: Tools, clean: np.ndarray, sigma: float, seed: int) -> None:
    """Run each tool once, untimed, so that first-call costs stay out of the timings.

    bm3d warms up on a small crop, because a whole image takes seconds.
    """
    _, noisy_uint8 = add_noise(clean, sigma, seed, "warm-up")
    nlm_denoise(noisy_uint8, sigma)
    tools.denoiser.denoise(noisy_uint8)
    if tools.bm3d is not None:
        crop = noisy_uint8[:BM3D_WARM_UP_SIDE, :BM3D_WARM_UP_SIDE]
        bm3d_denoise(tools.bm3d, crop, sigma)


def bench_set(
    test_set: TestSet, folder: Path, tools: Tools, args: argparse.Namespace
) -> SetResult:
    """Run every sigma on one test set."""
    images = load_images(folder, test_set.color, args.limit)
    names = [name for name, _ in images]
    result = SetResult(
        name=test_set.name,
        color=test_set.color,
        folder=str(folder),
        image_count=len(images),
        full_size=test_set.full_size,
        tune_images=[
            names[i] for i in evenly_spaced_indices(len(images), args.tune_images)
        ],
        bm3d_images=(
            [names[i] for i in bm3d_indices(len(images), args.bm3d_limit)]
            if tools.bm3d is not None
            else []
        ),
    )
    warm_up(tools, images[0][1], args.sigmas[0], args.seed)
    for sigma in args.sigmas:
        result.sigmas.append(bench_sigma(test_set, sigma, images, tools, args))
    return result


# --------------------------------------------------------------------------------------
# Machine description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine(denoiser: Denoiser, session_provider: str) -> dict[str, Any]:
    """Collect the date, CPU, library versions, thread settings and model identity."""
    info = denoiser.info
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_provider": session_provider,
        # RuntimeOptions(threads=0) leaves the intra-op thread count to ONNX Runtime.
        "onnxruntime_intra_op_threads": "default (0)",
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "bm3d": package_version("bm3d"),
        # numpy's BLAS threads run the blind mode's noise estimate, next to ONNX
        # Runtime's threads, so their settings affect the blind timings.
        "thread_environment": {
            name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ
        },
        "model": info.name,
        "model_version": info.metadata.get("version", "unknown"),
        "model_path": str(info.path),
        "model_sha256": sha256_of(info.path),
    }


# --------------------------------------------------------------------------------------
# Report


def format_number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None:
        return "-"
    return f"{numerator / denominator:.2f}"


def format_difference(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "-"
    return f"{value - reference:+.2f}"


def format_header(machine: dict[str, Any], unclipped: bool) -> list[str]:
    """Format the machine, thread and protocol lines above the tables."""
    lines = [
        f"{machine['date']} | CPU {machine['cpu']}, {machine['logical_cores']} "
        f"logical cores, 1-min load average {machine['load_average_1min']} | "
        f"onnxruntime {machine['onnxruntime']} | opencv {machine['opencv']} | "
        f"bm3d {machine['bm3d']} | model {machine['model']} "
        f"v{machine['model_version']} sha256 {str(machine['model_sha256'])[:12]}",
        f"Threads: onnxruntime {machine['onnxruntime_provider']}, intra-op threads "
        f"{machine['onnxruntime_intra_op_threads']}, inter-op 1 | OpenCV "
        f"cv2.getNumThreads() = {machine['opencv_threads']} | "
        f"{format_thread_environment(machine['thread_environment'])}",
        "Noise: clean + N(0, sigma) in float on the 0-255 scale. Every timed tool gets "
        "it clipped to [0, 255] and rounded to uint8. PSNR over the whole image, "
        "outputs in uint8.",
        f"NLM: templateWindowSize {NLM_TEMPLATE_WINDOW}, searchWindowSize "
        f"{NLM_SEARCH_WINDOW}, hColor = h on color; h swept on the tuning images, "
        "then the best h ran on all images of the set.",
        f"bm3d: profile '{BM3D_PROFILE}', bm3d_rgb (opponent color space) on color "
        "and bm3d on gray, given the true sigma.",
    ]
    if unclipped:
        lines.append(
            "edgefx unclipped: the float noisy image goes in as float32 on [0, 1] "
            "without clipping, which edgefx's Denoiser passes to the network as it is "
            "(checked in this run). This is the papers' protocol. Not timed."
        )
    else:
        lines.append(
            "edgefx unclipped: left out, because this run found that edgefx's "
            "Denoiser clips float32 input to [0, 1] before the network, so it would "
            "repeat the known-sigma column."
        )
    return lines


def format_set_lines(results: Sequence[SetResult], seed: int) -> list[str]:
    """Format one line per set with its images, tuning images and bm3d images."""
    lines = []
    for result in results:
        kind = "color" if result.color else "gray"
        bm3d = ", ".join(result.bm3d_images) if result.bm3d_images else "none"
        lines.append(
            f"{result.name} ({kind}): {images_label(result.image_count)} from "
            f"{result.folder}, noise seed {seed}; NLM tuned on "
            f"{len(result.tune_images)}; bm3d on {len(result.bm3d_images)}: {bm3d}"
        )
    return lines


def format_quality_table(
    results: Sequence[SetResult], unclipped: bool, sets: dict[str, TestSet]
) -> list[str]:
    """Format the PSNR table over all images of each set, with the published ones."""
    compared = "edgefx unclipped" if unclipped else "edgefx known sigma"
    lines = [
        "PSNR (dB), mean over all images of each set:",
        "",
        "| set | sigma | noisy input | NLM h | NLM | edgefx blind | edgefx known sigma "
        "| edgefx known sigma, unclipped input | CBM3D/BM3D published "
        f"| FFDNet/DnCNN-S published | {compared} minus CBM3D/BM3D |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        methods = [baseline.method for baseline in sets[result.name].baselines]
        for row in result.sigmas:
            first = row.published_psnr.get(methods[0])
            second = row.published_psnr.get(methods[1])
            own = row.known_unclipped_psnr if unclipped else row.known_psnr
            lines.append(
                f"| {result.name} | {row.sigma:g} | {row.noisy_psnr:.2f} "
                f"| {row.nlm_best_h:g} | {row.nlm_psnr:.2f} | {row.blind_psnr:.2f} "
                f"| {row.known_psnr:.2f} | {format_number(row.known_unclipped_psnr)} "
                f"| {format_number(first)} | {format_number(second)} "
                f"| {format_difference(own, first)} |"
            )
    return lines


def format_bm3d_table(results: Sequence[SetResult]) -> list[str]:
    """Format bm3d against edgefx known sigma on the bm3d images of each set."""
    lines = [
        "bm3d against edgefx known sigma on the same uint8 noisy images "
        "(the bm3d images listed above):",
        "",
        "| set | sigma | images | bm3d PSNR | edgefx known-sigma PSNR "
        "| edgefx minus bm3d | bm3d MP/s | edgefx known-sigma MP/s "
        "| edgefx/bm3d speed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for row in result.sigmas:
            lines.append(
                f"| {result.name} | {row.sigma:g} | {len(result.bm3d_images)} "
                f"| {format_number(row.bm3d_psnr)} "
                f"| {format_number(row.bm3d_subset_known_psnr)} "
                f"| {format_difference(row.bm3d_subset_known_psnr, row.bm3d_psnr)} "
                f"| {format_number(row.bm3d_mps, 3)} "
                f"| {format_number(row.bm3d_subset_known_mps, 3)} "
                f"| {format_ratio(row.bm3d_subset_known_mps, row.bm3d_mps)} |"
            )
    return lines


def format_speed_table(results: Sequence[SetResult]) -> list[str]:
    """Format NLM and edgefx speeds over all images of each set."""
    lines = [
        "Speed in megapixels per second over all images of each set:",
        "",
        "| set | sigma | NLM MP/s | edgefx blind MP/s | edgefx known-sigma MP/s "
        "| edgefx/NLM speed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for row in result.sigmas:
            lines.append(
                f"| {result.name} | {row.sigma:g} | {row.nlm_mps:.3f} "
                f"| {row.blind_mps:.3f} | {row.known_mps:.3f} "
                f"| {row.known_mps / row.nlm_mps:.2f} |"
            )
    return lines


def format_notes(
    results: Sequence[SetResult], sets: dict[str, TestSet], elapsed: float
) -> list[str]:
    """Format the sources, ratios, sweeps and warnings under the tables."""
    sources: dict[str, list[str]] = {}
    for result in results:
        for baseline in sets[result.name].baselines:
            label = f"{result.name} {baseline.method}"
            sources.setdefault(baseline.source, []).append(label)
    lines = [
        "Published numbers (unclipped noise): "
        + "; ".join(
            f"{', '.join(labels)} from {source}" for source, labels in sources.items()
        )
        + ".",
        "Speed ratios divide edgefx known-sigma MP/s by the other tool's MP/s, "
        "measured on the same images in this run.",
    ]
    for result in results:
        lines.append(
            f"{result.name}: noisy PSNR of the unclipped float images "
            + ", ".join(
                f"sigma {r.sigma:g}: {r.noisy_psnr_unclipped:.2f}"
                for r in result.sigmas
            )
            + "; edgefx blind mean estimated sigma "
            + ", ".join(
                f"sigma {r.sigma:g}: {r.estimated_sigma:.1f}" for r in result.sigmas
            )
        )
    for result in results:
        lines.append(
            f"{result.name}: NLM sweep, mean PSNR on the tuning images for each h: "
            + "; ".join(
                f"sigma {r.sigma:g}: "
                + ", ".join(
                    f"h {h:g} {score:.2f}"
                    for h, score in zip(r.nlm_grid, r.nlm_sweep_psnr, strict=True)
                )
                for r in result.sigmas
            )
        )
    lines += format_warnings(results)
    lines.append(f"Run time: {elapsed / 60:.1f} minutes.")
    return lines


def format_warnings(results: Sequence[SetResult]) -> list[str]:
    lines = []
    for result in results:
        for row in result.sigmas:
            grid = row.nlm_grid
            if len(grid) > 1 and row.nlm_best_h in (grid[0], grid[-1]):
                lines.append(
                    f"NOTE: {result.name} sigma {row.sigma:g}: the best NLM h "
                    f"{row.nlm_best_h:g} is at the edge of the grid, so a wider "
                    "--nlm-grid may do better."
                )
        if result.image_count < result.full_size:
            lines.append(
                f"NOTE: {result.image_count} of the {result.full_size} {result.name} "
                "images, so these numbers are not comparable with full-set results."
            )
    return lines


def format_report(
    machine: dict[str, Any],
    results: Sequence[SetResult],
    unclipped: bool,
    seed: int,
    elapsed: float,
) -> str:
    """Format the header lines, the three Markdown tables and the notes under them."""
    lines = format_header(machine, unclipped) + format_set_lines(results, seed)
    for table in (
        format_quality_table(results, unclipped, TEST_SETS),
        format_bm3d_table(results),
        format_speed_table(results),
    ):
        lines += [""] + table
    lines += [""] + format_notes(results, TEST_SETS, elapsed)
    return "\n".join(lines)


def format_thread_environment(variables: dict[str, str]) -> str:
    if not variables:
        return f"{', '.join(THREAD_VARIABLES)} unset"
    return ", ".join(f"{name}={value}" for name, value in variables.items())


def images_label(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_json(
    machine: dict[str, Any],
    results: Sequence[SetResult],
    unclipped: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Collect the settings, published numbers and all per-image results."""
    return {
        "machine": machine,
        "settings": {
            "sets": [result.name for result in results],
            "seed": args.seed,
            "sigmas": args.sigmas,
            "limit": args.limit,
            "tune_images": args.tune_images,
            "bm3d_limit": args.bm3d_limit,
            "bm3d_profile": BM3D_PROFILE,
            "noisy_input": "clean + N(0, sigma) in float, clipped to [0, 255] "
            "and rounded to uint8",
            "edgefx_unclipped": unclipped,
            "nlm_template_window": NLM_TEMPLATE_WINDOW,
            "nlm_search_window": NLM_SEARCH_WINDOW,
        },
        "published": {
            result.name: [asdict(b) for b in TEST_SETS[result.name].baselines]
            for result in results
        },
        "results": [asdict(result) for result in results],
    }


# --------------------------------------------------------------------------------------
# Command line


def parse_number(text: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(text)
    except ValueError:
        noun = "integer" if kind is int else "number"
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; expected an {noun}"
        ) from None


def sigma_value(text: str) -> float:
    value = parse_number(text, float)
    if not 0.0 < value <= MAX_SIGMA:
        raise argparse.ArgumentTypeError(
            f"invalid sigma {text}; use a value above 0 and at most {MAX_SIGMA:g}"
        )
    return value


def positive_float(text: str) -> float:
    value = parse_number(text, float)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use a number above 0")
    return value


def non_negative_int(text: str) -> int:
    value = int(parse_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use 0 or more")
    return value


def positive_int(text: str) -> int:
    value = int(parse_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Compare edgefx denoising with OpenCV non-local means and BM3D on CBSD68, "
            "BSD68 and Set12: PSNR at each noise level beside published results, and "
            "speed in megapixels per second on this CPU."
        )
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=(
            "folder of the CBSD68 clean photos; BSD68 and Set12 are read from folders "
            "of those names beside it (default: $EDGEFX_DATA/images/test/CBSD68, "
            "else ../shared/data/images/test/CBSD68 beside the repository)"
        ),
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=list(TEST_SETS),
        default=list(TEST_SETS),
        metavar="SET",
        help=f"test sets to run, from {', '.join(TEST_SETS)} (default: all three)",
    )
    parser.add_argument(
        "--sigmas",
        type=sigma_value,
        nargs="+",
        default=list(DEFAULT_SIGMAS),
        metavar="SIGMA",
        help="noise standard deviations on the 0-255 scale (default: 15 25 50)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the noise generators (default: 0)",
    )
    parser.add_argument(
        "--nlm-grid",
        type=positive_float,
        nargs="+",
        metavar="H",
        help=(
            "NLM filter strengths h (hColor = h) to sweep at every sigma (default: "
            "0.4, 0.6, 0.8, 1.0 and 1.2 times each sigma)"
        ),
    )
    parser.add_argument(
        "--tune-images",
        type=non_negative_int,
        default=DEFAULT_TUNE_IMAGES,
        metavar="N",
        help=(
            "sweep the NLM grid on N evenly spaced images of each set, then run the "
            f"best h on all (default: {DEFAULT_TUNE_IMAGES}, every 4th of 68 and all "
            "of Set12; 0 sweeps on all)"
        ),
    )
    parser.add_argument(
        "--bm3d-limit",
        type=non_negative_int,
        default=DEFAULT_BM3D_LIMIT,
        metavar="N",
        help=(
            "run bm3d on N evenly spaced images of each set, because it takes seconds "
            f"per image (default: {DEFAULT_BM3D_LIMIT}; 0 skips bm3d)"
        ),
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="use only the first N images of each set, sorted by file name, for a "
        "quick check",
    )
    parser.add_argument(
        "--model",
        help="shipped denoise model name or path to an .onnx file (default: the "
        "shipped default model)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the settings, published numbers and the per-image and per-sigma "
        "results to FILE as JSON",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    cbsd68_folder = find_data_folder(args.data)
    sets = [TEST_SETS[name] for name in dict.fromkeys(args.sets)]
    folders = [find_set_folder(cbsd68_folder, test_set) for test_set in sets]
    bm3d = load_bm3d() if args.bm3d_limit > 0 else None
    try:
        denoiser = Denoiser(args.model, RuntimeOptions(device="cpu"))
    except EdgefxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    machine = describe_machine(denoiser, provider_name(denoiser.session))
    tools = Tools(denoiser, bm3d, unclipped=float_input_reaches_model(denoiser))

    try:
        results = [
            bench_set(test_set, folder, tools, args)
            for test_set, folder in zip(sets, folders, strict=True)
        ]
    except EdgefxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(format_report(machine, results, tools.unclipped, args.seed, elapsed))

    if args.json is not None:
        payload = build_json(machine, results, tools.unclipped, args)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
