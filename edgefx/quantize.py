"""Static int8 quantization (QDQ) with ONNX Runtime, calibrated on real inputs.

``quantize_model`` builds calibration inputs for the model's task from a folder of
training data and runs onnxruntime.quantization.quantize_static. The new file's metadata
records what it was made from. Given test data, it also records how the int8 model's
quality and CPU speed compare with the float32 model's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefx.errors import ModelError, OutputError, UsageError
from edgefx.external_data import check_external_data
from edgefx.fsutil import (
    check_output_file,
    check_replaces_no_input,
    interrupts_deferred,
    work_folder,
)
from edgefx.quality import (
    ENHANCE_TEST_SNRS,
    MAX_CALIBRATION_SIGMA,
    METRIC_LABELS,
    METRIC_TOLERANCES,
    Quality,
    add_noise,
    calibration_audio,
    check_metric_packages,
    compare_speed,
    data_files,
    measure_quality,
    read_images,
    speed_workload,
)
from edgefx.registry import ModelInfo, resolve_any_model, sha256_of
from edgefx.runtime import RuntimeOptions
from edgefx.text import count_noun

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
CALIBRATION_CROP = 128  # pixels; denoiser calibration crops
MIN_CALIBRATION_SIDE = 64  # pixels; smaller denoiser calibration photos are skipped
CALIBRATION_SECONDS = 2.0  # per enhancer calibration clip
# Photos that --fine-tune reads, evenly spread over the calibration folder. They are
# held in memory as float32 (0.8 GB for CBSD432's 432 photos of 321x481).
FINE_TUNE_MAX_PHOTOS = 500
# At about 0.4 to 0.8 s a step on a 2-core CPU, more steps than this would run for
# days, which is a typo rather than a plan.
MAX_FINE_TUNE_STEPS = 100_000
ENHANCER_CHUNK_HOPS = 50  # hops per enhancer calibration input (0.5 s)
# Names of a streaming model's state input and output (the enhancer's).
STATE_INPUT = "state"
STATE_OUTPUT = "state_out"
# Ops that only move, select or reshape values. On a streaming model's state path they
# stay in float32 (see state_path_nodes).
DATA_MOVEMENT_OPS = frozenset(
    {
        "Concat",
        "Expand",
        "Flatten",
        "Gather",
        "Identity",
        "Reshape",
        "Slice",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)
# Repeated timings of one model on a shared CPU differ by a few percent, so int8 counts
# as faster only from this ratio of fp32 time to int8 time.
MIN_SPEEDUP = 1.1


@dataclass(frozen=True)
class QuantizeOptions:
    """Calibration data, optional test data and timing settings of a quantization."""

    calibration: Path
    test_data: Path | None = None
    samples: int = 64  # calibration inputs (photos, images or audio clips)
    test_limit: int | None = None  # test images or utterances; None: all
    per_channel: bool = True
    # Node names to quantize; empty quantizes every node that ONNX Runtime can.
    nodes: tuple[str, ...] = ()
    # Node names to leave in float32.
    exclude: tuple[str, ...] = ()
    threads: int = 0
    speed_repeats: int = 7
    # Even out per-channel activation ranges first (edgefx/equalize.py). None: the
    # task's default, on for the denoiser, where it was measured to help.
    equalize: bool | None = None
    # Activation ranges clipped at +-t, t being this percentile of the absolute
    # calibration values (ONNX Runtime's symmetric percentile calibration), and never
    # wider than the minimum and maximum; 100 takes the minimum and maximum. None: the
    # task's default (PERCENTILE_BY_TASK).
    percentile: float | None = None
    # Move each convolution's bias so that its output mean matches the float model's
    # on the calibration inputs (edgefx/biascorrect.py). None: the task's default,
    # which is off after fine-tuning.
    bias_correction: bool | None = None
    # Denoisers: fine-tune the weights this many steps on the calibration photos with
    # the int8 rounding simulated, then quantize them on the same grid
    # (edgefx/train/qat.py). Needs PyTorch.
    fine_tune_steps: int = 0
    fine_tune_learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UsageError(f"--samples must be 1 or more, got {self.samples}")
        if self.test_limit is not None and self.test_limit < 1:
            raise UsageError(f"--test-limit must be 1 or more, got {self.test_limit}")
        if not 0 <= self.fine_tune_steps <= MAX_FINE_TUNE_STEPS:
            raise UsageError(
                f"--fine-tune must be 0 to {MAX_FINE_TUNE_STEPS} steps, got "
                f"{self.fine_tune_steps}"
            )
        if self.percentile is not None and not 50.0 <= self.percentile <= 100.0:
            raise UsageError(
                f"--percentile must be from 50 to 100, got {self.percentile}"
            )


@dataclass(frozen=True)
class Comparison:
    """int8 against float32: quality on test data and CPU seconds per unit of work."""

    metric: str
    fp32: float
    int8: float
    count: int
    data: str
    fp32_seconds: float
    int8_seconds: float
    unit: str
    int8_failed: int = 0  # test items the int8 model's output could not be scored on
    int8_count: int = 0  # test items int8 was scored on; its mean covers only these

    @property
    def delta(self) -> float:
        return self.int8 - self.fp32

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.int8_seconds

    @property
    def tolerance(self) -> float:
        return METRIC_TOLERANCES[self.metric]

    @property
    def within_tolerance(self) -> bool:
        """Whether int8 lost at most the tolerance and failed on no test item."""
        return self.int8_failed == 0 and self.delta >= -self.tolerance

    @property
    def scored(self) -> bool:
        """False when the test data could not be scored (see ``verdict``)."""
        return self.metric != "top1_percent" or self.fp32 > 0

    @property
    def verdict(self) -> str:
        """Whether int8 is fit to be the CPU default, and the reason when it is not."""
        if self.ship_for_cpu:
            return "faster and within tolerance: fit to be the CPU default"
        if not self.scored:
            # Each test image's label is the name of its folder, so images in folders
            # not named after the model's labels, as in a flat folder, score 0 %.
            return (
                "not measured: the fp32 model scored 0 % top-1 on the test data, so "
                "its folder names are probably not the model's labels; give a folder "
                "or zip with one subfolder per class, named as the model's labels"
            )
        if self.int8_failed:
            reason = f"its output could not be scored on {self.int8_failed} test items"
        elif not self.within_tolerance:
            unit = TOLERANCE_UNITS[self.metric]
            reason = f"quality drops by more than {self.tolerance:g} {unit}"
        else:
            reason = f"less than {MIN_SPEEDUP:g} times as fast as fp32 on this CPU"
        return f"not fit to be the CPU default: {reason}"

    @property
    def ship_for_cpu(self) -> bool:
        """int8 is the CPU default only when it is faster and close enough.

        A top-1 accuracy of 0 % for fp32 is taken as test data that could not be
        scored, so it never makes int8 the default.
        """
        return self.scored and self.within_tolerance and self.speedup >= MIN_SPEEDUP


# Tasks whose models are equalized unless asked otherwise. On the denoiser it cut the
# int8 loss on CBSD68 at sigma 25 from 0.41 to 0.24 dB (denoise-s version 3).
EQUALIZE_BY_DEFAULT = ("denoise",)

# Activation range percentiles by task; other tasks take the minimum and maximum.
# Chosen on 18 held-out CBSD432 training photos (not the test set) with denoise-s
# version 3, equalized, sigma 25: int8 lost 0.24 dB with the minimum and maximum,
# 0.15 at 99.99, 0.13 at 99.95, 0.14 at 99.9 and 0.19 at 99.8.
PERCENTILE_BY_TASK = {"denoise": 99.95}

# Tasks whose quantized convolutions get their biases corrected unless asked otherwise.
# On the 18 validation photos above (percentile 99.95) it raised the int8 PSNR of
# denoise-s version 3 by 0.015 dB, both fully quantized and with the tail in float32.
BIAS_CORRECTION_BY_DEFAULT = ("denoise",)


# Units of METRIC_TOLERANCES: top-1 accuracy drops in percentage points.
TOLERANCE_UNITS = {
    "psnr_db": "dB PSNR",
    "top1_percent": "percentage points of top-1 accuracy",
    "pesq_wb": "PESQ",
}


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    source: ModelInfo
    quantized_nodes: dict[str, int]
    calibration_inputs: int
    comparison: Comparison | None


def _reader(feeds: list[Feeds]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class ListReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.position = 0

        def get_next(self) -> Feeds | None:
            if self.position >= len(feeds):
                return None
            self.position += 1
            return feeds[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

    return ListReader()


def _warn_if_fewer(count: int, noun: str, samples: int) -> None:
    """Warn that calibration uses ``count`` inputs when it is below --samples."""
    if count < samples:
        logger.warning(
            "calibrating on %s instead of --samples %d",
            count_noun(count, noun),
            samples,
        )


def denoise_feeds(
    info: ModelInfo, source: Path, samples: int, threads: int = 0
) -> list[Feeds]:
    """Noisy crops of training photos at sigma 0-75, with their noise level."""
    from edgefx.denoise import Denoiser

    denoiser = Denoiser(str(info.path), RuntimeOptions(device="cpu", threads=threads))
    signature = denoiser.signature
    rng = np.random.default_rng(0)
    feeds = []
    calibration = []
    for name, folder, clean in read_images(source, samples, skip_unreadable=True):
        # Smaller crops calibrate ranges that the model's real inputs exceed, and a
        # photo of 1 pixel cannot be cropped at all.
        if min(clean.shape[:2]) < MIN_CALIBRATION_SIDE:
            logger.warning(
                "%s: skipped, %dx%d is smaller than %d pixels on a side",
                name,
                clean.shape[1],
                clean.shape[0],
                MIN_CALIBRATION_SIDE,
            )
            continue
        calibration.append((name, folder, clean))
    if not calibration:
        raise UsageError(
            f"--calibrate {source}: no photo is at least {MIN_CALIBRATION_SIDE} pixels "
            "on each side; give training photos of at least that size"
        )
    _warn_if_fewer(len(calibration), "photo", samples)
    for index, (name, _, clean) in enumerate(calibration):
        multiple = signature.size_multiple
        height = min(CALIBRATION_CROP, clean.shape[0]) // multiple * multiple
        width = min(CALIBRATION_CROP, clean.shape[1]) // multiple * multiple
        top = int(rng.integers(0, clean.shape[0] - height + 1))
        left = int(rng.integers(0, clean.shape[1] - width + 1))
        crop = clean[top : top + height, left : left + width]
        # Noise levels spread evenly over the range the model accepts.
        sigma = MAX_CALIBRATION_SIGMA * (index + 0.5) / len(calibration)
        noisy = add_noise(crop, sigma, name).astype(np.float32) / 255.0
        if signature.channels == 1:
            noisy = noisy.mean(axis=2, keepdims=True)
        batch = noisy.transpose(2, 0, 1)[None] * signature.input_scale
        feed = {signature.image_input: np.ascontiguousarray(batch, np.float32)}
        if signature.level_input:
            level = np.full((1, 1, 1, 1), sigma / 255.0 * signature.input_scale)
            feed[signature.level_input] = level.astype(np.float32)
        feeds.append(feed)
    return feeds


def classify_feeds(
    info: ModelInfo, source: Path, samples: int, threads: int = 0
) -> list[Feeds]:
    """Training images, prepared as the classifier prepares them, one per input."""
    from edgefx.classify import Classifier, prepare_image

    classifier = Classifier(
        str(info.path), RuntimeOptions(device="cpu", threads=threads)
    )
    name = classifier.signature.name
    feeds = [
        {name: prepare_image(pixels, classifier.preprocess)[None]}
        for _, _, pixels in read_images(source, samples, skip_unreadable=True)
    ]
    _warn_if_fewer(len(feeds), "image", samples)
    return feeds


def enhance_feeds(
    info: ModelInfo, source: Path, samples: int, threads: int = 0
) -> list[Feeds]:
    """Chunks of noisy training speech, each with the state the float model reached.

    The float32 model runs over each clip, so the state fed with each chunk is one the
    quantized model will really see.
    """
    from edgefx.enhance import Enhancer

    enhancer = Enhancer(str(info.path), RuntimeOptions(device="cpu", threads=threads))
    chunk = ENHANCER_CHUNK_HOPS * enhancer.hop
    clips = calibration_audio(source, samples, CALIBRATION_SECONDS)
    _warn_if_fewer(len(clips), "recording", samples)
    feeds = []
    for clip in clips:
        state = np.zeros((1, enhancer.state_size), np.float32)
        for start in range(0, len(clip) - chunk + 1, chunk):
            feed = {
                "audio": clip[None, start : start + chunk],
                "state": state,
                "min_gain": np.zeros(1, np.float32),
            }
            feeds.append(feed)
            _, state, _ = enhancer.session.run(None, feed)
    if not feeds:
        raise UsageError(f"{source}: the recordings are shorter than 0.5 s")
    logger.info(
        "cut %s into %s of %g s",
        count_noun(len(clips), "recording"),
        count_noun(len(feeds), "model input"),
        chunk / enhancer.rate,
    )
    return feeds


FEEDS_FOR_TASK = {
    "denoise": denoise_feeds,
    "classify": classify_feeds,
    "enhance": enhance_feeds,
}


# Ops whose second input is a weight tensor.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _count_quantized(model: onnx.ModelProto) -> dict[str, int]:
    """Count the float ops that got int8 inputs: consumers of DequantizeLinear.

    An op with weights counts only when its weights are int8: a convolution left in
    float32 (``--exclude``) still reads the int8 output of the op before it.
    """
    dequantized = {
        output
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        for output in node.output
    }
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            quantized = node.input[1] in dequantized
        else:
            quantized = any(name in dequantized for name in node.input)
        if quantized:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def compare(
    source: Path,
    quantized: Path,
    task: str,
    test_data: Path,
    options: QuantizeOptions,
) -> Comparison:
    """Measure both files' quality on ``test_data`` and their CPU speed, interleaved."""
    qualities: dict[str, Quality] = {}
    for label, path in (("fp32", source), ("int8", quantized)):
        logger.info("scoring the %s model on %s", label, test_data)
        qualities[label] = measure_quality(
            path, task, test_data, options.test_limit, options.threads
        )
    sample = test_data if task != "enhance" else None
    fp32_run, unit, _ = speed_workload(source, task, sample, options.threads)
    int8_run, _, _ = speed_workload(quantized, task, sample, options.threads)
    seconds = compare_speed({"fp32": fp32_run, "int8": int8_run}, options.speed_repeats)
    fp32, int8 = qualities["fp32"], qualities["int8"]
    return Comparison(
        metric=fp32.metric,
        fp32=fp32.value,
        int8=int8.value,
        count=fp32.count,
        data=fp32.data,
        fp32_seconds=seconds["fp32"],
        int8_seconds=seconds["int8"],
        unit=unit,
        int8_failed=int8.failed,
        int8_count=int8.count,
    )


