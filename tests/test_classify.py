"""Tests for edgefx.classify and `edgefx classify` on tiny ONNX classifiers.

The classifiers average each input channel and multiply by a fixed matrix, so a solid
red image is labeled "red", a green one "green" and a blue one "blue".
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper

from edgefx.batch import collect_inputs
from edgefx.classify import (
    COLOR_ORDERS,
    MAX_INPUT_SIDE,
    RESIZE_POLICIES,
    Classifier,
    ClassifyOptions,
    check_results_path,
)
from edgefx.errors import ModelError, UsageError
from edgefx.imageio import FORMATS
from edgefx.registry import sha256_of
from edgefx.runtime import RuntimeOptions

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
LABELS = ["red", "green", "blue"]
# Softmax scores of one image sum to 1, but float rounding may push the sum over.
SCORE_SUM_TOLERANCE = 1e-6

COLORS_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def contract_metadata(size: int = 32) -> dict[str, str]:
    return {
        "task": "classify",
        "name": "tiny-colors",
        "version": "1",
        "labels": json.dumps(LABELS),
        "input_size": json.dumps([size, size]),
        "mean": json.dumps([0.5, 0.5, 0.5]),
        "std": json.dumps([0.5, 0.5, 0.5]),
        "color_order": "RGB",
        "input_layout": "NCHW",
        "resize": "stretch",
    }


def write_color_classifier(
    path: Path,
    shape: list[int | str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a classifier: per-channel mean, then a MatMul to 3 logits."""
    channels = shape[1] if isinstance(shape[1], int) else 3
    weight = np.zeros((channels, 3), np.float32)
    for channel in range(channels):
        weight[channel, channel % 3] = 10.0
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weight"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 3])],
        [numpy_helper.from_array(weight, "weight")],
    )
    return save_model(path, graph, metadata)


def write_flat_classifier(path: Path) -> Path:
    """Write a classifier with a 2-D (N, 3) input, which edgefx rejects."""
    weight = np.eye(3, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weight"], ["logits"])],
        path.stem,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weight, "weight")],
    )
    return save_model(path, graph, contract_metadata())


