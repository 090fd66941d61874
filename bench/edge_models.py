"""Compare each shipped model's deployment variants on this machine, in one run.

For every model: file sizes (float32 ONNX, int8 QDQ ONNX, ORT format, float16 ONNX),
parameters, the latency and throughput of one model call for ONNX Runtime float32,
ONNX Runtime int8 and PyTorch eager on the CPU, and the int8 model's quality change
on test data (PSNR on CBSD68 at sigma 25, top-1 on the CIFAR-10 test zip, wide-band
PESQ on held-out speech and noise).

    python bench/edge_models.py [--models denoise-s ...] [--threads 1] [--repeats 20]

The int8 model is made here with edgefx.quantize, calibrated on training data, so the
enhancer can be measured without shipping an int8 file. PyTorch runs the same
architecture (edgefx.train.nets) with random weights, because speed does not depend on
the weights; the enhancer's are read from its ONNX file, which also gives its exact
layout. Needs the bench extra (pesq) and torch for the PyTorch column; without
torch that column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefx.convert import export_fp16, export_ort
from edgefx.quality import compare_speed
from edgefx.quantize import Comparison, QuantizeOptions, quantize_model
from edgefx.registry import ModelInfo, resolve_any_model, sha256_of
from edgefx.runtime import RuntimeOptions, create_session

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("denoise-s", "classify-cifar10", "enhance-speech")
# (calibration data, test data, default test items) per task, under the data folder.
DATA_FOR_TASK = {
    "denoise": ("images/train/CBSD432", "images/test/CBSD68", 12),
    "classify": ("cifar10/train.zip", "cifar10/test.zip", 2000),
    "enhance": ("audio", "audio", 10),
}


@dataclass
class ModelReport:
    name: str
    task: str
    parameters: int
    sizes: dict[str, int]
    call: str  # the input of one timed call, in words
    items_per_call: float
    unit: str  # what items_per_call counts
    seconds: dict[str, float]  # median seconds per call: fp32, int8, torch
    comparison: Comparison
    sha256: str
    torch_note: str = ""
    quantized_ops: dict[str, int] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def data_folder(requested: Path | None) -> Path:
    if requested is not None:
        return requested
    configured = os.environ.get("EDGEFX_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def model_inputs(info: ModelInfo) -> tuple[dict[str, np.ndarray], str, float, str]:
    """Return one call's inputs, described, with the items it processes."""
    rng = np.random.default_rng(0)
    if info.task == "denoise":
        image = rng.random((1, 3, 320, 480), dtype=np.float32)
        level = np.full((1, 1, 1, 1), 25 / 255, np.float32)
        return {"image": image, "noise_level": level}, "one 480x320 image", 0.1536, "MP"
    if info.task == "classify":
        batch = rng.standard_normal((8, 3, 32, 32), dtype=np.float32)
        return {"image": batch}, "a batch of 8 images 32x32", 8, "images"
    state_size = int(info.metadata["state_size"])
    feeds = {
        "audio": (0.1 * rng.standard_normal((1, 16000))).astype(np.float32),
        "state": np.zeros((1, state_size), np.float32),
        "min_gain": np.zeros(1, np.float32),
    }
    return feeds, "1 s of 16 kHz audio", 1.0, "s of audio"


def torch_call(
    info: ModelInfo, feeds: dict[str, np.ndarray], threads: int
) -> tuple[Callable[[], object] | None, str]:
    """Build the PyTorch eager network of ``info`` and its call.

    The denoiser and the classifier get random weights; the enhancer's come from its
    file.
    """
    try:
        import onnx
        import torch
    except ImportError:
        return None, "torch is not installed (pip install 'edgefx[train]')"
    from edgefx.train import nets

    if threads:
        torch.set_num_threads(threads)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    torch.manual_seed(0)
    note = ""
    module: Any
    if info.task == "denoise":
        shapes = {
            i.name: list(i.dims)
            for i in onnx.load(
                str(info.path), load_external_data=False
            ).graph.initializer
        }
        blocks = sum(1 for name in shapes if name.endswith(".conv1.weight"))
        module = nets.DenoiseNet(
            int(info.metadata.get("channels", "3")), shapes["head.weight"][0], blocks
        )
        arguments: tuple[Any, ...] = (tensors["image"], tensors["noise_level"])
    elif info.task == "classify":
        width = int(info.metadata.get("width", "16"))
        blocks = int(info.metadata.get("blocks", "3"))
        network = nets.CifarResNet(10, width, blocks)
        augmentation = info.metadata.get("test_time_augmentation")
        if augmentation:
            note = f"views averaged as the ONNX file does: {augmentation}"
        module = nets.average_views(network, augmentation)
        arguments = (tensors["image"],)
    else:
        # The ONNX file's weights give the exact architecture, the refinement
        # stage included.
        from edgefx.train.enhance import load_enhancer_weights

        module = load_enhancer_weights(info.path)
        arguments = (tensors["audio"], tensors["state"], tensors["min_gain"])
    if isinstance(module, torch.nn.Module):
        module.eval()
        parameters = sum(p.numel() for p in module.parameters())
        if parameters != int(info.metadata.get("parameters", parameters)):
            note = f"architecture guessed: {parameters:,} parameters"

    def run() -> object:
        with torch.inference_mode():
            return module(*arguments)

    return run, note


