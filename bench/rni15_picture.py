"""Draw crops of real noisy RNI15 photos beside edgefx and OpenCV non-local means.

RNI15 photos carry real noise, not synthetic noise, and have no clean reference, so the
comparison is visual only. Each photo is denoised whole, twice: by edgefx blind (the
noise level estimated by edgefx.noise.estimate_sigma, as the CLI does without --sigma)
and by OpenCV's fastNlMeansDenoisingColored with h = hColor = NLM_H_PER_SIGMA times that
same estimate. Then one crop per photo, at a position fixed below, is cut from the input
and both outputs and drawn at 2x nearest-neighbour zoom, so that single noisy pixels
stay visible. Rows are photos and columns are noisy input | edgefx blind | OpenCV NLM.

Run: python bench/rni15_picture.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgefx.denoise import DenoiseOptions, Denoiser
from edgefx.errors import EdgefxError
from edgefx.imageio import read_image
from edgefx.runtime import RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_SUBFOLDER = Path("images", "test", "RNI15")
DEFAULT_OUT = REPO_ROOT / "bench" / "rni15.png"


@dataclass(frozen=True)
class Row:
    """A photo of RNI15 and the top left corner of its crop, in pixels."""

    file: str
    top: int
    left: int


ROWS = (
    Row("Dog.png", 60, 180),
    Row("Flowers.png", 80, 300),
    Row("Pattern2.png", 20, 40),
    Row("Window.png", 170, 100),
)
CROP = 160  # side of each crop in photo pixels, before the zoom
ZOOM = 2
# In the CBSD68 sweep of bench/denoise_cbsd68.py (white Gaussian noise, results in
# bench/README.md), the best h was 0.6 times the true sigma at 15, 25 and 50. Real
# noise has no true sigma, so the factor applies to edgefx's estimate.
NLM_H_PER_SIGMA = 0.6
NLM_TEMPLATE_WINDOW = 7
NLM_SEARCH_WINDOW = 21

COLUMN_TITLES = (
    "noisy input",
    "edgefx blind (estimated sigma)",
    f"OpenCV NLM, h = {NLM_H_PER_SIGMA:g} x estimated sigma",
)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
LABEL_HEIGHT = 24
GAP = 4  # pixels of background between cells
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def default_data() -> Path:
    configured = os.environ.get("EDGEFX_DATA")
    if configured:
        return Path(configured).expanduser() / DATA_SUBFOLDER
    return REPO_ROOT.parent / "shared" / "data" / DATA_SUBFOLDER


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with the RNI15 photos (default: $EDGEFX_DATA/images/test/RNI15, "
        "else ../shared/data/images/test/RNI15 beside the repository)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="PNG file to write (default: bench/rni15.png)",
    )
    return parser.parse_args(argv)


def label_strip(width: int, text: str) -> np.ndarray:
    """Return a white RGB strip of ``width`` pixels with ``text`` on its left."""
    strip = np.full((LABEL_HEIGHT, width, 3), BACKGROUND, np.uint8)
    baseline = LABEL_HEIGHT - 8
    cv2.putText(
        strip, text, (4, baseline), FONT, FONT_SCALE, TEXT_COLOR, 1, cv2.LINE_AA
    )
    return strip


def join_horizontally(cells: list[np.ndarray]) -> np.ndarray:
    height = cells[0].shape[0]
    spacer = np.full((height, GAP, 3), BACKGROUND, np.uint8)
    parts: list[np.ndarray] = []
    for cell in cells:
        if parts:
            parts.append(spacer)
        parts.append(cell)
    return np.hstack(parts)


def crop_and_zoom(pixels: np.ndarray, row: Row) -> np.ndarray:
    crop = pixels[row.top : row.top + CROP, row.left : row.left + CROP]
    if crop.shape[:2] != (CROP, CROP):
        raise ValueError(
            f"{row.file}: the {CROP}x{CROP} crop at top {row.top}, left {row.left} "
            f"does not fit in the {pixels.shape[1]}x{pixels.shape[0]} photo"
        )
    return cv2.resize(crop, (CROP * ZOOM, CROP * ZOOM), interpolation=cv2.INTER_NEAREST)


def render_row(denoiser: Denoiser, folder: Path, row: Row) -> np.ndarray:
    """Denoise one photo with both tools and return its labelled row of crops."""
    noisy = read_image(folder / row.file).pixels  # (H, W, 3) RGB uint8
    restored, sigma = denoiser.denoise(noisy, DenoiseOptions(sigma=None))

    h = NLM_H_PER_SIGMA * sigma
    # fastNlMeansDenoisingColored expects BGR, because it converts BGR to CIELAB.
    nlm_bgr = cv2.fastNlMeansDenoisingColored(
        np.ascontiguousarray(noisy[:, :, ::-1]),
        None,
        h,
        h,
        NLM_TEMPLATE_WINDOW,
        NLM_SEARCH_WINDOW,
    )
    nlm = nlm_bgr[:, :, ::-1]
    print(f"{row.file}: estimated sigma {sigma:.1f}, NLM h {h:.1f}")

    cells = [crop_and_zoom(image, row) for image in (noisy, restored, nlm)]
    images = join_horizontally(cells)
    title = (
        f"{row.file}, {CROP}x{CROP} crop at x {row.left}, y {row.top}: "
        f"estimated sigma {sigma:.1f}, NLM h {h:.1f}"
    )
    return np.vstack([label_strip(images.shape[1], title), images])


def render_picture(denoiser: Denoiser, folder: Path) -> np.ndarray:
    cell_width = CROP * ZOOM
    header = join_horizontally(
        [label_strip(cell_width, title) for title in COLUMN_TITLES]
    )
    parts = [header]
    for row in ROWS:
        parts.append(np.full((GAP, header.shape[1], 3), BACKGROUND, np.uint8))
        parts.append(render_row(denoiser, folder, row))
    return np.vstack(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.data if args.data is not None else default_data()
    missing = [row.file for row in ROWS if not (folder / row.file).is_file()]
    if missing:
        print(
            f"error: RNI15 photos not found in {folder}: {', '.join(missing)}; "
            "give the folder with --data or set EDGEFX_DATA",
            file=sys.stderr,
        )
        return 2

    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"{now:%Y-%m-%d %H:%M} UTC | opencv {cv2.__version__} | data {folder}")
    try:
        denoiser = Denoiser(None, RuntimeOptions(device="cpu", threads=1))
        print(f"model {denoiser.info.name} v{denoiser.info.metadata.get('version')}")
        picture = render_picture(denoiser, folder)
    except (EdgefxError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    bgr = np.ascontiguousarray(picture[:, :, ::-1])
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(args.out), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    except (OSError, cv2.error) as err:
        print(f"error: failed to write {args.out}: {err}", file=sys.stderr)
        return 1
    if not written:
        print(
            f"error: failed to write {args.out}; give a writable .png path with --out",
            file=sys.stderr,
        )
        return 1
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out}: {picture.shape[1]}x{picture.shape[0]}, {size_mb:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
