"""Benchmark edgefx denoising against OpenCV non-local means (NLM) on CBSD68.

Each clean 8-bit RGB photo gets additive white Gaussian noise of standard deviation
sigma on the 0-255 scale from a fixed seed, computed in float and not clipped, as in the
DnCNN, FFDNet and CBM3D papers. Because real files are 8-bit, both tools then get the
same noisy image clipped to [0, 255] and rounded to uint8. That costs a little PSNR
against the unclipped protocol, equally for both tools. PSNR is computed over the whole
image on the 0-255 scale against the clean photo, with every output in uint8, and
averaged over the images.

edgefx runs twice per image through one CPU Denoiser session: blind (sigma estimated)
and with the true sigma. OpenCV's fastNlMeansDenoisingColored runs with hColor = h. Its
h grid is swept on a subset of the images, and the best h then runs on all of them.
Speed is the wall time of the denoise call alone, after one untimed warm-up call per
tool, and only that final run is timed.

Run: python bench/denoise_cbsd68.py [--limit N] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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
FULL_SET_SIZE = 68
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

DEFAULT_SIGMAS = (15.0, 25.0, 50.0)
# The default NLM grid is these multiples of sigma, because the best h grows with the
# noise level.
DEFAULT_GRID_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2)
DEFAULT_TUNE_IMAGES = 17
NLM_TEMPLATE_WINDOW = 7
NLM_SEARCH_WINDOW = 21
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class ImageResult:
    """PSNRs (dB) and denoise times (seconds) of one image at one sigma."""

    name: str
    megapixels: float
    noisy_psnr: float  # the uint8 input that both tools get
    noisy_psnr_unclipped: float  # the float noisy image of the published protocol
    nlm_psnr: float
    nlm_seconds: float
    blind_psnr: float
    blind_seconds: float
    estimated_sigma: float
    known_psnr: float
    known_seconds: float


@dataclass
class SigmaResult:
    """Means over the images at one sigma, the NLM sweep and the per-image rows."""

    sigma: float
    nlm_grid: list[float]
    nlm_sweep_psnr: list[float]  # mean PSNR on the tuning images, one per grid value
    nlm_best_h: float
    noisy_psnr: float
    noisy_psnr_unclipped: float
    nlm_psnr: float
    blind_psnr: float
    known_psnr: float
    estimated_sigma: float
    nlm_mps: float
    blind_mps: float
    known_mps: float
    images: list[ImageResult]


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


def load_images(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """Read the clean RGB uint8 photos in ``folder``, sorted by file name."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"error: no image files found in {folder}")
    if limit is not None:
        paths = paths[:limit]
    images = []
    for path in paths:
        image = read_image(path)
        if image.pixels.ndim != 3 or image.pixels.dtype != np.uint8:
            sys.exit(
                f"error: {path}: expected an 8-bit RGB photo, got "
                f"{image.pixels.dtype} samples of shape {image.pixels.shape}"
            )
        images.append((path.name, image.pixels))
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
    noisy_uint8 = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return noisy, noisy_uint8


