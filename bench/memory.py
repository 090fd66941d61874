"""Measure the peak memory of the CLI on a 100-megapixel photo and an hour of audio.

Each case runs the CLI in a child process, as `python -m edgefx ...` does, and takes
that process's peak resident set size from the VmHWM line of /proc/self/status, read
at exit (Linux only). The child's ru_maxrss from os.wait4 is not used, because Linux
carries the parent's RSS across fork and exec into it: a `python -c pass` child of a
parent holding 200 MB reported 216 MiB. The inputs are generated here into a scratch
folder and deleted afterwards:

- photo: a smooth color gradient with Gaussian noise (sigma 15), saved as a JPEG of
  ``--megapixels`` megapixels, then denoised in blind mode (the noise level estimated)
  to a JPEG;
- audio: ``--hours`` hours of 16-bit WAV at ``--rate`` Hz with ``--channels`` channels
  (tones in noise, in 10-second segments), then enhanced to a WAV.

The limits are 2 GiB for the photo and 512 MiB for the audio. The script exits with
status 1 when a case goes over its limit or fails.

Run: python bench/memory.py [--megapixels 100] [--hours 1] [--rate 48000]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GIB = 1024**3
MIB = 1024**2
PHOTO_LIMIT_BYTES = 2 * GIB
AUDIO_LIMIT_BYTES = 512 * MIB
AUDIO_SEGMENT_SECONDS = 10


@dataclass(frozen=True)
class CaseResult:
    """Peak memory, wall time and exit status of one child run."""

    name: str
    command: list[str]
    peak_bytes: int
    seconds: float
    returncode: int
    stderr_tail: str


# Runs `edgefx ARGS` as `python -m edgefx` does and, at exit, writes the process's
# VmHWM (peak RSS of its own address space, in KiB) to the file named by PEAK_FILE.
CLI_WITH_PEAK_REPORT = """
import atexit, os, runpy, sys

def report_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(peak)

