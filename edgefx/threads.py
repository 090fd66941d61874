"""Thread pools of the libraries beside ONNX Runtime: OpenCV's and numpy's BLAS.

The model does the heavy work in ONNX Runtime's intra-op pool, whose size is
RuntimeOptions.threads (by default one thread per physical core). Its sessions use one
inter-op thread and no spinning, so their threads sleep between runs. Decoding and
encoding get their parallelism from processing several files at once (the batch
pipeline's worker threads), not from each library's own pool. OpenCV's pool and the
BLAS pool behind numpy are sized for the whole machine by default, so a worker's
cvtColor or resize, or the noise estimate's matrix product, could start one thread
per core while ONNX Runtime's pool uses the same cores. The CLI therefore gives
OpenCV and BLAS one thread each.

Both libraries read these settings from the environment when they load, so the
limits apply only when set before numpy and cv2 are imported. A variable that the
user has set is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Environment variables that size OpenCV's pool (OPENCV_FOR_THREADS_NUM, read by
# cv::getNumThreads) and the BLAS pool of numpy's OpenBLAS or MKL build.
LIBRARY_THREAD_LIMITS: dict[str, str] = {
    "OPENCV_FOR_THREADS_NUM": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def limit_library_threads(
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Set OpenCV's and BLAS's thread counts to one unless the user has set them.

    Returns the value of each variable in LIBRARY_THREAD_LIMITS after the call. Call
    it before numpy and cv2 are imported. The CLI does not call it for training,
    because PyTorch's MKL also reads MKL_NUM_THREADS.
    """
    target = os.environ if environ is None else environ
    for name, value in LIBRARY_THREAD_LIMITS.items():
        target.setdefault(name, value)
    return {name: target[name] for name in LIBRARY_THREAD_LIMITS}
