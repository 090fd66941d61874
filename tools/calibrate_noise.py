"""Measure the noise estimator's calibration table on training photos.

Prints the median raw estimate for each true sigma over a fixed subset of the training
photos, with noise added, clipped and rounded to 8 bits. Paste the result into
CALIBRATION_RAW in edgefx/noise.py. Use training photos only, never a test set:

    python tools/calibrate_noise.py ../shared/data/images/train/CBSD432
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgefx.noise import CALIBRATION_TRUE, estimate_sigma_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()

    files = sorted(args.folder.glob("*.jpg"))[5::20][: args.count]
    images = [cv2.imread(str(f))[:, :, ::-1] for f in files]
    rng = np.random.default_rng(0)
    medians = []
    for sigma in CALIBRATION_TRUE:
        raws = []
        for image in images:
            noisy = image + rng.standard_normal(image.shape) * sigma
            noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
            raws.append(estimate_sigma_raw(noisy))
        medians.append(round(float(np.median(raws)), 2))
        print(f"sigma {sigma:5.1f}: median raw estimate {medians[-1]}")
    print("CALIBRATION_RAW =", tuple(medians))


if __name__ == "__main__":
    main()