atexit.register(report_peak)
sys.argv = ["edgefx", *sys.argv[1:]]
runpy.run_module("edgefx", run_name="__main__", alter_sys=True)
"""


def run_cli(name: str, arguments: list[str]) -> CaseResult:
    """Run ``edgefx ARGUMENTS`` in a child and return its peak RSS and exit status."""
    command = [sys.executable, "-c", CLI_WITH_PEAK_REPORT, *arguments]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch, "peak")
        env = {**os.environ, "PEAK_FILE": str(peak_file)}
        completed = subprocess.run(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - started
        peak_kib = int(peak_file.read_text()) if peak_file.exists() else 0
    tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
    return CaseResult(
        name, command, peak_kib * 1024, seconds, completed.returncode, tail
    )


def write_photo(path: Path, megapixels: float, seed: int = 0) -> tuple[int, int]:
    """Write a noisy 3:2 RGB gradient of about ``megapixels`` as a JPEG."""
    import cv2

    height = int(round((megapixels * 1e6 / 1.5) ** 0.5))
    width = int(round(height * 1.5))
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)  # BGR, as cv2.imwrite expects
    columns = np.linspace(0.0, 1.0, width, dtype=np.float32)
    for start in range(0, height, 512):
        stop = min(height, start + 512)
        rows = np.linspace(
            start / height, stop / height, stop - start, dtype=np.float32
        )
        base = np.stack(
            [
                np.outer(rows, np.ones_like(columns)),
                np.outer(np.ones_like(rows), columns),
                0.5 + 0.4 * np.sin(6.0 * np.add.outer(rows, columns)),
            ],
            axis=-1,
        )
        noisy = base * 255.0 + rng.normal(0.0, 15.0, base.shape).astype(np.float32)
        image[start:stop] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise SystemExit(f"cannot write {path}")
    return width, height


def write_audio(path: Path, hours: float, rate: int, channels: int) -> float:
    """Write ``hours`` of tones in noise as 16-bit WAV, one segment at a time."""
    import soundfile

    rng = np.random.default_rng(0)
    total = int(hours * 3600 * rate)
    segment = AUDIO_SEGMENT_SECONDS * rate
    with soundfile.SoundFile(
        path, "w", samplerate=rate, channels=channels, subtype="PCM_16"
    ) as audio:
        for start in range(0, total, segment):
            frames = min(segment, total - start)
            seconds = (start + np.arange(frames)) / rate
            tone = 0.3 * np.sin(2 * np.pi * 220.0 * seconds) * (seconds % 2 < 1.2)
            noise = rng.normal(0.0, 0.05, (frames, channels))
            audio.write((tone[:, None] + noise).astype(np.float32))
    return total / rate


def describe_machine() -> list[str]:
    import cv2
    import onnxruntime

    from edgefx.threads import LIBRARY_THREAD_LIMITS

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # The CLI sets these variables to 1 in its own process unless they are set here.
    inherited = [
        f"{v}={os.environ[v]}" for v in LIBRARY_THREAD_LIMITS if v in os.environ
    ]
    return [
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores, 1-min load average {load:.2f} | Python {platform.python_version()}",
        f"edgefx {importlib.metadata.version('edgefx')} | onnxruntime "
        f"{onnxruntime.__version__} | opencv {cv2.__version__} | numpy "
        f"{np.__version__}",
        "Threads: the CLI defaults, --device cpu: ONNX Runtime one intra-op thread "
        "per physical core (--threads 0), the default --jobs, OpenCV and BLAS one "
        "thread each" + (f" (inherited: {', '.join(inherited)})" if inherited else ""),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=100.0)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument(
        "--tile",
        type=int,
        help="pass --tile N to edgefx denoise (default: the CLI's own default)",
    )
    parser.add_argument("--skip-photo", action="store_true")
    parser.add_argument("--skip-audio", action="store_true")
    args = parser.parse_args(argv)

    for line in describe_machine():
        print(line, flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgefx-memory-", dir=args.work))
    cases: list[tuple[CaseResult, int, str]] = []
    try:
        if not args.skip_photo:
            photo = work / "photo.jpg"
            width, height = write_photo(photo, args.megapixels)
            size_mb = photo.stat().st_size / 1e6
            print(f"photo: {width}x{height} JPEG, {size_mb:.1f} MB", flush=True)
            command = [
                "-q",
                "denoise",
                str(photo),
                "--out",
                str(work / "denoised"),
                "--device",
                "cpu",
            ]
            if args.tile is not None:
                command += ["--tile", str(args.tile)]
            result = run_cli(f"denoise {width * height / 1e6:.1f} MP JPEG", command)
            cases.append((result, PHOTO_LIMIT_BYTES, f"{width * height / 1e6:.1f} MP"))
            photo.unlink()

        if not args.skip_audio:
            audio = work / "recording.wav"
            duration = write_audio(audio, args.hours, args.rate, args.channels)
            size_mb = audio.stat().st_size / 1e6
            print(
                f"audio: {duration:.0f} s, {args.rate} Hz, {args.channels} channels, "
                f"16-bit WAV, {size_mb:.0f} MB",
                flush=True,
            )
            command = [
                "-q",
                "enhance",
                str(audio),
                "--out",
                str(work / "enhanced"),
                "--device",
                "cpu",
            ]
            result = run_cli(f"enhance {duration / 3600:g} h WAV", command)
            cases.append((result, AUDIO_LIMIT_BYTES, f"{duration:.0f} s of audio"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| case | peak RSS | limit | wall time | exit status | within limit |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    failed = False
    for result, limit, _ in cases:
        ok = result.returncode == 0 and result.peak_bytes <= limit
        failed = failed or not ok
        print(
            f"| {result.name} | {result.peak_bytes / MIB:.0f} MiB | "
            f"{limit / MIB:.0f} MiB | {result.seconds:.1f} s | {result.returncode} | "
            f"{'yes' if ok else 'no'} |"
        )
        if result.returncode != 0:
            print(f"    stderr: {result.stderr_tail}")
    print()
    print("Peak RSS is VmHWM of the CLI's process at exit, which includes the Python")
    print("interpreter, numpy, OpenCV and ONNX Runtime as loaded by the command.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
