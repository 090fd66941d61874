"""Deeply nested JSON in a sidecar, model metadata or manifest gives one error line.

Python's json module raises RecursionError for arrays nested beyond the recursion
limit. Each case must stop with exit status 2 and the same one-line error as other
invalid JSON, with no traceback.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper

DEPTH = 5000


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _write_classifier(path: Path, metadata: dict[str, str]) -> Path:
    """Write a classifier of 32x32 RGB images: channel means times a 3x3 identity."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["output"]),
    ]
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32), "weight")
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _write_photo(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _assert_one_error_line(result, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "RecursionError" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-1][:300]


def test_deep_sidecar_rejected(tmp_path: Path) -> None:
    model = _write_classifier(tmp_path / "deep.onnx", {})
    sidecar = tmp_path / "deep.json"
    sidecar.write_text(f'{{"input_size": [32, 32], "x": {_nested(DEPTH)}}}')
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("-q", "classify", photo, "--model", model)

    _assert_one_error_line(
        result,
        f"error: {sidecar}: invalid JSON sidecar: arrays or objects are nested too "
        "deeply to decode",
    )


def test_deep_metadata_labels_rejected(tmp_path: Path) -> None:
    labels = _nested(DEPTH)
    metadata = {"input_size": "[32, 32]", "labels": labels}
    model = _write_classifier(tmp_path / "deep.onnx", metadata)
    photo = _write_photo(tmp_path / "a.png")

    result = run_edgefx("-q", "classify", photo, "--model", model)

    _assert_one_error_line(result, f"error: {model} metadata: invalid labels '[[[")
    assert result.stderr.strip().endswith(
        "...: arrays or objects are nested too deeply to decode"
    )
    assert labels not in result.stderr  # the value is cut short in the message


def test_deep_manifest_rejected(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(_nested(DEPTH))

    result = run_edgefx("models", models_dir=tmp_path)

    _assert_one_error_line(
        result,
        f"error: {manifest}: invalid model manifest: arrays or objects are nested "
        "too deeply to decode",
    )
