"""Measure edgefx denoise on a large photo against ONNX Runtime's convolution speed.

The question this answers: how close does the whole command (decode, noise estimate or
given sigma, tiled inference, encode, atomic write) come to what ONNX Runtime's 3x3
convolutions can compute on this CPU for the model's multiply-accumulates per pixel?

1. A graph with one 3x3 convolution, 64 to 64 channels (the shape of the denoiser's
   body), runs on a 64x512x512 input with the same thread settings as the CLI. Its
   FLOP/s (two per multiply-accumulate) is the ceiling.
2. The ceiling divided by twice the model's multiply-accumulates per pixel is the
   megapixels per second that the model's convolutions allow.
3. ``python -m edgefx denoise`` runs on a large noisy photo (a sample photo upscaled
   8 times, with Gaussian noise of sigma 25), with the sigma given and blind, and its
   own throughput line gives megapixels per second.

The machines this runs on are shared, and their speed drifts by 10 % or more within a
minute. So the measurements are interleaved in ``--rounds`` rounds: each round times
the convolution for a sustained ``--ceiling-seconds`` (comparable with the several
seconds of a command run, not the best short burst), then the API and the command
with and without the sigma. Each round gives its own shares of the ceiling, and the
table reports the median round and the range. Run from the repository root:

    python bench/denoise_speed.py
    python bench/denoise_speed.py --model denoise-s-int8

``--model`` picks the model for the API and the command (default: the float32
denoise-s, whose convolutions the ceiling describes). For the int8 variant the shares
are of the float32 ceiling, so they can pass 100 %.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefx.denoise import DenoiseOptions, Denoiser
from edgefx.registry import resolve_model
from edgefx.runtime import RuntimeOptions

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "clean" / "astronaut.png"
CONV_SHAPE = (1, 64, 512, 512)
THROUGHPUT = re.compile(r"throughput: [\d.]+ files/s, ([\d.]+) MP/s")


def conv_model(channels: int) -> bytes:
    """Return an ONNX model with one 3x3 convolution, ``channels`` in and out."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.05
    bias = np.zeros(channels, np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    graph = helper.make_graph(
        [node],
        "conv3x3",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, [1, channels, None, None]
            )
        ],
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [1, channels, None, None]
            )
        ],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = (
        8  # as the shipped models; newer IR versions need a newer runtime
    )
    return model.SerializeToString()


