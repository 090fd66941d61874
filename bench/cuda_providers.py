"""Throughput of the shipped models on the CUDA provider, in float32 and float16.

    python bench/cuda_providers.py [--models denoise-s ...] [--repeats 50]

Each model runs as shipped (float32) and as converted by ``edgefx export --format onnx
--fp16`` (float16 inside, float32 inputs and outputs), on the same inputs as
bench/edge_models.py but in larger batches. The script exits with status 2 and one line
saying why when CUDA cannot start here (no onnxruntime-gpu, no driver, missing CUDA or
cuDNN libraries); CI runs it only for that message.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefx.convert import export_fp16
from edgefx.errors import DeviceError
from edgefx.registry import ModelInfo, resolve_any_model
from edgefx.runtime import (
    RuntimeOptions,
    create_session,
    cuda_usable,
    diagnose_cuda,
)

DEFAULT_MODELS = ("denoise-s", "classify-cifar10", "enhance-speech")


def model_inputs(info: ModelInfo) -> tuple[dict[str, np.ndarray], float, str]:
    """Return one call's inputs and the items it processes."""
    rng = np.random.default_rng(0)
    if info.task == "denoise":
        image = rng.random((4, 3, 512, 512), dtype=np.float32)
        level = np.full((4, 1, 1, 1), 25 / 255, np.float32)
        return {"image": image, "noise_level": level}, 4 * 512 * 512 / 1e6, "MP"
    if info.task == "classify":
        batch = rng.standard_normal((256, 3, 32, 32), dtype=np.float32)
        return {"image": batch}, 256, "images"
    # 64 streams of 1 s each: a server enhancing many calls at once.
    state_size = int(info.metadata["state_size"])
    feeds = {
        "audio": (0.1 * rng.standard_normal((64, 16000))).astype(np.float32),
        "state": np.zeros((64, state_size), np.float32),
        "min_gain": np.zeros(1, np.float32),
    }
    return feeds, 64.0, "s of audio"


def throughput(path: Path, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Return the median seconds of one call on CUDA, after a warm-up call."""
    session = create_session(path, RuntimeOptions(device="cuda"))
    names = {i.name for i in session.get_inputs()}
    inputs = {k: v for k, v in feeds.items() if k in names}
    session.run(None, inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, inputs)  # outputs are copied back, so the call is complete
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=50, help="timed calls")
    args = parser.parse_args(argv)

    import onnxruntime

    if not cuda_usable():
        print(f"CUDA is not available: {diagnose_cuda()}", file=sys.stderr)
        return 2
    print(f"onnxruntime {onnxruntime.__version__}, CUDA execution provider")
    print("| model | call | fp32 | fp16 | fp16 vs fp32 |")
    print("| --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="edgefx-cuda-") as work:
        for name in args.models:
            info = resolve_any_model(name)
            fp16 = export_fp16(name, Path(work, f"{name}-fp16.onnx")).output
            feeds, items, unit = model_inputs(info)
            try:
                seconds = {
                    "fp32": throughput(info.path, feeds, args.repeats),
                    "fp16": throughput(fp16, feeds, args.repeats),
                }
            except DeviceError as err:
                print(f"CUDA is not available: {err}", file=sys.stderr)
                return 2
            cells = " | ".join(
                f"{s * 1000:.2f} ms, {items / s:,.0f} {unit}/s"
                for s in seconds.values()
            )
            call = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
            ratio = seconds["fp32"] / seconds["fp16"]
            print(f"| {name} | {call} | {cells} | {ratio:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
