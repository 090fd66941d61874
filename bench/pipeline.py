"""Measure end-to-end batch throughput next to model-only throughput, per command.

For each command (denoise, classify, enhance) and each ONNX Runtime thread count and
worker count given, the script times, in one run:

- model only: the task's model stage on inputs already decoded in memory. That is
  Denoiser.denoise per photo, Classifier.run_prepared on prepared batches of 8, and
  Enhancer.enhance per recording (resampling included).
- serial: the same stages as the batch engine runs them (read, model, write), one
  file after the other in one thread, without overlap.
- pipelined: the library call that the CLI makes (denoise_files, classify_files,
  enhance_files) with --jobs workers, model load included.

After one untimed warm-up of each, the three runs are timed one after the other in
each of --repeat rounds, and the ratios are computed per round, so that other load on
the machine affects the three alike. Inputs are real files from the shared data
folder: CBSD68 photos (PNG, 481x321), CIFAR-10 test images (32x32 JPEG, copied from
test.zip into a temporary folder) and LibriSpeech test-other recordings (FLAC, 16 kHz).
With --jpeg-photos N, classify also runs on N CBSD68 photos written as JPEG (quality
90) and cropped to 480x320 or 320x480, so that its 1/2-scale JPEG decode applies.

Run: python bench/pipeline.py [--data DIR] [--threads 0,1] [--jobs 1,2] [--repeat 3]
     [--jpeg-photos 16]
"""

from __future__ import annotations

# ruff: noqa: E402 - the imports below must follow limit_library_threads().
from edgefx.threads import limit_library_threads

# As the CLI does: OpenCV and BLAS get one thread each, set before they load.
LIBRARY_THREADS = limit_library_threads()

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime
import soundfile as sf

from edgefx.batch import BatchItem, BatchOptions
from edgefx.classify import (
    Classifier,
    ClassifyOptions,
    ClassifyTask,
    classify_files,
    prepare_image,
)
from edgefx.denoise import DenoiseOptions, Denoiser, DenoiseTask, denoise_files
from edgefx.enhance import EnhanceOptions, Enhancer, EnhanceTask, enhance_files
from edgefx.imageio import read_image
from edgefx.pipeline import EngineOptions, Stages, available_cores, default_jobs
from edgefx.runtime import RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
CLASSIFY_BATCH = 8
JPEG_PHOTO_QUALITY = 90
# The photos are cropped to a multiple of this many pixels, so that no JPEG block is
# partial and classify may decode them at reduced scale.
JPEG_PHOTO_BLOCK = 16


@dataclass
class Row:
    command: str
    files: int
    threads: int
    jobs: int
    model_only: float  # files per second, median over the rounds
    serial: float
    pipelined: float
    versus_model: float  # median over the rounds of pipelined / model only
    versus_serial: float


def measure(
    command: str,
    files: int,
    threads: int,
    jobs: int,
    runs: tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]],
    repeat: int,
) -> Row:
    """Time model-only, serial and pipelined runs, interleaved in ``repeat`` rounds.

    Each round times the three one after the other, so a change in the machine's
    load hits all three of a round alike, and the ratios are taken per round.
    """
    for run in runs:
        run()  # warm-up: file caches, lazy allocations, the session's first run
    rates: list[list[float]] = [[], [], []]
    for _ in range(repeat):
        for rate, run in zip(rates, runs, strict=True):
            started = time.perf_counter()
            run()
            rate.append(files / (time.perf_counter() - started))
    model_only, serial, pipelined = rates
    return Row(
        command,
        files,
        threads,
        jobs,
        statistics.median(model_only),
        statistics.median(serial),
        statistics.median(pipelined),
        statistics.median(p / m for p, m in zip(pipelined, model_only, strict=True)),
        statistics.median(p / s for p, s in zip(pipelined, serial, strict=True)),
    )


def run_serial(stages: Stages[Any, Any], items: list[BatchItem]) -> None:
    for item in items:
        (inferred,) = stages.infer([stages.load(item)])
        stages.save(item, inferred)


