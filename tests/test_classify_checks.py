"""Load-time checks of `edgefx classify`: output types, sidecar values and labels.

Each broken model, sidecar or labels file must stop the run with one error line and
exit status 2 before any image is read, naming the file and the value at fault.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper

from edgefx.classify import format_top_k_csv, read_labels_file

LABELS = ["red", "green", "blue"]


def write_classifier(
    path: Path,
    classes: int = 3,
    output_type: int = TensorProto.FLOAT,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a classifier: per-channel mean, a MatMul to logits, then a Cast.

    A solid red image gets the highest logit for class 0, green for 1 and blue for 2.
    """
    weight = np.zeros((3, classes), np.float32)
    for channel in range(3):
        weight[channel, channel % classes] = 10.0
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["logits"]),
        helper.make_node("Cast", ["logits"], ["output"], to=output_type),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", output_type, ["N", classes])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classify_with_labels(
    image: Path, model: Path, labels: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI on ``image`` with ``model``, the unit preset and ``labels``."""
    return run_edgefx(
        "classify",
        image,
        "--model",
        model,
        "--preset",
        "unit",
        "--labels",
        labels,
        *extra,
        "--device",
        "cpu",
    )


def write_solid(path: Path, rgb: tuple[int, int, int]) -> Path:
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :] = rgb[::-1]  # OpenCV writes BGR
    assert cv2.imwrite(str(path), pixels)
    return path


@pytest.fixture
def red_image(tmp_path: Path) -> Path:
    return write_solid(tmp_path / "red.png", (255, 0, 0))


def assert_load_error(result, *fragments: str) -> str:
    """Check for one error line and exit 2; return the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    assert "unexpected error" not in result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]
    return lines[-1]


# --------------------------------------------------------------------------------------
# Output type


@pytest.mark.parametrize(
    ("output_type", "name"),
    [(TensorProto.STRING, "tensor(string)"), (TensorProto.INT64, "tensor(int64)")],
)
def test_non_float_output_rejected(
    output_type: int, name: str, red_image: Path, tmp_path: Path
) -> None:
    model = write_classifier(tmp_path / "model.onnx", output_type=output_type)

    result = run_edgefx(
        "classify", red_image, "--model", model, "--preset", "unit", "--device", "cpu"
    )

    line = assert_load_error(result, str(model), f"is of type {name}")
    assert "expected float logits of type tensor(float)" in line
    assert "failed:" not in result.stderr


@pytest.mark.parametrize("output_type", [TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_float16_double_outputs_run(
    output_type: int, red_image: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    model = write_classifier(tmp_path / "model.onnx", output_type=output_type)

    result = classify_with_labels(red_image, model, labels, "--format", "jsonl")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] == "red"


# --------------------------------------------------------------------------------------
# Sidecar and metadata values


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"mean": "[NaN, 0, 0]"}, "invalid mean [NaN, 0, 0]; every value must be a"),
        ({"mean": "[0, Infinity, 0]"}, "invalid mean [0, Infinity, 0]; every value"),
        ({"std": "[1, -Infinity, 1]"}, "invalid std [1, -Infinity, 1]; every value"),
        ({"std": "[1, NaN, 1]"}, "invalid std [1, NaN, 1]; every value must be a"),
        ({"std": "[0, 1, 1]"}, "invalid std [0.0, 1.0, 1.0]; every value must be"),
        ({"mean": "[true, 0, 0]"}, "invalid mean [true, 0, 0]; expected a JSON list"),
        (
            {"input_size": "[true, 32]"},
            "invalid input_size [true, 32]; expected [H, W]",
        ),
    ],
)
def test_sidecar_invalid_numbers_rejected(
    values: dict[str, str], reason: str, red_image: Path, tmp_path: Path
) -> None:
    model = write_classifier(tmp_path / "model.onnx")
    sidecar = tmp_path / "model.json"
    # The values are JSON text, so NaN and true appear as a hand-written file has them.
    fields = {"input_size": "[32, 32]", "labels": json.dumps(LABELS), **values}
    body = ", ".join(f'"{key}": {text}' for key, text in fields.items())
    sidecar.write_text("{" + body + "}", encoding="utf-8")

    result = run_edgefx("classify", red_image, "--model", model, "--device", "cpu")

    assert_load_error(result, f"{sidecar}: {reason}")


