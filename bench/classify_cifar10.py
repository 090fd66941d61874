"""Benchmark the edgefx classifier on CIFAR-10: test accuracy and CPU throughput.

Accuracy: the CIFAR-10 test images are unpacked from the test zip (layout
[SPLIT/]CLASS/IMAGE) into a temporary folder, the real ``edgefx classify FOLDER
--recursive --format jsonl --out FILE`` command runs over them as a subprocess, and
each file's label is compared with the name of its class folder. A file without a
result row counts as wrong.

Speed, all on the CPU with the same thread count:

- end to end: ``edgefx classify`` over N test images written as JPEG quality 90, in
  files per second including process start, next to the start-up time of
  ``edgefx --help`` and of ``edgefx classify`` on one file;
- ONNX Runtime: ``session.run`` alone on pre-decoded, pre-normalized batches of the
  CLI's default batch size, with the session that ``edgefx.runtime.create_session``
  creates;
- PyTorch eager: the same network (``CifarResNet``) on the same batches, with the
  weights of ``--checkpoint`` or random ones, because the speed does not depend on
  the weights.

Each timing has one untimed warm-up run, then ``--repeat`` timed runs, and the report
gives the median.

Run: python bench/classify_cifar10.py [--limit N] [--jpeg-count N] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import onnxruntime

from edgefx import imageio
from edgefx.classify import (
    ClassifyOptions,
    Preprocess,
    prepare_image,
    preprocess_from_mapping,
    read_sidecar,
    read_signature,
    sidecar_path,
)
from edgefx.errors import EdgefxError
from edgefx.registry import ModelInfo, resolve_model, sha256_of
from edgefx.runtime import RuntimeOptions, create_session, provider_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = Path("cifar10", "test.zip")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / DATA_FILE
DEFAULT_MODEL = "classify-cifar10"
FULL_SET_SIZE = 10_000
DEFAULT_JPEG_COUNT = 2000
JPEG_QUALITY = 90
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# ResNet-20, the architecture of the shipped model, whose metadata does not record it.
DEFAULT_WIDTH = 16
DEFAULT_BLOCKS = 3
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Timing:
    """Wall times in seconds of the timed runs of one measurement, and their median."""

    runs: list[float]
    median: float = field(init=False)

    def __post_init__(self) -> None:
        self.median = statistics.median(self.runs)


@dataclass
class AccuracyResult:
    """Top-1 accuracy of ``edgefx classify`` on the test images, and its wall time."""

    images: int
    correct: int
    missing: int  # test images without a result row (failed files)
    accuracy_percent: float
    seconds: float
    exit_status: int
    per_class_percent: dict[str, float]


@dataclass
class TorchResult:
    """PyTorch eager timing on the benchmark batches, or the reason it was skipped."""

    skipped: str | None = None
    weights: str | None = None  # "random" or the checkpoint path
    width: int | None = None
    blocks: int | None = None
    classes: int | None = None
    parameters: int | None = None
    torch_version: str | None = None
    timing: Timing | None = None
    images_per_second: float | None = None
    # Only with a checkpoint: how closely the PyTorch logits match ONNX Runtime's.
    top1_agreement_percent: float | None = None
    max_logit_difference: float | None = None
    # Largest logit difference that the ONNX export check accepts for the same weights.
    export_tolerance: float | None = None


# --------------------------------------------------------------------------------------
# Test images


def find_test_zip(requested: Path | None) -> Path:
    """Return the CIFAR-10 test zip: --data, else $EDGEFX_DATA, else DEFAULT_DATA.

    Exits with status 2 and a message when the file is missing or not a zip file.
    """
    if requested is not None:
        path = requested.expanduser()
    elif os.environ.get("EDGEFX_DATA"):
        path = Path(os.environ["EDGEFX_DATA"]).expanduser() / DATA_FILE
    else:
        path = DEFAULT_DATA
    if not path.is_file() or not zipfile.is_zipfile(path):
        problem = "not a zip file" if path.is_file() else "file not found"
        print(
            f"error: CIFAR-10 test zip {path}: {problem}\n"
            f"Pass --data FILE, or set EDGEFX_DATA to a folder that contains "
            f"{DATA_FILE}.",
            file=sys.stderr,
        )
        sys.exit(2)
    return path


def list_test_images(archive: zipfile.ZipFile) -> list[tuple[str, str]]:
    """Return (member name, class) of every image in the zip, sorted by member name.

    The class is the name of the image's parent folder.
    """
    members = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if info.is_dir() or name.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if len(name.parts) < 2:
            continue  # an image at the top level has no class folder
        members.append((info.filename, name.parent.name))
    return sorted(members)


def pick_evenly(count: int, total: int) -> list[int]:
    """Pick ``count`` evenly spaced indices out of ``total``, starting with the first.

    The test zip is sorted by class, so an even spread keeps every class in a subset.
    """
    picked = min(count, total)
    return [i * total // picked for i in range(picked)]


def extract_images(
    archive: zipfile.ZipFile, members: Sequence[tuple[str, str]], folder: Path
) -> dict[Path, str]:
    """Unpack ``members`` under ``folder`` and return each file's path and class.

    ``ZipFile.extract`` drops absolute prefixes and ".." parts from member names, so
    every file lands inside ``folder``.
    """
    expected = {}
    for member, label in members:
        path = Path(archive.extract(member, folder)).resolve()
        expected[path] = label
    return expected


def write_jpeg_images(
    archive: zipfile.ZipFile, members: Sequence[tuple[str, str]], folder: Path
) -> list[Path]:
    """Decode ``members`` and write them as JPEG files of quality JPEG_QUALITY.

    The files go to CLASS/NAME.jpg under ``folder``.
    """
    paths = []
    for member, label in members:
        data = np.frombuffer(archive.read(member), np.uint8)
        pixels = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if pixels is None:
            sys.exit(f"error: {member}: OpenCV cannot decode this image")
        ok, encoded = cv2.imencode(
            ".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            sys.exit(f"error: {member}: JPEG encoding failed")
        path = folder / label / (PurePosixPath(member).stem + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.tobytes())
        paths.append(path.resolve())
    return paths


# --------------------------------------------------------------------------------------
# edgefx command line


def edgefx_command() -> list[str]:
    """Return the command that starts this environment's ``edgefx`` console script.

    The script next to the running interpreter is what users of this environment run.
    Where it is absent, ``python -m edgefx`` starts the same entry point.
    """
    script = Path(sys.executable).with_name("edgefx")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "edgefx"]


def run_command(command: Sequence[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` with its output captured, and return it with the wall time."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    return completed, time.perf_counter() - start


def fail_command(
    command: Sequence[str], completed: subprocess.CompletedProcess
) -> None:
    """Print the failed command with the end of its error output, and exit 1."""
    tail = "\n".join(completed.stderr.strip().splitlines()[-10:])
    print(
        f"error: {' '.join(command)} exited with status {completed.returncode}:\n"
        f"{tail}",
        file=sys.stderr,
    )
    sys.exit(1)


def classify_command(
    inputs: Sequence[Path], out: Path, args: argparse.Namespace
) -> list[str]:
    return [
        *edgefx_command(),
        "classify",
        *(str(path) for path in inputs),
        "--recursive",
        "--format",
        "jsonl",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threads",
        str(args.threads),
        "--model",
        args.model,
    ]


def read_labels_jsonl(path: Path) -> dict[Path, str]:
    """Read the JSON Lines of ``edgefx classify`` into {resolved file path: label}."""
    labels = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                labels[Path(record["file"]).resolve()] = record["label"]
    return labels


def time_command(command: Sequence[str], repeat: int) -> Timing:
    """Run ``command`` once untimed, then ``repeat`` timed times. Exits 1 on failure."""
    runs = []
    for attempt in range(repeat + 1):
        completed, seconds = run_command(command)
        if completed.returncode != 0:
            fail_command(command, completed)
        if attempt > 0:
            runs.append(seconds)
    return Timing(runs)


def measure_accuracy(
    folder: Path, expected: dict[Path, str], out: Path, args: argparse.Namespace
) -> AccuracyResult:
    """Classify ``folder`` once with the CLI and score the labels against the classes.

    Exit status 1 (some files failed) still gives a score, with the failed files
    counted as wrong. Any other non-zero status stops the benchmark.
    """
    command = classify_command([folder], out, args)
    log(f"accuracy: edgefx classify on {images_label(len(expected))}")
    completed, seconds = run_command(command)
    if completed.returncode not in (0, 1) or not out.is_file():
        fail_command(command, completed)
    if completed.returncode == 1:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:])
        log(f"NOTE: edgefx classify reported failed files:\n{tail}")
    predicted = read_labels_jsonl(out)

    correct = 0
    missing = 0
    per_class_total: dict[str, int] = {}
    per_class_correct: dict[str, int] = {}
    for path, label in expected.items():
        per_class_total[label] = per_class_total.get(label, 0) + 1
        if path not in predicted:
            missing += 1
        elif predicted[path] == label:
            correct += 1
            per_class_correct[label] = per_class_correct.get(label, 0) + 1
    return AccuracyResult(
        images=len(expected),
        correct=correct,
        missing=missing,
        accuracy_percent=100.0 * correct / len(expected),
        seconds=seconds,
        exit_status=completed.returncode,
        per_class_percent={
            label: round(100.0 * per_class_correct.get(label, 0) / total, 2)
            for label, total in sorted(per_class_total.items())
        },
    )


# --------------------------------------------------------------------------------------
# Model runs in this process


def choose_preprocess(info: ModelInfo) -> Preprocess:
    """Return the preprocessing that ``edgefx classify`` uses for this model.

    As in ``edgefx.classify.Classifier``: a JSON sidecar next to a model that is not
    shipped, else the model's metadata. The CLI's --preset option is not offered here.
    NOTE: this repeats the Classifier's choice, so the report's line on how often ONNX
    Runtime and edgefx classify agree shows when the two drift apart.
    """
    sidecar = None if info.shipped else read_sidecar(info.path)
    if sidecar is not None:
        return preprocess_from_mapping(str(sidecar_path(info.path)), sidecar)
    return preprocess_from_mapping(f"{info.path} metadata", dict(info.metadata))


def model_labels(info: ModelInfo) -> list[str] | None:
    """Return the labels that ``edgefx classify`` prints, or None for class indices."""
    sidecar = None if info.shipped else read_sidecar(info.path)
    if sidecar is not None and "labels" in sidecar:
        return list(sidecar["labels"])
    if "labels" in info.metadata:
        return list(json.loads(info.metadata["labels"]))
    return None


def prepare_batches(
    paths: Sequence[Path], preprocess: Preprocess, batch_size: int
) -> list[np.ndarray]:
    """Decode and normalize the images into (N, 3, H, W) float32 batches."""
    prepared = [
        prepare_image(imageio.read_image(path).pixels, preprocess) for path in paths
    ]
    return [
        np.stack(prepared[start : start + batch_size])
        for start in range(0, len(prepared), batch_size)
    ]


def time_batches(
    run: Callable[[Any], Any], batches: Sequence[Any], repeat: int
) -> Timing:
    """Run every batch once untimed, then time ``repeat`` passes over all of them."""
    for batch in batches:
        run(batch)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        runs.append(time.perf_counter() - start)
    return Timing(runs)


def architecture_from_metadata(info: ModelInfo) -> tuple[int, int, bool]:
    """Return the CifarResNet width and blocks, and whether the metadata records them.

    Without both keys, the defaults 16 and 3 (ResNet-20, the shipped model) apply.
    """
    width = info.metadata.get("width")
    blocks = info.metadata.get("blocks")
    if width is None or blocks is None:
        return DEFAULT_WIDTH, DEFAULT_BLOCKS, False
    return int(width), int(blocks), True


def bench_torch(
    info: ModelInfo,
    classes: int,
    batches: Sequence[np.ndarray],
    ort_logits: Sequence[np.ndarray],
    args: argparse.Namespace,
) -> TorchResult:
    """Time PyTorch eager on ``batches``, or return why the row is skipped."""
    try:
        import torch
    except ImportError:
        return TorchResult(skipped="torch is not installed (pip install torch)")

    from edgefx.train.nets import CifarResNet

    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        from edgefx.train.classify import load_classifier_checkpoint

        model, state = load_classifier_checkpoint(args.checkpoint)
        weights = str(args.checkpoint)
        width = int(state["config"]["width"])
        blocks = int(state["config"]["blocks"])
    else:
        width, blocks, recorded = architecture_from_metadata(info)
        if not recorded:
            log(
                "NOTE: the model's metadata records no width and blocks, so the "
                f"PyTorch network uses {width} and {blocks} (ResNet-20)"
            )
        torch.manual_seed(0)
        model = CifarResNet(classes, width, blocks)
        weights = "random"
    network: Any = model
    if info.metadata.get("test_time_augmentation"):
        # The ONNX graph averages several views of each image, so PyTorch does too.
        from edgefx.train.nets import average_views

        network = average_views(model, info.metadata["test_time_augmentation"])
    network.eval()
    # NOTE: PyTorch gets the same NCHW tensors as ONNX Runtime. The channels_last
    # memory format, which training uses, may run faster.
    tensors = [torch.from_numpy(batch) for batch in batches]

    def forward(batch: Any) -> Any:
        with torch.inference_mode():
            return network(batch)

    log(f"PyTorch eager: {images_label(sum(len(b) for b in batches))}")
    timing = time_batches(forward, tensors, args.repeat)
    result = TorchResult(
        weights=weights,
        width=width,
        blocks=blocks,
        classes=model.classes,
        parameters=sum(p.numel() for p in model.parameters()),
        torch_version=torch.__version__,
        timing=timing,
        images_per_second=sum(len(b) for b in batches) / timing.median,
    )
    if args.checkpoint is not None:
        from edgefx.train.export import CLASSIFY_PARITY_TOLERANCE

        result.export_tolerance = CLASSIFY_PARITY_TOLERANCE
        torch_logits = [forward(tensor).numpy() for tensor in tensors]
        agree = sum(
            int((t.argmax(axis=1) == o.argmax(axis=1)).sum())
            for t, o in zip(torch_logits, ort_logits, strict=True)
        )
        result.top1_agreement_percent = 100.0 * agree / sum(len(b) for b in batches)
        result.max_logit_difference = max(
            float(np.abs(t - o).max())
            for t, o in zip(torch_logits, ort_logits, strict=True)
        )
    return result


# --------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Return the logical cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float:
    """Return the 1-minute load average, or NaN where the system does not report it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def describe_machine(info: ModelInfo, session_provider: str) -> dict[str, Any]:
    """Collect the date, CPU, library versions, thread settings and model identity."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "available_cores": available_cores(),
        "load_average_1min": load_average(),
        "nice": os.nice(0),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_provider": session_provider,
        "opencv": cv2.__version__,
        "thread_environment": {
            name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ
        },
        "model": info.name,
        "model_version": info.metadata.get("version", "unknown"),
        "model_path": str(info.path),
        "model_sha256": sha256_of(info.path),
    }


def format_runs(timing: Timing) -> str:
    return ", ".join(f"{seconds:.3f}" for seconds in timing.runs)


def format_report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Format the header lines, the accuracy line, the speed table and the notes."""
    lines = [
        *format_header(results),
        "",
        *format_speed_table(results, args),
        "",
        *format_notes(results, args),
    ]
    return "\n".join(lines)


