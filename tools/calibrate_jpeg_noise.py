"""Measure how much to raise the blind noise estimate of JPEG photos, per chroma layout.

Adds Gaussian noise to center crops of training photos, saves each at several JPEG
qualities and chroma subsamplings, and denoises it at the blind estimate times each
factor. Prints the mean PSNR against the clean crop for each factor, next to the PSNR
at the true sigma. The factors with the best PSNR go into CHROMA_SUBSAMPLING_FACTORS in
edgefx/noise.py. Use training photos only, never a test set:

    python tools/calibrate_jpeg_noise.py ../shared/data/images/train/CBSD432
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edgefx.denoise import MAX_SIGMA, DenoiseOptions, Denoiser  # noqa: E402
from edgefx.noise import estimate_sigma  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402

# OpenCV's IMWRITE_JPEG_SAMPLING_FACTOR values: luma per chroma sample across, down.
LAYOUTS = {"4:2:0": 0x221111, "4:2:2": 0x211111, "4:4:4": 0x111111}


def psnr(result: np.ndarray, clean: np.ndarray) -> float:
    error = np.mean((result.astype(np.float64) - clean.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=16, help="photos")
    parser.add_argument("--crop", type=int, default=192, help="side of the crop")
    parser.add_argument("--qualities", type=int, nargs="+", default=[75, 90, 95])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[10, 25, 40])
    parser.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=[1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6],
    )
    args = parser.parse_args()

    files = sorted(args.folder.glob("*.jpg"))[3::20][: args.count]
    crops = []
    for file in files:
        photo = cv2.imread(str(file), cv2.IMREAD_COLOR)
        height, width = photo.shape[:2]
        top, left = (height - args.crop) // 2, (width - args.crop) // 2
        crops.append(photo[top : top + args.crop, left : left + args.crop].copy())
    denoiser = Denoiser(None, RuntimeOptions(threads=1))
    print(f"{len(crops)} crops of {args.crop}x{args.crop} from {args.folder}")
    header = " ".join(f"x{factor:.2f}" for factor in args.factors)
    print(f"layout quality sigma estimate | {header} | true sigma")
    for layout, sampling in LAYOUTS.items():
        for quality in args.qualities:
            for sigma in args.sigmas:
                rng = np.random.default_rng(int(sigma * 100 + quality))
                rows = []
                for clean in crops:
                    noise = rng.normal(0, sigma, clean.shape)
                    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
                    params = [
                        cv2.IMWRITE_JPEG_QUALITY,
                        quality,
                        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                        sampling,
                    ]
                    _, encoded = cv2.imencode(".jpg", noisy, params)
                    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]
                    reference = clean[:, :, ::-1]
                    estimate = estimate_sigma(decoded)
                    scores = [
                        psnr(
                            denoiser.denoise(
                                decoded,
                                DenoiseOptions(
                                    sigma=float(np.clip(estimate * f, 0.5, MAX_SIGMA))
                                ),
                            )[0],
                            reference,
                        )
                        for f in args.factors
                    ]
                    true = denoiser.denoise(decoded, DenoiseOptions(sigma=sigma))[0]
                    rows.append([estimate, *scores, psnr(true, reference)])
                mean = np.mean(rows, axis=0)
                best = args.factors[int(np.argmax(mean[1:-1]))]
                scores_text = " ".join(f"{value:5.2f}" for value in mean[1:-1])
                print(
                    f"{layout} q{quality} sigma {sigma:g}: estimate {mean[0]:.1f} | "
                    f"{scores_text} | {mean[-1]:.2f}  best x{best:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
