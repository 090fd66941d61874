"""`edgefx export` of models whose weights are stored as ONNX external data.

The model is a tiny classifier whose MatMul weight lives in a separate file. Export
must copy a data file that sits inside the model's folder, and reject one outside it
with the same one-line error that classify and quantize give.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from edgefx.imageio import read_image

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTO = REPO_ROOT / "samples" / "clean" / "astronaut.png"
CLASSES = 4
OUTSIDE_FOLDER = "external data must be a file inside the model's folder"


def weight_values() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1, (3, CLASSES)).astype(np.float32)


def save_external_model(folder: Path, location: str, stored_in: Path | None) -> Path:
    """Write a classifier whose weight names ``location`` as its external data.

    The weight's bytes are written to ``stored_in`` (None writes no data file). The
    model itself goes to ``folder``/model.onnx.
    """
    folder.mkdir(parents=True, exist_ok=True)
    weight = weight_values()
    if stored_in is not None:
        stored_in.parent.mkdir(parents=True, exist_ok=True)
        stored_in.write_bytes(weight.tobytes())
    tensor = numpy_helper.from_array(weight, "weight")
    set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
            helper.make_node("MatMul", ["features", "weight"], ["logits"]),
        ],
        "external",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {
        "task": "classify",
        "name": "external-weights",
        "input_size": json.dumps([32, 32]),
        "labels": json.dumps([f"class{i}" for i in range(CLASSES)]),
    }
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def photo_batch() -> np.ndarray:
    """A 64x64 crop of a shipped sample photo as a (1, 3, 64, 64) float32 batch."""
    pixels = read_image(PHOTO).pixels[:64, :64, :3]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None] / 255.0, np.float32)


def run_model(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": photo_batch()})[0]


def export_arguments(model: Path, output: Path, kind: str) -> list[str | Path]:
    if kind == "ort":
        return ["export", model, "--format", "ort", "--out", output]
    return ["export", model, "--format", "onnx", "--fp16", "--out", output]


def output_path(tmp_path: Path, kind: str) -> Path:
    return tmp_path / "deploy" / ("model.ort" if kind == "ort" else "model-fp16.onnx")


@pytest.mark.parametrize("kind", ["ort", "fp16"])
@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_export_rejects_outside_data(where: str, kind: str, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    secret = tmp_path / "secret.bin"
    if where == "parent":
        model = save_external_model(folder, "../secret.bin", secret)
    elif where == "absolute":
        model = save_external_model(folder, str(secret), secret)
    else:
        model = save_external_model(folder, "link.bin", secret)
        os.symlink(secret, folder / "link.bin")
    output = output_path(tmp_path, kind)

    result = run_edgefx(*export_arguments(model, output, kind))

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {model}: tensor 'weight' has its data in")
    assert OUTSIDE_FOLDER in lines[0]
    assert not output.parent.exists()


@pytest.mark.parametrize("location", ["w.bin", "weights/w.bin"])
def test_export_ort_copies_data_file(location: str, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    model = save_external_model(folder, location, folder / location)
    output = output_path(tmp_path, "ort")

    result = run_edgefx(*export_arguments(model, output, "ort"))

    assert result.returncode == 0, result.stderr
    config = output.with_name("model.required_operators.config")
    assert sorted(p.name for p in output.parent.iterdir()) == sorted(
        [output.name, config.name]
    )
    assert "MatMul" in config.read_text(encoding="utf-8")
    # The .ort file contains the weight itself, so it runs without the data file.
    np.testing.assert_allclose(run_model(output), run_model(model), rtol=1e-5)


def test_export_fp16_reads_data_file(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    model = save_external_model(folder, "w.bin", folder / "w.bin")
    output = output_path(tmp_path, "fp16")

    result = run_edgefx(*export_arguments(model, output, "fp16"))

    assert result.returncode == 0, result.stderr
    weights = {t.name: t for t in onnx.load(str(output)).graph.initializer}
    assert weights["weight"].data_type == TensorProto.FLOAT16
    np.testing.assert_allclose(run_model(output), run_model(model), atol=5e-3)


@pytest.mark.parametrize("kind", ["ort", "fp16"])
def test_export_missing_data_file(kind: str, tmp_path: Path) -> None:
    model = save_external_model(tmp_path / "models", "w.bin", None)
    output = output_path(tmp_path, kind)

    result = run_edgefx(*export_arguments(model, output, kind))

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "external data file 'w.bin' not found" in lines[0]
    assert not output.exists()
