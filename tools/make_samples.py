"""Regenerate samples/ from the photos that ship inside scikit-image.

The source photos are read from the installed ``skimage/data`` folder, so the script
needs scikit-image (it was run with 0.26.0) but no network access. edgefx itself
does not depend on scikit-image. Each photo is downscaled and saved as
``samples/clean/NAME.png``, then saved again with additive Gaussian noise as
``samples/noisy/NAME.png``. The noise comes from ``numpy.random.default_rng(seed)``
with a fixed seed per file, so a rerun with the same numpy and OpenCV versions writes
the same bytes.

Run from the repository root:

    python tools/make_samples.py
"""

from __future__ import annotations

import argparse
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Maximum length in pixels of the longer image side after downscaling. 384 rather than
# 512 keeps samples/ under 3 MB, because noisy pixels barely compress in PNG.
MAX_SIDE = 384

# Standard deviation of the additive Gaussian noise on the 0-255 scale.
NOISE_SIGMA = 25.0

JPEG_QUALITY = 95

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "samples"


@dataclass(frozen=True)
class Sample:
    """One photo from ``skimage/data`` and how to turn it into a sample."""

    name: str
    source_file: str
    seed: int
    add_alpha: bool = False


SAMPLES = (
    # Grayscale. CC0 by the photographer (Lav Varshney).
    Sample("camera", "camera.png", seed=1),
    # CC0 by the photographer (Rachel Michetti).
    Sample("coffee", "coffee.png", seed=2),
    # NASA photo, released into the public domain.
    Sample("astronaut", "astronaut.png", seed=3),
    # CC0 by the photographer (Stefan van der Walt). Stored as RGBA.
    Sample("chelsea_rgba", "chelsea.png", seed=4, add_alpha=True),
)

# The sample that also gets a JPEG and a 16-bit PNG noisy copy.
EXTRA_FORMATS_SAMPLE = "coffee"
SEED_16BIT = 5


def load_source(file_name: str) -> np.ndarray:
    """Read a photo from the installed ``skimage/data`` folder as OpenCV stores it.

    Color images come back in BGR order, grayscale images as a 2-D array.
    """
    path = importlib.resources.files("skimage.data") / file_name
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(
            f"failed to read {path}: the file is missing or is not an image. "
            "Reinstall scikit-image to restore it."
        )
    return image


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink ``image`` with INTER_AREA so that its longer side is at most ``max_side``.

    An image that already fits is returned unchanged.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (round(width * scale), round(height * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def add_alpha_gradient(image: np.ndarray) -> np.ndarray:
    """Append an alpha channel that ramps linearly from 255 (left) to 0 (right)."""
    height, width = image.shape[:2]
    ramp = np.linspace(255.0, 0.0, width)
    alpha = np.rint(np.broadcast_to(ramp, (height, width))).astype(np.uint8)
    return np.dstack([image, alpha])


def add_noise_uint8(image: np.ndarray, seed: int) -> np.ndarray:
    """Add Gaussian noise with sigma NOISE_SIGMA to the color channels of a uint8 image.

    Values are rounded and clipped to 0-255. An alpha channel is copied unchanged.
    """
    has_alpha = image.ndim == 3 and image.shape[2] == 4
    colors = image[..., :3] if has_alpha else image
    rng = np.random.default_rng(seed)
    values = colors.astype(np.float64) + rng.normal(0.0, NOISE_SIGMA, colors.shape)
    noisy_colors = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if not has_alpha:
        return noisy_colors
    return np.dstack([noisy_colors, image[..., 3]])


def add_noise_uint16(image: np.ndarray, seed: int) -> np.ndarray:
    """Return a 16-bit noisy copy of a uint8 image without alpha.

    The image is scaled to floats in 0-1, gets Gaussian noise with sigma
    NOISE_SIGMA / 255, is clipped to 0-1 and is scaled to 0-65535 and rounded.
    """
    rng = np.random.default_rng(seed)
    values = image.astype(np.float64) / 255.0
    values += rng.normal(0.0, NOISE_SIGMA / 255.0, values.shape)
    values = np.clip(values, 0.0, 1.0)
    return np.rint(values * 65535.0).astype(np.uint16)


def write_image(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    """Encode ``image`` with OpenCV and write it, raising OSError if encoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, image, params or [])
    if not ok:
        raise OSError(f"OpenCV failed to encode {path} ({image.dtype}, {image.shape})")
    path.write_bytes(encoded.tobytes())


def make_sample(sample: Sample, output_dir: Path) -> list[Path]:
    """Write the clean and noisy files of one sample and return their paths."""
    image = downscale(load_source(sample.source_file), MAX_SIDE)
    if sample.add_alpha:
        image = add_alpha_gradient(image)
    noisy = add_noise_uint8(image, sample.seed)

    clean_path = output_dir / "clean" / f"{sample.name}.png"
    noisy_path = output_dir / "noisy" / f"{sample.name}.png"
    write_image(clean_path, image)
    write_image(noisy_path, noisy)
    written = [clean_path, noisy_path]

    if sample.name == EXTRA_FORMATS_SAMPLE:
        # The JPEG contains the same noisy pixels as the PNG plus JPEG compression loss.
        jpeg_path = output_dir / "noisy" / f"{sample.name}.jpg"
        write_image(jpeg_path, noisy, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        png16_path = output_dir / "noisy" / f"{sample.name}_16bit.png"
        write_image(png16_path, add_noise_uint16(image, SEED_16BIT))
        written += [jpeg_path, png16_path]
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="folder that receives clean/ and noisy/ (default: samples/ in this repo)",
    )
    args = parser.parse_args(argv)

    total_bytes = 0
    for sample in SAMPLES:
        for path in make_sample(sample, args.output_dir):
            size = path.stat().st_size
            total_bytes += size
            print(f"{path}  {size} bytes")
    print(f"total {total_bytes} bytes")


if __name__ == "__main__":
    main()