def tuning_indices(count: int, tune_images: int) -> list[int]:
    """Pick ``tune_images`` evenly spaced indices out of ``count``; 0 picks all.

    For 17 out of 68 this is every 4th image, starting with the first.
    """
    picked = count if tune_images == 0 else min(tune_images, count)
    return [i * count // picked for i in range(picked)]


# --------------------------------------------------------------------------------------
# Denoisers


def nlm_denoise(noisy_rgb: np.ndarray, h: float) -> np.ndarray:
    """Denoise an RGB uint8 image with OpenCV's colored non-local means."""
    bgr = cv2.cvtColor(noisy_rgb, cv2.COLOR_RGB2BGR)
    restored = cv2.fastNlMeansDenoisingColored(
        bgr, None, h, h, NLM_TEMPLATE_WINDOW, NLM_SEARCH_WINDOW
    )
    return cv2.cvtColor(restored, cv2.COLOR_BGR2RGB)


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


def bench_sigma(
    sigma: float,
    images: Sequence[tuple[str, np.ndarray]],
    denoiser: Denoiser,
    args: argparse.Namespace,
) -> SigmaResult:
    """Sweep NLM's h, then time NLM and both edgefx modes on every image."""
    noisy_pairs = [add_noise(clean, sigma, args.seed, name) for name, clean in images]
    noisy_inputs = [pair[1] for pair in noisy_pairs]

    grid = nlm_grid_for(sigma, args.nlm_grid)
    tune = tuning_indices(len(images), args.tune_images)
    log(f"sigma {sigma:g}: sweeping NLM h over {grid} on {images_label(len(tune))}")
    sweep = sweep_nlm(
        [images[i][1] for i in tune], [noisy_inputs[i] for i in tune], grid
    )
    best_h = grid[int(np.argmax(sweep))]

    log(f"sigma {sigma:g}: timed run, NLM h {best_h:g}, {images_label(len(images))}")
    known_options = DenoiseOptions(sigma=sigma)
    blind_options = DenoiseOptions()
    rows = []
    for (name, clean), (noisy, noisy_uint8) in zip(images, noisy_pairs, strict=True):
        nlm_output, nlm_seconds = timed(nlm_denoise, noisy_uint8, best_h)
        (blind_output, estimated), blind_seconds = timed(
            denoiser.denoise, noisy_uint8, blind_options
        )
        (known_output, _), known_seconds = timed(
            denoiser.denoise, noisy_uint8, known_options
        )
        rows.append(
            ImageResult(
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
            )
        )

    megapixels = sum(row.megapixels for row in rows)

    def mean_of(field: str) -> float:
        return float(np.mean([getattr(row, field) for row in rows]))

    def speed_of(field: str) -> float:
        return megapixels / sum(getattr(row, field) for row in rows)

    return SigmaResult(
        sigma=sigma,
        nlm_grid=list(grid),
        nlm_sweep_psnr=sweep,
        nlm_best_h=best_h,
        noisy_psnr=mean_of("noisy_psnr"),
        noisy_psnr_unclipped=mean_of("noisy_psnr_unclipped"),
        nlm_psnr=mean_of("nlm_psnr"),
        blind_psnr=mean_of("blind_psnr"),
        known_psnr=mean_of("known_psnr"),
        estimated_sigma=mean_of("estimated_sigma"),
        nlm_mps=speed_of("nlm_seconds"),
        blind_mps=speed_of("blind_seconds"),
        known_mps=speed_of("known_seconds"),
        images=rows,
    )


def warm_up(denoiser: Denoiser, clean: np.ndarray, sigma: float, seed: int) -> None:
    """Run each tool once, untimed, so that first-call costs stay out of the timings."""
    _, noisy_uint8 = add_noise(clean, sigma, seed, "warm-up")
    nlm_denoise(noisy_uint8, sigma)
    denoiser.denoise(noisy_uint8)


# --------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def format_report(
    machine: dict[str, Any],
    results: Sequence[SigmaResult],
    args: argparse.Namespace,
    image_count: int,
) -> str:
    """Format the header lines, the Markdown table and the notes under it."""
    tune_count = len(tuning_indices(image_count, args.tune_images))
    lines = [
        f"{machine['date']} | CPU {machine['cpu']}, {machine['logical_cores']} "
        f"logical cores, 1-min load average {machine['load_average_1min']} | "
        f"onnxruntime {machine['onnxruntime']} | opencv {machine['opencv']} | "
        f"model {machine['model']} v{machine['model_version']} "
        f"sha256 {str(machine['model_sha256'])[:12]}",
        f"Threads: onnxruntime {machine['onnxruntime_provider']}, intra-op threads "
        f"{machine['onnxruntime_intra_op_threads']}, inter-op 1 | OpenCV "
        f"cv2.getNumThreads() = {machine['opencv_threads']} | "
        f"{format_thread_environment(machine['thread_environment'])}",
        f"Images: {images_label(image_count)} from {args.data_folder}; noise seed "
        f"{args.seed}. "
        "Both tools get the noisy image clipped to [0, 255] and rounded to uint8.",
        f"NLM h: swept on {tune_count} of {images_label(image_count)}, then the best "
        f"h ran on all of them; templateWindowSize {NLM_TEMPLATE_WINDOW}, "
        f"searchWindowSize {NLM_SEARCH_WINDOW}, hColor = h.",
        "",
        "| sigma | noisy input PSNR | NLM best h | NLM PSNR | edgefx blind PSNR "
        "| edgefx known-sigma PSNR | NLM MP/s | edgefx blind MP/s "
        "| edgefx known-sigma MP/s | edgefx/NLM speed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result.sigma:g} | {result.noisy_psnr:.2f} | {result.nlm_best_h:g} "
            f"| {result.nlm_psnr:.2f} | {result.blind_psnr:.2f} "
            f"| {result.known_psnr:.2f} | {result.nlm_mps:.3f} "
            f"| {result.blind_mps:.3f} | {result.known_mps:.3f} "
            f"| {result.known_mps / result.nlm_mps:.2f} |"
        )
    lines += [
        "",
        "PSNR in dB, mean over the images. edgefx/NLM speed is edgefx known-sigma "
        "MP/s divided by NLM MP/s, both measured in this run.",
        "Noisy PSNR of the unclipped float images (published protocol): "
        + ", ".join(
            f"sigma {r.sigma:g}: {r.noisy_psnr_unclipped:.2f}" for r in results
        ),
        "edgefx blind mode, mean estimated sigma: "
        + ", ".join(f"sigma {r.sigma:g}: {r.estimated_sigma:.1f}" for r in results),
        "NLM sweep, mean PSNR on the tuning images for each h: "
        + "; ".join(
            f"sigma {r.sigma:g}: "
            + ", ".join(
                f"h {h:g} {score:.2f}"
                for h, score in zip(r.nlm_grid, r.nlm_sweep_psnr, strict=True)
            )
            for r in results
        ),
    ]
    for result in results:
        grid = result.nlm_grid
        if len(grid) > 1 and result.nlm_best_h in (grid[0], grid[-1]):
            lines.append(
                f"NOTE: sigma {result.sigma:g}: the best NLM h {result.nlm_best_h:g} "
                "is at the edge of the grid, so a wider --nlm-grid may do better."
            )
    if image_count < FULL_SET_SIZE:
        lines.append(
            f"NOTE: {image_count} of the {FULL_SET_SIZE} CBSD68 images, so these "
            "numbers are not comparable with full-set results."
        )
    return "\n".join(lines)