def format_header(results: dict[str, Any]) -> list[str]:
    """Format the machine, thread and command lines, and the accuracy line."""
    machine = results["machine"]
    settings = results["settings"]
    accuracy: AccuracyResult = results["accuracy"]
    torch_result: TorchResult = results["torch"]
    environment = machine["thread_environment"]
    thread_variables = (
        ", ".join(f"{name}={value}" for name, value in environment.items())
        or f"{', '.join(THREAD_VARIABLES)} unset"
    )
    lines = [
        f"{machine['date']} | CPU {machine['cpu']}, {machine['logical_cores']} "
        f"logical cores ({machine['available_cores']} available), 1-min load average "
        f"{machine['load_average_at_start']} at the start and "
        f"{machine['load_average_1min']} at the end, nice {machine['nice']} | "
        f"onnxruntime {machine['onnxruntime']} | opencv {machine['opencv']} | torch "
        f"{torch_result.torch_version or 'not installed'} | model {machine['model']} "
        f"v{machine['model_version']} sha256 {str(machine['model_sha256'])[:12]}",
        f"Threads: {settings['threads']} for ONNX Runtime (intra-op, inter-op 1), "
        "PyTorch (torch.set_num_threads) and edgefx classify --threads; device cpu | "
        f"{thread_variables}",
        f"Command: {settings['command']}",
        "",
        f"Accuracy: {accuracy.accuracy_percent:.2f} % top-1 ({accuracy.correct} of "
        f"{accuracy.images} test images from {settings['data']}), "
        f"edgefx classify wall time {accuracy.seconds:.2f} s for one run including "
        f"process start, {accuracy.images / accuracy.seconds:.0f} files/s",
    ]
    if accuracy.missing:
        lines.append(
            f"NOTE: {accuracy.missing} test images have no result row (failed in "
            "edgefx classify) and count as wrong."
        )
    return lines


