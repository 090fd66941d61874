"""``quantize`` with NaN or infinite values in calibration.

A calibration recording with an infinite sample is skipped with a warning that names
it. A model whose activations overflow to infinity on the calibration images gets
infinite scales, and no int8 model may be written for it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import onnx
import soundfile as sf
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _scales(model: onnx.ModelProto) -> list[np.ndarray]:
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    return [
        numpy_helper.to_array(constants[node.input[1]])
        for node in model.graph.node
        if node.op_type in QDQ_OPS and node.input[1] in constants
    ]


def _write_classifier(
    path: Path, nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]
) -> None:
    """Write a classifier of 32x32 RGB images that runs ``nodes`` into 3 logits."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"task": "classify", "input_size": "[32, 32]"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_overflowing_classifier(path: Path) -> None:
    """Write a classifier that multiplies its input by 9e76, which overflows float32.

    Every pixel above 0 becomes +inf, so the calibration range of the MatMul input
    is [0, inf]. ONNX Runtime then computes an infinite scale without an error.
    """
    nodes = [
        helper.make_node("Mul", ["image", "big"], ["larger"]),
        helper.make_node("Mul", ["larger", "big"], ["overflowed"]),
        helper.make_node("Flatten", ["overflowed"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["output"]),
    ]
    constants = {
        "big": np.array([3e38], np.float32),
        "weight": np.full((3 * 32 * 32, 3), 0.01, np.float32),
    }
    _write_classifier(path, nodes, constants)


def _write_nan_classifier(path: Path) -> None:
    """Write a classifier whose activations are 0 / 0, so every range is NaN.

    ONNX Runtime's scale computation then fails its assertion "scale issue".
    """
    nodes = [
        helper.make_node("Sub", ["image", "image"], ["zeros"]),
        helper.make_node("Div", ["zeros", "zero"], ["divided"]),
        helper.make_node("GlobalAveragePool", ["divided"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["output"]),
    ]
    constants = {
        "zero": np.zeros(1, np.float32),
        "weight": np.eye(3, dtype=np.float32),
    }
    _write_classifier(path, nodes, constants)


def _write_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(1, 256, (40, 40, 3), np.uint8)
        assert cv2.imwrite(str(folder / f"a{index}.png"), pixels)


def test_infinite_recording_skipped(tmp_path: Path) -> None:
    calibration = tmp_path / "cal"
    calibration.mkdir()
    rng = np.random.default_rng(0)
    damaged = (0.05 * rng.standard_normal((16000, 1))).astype(np.float32)
    damaged[100] = np.inf
    sf.write(calibration / "inf.wav", damaged, 16000, subtype="FLOAT")
    clean = (0.05 * rng.standard_normal((32000, 1))).astype(np.float32)
    sf.write(calibration / "ok.wav", clean, 16000, subtype="FLOAT")
    out = tmp_path / "enhance-int8.onnx"

    result = run_edgefx(
        "quantize",
        "enhance-speech",
        "--calibrate",
        calibration,
        "--threads",
        "1",
        "--out",
        out,
    )

    assert result.returncode == 0, result.stderr
    warning = f"warning: {calibration / 'inf.wav'}: skipped, the recording contains "
    assert warning + "NaN or infinite samples at second 0.006" in result.stderr
    assert "calibrating on 1 recording instead of --samples 64" in result.stderr
    assert "RuntimeWarning" not in result.stderr
    scales = _scales(onnx.load(str(out)))
    assert scales
    assert all(np.isfinite(scale).all() for scale in scales)


def _quantize_on_photos(
    tmp_path: Path, model: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    _write_photos(tmp_path / "cal" / "cat")
    return run_edgefx(
        "quantize", model, "--calibrate", tmp_path / "cal", "--samples", "3",
        "--out", out,
    )  # fmt: skip


def test_infinite_scales_not_written(tmp_path: Path) -> None:
    model = tmp_path / "overflow.onnx"
    _write_overflowing_classifier(model)
    out = tmp_path / "overflow-int8.onnx"

    result = _quantize_on_photos(tmp_path, model, out)

    assert result.returncode == 2, result.stderr
    assert "NaN or infinite quantization parameters" in result.stderr
    assert "no model was written" in result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert not out.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cal", "overflow.onnx"]


def test_nan_range_named_in_error(tmp_path: Path) -> None:
    model = tmp_path / "nan.onnx"
    _write_nan_classifier(model)
    out = tmp_path / "nan-int8.onnx"

    result = _quantize_on_photos(tmp_path, model, out)

    assert result.returncode == 2, result.stderr
    assert "quantization failed: a calibration range is NaN" in result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert not out.exists()
