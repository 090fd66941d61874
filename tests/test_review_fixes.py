"""Bias correction of quantized models whose convolutions have no names or share a
bias, and distillation from a checkpoint that is not a classifier's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from cpu_features import needs_vnni
from onnx import TensorProto, helper, numpy_helper

from edgefx.biascorrect import _channel_means, correct_biases
from edgefx.imageio import read_image
from edgefx.quantize import QuantizeOptions, quantize_model

FEATURES = 8


def build_denoiser(path: Path, named: bool = True, shared_bias: bool = False) -> Path:
    """Write a residual denoiser: conv1, ReLU, a depthwise conv, ReLU, conv2.

    With ``shared_bias`` the depthwise convolution reads conv1's bias initializer.
    """
    rng = np.random.default_rng(3)
    initializers = {
        "w1": rng.normal(0, 0.3, (FEATURES, 3, 3, 3)),
        "b1": rng.normal(0, 0.05, FEATURES),
        "wd": rng.normal(0, 0.3, (FEATURES, 1, 3, 3)),
        "bd": rng.normal(0, 0.05, FEATURES),
        "w2": rng.normal(0, 0.05, (3, FEATURES, 3, 3)),
        "b2": np.full(3, 0.01),
    }
    if shared_bias:
        del initializers["bd"]

    def name(text: str) -> str:
        return text if named else ""

    pads = [1, 1, 1, 1]
    depthwise_bias = "b1" if shared_bias else "bd"
    nodes = [
        helper.make_node(
            "Conv", ["image", "w1", "b1"], ["c1"], name("conv1"), pads=pads
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name("relu1")),
        helper.make_node(
            "Conv",
            ["r1", "wd", depthwise_bias],
            ["cd"],
            name("dw"),
            pads=pads,
            group=FEATURES,
        ),
        helper.make_node("Relu", ["cd"], ["rd"], name("relu2")),
        helper.make_node(
            "Conv", ["rd", "w2", "b2"], ["noise"], name("conv2"), pads=pads
        ),
        helper.make_node("Sub", ["image", "noise"], ["denoised"], name("sub")),
    ]
    shape = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "denoiser",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, shape)],
        initializer=[
            numpy_helper.from_array(value.astype(np.float32), key)
            for key, value in initializers.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {
        "task": "denoise",
        "name": "review-denoiser",
        "parameters": "1",
        "key_metric": "none (test model)",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def quantize_plain(source: Path, output: Path, samples_dir: Path, **options) -> None:
    """Quantize ``source`` without bias correction, on two sample photos."""
    quantize_model(
        str(source),
        output,
        QuantizeOptions(
            calibration=samples_dir / "clean",
            samples=2,
            threads=1,
            equalize=False,
            bias_correction=False,
            **options,
        ),
    )


@pytest.fixture(scope="module")
def feeds(samples_dir: Path) -> list[dict[str, np.ndarray]]:
    batches = []
    for name in ("astronaut.png", "coffee.png"):
        pixels = read_image(samples_dir / "noisy" / name).pixels[:64, :64, :3]
        batch = pixels.transpose(2, 0, 1)[None] / 255.0
        batches.append({"image": np.ascontiguousarray(batch, np.float32)})
    return batches


def conv_outputs(proto: onnx.ModelProto) -> list[str]:
    return [node.output[0] for node in proto.graph.node if node.op_type == "Conv"]


def mean_errors(
    float_proto: onnx.ModelProto, quantized: onnx.ModelProto, feeds
) -> list[float]:
    """Largest per-channel difference of each convolution's output mean, in order."""
    float_names, quantized_names = conv_outputs(float_proto), conv_outputs(quantized)
    target = _channel_means(float_proto, float_names, feeds, threads=1)
    current = _channel_means(quantized, quantized_names, feeds, threads=1)
    return [
        float(np.abs(current[q] - target[f]).max())
        for f, q in zip(float_names, quantized_names, strict=True)
    ]


@needs_vnni
def test_bias_correction_unnamed_convolutions(
    samples_dir: Path, tmp_path: Path, feeds
) -> None:
    source = build_denoiser(tmp_path / "unnamed.onnx", named=False)
    quantized_path = tmp_path / "unnamed-int8.onnx"
    quantize_plain(source, quantized_path, samples_dir)
    float_proto = onnx.load(str(source))
    quantized = onnx.load(str(quantized_path))
    before = mean_errors(float_proto, quantized, feeds)

    corrected = correct_biases(float_proto, quantized, feeds, threads=1)

    after = mean_errors(float_proto, quantized, feeds)
    assert corrected == 3
    assert sum(after) < sum(before) / 3


@pytest.mark.parametrize("excluded", ["conv1", "dw"])
@needs_vnni
def test_bias_correction_copies_shared_bias(
    samples_dir: Path, tmp_path: Path, feeds, excluded: str
) -> None:
    source = build_denoiser(tmp_path / "shared.onnx", shared_bias=True)
    quantized_path = tmp_path / "shared-int8.onnx"
    # A convolution left in float32 keeps reading the bias it shares with conv1: the
    # float initializer, or the output of conv1's bias DequantizeLinear.
    quantize_plain(source, quantized_path, samples_dir, exclude=(excluded,))
    float_proto = onnx.load(str(source))
    quantized = onnx.load(str(quantized_path))
    biases = [n.input[2] for n in quantized.graph.node if n.op_type == "Conv"]
    assert biases[0] == biases[1]
    before = mean_errors(float_proto, quantized, feeds)

    assert correct_biases(float_proto, quantized, feeds, threads=1) == 3

    after = mean_errors(float_proto, quantized, feeds)
    for error_before, error_after in zip(before, after, strict=True):
        assert error_after <= max(error_before / 2, 1e-4)
    # Each convolution has its own bias now, so correcting one left the other alone.
    readers = Counter(n.input[2] for n in quantized.graph.node if n.op_type == "Conv")
    assert max(readers.values()) == 1
    onnx.checker.check_model(quantized)


def test_non_classifier_teacher_exit_2(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import cv2
    from cli_helpers import run_edgefx

    rng = np.random.default_rng(0)
    for label in ("dark", "light"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(4):
            pixels = rng.integers(0, 128, (16, 16, 3)) + (
                127 if label == "light" else 0
            )
            cv2.imwrite(
                str(tmp_path / "data" / label / f"{index}.png"), pixels.astype(np.uint8)
            )
    # The configuration of a speech enhancer's checkpoint.
    teacher = tmp_path / "enhancer.pt"
    config = {"hop": 160, "hidden": 8, "embedding": 8}
    torch.save({"model": {}, "config": config}, teacher)

    result = run_edgefx(
        "train", "classify",
        "--data", tmp_path / "data", "--work-dir", tmp_path / "student",
        "--epochs", "1", "--batch-size", "4", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--teacher", teacher,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"teacher {teacher}: not an edgefx classify training checkpoint" in (
        result.stderr
    )