def save_model(
    path: Path, graph: onnx.GraphProto, metadata: dict[str, str] | None
) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_solid(path: Path, color: str, size: tuple[int, int] = (40, 60)) -> Path:
    red, green, blue = COLORS_RGB[color]
    pixels = np.zeros((*size, 3), np.uint8)
    pixels[:, :] = (blue, green, red)  # OpenCV writes BGR
    assert cv2.imwrite(str(path), pixels)
    return path


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    return {
        "red": write_solid(folder / "red.png", "red"),
        "green": write_solid(folder / "green.jpg", "green", (50, 30)),
        "blue": write_solid(folder / "blue.png", "blue", (20, 20)),
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_color_classifier(
        tmp_path / "colors.onnx", ["N", 3, 32, 32], contract_metadata()
    )


def parse_jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_table_labels_colors(model: Path, images: dict[str, Path]) -> None:
    # rich wraps a table to 80 columns on a pipe, which would split the long paths.
    result = run_edgefx(
        "classify",
        *images.values(),
        "--model",
        model,
        "--device",
        "cpu",
        env={"COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    for color, path in images.items():
        line = next(row for row in result.stdout.splitlines() if path.name in row)
        assert color in line
        # The score column and the top-k list use the same three decimals.
        scores = re.findall(r"\b[01]\.\d+\b", line)
        assert scores
        assert {len(score) for score in scores} == {5}
    assert "3 done" in result.stderr


@pytest.mark.parametrize("columns", [80, 44])
def test_cli_table_fits_the_terminal(
    model: Path, images: dict[str, Path], columns: int
) -> None:
    """In an 80-column pipe a file name up to half the width stays on one line, so the
    top-k column wraps. A narrower terminal wraps all cells. Nothing is cut."""
    name = "a-long-file-name-of-a-red-img.png"
    images["red"].rename(images["red"].with_name(name))
    result = run_edgefx(
        "classify",
        name,
        "--model",
        model,
        "--top-k",
        "3",
        "--device",
        "cpu",
        cwd=images["red"].parent,
        env={"COLUMNS": str(columns)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= columns
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    file_cell = "".join(cells[0].strip() for cells in rows)
    top_k_cell = " ".join(cells[3].strip() for cells in rows)
    assert file_cell == name  # wrapped or not, the cell contains the whole name
    assert len(top_k_cell.split(", ")) == 3
    if columns == 80:
        assert rows[0][0].strip() == name
        assert len(rows) > 1  # the top-k list wrapped instead


def test_cli_table_too_narrow_becomes_lines(
    model: Path, images: dict[str, Path]
) -> None:
    """Under 40 columns a four-column table would drop text: one line per image."""
    result = run_edgefx(
        "classify", *images.values(), "--model", model, env={"COLUMNS": "15"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(images)
    for (color, path), line in zip(images.items(), lines, strict=True):
        assert line.startswith(f"{path}: {color} ")
        assert line.endswith(")")


def test_cli_zero_columns_prints_everything(
    model: Path, images: dict[str, Path]
) -> None:
    """COLUMNS=0 is taken as the default width, not as a width that prints nothing."""
    empty = images["red"].with_name("empty.png")
    empty.write_bytes(b"")
    result = run_edgefx(
        "classify", images["red"], empty, "--model", model, env={"COLUMNS": "0"}
    )
    assert result.returncode == 1
    assert "red.png" in result.stdout
    assert f"{empty}: empty file" in result.stderr
    assert "1 done, 1 failed" in result.stderr


def test_cli_jsonl_labels_and_scores(model: Path, images: dict[str, Path]) -> None:
    result = run_edgefx(
        "classify",
        images["red"].parent,
        "--model",
        model,
        "--format",
        "jsonl",
        "--top-k",
        "2",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert len(records) == 3
    for record in records:
        expected = Path(str(record["file"])).stem
        assert record["label"] == expected
        top = record["top_k"]
        assert isinstance(top, list)
        assert len(top) == 2
        assert top[0][0] == expected
        assert top[0][1] == record["score"]
        assert top[0][1] >= top[1][1]
        assert sum(score for _, score in top) <= 1 + SCORE_SUM_TOLERANCE


def test_cli_csv_to_out_file(
    model: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "results" / "labels.csv"
    result = run_edgefx(
        "classify",
        *images.values(),
        "--model",
        model,
        "--format",
        "csv",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 3
    for row in rows:
        expected = Path(row["file"]).stem
        assert row["label"] == expected
        pairs = [item.rsplit(":", 1) for item in row["top_k"].split(";")]
        assert len(pairs) == 3
        assert pairs[0][0] == expected
        assert sum(float(score) for _, score in pairs) <= 1 + SCORE_SUM_TOLERANCE
        assert float(row["score"]) == pytest.approx(float(pairs[0][1]))


@pytest.mark.parametrize("name", ["labels.csv", "labels.jsonl", "labels.json"])
def test_cli_out_suffix_sets_format(
    model: Path, images: dict[str, Path], tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    result = run_edgefx(
        "classify", *images.values(), "--model", model, "--out", out, "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    if name.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 3
        assert {row["label"] for row in rows} == set(LABELS)
    else:
        records = parse_jsonl(text)
        assert len(records) == 3
        assert {record["label"] for record in records} == set(LABELS)


def test_cli_out_unknown_suffix_rejected(
    model: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "labels.txt"
    result = run_edgefx("classify", *images.values(), "--model", model, "--out", out)
    assert result.returncode == 2
    assert ".csv, .jsonl or .json" in result.stderr
    assert not out.exists()


def test_cli_out_folder_rejected(
    model: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "results"
    out.mkdir()

    result = run_edgefx("classify", *images.values(), "--model", model, "--out", out)

    assert result.returncode == 2
    assert f"--out {out} is a directory" in result.stderr
    assert list(out.iterdir()) == []


def test_cli_all_failed_no_table(model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG file")

    result = run_edgefx("classify", broken, "--model", model, "--device", "cpu")

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert f"failed: {broken}" in result.stderr
    assert "0 done, 1 failed in" in result.stderr


def test_cli_bad_file_fails_alone(
    model: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    broken = images["red"].parent / "broken.png"
    broken.write_bytes(b"this is not a PNG file")
    photo = shutil.copy(SAMPLES / "noisy" / "astronaut.png", tmp_path / "photo.png")
    result = run_edgefx(
        "classify",
        images["red"].parent,
        photo,
        "--model",
        model,
        "--format",
        "jsonl",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    )
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if "failed:" in line]
    assert len(failures) == 1
    assert "broken.png" in failures[0]
    assert "4 done, 1 failed in" in result.stderr
    assert "skipped" not in result.stderr
    records = parse_jsonl(result.stdout)
    assert sorted(Path(str(r["file"])).name for r in records) == [
        "blue.png",
        "green.jpg",
        "photo.png",
        "red.png",
    ]
    photo_record = next(r for r in records if str(r["file"]).endswith("photo.png"))
    assert photo_record["label"] in LABELS


def test_cli_imagenet_preset_with_labels(
    images: dict[str, Path], tmp_path: Path
) -> None:
    model = write_color_classifier(tmp_path / "bare.onnx", [1, 3, 224, 224])
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n", encoding="utf-8")
    result = run_edgefx(
        "classify",
        *images.values(),
        "--model",
        model,
        "--preset",
        "imagenet",
        "--labels",
        labels,
        "--format",
        "jsonl",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert len(records) == 3
    for record in records:
        assert record["label"] == Path(str(record["file"])).stem


def test_cli_sidecar_json(images: dict[str, Path], tmp_path: Path) -> None:
    model = write_color_classifier(tmp_path / "side.onnx", ["N", 3, "H", "W"])
    sidecar = contract_metadata()
    (tmp_path / "side.json").write_text(
        json.dumps(
            {
                "input_size": [32, 32],
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "resize": "crop",
                "labels": json.loads(sidecar["labels"]),
            }
        ),
        encoding="utf-8",
    )
    result = run_edgefx(
        "classify", *images.values(), "--model", model, "--format", "jsonl"
    )
    assert result.returncode == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert len(records) == 3
    for record in records:
        assert record["label"] == Path(str(record["file"])).stem


def readme_sidecar_example() -> dict[str, object]:
    """The JSON sidecar example in the README's classify section."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)```", readme, re.DOTALL)
    assert block, "no ```json block in README.md"
    example: dict[str, object] = json.loads(block[1])
    return example


def test_readme_sidecar_example_runs(images: dict[str, Path], tmp_path: Path) -> None:
    example = readme_sidecar_example()
    model = write_color_classifier(tmp_path / "side.onnx", ["N", 3, "H", "W"])
    (tmp_path / "side.json").write_text(json.dumps(example), encoding="utf-8")

    result = run_edgefx(
        "classify", images["red"], "--model", model, "--format", "jsonl"
    )

    assert result.returncode == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert len(records) == 1
    labels = example["labels"]
    assert isinstance(labels, list)
    assert records[0]["label"] in labels


def test_readme_lists_sidecar_values() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    listing = readme[readme.index("```json") : readme.index("`--preset` takes")]
    listing = " ".join(listing.split())

    for key in (*readme_sidecar_example(), "input_layout"):
        assert f"`{key}`" in listing.split("```")[-1], key
    assert f"two integers from 1 to {MAX_INPUT_SIDE}" in listing
    assert "on the 0-1 scale of the pixel values" in listing
    assert RESIZE_POLICIES == ("stretch", "crop")
    assert "`resize`: `stretch` (the default) or `crop`" in listing
    assert COLOR_ORDERS == ("RGB", "BGR")
    assert "`color_order`: `RGB` (the default) or `BGR`" in listing


@pytest.mark.parametrize("kind", ["flat", "one channel"])
def test_cli_rejects_wrong_input(
    kind: str, images: dict[str, Path], tmp_path: Path
) -> None:
    if kind == "flat":
        model = write_flat_classifier(tmp_path / "flat.onnx")
        stated = "features"
    else:
        model = write_color_classifier(
            tmp_path / "gray.onnx", ["N", 1, 32, 32], contract_metadata()
        )
        stated = "has 1 channel;"
    result = run_edgefx("classify", images["red"], "--model", model, "--device", "cpu")
    assert result.returncode == 2
    assert stated in result.stderr
    assert "expected one float input (N, 3, H, W)" in result.stderr
    assert "tensor(float)" in result.stderr


def test_cli_no_shipped_classifier(images: dict[str, Path], tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    copied = Path(shutil.copy(REPO_ROOT / "models" / "denoise-s.onnx", models_dir))
    manifest = {
        "models": [
            {
                "name": "denoise-s",
                "task": "denoise",
                "file": copied.name,
                "sha256": sha256_of(copied),
                "default": True,
            }
        ]
    }
    (models_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = run_edgefx("classify", images["red"], models_dir=models_dir)
    assert result.returncode == 2
    assert "no classify model is shipped with this edgefx build" in result.stderr
    assert "--model PATH" in result.stderr


def test_batching_matches_one_by_one(model: Path) -> None:
    classifier = Classifier(str(model), RuntimeOptions(device="cpu"))
    rng = np.random.default_rng(7)
    images = [
        rng.integers(0, 256, (45, 70, 3), dtype=np.uint8),
        rng.integers(0, 256, (20, 20), dtype=np.uint8),
        rng.integers(0, 65536, (33, 31, 3), dtype=np.uint16),
        rng.random((64, 48, 4), dtype=np.float32),
        rng.integers(0, 256, (10, 90, 4), dtype=np.uint8),
    ]
    batched = classifier.classify(images, ClassifyOptions(top_k=3, batch_size=4))
    single = classifier.classify(images, ClassifyOptions(top_k=3, batch_size=1))
    assert len(batched) == len(images)
    for many, one in zip(batched, single, strict=True):
        assert [label for label, _ in many] == [label for label, _ in one]
        np.testing.assert_allclose(
            [score for _, score in many], [score for _, score in one], atol=1e-6
        )


def test_fixed_batch_model_runs_each(tmp_path: Path) -> None:
    model = write_color_classifier(
        tmp_path / "fixed.onnx", [1, 3, 32, 32], contract_metadata()
    )
    classifier = Classifier(str(model), RuntimeOptions(device="cpu"))
    solid = [np.full((16, 16, 3), COLORS_RGB[c], np.uint8) for c in LABELS]
    results = classifier.classify(solid, ClassifyOptions(top_k=1, batch_size=3))
    assert [top[0][0] for top in results] == LABELS


def test_missing_preprocessing_needs_preset(tmp_path: Path) -> None:
    model = write_color_classifier(tmp_path / "bare.onnx", ["N", 3, 32, 32])
    with pytest.raises(ModelError, match="--preset"):
        Classifier(str(model), RuntimeOptions(device="cpu"))


def test_results_path_through_linked_folder(images: dict[str, Path]) -> None:
    folder = images["red"].parent
    link = folder.parent / "linked"
    link.symlink_to(folder)
    inputs, _ = collect_inputs([str(link)], FORMATS)
    # The inputs are named through the link, the --out file through the real folder.
    with pytest.raises(UsageError, match="would replace the input"):
        check_results_path(images["green"], inputs)
    check_results_path(folder / "results.csv", inputs)
