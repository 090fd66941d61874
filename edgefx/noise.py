"""Estimation of an image's Gaussian noise level, for the denoiser's automatic mode.

The method is the patch-PCA estimator of Chen, Zhu and Heng, "An Efficient Statistical
Method for Image Noise Level Estimation" (ICCV 2015). The covariance eigenvalues of
image patches split into a signal part and a tail that belongs to noise alone. The tail
is the largest set of smallest eigenvalues whose mean equals its median, and that mean
is the noise variance.

Two changes make it fit photos better. Only the flatter half of the sampled patches
enters the covariance, because fine texture otherwise reads as noise. And the raw
estimate, which that selection and 8-bit clipping bias low, is mapped through a
calibration table measured on training photos with known noise.
"""

from __future__ import annotations

import numpy as np

PATCH = 7
MAX_PATCHES = 60_000
FLAT_FRACTION = 0.5

# Raw estimate -> true sigma (0-255 scale): medians over 20 CBSD432 training photos with
# Gaussian noise added, clipped and rounded to 8 bits; rebuilt by
# tools/calibrate_noise.py. Raw values below the first point map to 0.
CALIBRATION_RAW = (
    2.69,
    3.34,
    5.57,
    10.24,
    14.82,
    19.22,
    23.61,
    31.82,
    42.36,
    52.09,
    57.6,
)
CALIBRATION_TRUE = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 35.0, 50.0, 65.0, 75.0)

# A JPEG that stores chroma at half resolution averages the noise of each chroma block.
# The rest is spatially correlated, so the estimate reads it about a third low. At that
# level the denoiser, trained on uncorrelated noise, leaves blotches. So the blind
# estimate of such a photo is multiplied by these factors, keyed by luma samples per
# chroma sample across and down. They were measured on crops of 16 training photos
# with Gaussian noise of sigma 10, 25 and 40, saved at JPEG quality 75, 90 and 95
# (tools/calibrate_jpeg_noise.py). The best mean PSNR came at 1.3 for 4:2:0 and at
# 1.4 to 1.5 for 4:2:2 in nearly every case, and at 1.0 to 1.1 for full chroma.
CHROMA_SUBSAMPLING_FACTORS = {(2, 2): 1.3, (2, 1): 1.45, (1, 2): 1.45}


def chroma_subsampling_factor(subsampling: tuple[int, int]) -> float:
    """Return the factor for a blind estimate of a JPEG with this chroma subsampling.

    The factor is 1 for full-resolution chroma. Layouts that were not measured, such
    as 4:1:1, take the 4:2:0 factor.
    """
    if tuple(subsampling) == (1, 1):
        return 1.0
    return CHROMA_SUBSAMPLING_FACTORS.get(
        (int(subsampling[0]), int(subsampling[1])), CHROMA_SUBSAMPLING_FACTORS[(2, 2)]
    )


def estimate_sigma(image: np.ndarray, seed: int = 0) -> float:
    """Estimate the noise standard deviation of ``image`` on the 0-255 scale.

    ``image``: (H, W) or (H, W, C), uint8 (0-255), uint16 (0-65535) or float in [0, 1].
    Only sampled patches are converted to float, so a huge image costs no full copy.
    Returns 0.0 for images smaller than one patch.
    """
    return calibrate(estimate_sigma_raw(image, seed))


def calibrate(raw_sigma: float) -> float:
    """Map a raw estimate to the true noise level through the calibration table."""
    if raw_sigma <= CALIBRATION_RAW[0]:
        return 0.0
    slope = (CALIBRATION_TRUE[-1] - CALIBRATION_TRUE[-2]) / (
        CALIBRATION_RAW[-1] - CALIBRATION_RAW[-2]
    )
    if raw_sigma > CALIBRATION_RAW[-1]:
        return CALIBRATION_TRUE[-1] + slope * (raw_sigma - CALIBRATION_RAW[-1])
    return float(np.interp(raw_sigma, CALIBRATION_RAW, CALIBRATION_TRUE))


def estimate_sigma_raw(image: np.ndarray, seed: int = 0) -> float:
    """Return the uncalibrated patch-PCA estimate (mean over color channels), 0-255."""
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        scale = 1.0
    planes = (
        [image] if image.ndim == 2 else [image[:, :, c] for c in range(image.shape[2])]
    )
    estimates = [_estimate_plane(p, scale, seed) for p in planes]
    return float(np.mean(estimates)) * 255.0


def _estimate_plane(plane: np.ndarray, scale: float, seed: int) -> float:
    height, width = plane.shape
    if height < PATCH or width < PATCH:
        return 0.0

    # (N, PATCH * PATCH) patches at random positions, at most MAX_PATCHES of them.
    count = min(MAX_PATCHES, (height - PATCH + 1) * (width - PATCH + 1))
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, height - PATCH + 1, count)
    xs = rng.integers(0, width - PATCH + 1, count)
    windows = np.lib.stride_tricks.sliding_window_view(plane, (PATCH, PATCH))
    samples = windows[ys, xs].reshape(count, PATCH * PATCH)

    keys = _variance_order_key(samples)
    flat = samples[keys <= np.quantile(keys, FLAT_FRACTION)]
    if len(flat) < PATCH * PATCH:
        return 0.0
    patches = flat.astype(np.float64)
    patches /= scale

    patches -= patches.mean(axis=0, keepdims=True)
    covariance = patches.T @ patches / (len(patches) - 1)
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(covariance), 0, None))[::-1]

    for start in range(eigenvalues.size):
        tail = eigenvalues[start:]
        mean = tail.mean()
        if mean <= np.median(tail):
            return float(np.sqrt(mean))
    return float(np.sqrt(eigenvalues[-1]))


def _variance_order_key(samples: np.ndarray) -> np.ndarray:
    """Return a value per patch that orders the patches as their variance does.

    Integer samples give n * sum(x^2) - sum(x)^2, exact in integers and n^2 times the
    variance, and faster to compute than the float variance of 60,000 patches.
    """
    if samples.dtype.kind in "ui":
        # For 49 samples of 8 bits the largest term, 49 * 49 * 255^2, fits in int32.
        wide = np.int32 if samples.dtype.itemsize == 1 else np.int64
        values: np.ndarray = samples.astype(wide)
        sums = values.sum(axis=1)
        squares = (values * values).sum(axis=1)
        return samples.shape[1] * squares - sums * sums
    return samples.astype(np.float64).var(axis=1)