def describe(comparison: Comparison) -> str:
    """Format int8 quality, its change and the CPU speedup as one line."""
    label = METRIC_LABELS[comparison.metric]
    items = f"{comparison.count} test items"
    if comparison.metric == "pesq_wb":
        utterances = comparison.count // len(ENHANCE_TEST_SNRS)
        items = (
            f"{comparison.count} test mixtures "
            f"({count_noun(utterances, 'utterance')} at "
            f"{len(ENHANCE_TEST_SNRS)} SNRs)"
        )
    if comparison.int8_failed:
        items += (
            f" (int8 on {comparison.int8_count}: its output could not be scored on "
            f"{comparison.int8_failed})"
        )
    speed = f"{comparison.speedup:.2f}x fp32 speed on the CPU it was measured on"
    if not comparison.scored:
        return f"top-1 accuracy not measured on {items}, {speed}"
    return (
        f"int8 {comparison.int8:.2f} {label} ({comparison.delta:+.2f} vs fp32 "
        f"{comparison.fp32:.2f}) on {items}, {speed}"
    )


def _write_metadata(
    model: onnx.ModelProto, source: ModelInfo, record: dict[str, Any], key_metric: str
) -> None:
    values = dict(source.metadata)
    values.update(
        name=f"{source.name}-int8",
        precision="int8",
        variant_of=source.name,
        quantization=json.dumps(record, sort_keys=True),
        key_metric=key_metric,
    )
    del model.metadata_props[:]
    for key, value in sorted(values.items()):
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value