def bench_model(name: str, args: argparse.Namespace, work: Path) -> ModelReport:
    info = resolve_any_model(name)
    calibration, test_data, test_limit = DATA_FOR_TASK[info.task]
    root = data_folder(args.data)
    log(f"{name}: quantizing and scoring on {root / test_data}")
    quantized = work / f"{name}-int8.onnx"
    result = quantize_model(
        name,
        quantized,
        QuantizeOptions(
            calibration=root / calibration,
            test_data=root / test_data,
            test_limit=args.test_limit or test_limit,
            threads=args.threads,
        ),
    )
    assert result.comparison is not None  # test data was given
    export_ort(name, work / f"{name}.ort")
    export_fp16(name, work / f"{name}-fp16.onnx")
    sizes = {
        "fp32": info.path.stat().st_size,
        "int8": quantized.stat().st_size,
        "ort": (work / f"{name}.ort").stat().st_size,
        "fp16": (work / f"{name}-fp16.onnx").stat().st_size,
    }

    log(f"{name}: timing single model calls")
    feeds, call, items, unit = model_inputs(info)
    runtime = RuntimeOptions(device="cpu", threads=args.threads)
    calls: dict[str, Callable[[], object]] = {}
    for label, path in (("fp32", info.path), ("int8", quantized)):
        session = create_session(path, runtime)
        names = {i.name for i in session.get_inputs()}
        inputs = {k: v for k, v in feeds.items() if k in names}
        calls[label] = lambda session=session, inputs=inputs: session.run(None, inputs)
    torch_run, torch_note = torch_call(info, feeds, args.threads)
    if torch_run is not None:
        calls["torch"] = torch_run
    seconds = compare_speed(calls, args.repeats)
    return ModelReport(
        name=name,
        task=info.task,
        parameters=int(info.metadata.get("parameters", "0")),
        sizes=sizes,
        call=call,
        items_per_call=items,
        unit=unit,
        seconds=seconds,
        comparison=result.comparison,
        sha256=sha256_of(info.path),
        torch_note=torch_note,
        quantized_ops=result.quantized_nodes,
    )


def describe_machine(threads: int) -> list[str]:
    import onnxruntime

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs, load average {load:.2f}",
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"torch {torch_version}, numpy {np.__version__}",
        "ONNX Runtime threads: "
        + (str(threads) if threads else "default (one per physical core)"),
    ]


def format_report(reports: list[ModelReport], args: argparse.Namespace) -> str:
    lines = describe_machine(args.threads)
    lines += [
        "",
        "| model | parameters | fp32 ONNX | int8 ONNX | ORT format | fp16 ONNX |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        sizes = " | ".join(
            f"{r.sizes[k] / 1e6:.2f} MB" for k in ("fp32", "int8", "ort", "fp16")
        )
        lines.append(f"| {r.name} | {r.parameters:,} | {sizes} |")
    lines += [
        "",
        f"One model call, median of {args.repeats} interleaved runs on the CPU:",
        "",
        "| model | call | fp32 | int8 | PyTorch eager | int8 vs fp32 | fp32 vs torch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        cells = []
        for label in ("fp32", "int8", "torch"):
            if label not in r.seconds:
                cells.append("n/a")
                continue
            seconds = r.seconds[label]
            rate = r.items_per_call / seconds
            cells.append(f"{seconds * 1000:.2f} ms, {rate:,.1f} {r.unit}/s")
        int8_ratio = r.seconds["fp32"] / r.seconds["int8"]
        torch_ratio = (
            f"{r.seconds['torch'] / r.seconds['fp32']:.2f}x"
            if "torch" in r.seconds
            else "n/a"
        )
        lines.append(
            f"| {r.name} | {r.call} | {' | '.join(cells)} | {int8_ratio:.2f}x | "
            f"{torch_ratio} |"
        )
    lines += [
        "",
        "Quality of int8 against fp32 on test data (tolerance for the CPU default: "
        "0.1 dB PSNR, 0.5 points top-1, 0.05 PESQ):",
        "",
        "| model | test data | items | fp32 | int8 | change | int8 unscored | "
        "within | unit speed int8 vs fp32 | CPU default |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in reports:
        c = r.comparison
        lines.append(
            f"| {r.name} | {c.data} | {c.count} | {c.fp32:.3f} | {c.int8:.3f} | "
            f"{c.delta:+.3f} | {c.int8_failed} | "
            f"{'yes' if c.within_tolerance else 'no'} | "
            f"{c.speedup:.2f}x ({c.unit}) | {'int8' if c.ship_for_cpu else 'fp32'} |"
        )
    notes = [f"- {r.name}: SHA-256 {r.sha256[:16]}..." for r in reports]
    notes += [f"- {r.name}: PyTorch {r.torch_note}" for r in reports if r.torch_note]
    notes += [
        f"- {r.name}: int8 operators {json.dumps(r.quantized_ops, sort_keys=True)}"
        for r in reports
    ]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--data", type=Path, help="shared data folder")
    # One thread by default: the ratios then compare the runtimes per core, and a
    # shared machine's load disturbs them least. PyTorch gets the same count.
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for ONNX Runtime and PyTorch (0: each one's default)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per call")
    parser.add_argument(
        "--test-limit", type=int, help="test images or utterances per model"
    )
    args = parser.parse_args(argv)
    if not data_folder(args.data).is_dir():
        print(
            f"error: data folder {data_folder(args.data)} not found; pass --data or "
            "set EDGEFX_DATA",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="edgefx-bench-") as work:
        reports = [bench_model(name, args, Path(work)) for name in args.models]
    print(format_report(reports, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