def format_thread_environment(variables: dict[str, str]) -> str:
    if not variables:
        return f"{', '.join(THREAD_VARIABLES)} unset"
    return ", ".join(f"{name}={value}" for name, value in variables.items())


def images_label(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
            "Compare edgefx denoising with OpenCV non-local means on CBSD68: PSNR at "
            "each noise level and speed in megapixels per second on this CPU."
        )
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=(
            "folder of the CBSD68 clean photos (default: "
            "$EDGEFX_DATA/images/test/CBSD68, else ../shared/data/images/test/CBSD68 "
            "beside the repository)"
        ),
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
            "sweep the NLM grid on N evenly spaced images, then run the best h on all "
            f"(default: {DEFAULT_TUNE_IMAGES}, every 4th of the 68; 0 sweeps on all)"
        ),
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="use only the first N images, sorted by file name, for a quick check",
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
        help="write the per-image and per-sigma numbers to FILE as JSON",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_folder = find_data_folder(args.data)
    try:
        images = load_images(args.data_folder, args.limit)
        denoiser = Denoiser(args.model, RuntimeOptions(device="cpu"))
    except EdgefxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    machine = describe_machine(denoiser, provider_name(denoiser.session))

    warm_up(denoiser, images[0][1], args.sigmas[0], args.seed)
    results = [bench_sigma(sigma, images, denoiser, args) for sigma in args.sigmas]
    print(format_report(machine, results, args, len(images)))

    if args.json is not None:
        payload = {
            "machine": machine,
            "settings": {
                "data": str(args.data_folder),
                "images": len(images),
                "seed": args.seed,
                "tune_images": len(tuning_indices(len(images), args.tune_images)),
                "noisy_input": "clean + N(0, sigma) in float, clipped to [0, 255] "
                "and rounded to uint8",
                "nlm_template_window": NLM_TEMPLATE_WINDOW,
                "nlm_search_window": NLM_SEARCH_WINDOW,
            },
            "results": [asdict(result) for result in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