def state_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Return the names of the data-movement nodes carrying a streaming model's state.

    These are the nodes reached from the ``state`` input through data-movement ops
    only, and those that reach the ``state_out`` output that way. Calibration gets one
    state per calibration input but many frames of the same quantities inside each
    input, so the ranges calibrated on the state's own tensors are too narrow. An
    int8 model with those tensors quantized clips the state from call to call, and
    its output fed hop by hop then differs from one call's output (by up to 0.25 on
    a sample recording with the enhancer). Left in float32, the state reaches the
    next quantized op as the values from inside the call do, and the two agree.
    Empty for a model without both names.
    """
    graph = model.graph
    if STATE_INPUT not in {value.name for value in graph.input} or STATE_OUTPUT not in {
        value.name for value in graph.output
    }:
        return []
    producers = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, None] = {}
    pending = [STATE_INPUT]
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.op_type in DATA_MOVEMENT_OPS and node.name not in found:
                found[node.name] = None
                pending.extend(node.output)
    pending = [STATE_OUTPUT]
    while pending:
        producer = producers.get(pending.pop())
        if (
            producer is not None
            and producer.op_type in DATA_MOVEMENT_OPS
            and producer.name not in found
        ):
            found[producer.name] = None
            pending.extend(producer.input)
    return list(found)


def _check_node_names(info: ModelInfo, nodes: tuple[str, ...]) -> None:
    if not nodes:
        return
    import onnx

    graph = onnx.load(str(info.path), load_external_data=False).graph
    names = {node.name for node in graph.node}
    missing = [name for name in nodes if name not in names]
    if missing:
        raise UsageError(
            f"{info.path}: no {'node' if len(missing) == 1 else 'nodes'} named "
            f"{', '.join(missing)}; the graph's nodes are "
            "listed by onnx.load(path).graph.node"
        )


def _common_shape(feeds: list[Feeds]) -> list[Feeds]:
    """Crop every input to the smallest size seen on each axis, from the top left.

    ONNX Runtime's histogram calibration stacks the outputs for all inputs into one
    array, which fails when the calibration photos differ in size. Sizes that are
    multiples of the model's size_multiple stay so, because each minimum is one of
    them.
    """
    smallest: dict[str, tuple[int, ...]] = {}
    for feed in feeds:
        for name, value in feed.items():
            known = smallest.get(name, value.shape)
            smallest[name] = tuple(
                min(a, b) for a, b in zip(known, value.shape, strict=True)
            )
    if all(
        value.shape == smallest[name] for feed in feeds for name, value in feed.items()
    ):
        return feeds
    logger.info(
        "calibration inputs differ in size; cropped to %s for the percentile ranges",
        ", ".join(f"{name} {list(shape)}" for name, shape in smallest.items()),
    )
    return [
        {
            name: np.ascontiguousarray(
                value[tuple(slice(0, size) for size in smallest[name])]
            )
            for name, value in feed.items()
        }
        for feed in feeds
    ]


def quantize_model(
    model: str, output: Path, options: QuantizeOptions
) -> QuantizeResult:
    """Write a QDQ int8 copy of ``model`` (shipped name or path) to ``output``.

    Activations are uint8 and weights int8 (per channel unless options say otherwise),
    calibrated over the inputs built from ``options.calibration`` (minimum and
    maximum, or percentiles where the task or the options request them). Given
    ``options.test_data``, both models are scored and timed, and the result goes into
    the new file's ``quantization`` metadata and its ``key_metric``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info = resolve_any_model(model)
    if info.metadata.get("precision", "fp32") != "fp32":
        raise UsageError(
            f"{info.path}: this model is already {info.metadata['precision']}; "
            "quantize the float32 model"
        )
    _check_node_names(info, options.nodes)
    _check_node_names(info, options.exclude)
    both = sorted(set(options.nodes) & set(options.exclude))
    if both:
        raise UsageError(
            f"{', '.join(both)}: given to both --nodes and --exclude; name each node "
            "in one of them"
        )
    if options.fine_tune_steps and options.nodes:
        raise UsageError(
            "--fine-tune cannot be combined with --nodes: the fine-tune simulates "
            "every quantizable node; use --exclude to keep nodes in float32"
        )
    if options.fine_tune_steps and not options.per_channel:
        raise UsageError(
            "--fine-tune simulates weights rounded per channel; drop --no-per-channel"
        )
    if options.fine_tune_steps and info.task != "denoise":
        raise UsageError(
            f"{info.path}: --fine-tune works on denoisers only; this model's task is "
            f"{info.task}"
        )
    if options.fine_tune_steps:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            raise UsageError(
                '--fine-tune needs PyTorch: pip install "torch>=2.2" '
                '"onnxscript>=0.1", or pip install -e ".[train]" in the edgefx '
                "checkout"
            ) from err
    if options.test_data is not None:
        check_metric_packages(info.task)
    if output.is_dir():
        raise UsageError(f"--out {output} is a directory; give a file path")
    # Checked before calibrating, which takes minutes; _save_atomically writes the
    # temporary file first.
    partial = _partial_path(output)
    check_replaces_no_input(output, [output, partial], _input_files(info, options))
    check_output_file(output, temporary_names=(partial.name,))
    if output.exists():
        logger.warning("%s exists and will be replaced", output)

    feeds = FEEDS_FOR_TASK[info.task](
        info, options.calibration, options.samples, options.threads
    )
    logger.info(
        "calibrating %s on %s from %s",
        info.name,
        count_noun(len(feeds), "model input"),
        options.calibration,
    )
    equalize = options.equalize
    if equalize is None:
        equalize = info.task in EQUALIZE_BY_DEFAULT
    percentile = options.percentile
    if percentile is None:
        percentile = PERCENTILE_BY_TASK.get(info.task, 100.0)
    bias_correction = options.bias_correction
    if bias_correction is None:
        # After fine-tuning, the float model that bias correction would match is the
        # fine-tuned one, which has moved away from the shipped model: on 18
        # held-out photos the correction cost 0.06 dB there.
        bias_correction = (
            info.task in BIAS_CORRECTION_BY_DEFAULT and not options.fine_tune_steps
        )
    with work_folder("edgefx-quantize-") as work:
        source = info.path
        equalized = None
        if equalize:
            equalized = _equalize(info, feeds, Path(work, "equalized.onnx"), options)
            source = Path(work, "equalized.onnx")
        prepared = Path(work, "prepared.onnx")
        quantized = Path(work, "quantized.onnx")
        try:
            # Shape inference and graph cleanup, as ONNX Runtime's docs advise.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as err:  # noqa: BLE001 - the unprepared graph also quantizes
            logger.warning(
                "pre-processing failed (%s); quantizing the graph as is", err
            )
            prepared = source
        method = CalibrationMethod.MinMax
        extra: dict[str, Any] = {}
        if percentile < 100.0:
            method = CalibrationMethod.Percentile
            extra = {"CalibPercentile": percentile}
            feeds = _common_shape(feeds)
        state_nodes = state_path_nodes(onnx.load(str(prepared)))
        if state_nodes:
            logger.info(
                "kept %s on the state path in float32",
                count_noun(len(state_nodes), "data-movement node"),
            )
        _run_quantize_static(
            info, prepared, quantized, feeds, options, method, extra, state_nodes
        )
        proto = onnx.load(str(quantized))
        counts = _count_quantized(proto)
        if not counts:
            raise ModelError(
                f"{info.path}: ONNX Runtime quantized no operator of this model"
            )
        if options.fine_tune_steps:
            prepared = _fine_tune(info, source, proto, feeds, options, Path(work))
            quantized = Path(work, "fine-tuned-int8.onnx")
            proto = onnx.load(str(quantized))
        _check_quantization_parameters(info, proto)
        corrected = 0
        if bias_correction:
            from edgefx.biascorrect import correct_biases

            corrected = correct_biases(
                onnx.load(str(prepared)), proto, feeds, options.threads
            )
            onnx.save(proto, str(quantized))
            logger.info("corrected the biases of %d convolutions", corrected)

        comparison = None
        if options.test_data is not None:
            comparison = compare(
                info.path, quantized, info.task, options.test_data, options
            )
        record: dict[str, Any] = {
            "format": "QDQ, activations uint8, weights int8 "
            + ("per channel" if options.per_channel else "per tensor"),
            "calibration": f"{len(feeds)} inputs from {options.calibration.name} "
            "(training data), "
            + ("MinMax" if percentile >= 100.0 else f"percentile {percentile:g}"),
            "quantized_ops": counts,
            "source_sha256": sha256_of(info.path),
        }
        if options.nodes:
            record["nodes"] = list(options.nodes)
        if options.exclude:
            record["excluded_nodes"] = list(options.exclude)
        if state_nodes:
            record["float32_state_path_nodes"] = len(state_nodes)
        if bias_correction:
            record["bias_corrected_convolutions"] = corrected
        if options.fine_tune_steps:
            record["fine_tuned"] = (
                f"{options.fine_tune_steps} steps at a peak learning rate of "
                f"{options.fine_tune_learning_rate:g} on {options.calibration.name} "
                "with this model's int8 rounding simulated (edgefx/train/qat.py)"
            )
        if equalized is not None:
            record["equalized"] = equalized
        key_metric = info.metadata.get("key_metric", "")
        if comparison is not None:
            record["test"] = {
                **asdict(comparison),
                "delta": round(comparison.delta, 4),
                "speedup": round(comparison.speedup, 3),
                "tolerance": comparison.tolerance,
            }
            key_metric = describe(comparison)
        _write_metadata(proto, info, record, key_metric)
        _save_atomically(proto, output)
    return QuantizeResult(output, info, counts, len(feeds), comparison)