def conv_session(threads: int) -> ort.InferenceSession:
    """Build a session of one 3x3 convolution with the CLI's thread settings."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        conv_model(CONV_SHAPE[1]), options, providers=["CPUExecutionProvider"]
    )


def conv_gflops(session: ort.InferenceSession, seconds: float) -> float:
    """Return the sustained GFLOP/s of the convolution over about ``seconds``."""
    x = np.random.default_rng(1).random(CONV_SHAPE, dtype=np.float32)
    session.run(None, {"x": x})  # warm-up
    runs = 0
    started = time.perf_counter()
    while True:
        session.run(None, {"x": x})
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    _, channels, height, width = CONV_SHAPE
    flops = 2 * 9 * channels * channels * height * width
    return runs * flops / elapsed / 1e9


def large_noisy_photo(folder: Path, scale: int) -> tuple[Path, float]:
    """Write the upscaled noisy sample photo; return its path and megapixels."""
    clean = cv2.imread(str(SAMPLE), cv2.IMREAD_COLOR)
    if clean is None:
        sys.exit(f"error: cannot read {SAMPLE}")
    height, width = clean.shape[:2]
    big = cv2.resize(
        clean, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC
    )
    rng = np.random.default_rng(2)
    noisy = np.clip(np.round(big + rng.normal(0, 25, big.shape)), 0, 255)
    path = folder / "large.png"
    if not cv2.imwrite(str(path), noisy.astype(np.uint8)):
        sys.exit(f"error: cannot write {path}")
    return path, big.shape[0] * big.shape[1] / 1e6


def api_mp_per_second(denoiser: Denoiser, pixels: np.ndarray, tile: int) -> float:
    """Return the MP/s of one Denoiser.denoise call on decoded pixels, sigma given.

    This is the tiled inference without decoding, encoding and writing the file.
    """
    options = DenoiseOptions(sigma=25.0, tile=tile)
    started = time.perf_counter()
    denoiser.denoise(pixels, options)
    elapsed = time.perf_counter() - started
    return pixels.shape[0] * pixels.shape[1] / 1e6 / elapsed


def cli_mp_per_second(
    photo: Path, out: Path, threads: int, tile: int, model: str, extra: list[str]
) -> float:
    """Run edgefx denoise once and return the MP/s of its own throughput line."""
    command = [
        sys.executable,
        "-m",
        "edgefx",
        "denoise",
        str(photo),
        "--out",
        str(out),
        "--overwrite",
        "--device",
        "cpu",
        "--threads",
        str(threads),
        "--tile",
        str(tile),
        "--model",
        model,
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    match = THROUGHPUT.search(result.stderr)
    if result.returncode != 0 or match is None:
        sys.exit(f"error: edgefx denoise failed:\n{result.stderr}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads for both measurements (0: one per physical core)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of all timings"
    )
    parser.add_argument(
        "--ceiling-seconds",
        type=float,
        default=3.0,
        help="how long each round times the convolution",
    )
    parser.add_argument("--scale", type=int, default=8, help="upscaling of the photo")
    parser.add_argument(
        "--tile",
        type=int,
        default=768,
        help="tile side for the CLI and the API (default: 768, the CLI's default)",
    )
    parser.add_argument(
        "--model",
        default="denoise-s",
        help="shipped denoiser to time (default: denoise-s, the float32 model)",
    )
    args = parser.parse_args(argv)

    threads = args.threads
    info = resolve_model(args.model, "denoise")
    metadata = {p.key: p.value for p in onnx.load(str(info.path)).metadata_props}
    macs = int(metadata["macs_per_pixel"])
    session = conv_session(threads)
    modes = (
        "Denoiser.denoise, sigma given, no file I/O",
        "CLI, sigma given",
        "CLI, blind",
    )
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        photo, megapixels = large_noisy_photo(Path(folder), args.scale)
        out = Path(folder) / "out"
        pixels = np.ascontiguousarray(
            cv2.imread(str(photo), cv2.IMREAD_COLOR)[:, :, ::-1]
        )
        denoiser = Denoiser(
            args.model, RuntimeOptions(device="cpu", threads=args.threads)
        )
        api_mp_per_second(denoiser, pixels[:1024, :1024], args.tile)  # warm-up
        for _ in range(args.rounds):
            gflops = conv_gflops(session, args.ceiling_seconds)
            allowed = gflops * 1e9 / (2 * macs) / 1e6
            speeds = (
                api_mp_per_second(denoiser, pixels, args.tile),
                cli_mp_per_second(
                    photo, out, args.threads, args.tile, args.model, ["--sigma", "25"]
                ),
                cli_mp_per_second(photo, out, args.threads, args.tile, args.model, []),
            )
            record = {"gflops": gflops, "allowed": allowed}
            for mode, speed in zip(modes, speeds, strict=True):
                record[mode] = speed
                record[mode + " share"] = speed / allowed
            rounds.append(record)

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    def spread(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"{min(values):.0%} to {max(values):.0%}"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
        f"{os.cpu_count()} logical cores, 1-min load average {load:.2f} | "
        f"onnxruntime {ort.__version__} | intra-op threads {threads or 'default'} | "
        f"{args.rounds} interleaved rounds"
    )
    print(f"model {info.name}: {macs:,} multiply-accumulates per pixel")
    gflops_values = [r["gflops"] for r in rounds]
    print(
        f"ONNX Runtime 3x3 conv, 64->64 channels on {CONV_SHAPE[2]}x{CONV_SHAPE[3]}, "
        f"sustained over {args.ceiling_seconds:g} s: {min(gflops_values):.0f} to "
        f"{max(gflops_values):.0f} GFLOP/s, which allows {median('allowed'):.2f} MP/s "
        "for this model (median round)"
    )
    print(
        f"photo: {SAMPLE.name} upscaled {args.scale}x, {megapixels:.1f} MP, PNG; "
        f"tile {args.tile}"
    )
    print()
    print("| mode | MP/s (median) | share of the ceiling (median) | range of shares |")
    print("| --- | ---: | ---: | ---: |")
    for mode in modes:
        print(
            f"| {mode} | {median(mode):.2f} | {median(mode + ' share'):.0%} | "
            f"{spread(mode + ' share')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
