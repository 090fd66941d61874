"""Estimation of an image's Gaussian noise level, for the denoiser's automatic mode.

The method is the patch-PCA estimator of Chen, Zhu and Heng, "An Efficient Statistical
Method for Image Noise Level Estimation" (ICCV 2015). The covariance eigenvalues of
image patches split into a signal part and a tail that belongs to noise alone. The tail
is the largest set of smallest eigenvalues whose mean equals its median, and that mean
is the noise variance.
"""

from __future__ import annotations

import numpy as np

PATCH = 7
MAX_PATCHES = 60_000


def estimate_sigma(image: np.ndarray, seed: int = 0) -> float:
    """Estimate the noise standard deviation of ``image`` on the 0-255 scale.

    ``image``: (H, W) or (H, W, C), uint8 (0-255), uint16 (0-65535) or float in [0, 1].
    Only sampled patches are converted to float, so a huge image costs no full copy.
    Color images are estimated per channel and the mean is returned. Returns 0.0 for
    images smaller than one patch.
    """
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
    offsets = np.arange(PATCH)
    rows = (ys[:, None] + offsets[None, :])[:, :, None]
    cols = (xs[:, None] + offsets[None, :])[:, None, :]
    patches = plane[rows, cols].reshape(count, PATCH * PATCH).astype(np.float64)
    patches /= scale

    patches -= patches.mean(axis=0, keepdims=True)
    covariance = patches.T @ patches / max(count - 1, 1)
    eigenvalues = np.sort(np.clip(np.linalg.eigvalsh(covariance), 0, None))[::-1]

    for start in range(eigenvalues.size):
        tail = eigenvalues[start:]
        mean = tail.mean()
        if mean <= np.median(tail) + 1e-12:
            return float(np.sqrt(mean))
    return float(np.sqrt(eigenvalues[-1]))