def format_speed_table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Format the Markdown table of the timings and the line of speed ratios."""
    startup: Timing = results["startup"]
    single: Timing = results["classify_one_file"]
    end_to_end: Timing = results["classify_jpeg"]
    ort: Timing = results["onnxruntime"]
    torch_result: TorchResult = results["torch"]
    count = results["settings"]["jpeg_images"]
    batch_size = results["settings"]["batch_size"]
    lines = [
        f"Speed on {count} test images written as JPEG quality {JPEG_QUALITY}, median "
        f"of {args.repeat} timed runs after one warm-up run:",
        "",
        "| measurement | images | median s | images/s | timed runs (s) |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| edgefx --help (process start-up) | 0 | {startup.median:.3f} | "
        f"| {format_runs(startup)} |",
        f"| edgefx classify, 1 JPEG file (fixed cost) | 1 | {single.median:.3f} | "
        f"| {format_runs(single)} |",
        f"| edgefx classify, end to end | {count} | {end_to_end.median:.3f} | "
        f"{count / end_to_end.median:.1f} | {format_runs(end_to_end)} |",
        f"| ONNX Runtime session.run, batches of {batch_size} | {count} | "
        f"{ort.median:.3f} | {count / ort.median:.1f} | {format_runs(ort)} |",
    ]
    if torch_result.timing is not None:
        timing = torch_result.timing
        lines.append(
            f"| PyTorch eager, batches of {batch_size}, {torch_result.weights} "
            f"weights | {count} | {timing.median:.3f} | "
            f"{torch_result.images_per_second:.1f} | {format_runs(timing)} |"
        )
    lines.append("")

    ratios = results["ratios"]
    ratio_line = (
        "Ratios: edgefx classify end to end / ONNX Runtime session.run = "
        f"{ratios['end_to_end_over_onnxruntime']:.3f}"
    )
    if ratios["onnxruntime_over_torch"] is not None:
        ratio_line += (
            f"; ONNX Runtime / PyTorch eager = {ratios['onnxruntime_over_torch']:.2f}"
        )
    lines.append(ratio_line)
    return lines


def format_notes(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Format the notes on fixed cost, agreement, the PyTorch network and the data."""
    machine = results["machine"]
    settings = results["settings"]
    torch_result: TorchResult = results["torch"]
    count = settings["jpeg_images"]
    lines = []
    if results["classify_marginal_files_per_second"] is not None:
        lines.append(
            "edgefx classify without its fixed cost: "
            f"{results['classify_marginal_files_per_second']:.1f} files/s, that is "
            f"({count} - 1) files / (end-to-end s - 1-file s)."
        )
    lines.append(
        "edgefx --help imports typer and rich but not numpy, OpenCV or ONNX Runtime, "
        "and creates no session, so the 1-file run is the fuller fixed cost."
    )
    lines.append(
        f"ONNX Runtime and edgefx classify agree on the top-1 label of "
        f"{results['cli_onnxruntime_agreement_percent']:.2f} % of the JPEG images."
    )
    if torch_result.skipped is not None:
        lines.append(f"PyTorch row skipped: {torch_result.skipped}.")
    elif torch_result.weights == "random":
        lines.append(
            f"PyTorch runs CifarResNet(width {torch_result.width}, blocks "
            f"{torch_result.blocks}, {torch_result.parameters:,} parameters) with "
            "random weights, because the speed does not depend on the weights. Pass "
            "--checkpoint for the trained ones."
        )
    else:
        lines.append(
            f"PyTorch runs the checkpoint {torch_result.weights} (width "
            f"{torch_result.width}, blocks {torch_result.blocks}, "
            f"{torch_result.parameters:,} parameters): top-1 agreement with ONNX "
            f"Runtime {torch_result.top1_agreement_percent:.2f} %, max absolute logit "
            f"difference {torch_result.max_logit_difference:.2e}."
        )

    difference = torch_result.max_logit_difference
    tolerance = torch_result.export_tolerance
    if difference is not None and tolerance is not None and difference > tolerance:
        lines.append(
            f"NOTE: the PyTorch and ONNX Runtime logits differ by up to "
            f"{difference:.2e}, above the {tolerance:g} that the export check "
            "allows, so the checkpoint is probably not the one this ONNX file was "
            "exported from."
        )
    shipped_parameters = machine.get("model_parameters")
    if (
        torch_result.parameters is not None
        and shipped_parameters is not None
        and torch_result.parameters != shipped_parameters
    ):
        lines.append(
            f"NOTE: the PyTorch network has {torch_result.parameters:,} parameters but "
            f"the ONNX model's metadata states {shipped_parameters:,}, so the two rows "
            "do not run the same network."
        )
    if machine["load_average_at_start"] > 0.5 * machine["available_cores"]:
        lines.append(
            f"NOTE: the 1-min load average was {machine['load_average_at_start']} on "
            f"{machine['available_cores']} cores before the first measurement, so "
            "other processes competed for the CPU and the speeds are likely low and "
            "noisy. Rerun on an otherwise idle machine."
        )
    if settings["test_images"] < FULL_SET_SIZE:
        lines.append(
            f"NOTE: {settings['test_images']} of the {FULL_SET_SIZE} CIFAR-10 test "
            "images, so the accuracy is not comparable with full-set results."
        )
    if count < args.jpeg_count:
        lines.append(
            f"NOTE: --jpeg-count {args.jpeg_count} was capped to the {count} test "
            "images in use."
        )
    return lines