def image_items(folder: Path, out: Path) -> list[BatchItem]:
    return [BatchItem(p, out / p.name) for p in sorted(folder.iterdir())]


def bench_denoise(
    folder: Path, work: Path, threads: int, jobs: int, repeat: int
) -> Row:
    runtime = RuntimeOptions(device="cpu", threads=threads)
    denoiser = Denoiser(None, runtime)
    paths = sorted(folder.iterdir())
    pixels = [read_image(p).pixels for p in paths]
    options = DenoiseOptions()

    def model_only() -> None:
        for image in pixels:
            denoiser.denoise(image, options)

    stages = DenoiseTask(options, runtime).open()
    items = image_items(folder, work / "serial")
    batch = BatchOptions(work / "pipelined", overwrite=True)
    engine = EngineOptions(jobs=jobs)

    def pipelined() -> None:
        denoise_files([str(folder)], batch, options, runtime, engine=engine)

    runs = (model_only, lambda: run_serial(stages, items), pipelined)
    return measure("denoise", len(paths), threads, jobs, runs, repeat)


def bench_classify(
    folder: Path, threads: int, jobs: int, repeat: int, command: str = "classify"
) -> Row:
    runtime = RuntimeOptions(device="cpu", threads=threads)
    options = ClassifyOptions(top_k=5, batch_size=CLASSIFY_BATCH)
    classifier = Classifier(None, runtime)
    paths = sorted(folder.iterdir())
    prepared = np.stack(
        [prepare_image(read_image(p).pixels, classifier.preprocess) for p in paths]
    )

    def model_only() -> None:
        for start in range(0, len(prepared), CLASSIFY_BATCH):
            classifier.run_prepared(prepared[start : start + CLASSIFY_BATCH])

    task = ClassifyTask(options, runtime)
    stages = task.stages(classifier)
    items = [BatchItem(p, p) for p in paths]

    def serial() -> None:
        for start in range(0, len(items), CLASSIFY_BATCH):
            chunk = items[start : start + CLASSIFY_BATCH]
            results = stages.infer([stages.load(item) for item in chunk])
            for item, result in zip(chunk, results, strict=True):
                stages.save(item, result)

    engine = EngineOptions(jobs=jobs)

    def pipelined() -> None:
        classify_files([str(folder)], options=options, runtime=runtime, engine=engine)

    runs = (model_only, serial, pipelined)
    return measure(command, len(paths), threads, jobs, runs, repeat)


def bench_enhance(
    folder: Path, work: Path, threads: int, jobs: int, repeat: int
) -> Row:
    runtime = RuntimeOptions(device="cpu", threads=threads)
    enhancer = Enhancer(None, runtime)
    paths = sorted(folder.iterdir())
    decoded = [sf.read(p, dtype="float32") for p in paths]

    def model_only() -> None:
        for audio, rate in decoded:
            enhancer.enhance(audio, rate)

    options = EnhanceOptions()
    stages = EnhanceTask(options, runtime).open()
    items = image_items(folder, work / "serial")
    batch = BatchOptions(work / "pipelined", overwrite=True)
    engine = EngineOptions(jobs=jobs)

    def pipelined() -> None:
        enhance_files([str(folder)], batch, options, runtime, engine=engine)

    runs = (model_only, lambda: run_serial(stages, items), pipelined)
    return measure("enhance", len(paths), threads, jobs, runs, repeat)


