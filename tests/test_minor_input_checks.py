"""Smaller input and output checks of the CLI, each run on files the test writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper


def _write_classifier(
    path: Path, weight: np.ndarray, divisor: float, classes: int | str
) -> Path:
    """Write a classifier: channel means times ``weight``, divided by ``divisor``."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["scores"]),
        helper.make_node("Div", ["scores", "divisor"], ["output"]),
    ]
    constants = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.array([divisor], np.float32), "divisor"),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="input_size", value="[32, 32]")
    onnx.save(model, str(path))
    return path


def _write_photo(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(1, 256, (32, 32, 3), np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def test_zero_class_classifier_rejected(tmp_path: Path) -> None:
    weight = np.zeros((3, 0), np.float32)
    model = _write_classifier(tmp_path / "empty.onnx", weight, 1.0, 0)
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("-q", "classify", photo, "--model", model)

    assert result.returncode == 2, result.stderr
    assert f"error: {model}: the model's output 'output' has 0 classes" in (
        result.stderr
    )
    assert "unexpected error" not in result.stderr


def test_infinite_logits_fail_without_warning(tmp_path: Path) -> None:
    weight = np.eye(3, dtype=np.float32)
    model = _write_classifier(tmp_path / "inf.onnx", weight, 0.0, 3)
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("-q", "classify", photo, "--model", model)

    assert result.returncode == 1, result.stderr
    assert (
        f"failed: {photo}: the model output contains NaN or infinite values"
        in result.stderr
    )
    assert "RuntimeWarning" not in result.stderr


def test_explicit_link_loop_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop.name)
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("-q", "denoise", loop, photo, "--out", tmp_path / "out")

    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if str(loop) in line]
    assert failed == [
        f"failed: {loop}: too many levels of symbolic links (a link loop, or over 40 "
        "links in a row)"
    ]
    assert (tmp_path / "out" / "a.png").is_file()


def test_out_uri_echo_keeps_port(tmp_path: Path) -> None:
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("denoise", photo, "--out", "http://user:secret@127.0.0.1:1/x")

    assert result.returncode == 2, result.stderr
    assert "error: --out http://127.0.0.1:1/x: unsupported object store scheme" in (
        result.stderr
    )
    assert "secret" not in result.stderr