def images_label(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def to_json(value: Any) -> Any:
    """Convert dataclasses and paths in ``value`` into JSON values."""
    if isinstance(value, Timing | AccuracyResult | TorchResult):
        return to_json(asdict(value))
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------
# Benchmark


def unpack_test_images(
    args: argparse.Namespace, work: Path
) -> tuple[dict[Path, str], list[Path]]:
    """Unpack the test images and write the JPEG set under ``work``.

    Returns each unpacked test image's path with its class, and the JPEG paths.
    """
    with zipfile.ZipFile(args.data_file) as archive:
        members = list_test_images(archive)
        if not members:
            sys.exit(f"error: {args.data_file}: no images in CLASS/IMAGE layout")
        if args.limit is not None:
            members = [members[i] for i in pick_evenly(args.limit, len(members))]
        jpeg_members = [members[i] for i in pick_evenly(args.jpeg_count, len(members))]
        log(f"unpacking {images_label(len(members))} from {args.data_file}")
        expected = extract_images(archive, members, work / "test")
        log(f"writing {images_label(len(jpeg_members))} as JPEG quality {JPEG_QUALITY}")
        jpeg_paths = write_jpeg_images(archive, jpeg_members, work / "jpeg")
    return expected, jpeg_paths


@dataclass
class OnnxRuntimeRun:
    """ONNX Runtime timing on the JPEG set, with what the PyTorch run reuses."""

    provider: str
    classes: int
    batch_size: int
    batches: list[np.ndarray]
    logits: list[np.ndarray]
    timing: Timing
    agreement_percent: float  # top-1 labels equal to those of edgefx classify


def bench_onnxruntime(
    info: ModelInfo,
    jpeg_paths: Sequence[Path],
    cli_labels: dict[Path, str],
    args: argparse.Namespace,
) -> OnnxRuntimeRun:
    """Time ``session.run`` on the decoded JPEG set in the CLI's default batch size."""
    session = create_session(
        info.path, RuntimeOptions(device="cpu", threads=args.threads)
    )
    signature = read_signature(info, session.get_inputs(), session.get_outputs())
    batch_size = ClassifyOptions().batch_size
    batches = prepare_batches(jpeg_paths, choose_preprocess(info), batch_size)

    def run_session(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {signature.name: batch})[0]

    log(f"ONNX Runtime: {images_label(len(jpeg_paths))} in batches of {batch_size}")
    timing = time_batches(run_session, batches, args.repeat)
    logits = [run_session(batch) for batch in batches]
    indices = np.concatenate([batch_logits.argmax(axis=1) for batch_logits in logits])
    labels = model_labels(info)
    agree = sum(
        int(cli_labels.get(path) == (labels[i] if labels else str(i)))
        for path, i in zip(jpeg_paths, indices, strict=True)
    )
    return OnnxRuntimeRun(
        provider=provider_name(session),
        classes=signature.num_classes or len(labels or []),
        batch_size=batch_size,
        batches=batches,
        logits=logits,
        timing=timing,
        agreement_percent=100.0 * agree / len(jpeg_paths),
    )


def run_benchmark(
    args: argparse.Namespace, info: ModelInfo, work: Path
) -> dict[str, Any]:
    """Unpack the images, run every measurement and return all numbers."""
    load_at_start = load_average()
    expected, jpeg_paths = unpack_test_images(args, work)
    labels = model_labels(info)
    unknown = sorted(set(expected.values()) - set(labels or []))
    if unknown:
        log(
            f"NOTE: class folders {', '.join(unknown)} are not labels of the model, so "
            "their images count as wrong"
        )

    accuracy = measure_accuracy(work / "test", expected, work / "accuracy.jsonl", args)

    log(f"start-up: edgefx --help, {args.repeat} timed runs")
    startup = time_command([*edgefx_command(), "--help"], args.repeat)
    log(f"fixed cost: edgefx classify on 1 JPEG file, {args.repeat} timed runs")
    single = time_command(
        classify_command([jpeg_paths[0]], work / "one.jsonl", args), args.repeat
    )
    log(f"end to end: edgefx classify on {images_label(len(jpeg_paths))}")
    jpeg_out = work / "jpeg.jsonl"
    end_to_end = time_command(
        classify_command([work / "jpeg"], jpeg_out, args), args.repeat
    )

    onnx_run = bench_onnxruntime(info, jpeg_paths, read_labels_jsonl(jpeg_out), args)
    torch_result = bench_torch(
        info, onnx_run.classes, onnx_run.batches, onnx_run.logits, args
    )
    ort = onnx_run.timing
    count = len(jpeg_paths)
    ort_speed = count / ort.median
    marginal = None
    if count > 1 and end_to_end.median > single.median:
        marginal = (count - 1) / (end_to_end.median - single.median)
    machine = describe_machine(info, onnx_run.provider)
    machine["load_average_at_start"] = load_at_start
    if "parameters" in info.metadata:
        machine["model_parameters"] = int(info.metadata["parameters"])
    return {
        "machine": machine,
        "settings": {
            "data": str(args.data_file),
            "test_images": len(expected),
            "jpeg_images": count,
            "jpeg_quality": JPEG_QUALITY,
            "batch_size": onnx_run.batch_size,
            "threads": args.threads,
            "repeat": args.repeat,
            "command": " ".join(classify_command([Path("FOLDER")], Path("FILE"), args)),
        },
        "accuracy": accuracy,
        "startup": startup,
        "classify_one_file": single,
        "classify_jpeg": end_to_end,
        "classify_files_per_second": count / end_to_end.median,
        "classify_marginal_files_per_second": marginal,
        "onnxruntime": ort,
        "onnxruntime_images_per_second": ort_speed,
        "cli_onnxruntime_agreement_percent": onnx_run.agreement_percent,
        "torch": torch_result,
        "ratios": {
            "end_to_end_over_onnxruntime": (count / end_to_end.median) / ort_speed,
            "onnxruntime_over_torch": (
                ort_speed / torch_result.images_per_second
                if torch_result.images_per_second
                else None
            ),
        },
    }


# --------------------------------------------------------------------------------------
# Command line


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; expected an integer"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Measure the edgefx classifier on CIFAR-10: top-1 accuracy through "
            "edgefx classify, and images per second end to end, in ONNX Runtime "
            "alone and in PyTorch eager, on this CPU."
        )
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help=(
            "zip of the CIFAR-10 test images in CLASS/IMAGE layout (default: "
            "$EDGEFX_DATA/cifar10/test.zip, else ../shared/data/cifar10/test.zip "
            "beside the repository)"
        ),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME|PATH",
        help=f"shipped classify model name or .onnx path (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help=(
            "training checkpoint (.pt) of the same network for the PyTorch row "
            "(default: random weights)"
        ),
    )
    parser.add_argument(
        "--jpeg-count",
        type=positive_int,
        default=DEFAULT_JPEG_COUNT,
        metavar="N",
        help=(
            "test images written as JPEG files for the speed measurements "
            f"(default: {DEFAULT_JPEG_COUNT})"
        ),
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=available_cores(),
        metavar="N",
        help=(
            "CPU threads for ONNX Runtime, PyTorch and edgefx classify (default: the "
            f"logical cores available, {available_cores()} here)"
        ),
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=3,
        metavar="N",
        help="timed runs of each measurement after one warm-up run (default: 3)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="use only N evenly spaced test images, for a quick check",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write all numbers to FILE as JSON",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data_file = find_test_zip(args.data)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(f"error: --checkpoint {args.checkpoint}: file not found", file=sys.stderr)
        return 2
    try:
        info = resolve_model(args.model, "classify")
    except EdgefxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="edgefx-bench-classify-"))
    try:
        results = run_benchmark(args, info, work)
    except EdgefxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_report(results, args))

    if args.json is not None:
        args.json.write_text(
            json.dumps(to_json(results), indent=2) + "\n", encoding="utf-8"
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