def _check_quantization_parameters(info: ModelInfo, proto: onnx.ModelProto) -> None:
    """Raise ModelError when a scale or zero point of the int8 model is not finite.

    ONNX Runtime 1.31 does not reject every such value: an infinite calibration range
    gives an infinite scale without an error. Such a model runs without an error and
    returns wrong values.
    """
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in proto.graph.initializer}
    bad: dict[str, None] = {}
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input[1:3]:
            tensor = constants.get(name)
            if tensor is None or name in bad:
                continue
            values = numpy_helper.to_array(tensor)
            is_float = np.issubdtype(values.dtype, np.floating)
            if is_float and not np.isfinite(values).all():
                bad[name] = None
    if bad:
        listed = ", ".join(list(bad)[:5]) + (", ..." if len(bad) > 5 else "")
        raise ModelError(
            f"{info.path}: the calibration gave NaN or infinite quantization "
            f"parameters ({listed}), so no model was written; check that the model's "
            "activations on the calibration data are finite"
        )


def _input_files(info: ModelInfo, options: QuantizeOptions) -> list[Path]:
    """Return the files that a quantization reads.

    These are the model, its external-data files, and the calibration and test
    images or recordings.
    """
    folder = info.path.parent
    files = [info.path]
    files += [folder / location for location in check_external_data(info.path)]
    files += data_files(options.calibration)
    if options.test_data is not None:
        files += data_files(options.test_data)
    return files