def test_metadata_nan_mean_rejected(red_image: Path, tmp_path: Path) -> None:
    metadata = {
        "input_size": "[32, 32]",
        "mean": "[NaN, 0.5, 0.5]",
        "labels": json.dumps(LABELS),
    }
    model = write_classifier(tmp_path / "model.onnx", metadata=metadata)

    result = run_edgefx("classify", red_image, "--model", model, "--device", "cpu")

    assert_load_error(result, f"{model} metadata: invalid mean")


def test_sidecar_folder_rejected(red_image: Path, tmp_path: Path) -> None:
    model = write_classifier(tmp_path / "model.onnx")
    (tmp_path / "model.json").mkdir()

    result = run_edgefx("classify", red_image, "--model", model, "--device", "cpu")

    line = assert_load_error(result, str(tmp_path / "model.json"))
    assert "the JSON sidecar is a folder" in line
    assert "next to it" not in line


def test_sidecar_broken_link_rejected(red_image: Path, tmp_path: Path) -> None:
    model = write_classifier(tmp_path / "model.onnx")
    os.symlink(tmp_path / "gone.json", tmp_path / "model.json")

    result = run_edgefx("classify", red_image, "--model", model, "--device", "cpu")

    assert_load_error(result, "the JSON sidecar is a broken link to")


# --------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("classes", "labels", "counts"),
    [
        (1, ["red", "green", "blue"], "the model has 1 class but 3 labels were given"),
        (3, ["red"], "the model has 3 classes but 1 label was given"),
    ],
)
def test_label_count_message_grammar(
    classes: int, labels: list[str], counts: str, red_image: Path, tmp_path: Path
) -> None:
    model = write_classifier(tmp_path / "model.onnx", classes=classes)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")

    result = classify_with_labels(red_image, model, labels_file)

    assert_load_error(result, counts)


def test_labels_byte_order_mark_dropped(red_image: Path, tmp_path: Path) -> None:
    model = write_classifier(tmp_path / "model.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xef\xbb\xbf" + "\n".join(LABELS).encode("utf-8"))

    assert read_labels_file(labels) == LABELS
    result = classify_with_labels(red_image, model, labels, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["label"] == "red"


def parse_top_k_csv(field: str) -> list[tuple[str, float]]:
    """Read a top_k field as a pipeline would: split, then percent-decode labels."""
    pairs = []
    for pair in field.split(";"):
        label, score = pair.split(":")
        pairs.append((unquote(label), float(score)))
    return pairs


def test_top_k_csv_escapes_separators() -> None:
    top = [("a:1;x", 0.5), ("50% off", 0.25), ("plain", 0.125), ("%3A", 0.125)]

    field = format_top_k_csv(top)

    assert (
        field == "a%3A1%3Bx:0.500000;50%25 off:0.250000;plain:0.125000;%253A:0.125000"
    )
    assert parse_top_k_csv(field) == top


def test_top_k_csv_survives_csv_module() -> None:
    top = [('say "hi", then go', 0.75), ("b", 0.25)]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["file.png", format_top_k_csv(top)])

    (row,) = csv.reader(io.StringIO(buffer.getvalue()))

    assert parse_top_k_csv(row[1]) == top


def test_cli_csv_top_k_escapes_labels(red_image: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a:1;x\ngreen\nblue\n", encoding="utf-8")
    model = write_classifier(tmp_path / "model.onnx")

    result = classify_with_labels(red_image, model, labels, "--format", "csv")

    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["label"] == "a:1;x"
    top = parse_top_k_csv(row["top_k"])
    assert [label for label, _ in top] == ["a:1;x", "green", "blue"]