def prepare_inputs(data: Path, work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Gather each command's inputs into its own folder under ``work``."""
    folders = {name: work / f"in-{name}" for name in ("denoise", "classify", "enhance")}
    for folder in folders.values():
        folder.mkdir()
    photos = sorted((data / "images" / "test" / "CBSD68").glob("*.png"))
    for photo in photos[: args.photos]:
        os.symlink(photo, folders["denoise"] / photo.name)
    with zipfile.ZipFile(data / "cifar10" / "test.zip") as archive:
        members = [m for m in archive.namelist() if m.endswith(".jpg")]
        for index, member in enumerate(members[: args.cifar]):
            target = folders["classify"] / f"{index:05d}.jpg"
            target.write_bytes(archive.read(member))
    speech = data / "audio" / "librispeech_resemblyzer" / "librispeech_test-other"
    for recording in sorted(speech.rglob("*.flac"))[: args.recordings]:
        os.symlink(recording, folders["enhance"] / recording.name)
    if args.jpeg_photos:
        folders["photos"] = work / "in-photos"
        folders["photos"].mkdir()
        for photo in photos[: args.jpeg_photos]:
            write_cropped_jpeg(photo, folders["photos"] / f"{photo.stem}.jpg")
    return folders


def write_cropped_jpeg(source: Path, target: Path) -> None:
    pixels = cv2.imread(str(source), cv2.IMREAD_COLOR)
    height, width = pixels.shape[:2]
    block = JPEG_PHOTO_BLOCK
    cropped = pixels[: height // block * block, : width // block * block]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_PHOTO_QUALITY]
    if not cv2.imwrite(str(target), cropped, params):
        raise OSError(f"cannot write {target}")


def describe_machine() -> list[str]:
    return [
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores ({available_cores()} available), 1-min load average "
        f"{os.getloadavg()[0]:.2f}",
        f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        f"default --jobs here: {default_jobs()}; library threads: "
        + ", ".join(f"{name}={value}" for name, value in LIBRARY_THREADS.items()),
    ]


def parse_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--photos", type=int, default=24, help="CBSD68 photos")
    parser.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 images")
    parser.add_argument("--recordings", type=int, default=20, help="FLAC recordings")
    parser.add_argument(
        "--jpeg-photos",
        type=int,
        default=0,
        help="CBSD68 photos to classify as JPEG files, besides CIFAR-10; 0 for none",
    )
    parser.add_argument(
        "--threads", default="0", help="ONNX Runtime intra-op threads, e.g. 0,1"
    )
    parser.add_argument("--jobs", default="1,2", help="worker threads, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--commands", default="denoise,classify,enhance", help="commands to measure"
    )
    args = parser.parse_args()
    commands = args.commands.split(",")

    for line in describe_machine():
        print(line)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgefx-bench-") as temporary:
        work = Path(temporary)
        folders = prepare_inputs(args.data, work, args)
        for threads in parse_counts(args.threads):
            for jobs in parse_counts(args.jobs):
                out = work / f"out-{threads}-{jobs}"
                if "denoise" in commands:
                    rows.append(
                        bench_denoise(
                            folders["denoise"], out / "d", threads, jobs, args.repeat
                        )
                    )
                if "classify" in commands:
                    rows.append(
                        bench_classify(folders["classify"], threads, jobs, args.repeat)
                    )
                if "classify" in commands and args.jpeg_photos:
                    rows.append(
                        bench_classify(
                            folders["photos"],
                            threads,
                            jobs,
                            args.repeat,
                            command="classify JPEG photos",
                        )
                    )
                if "enhance" in commands:
                    rows.append(
                        bench_enhance(
                            folders["enhance"], out / "e", threads, jobs, args.repeat
                        )
                    )
                print(f"done: --threads {threads} --jobs {jobs}", flush=True)
    print(f"1-min load average at the end: {os.getloadavg()[0]:.2f}")
    print("files/s: median over the rounds; ratios: median of the per-round ratios")
    print()
    print(
        "| command | files | --threads | --jobs | model only files/s | serial files/s "
        "| pipelined files/s | pipelined / model only | pipelined / serial |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row.command} | {row.files} | {row.threads} | {row.jobs} "
            f"| {row.model_only:.1f} | {row.serial:.1f} | {row.pipelined:.1f} "
            f"| {row.versus_model:.2f} | {row.versus_serial:.2f} |"
        )


if __name__ == "__main__":
    main()