def _equalize(
    info: ModelInfo, feeds: list[Feeds], output: Path, options: QuantizeOptions
) -> str:
    """Write the equalized float model to ``output``; describe what changed."""
    import onnx

    from edgefx.equalize import equalize

    result = equalize(onnx.load(str(info.path)), feeds, threads=options.threads)
    onnx.save(result.model, str(output))
    return result.describe()


def _run_quantize_static(
    info: ModelInfo,
    prepared: Path,
    output: Path,
    feeds: list[Feeds],
    options: QuantizeOptions,
    method: Any,
    extra: dict[str, Any],
    float_nodes: list[str],
) -> None:
    """Run ONNX Runtime's QDQ quantize_static with uint8 activations, int8 weights.

    ``float_nodes`` stay in float32 as well as the ones the options exclude. ONNX
    Runtime leaves an excluded node in float32 even where --nodes names it.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # The histogram calibration prints its progress to stdout, which belongs to the
    # user's pipeline; it goes to the debug log instead.
    printed = io.StringIO()
    # quantize_static advises pre-processing on the root logger whenever the graph lacks
    # its pre-processing mark, which a user cannot act on: this module pre-processes
    # every graph it can and warns itself when that fails.
    advice = _DropMessage("Please consider pre-processing")
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        # numpy warns, without a file name, when a calibration range is NaN or
        # infinite. _check_quantization_parameters reports those cases instead.
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            quantize_static(
                str(prepared),
                str(output),
                _reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_quantize=list(options.nodes) or None,
                nodes_to_exclude=list(dict.fromkeys([*options.exclude, *float_nodes]))
                or None,
                extra_options=extra,
            )
    except AssertionError as err:
        if str(err) != "scale issue":
            raise ModelError(f"{info.path}: quantization failed: {err}") from err
        # onnxruntime.quantization.quant_utils asserts that each scale is at least 0,
        # which fails for the NaN scale of a NaN calibration range.
        raise ModelError(
            f"{info.path}: quantization failed: a calibration range is NaN; check "
            "that the model's activations on the calibration data are finite"
        ) from err
    except Exception as err:  # onnxruntime raises many types here
        raise ModelError(f"{info.path}: quantization failed: {err}") from err
    finally:
        root.removeFilter(advice)
        for line in printed.getvalue().splitlines():
            logger.debug("onnxruntime: %s", line)


class _DropMessage(logging.Filter):
    """Logging filter that drops records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _fine_tune(
    info: ModelInfo,
    source: Path,
    calibrated: onnx.ModelProto,
    feeds: list[Feeds],
    options: QuantizeOptions,
    work: Path,
) -> Path:
    """Fine-tune the denoiser on ``calibrated``'s grid and quantize it on that grid.

    ``source`` is the float model that was calibrated (the equalized copy, if any).
    Writes work/fine-tuned-int8.onnx and returns the prepared float model it came from.
    """
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgefx.train.denoise import load_denoiser_weights
    from edgefx.train.export import export_denoiser
    from edgefx.train.qat import fine_tune, read_grid

    if options.threads:
        torch.set_num_threads(options.threads)
    grid = read_grid(calibrated)
    constants = {t.name for t in calibrated.graph.initializer}
    float_convolutions = tuple(
        node.input[1].removesuffix(".weight")
        for node in calibrated.graph.node
        if node.op_type == "Conv" and node.input[1] in constants
    )
    photos = [
        pixels.astype(np.float32) / 255.0
        for _, _, pixels in read_images(
            options.calibration, FINE_TUNE_MAX_PHOTOS, skip_unreadable=True
        )
    ]
    logger.info(
        "fine-tuning %s for %d steps on %s on its int8 grid",
        info.name,
        options.fine_tune_steps,
        count_noun(len(photos), "photo"),
    )
    try:
        tuned = fine_tune(
            load_denoiser_weights(info.path),
            load_denoiser_weights(source),
            grid,
            photos,
            options.fine_tune_steps,
            options.fine_tune_learning_rate,
            float_convolutions,
        )
    except ValueError as err:
        raise ModelError(f"{info.path}: cannot fine-tune: {err}") from err
    exported = work / "fine-tuned.onnx"
    export_denoiser(tuned, exported, dict(info.metadata))
    prepared = work / "fine-tuned-prepared.onnx"
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
    overrides = {
        name: [
            {
                "scale": np.array(scale, np.float32),
                "zero_point": np.array(zero_point, np.uint8),
            }
        ]
        for name, (scale, zero_point) in grid.items()
    }
    _run_quantize_static(
        info,
        prepared,
        work / "fine-tuned-int8.onnx",
        feeds,
        options,
        CalibrationMethod.MinMax,
        {"TensorQuantOverrides": overrides},
        [],
    )
    result = read_grid(onnx.load(str(work / "fine-tuned-int8.onnx")))
    for name, (scale, zero_point) in grid.items():
        got = result.get(name)
        if got is None or got[1] != zero_point or abs(got[0] - scale) > 1e-6 * scale:
            raise ModelError(
                f"{info.path}: the fine-tuned int8 model rounds {name} to another "
                f"grid ({got}) than the one it was trained on ({scale}, {zero_point})"
            )
    return prepared


def _partial_path(output: Path) -> Path:
    """Return the temporary path that _save_atomically writes before ``output``."""
    return output.with_name(f".{output.name}.partial")


def _save_atomically(model: onnx.ModelProto, output: Path) -> None:
    import onnx

    temporary = _partial_path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(temporary))
        temporary.replace(output)
    except BaseException as err:
        # Ctrl-C and SIGTERM (raised as an exception by the CLI) must not leave the
        # partial file either.
        with interrupts_deferred(), contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(output, err.strerror or str(err)) from err
        raise
