"""Tests for edgefx.registry: the manifest, checksums and model metadata.

Damaged and incomplete model sets are copies of the shipped models/ folder in tmp_path,
selected with the EDGEFX_MODELS_DIR environment variable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_edgefx

from edgefx.errors import ModelError, UsageError
from edgefx.registry import (
    MANIFEST_NAME,
    model_summaries,
    models_directory,
    read_metadata,
    resolve_model,
    sha256_of,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = REPO_ROOT / "models"
SAMPLE = REPO_ROOT / "samples" / "noisy" / "coffee.png"

REQUIRED_METADATA = (
    "task",
    "name",
    "version",
    "input_layout",
    "input_range",
    "noise_level_range",
    "training",
    "parameters",
    "macs_per_pixel",
)


def copy_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, folder)
    return folder


# The file that `edgefx denoise` loads on the CPU by default.
CPU_DEFAULT_FILE = "denoise-s.onnx"


def damage_model(folder: Path) -> Path:
    """Invert 16 bytes in the middle of the CPU default model and return its path."""
    path = folder / CPU_DEFAULT_FILE
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def write_manifest(folder: Path, rows: list[dict[str, object]]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps({"models": rows}))


@pytest.fixture(autouse=True)
def shipped_models_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFX_MODELS_DIR", raising=False)


@pytest.fixture(scope="module")
def shipped_metadata() -> dict[str, str]:
    return read_metadata(SHIPPED_MODELS / "denoise-s.onnx")


# Shipped default


def test_default_is_shipped_denoiser() -> None:
    # The int8 variant ships but is not the CPU default: it loses more at low noise.
    info = resolve_model(None, "denoise", device="cpu")
    assert info.name == "denoise-s"
    assert info.task == "denoise"
    assert info.shipped
    assert info.path == SHIPPED_MODELS / "denoise-s.onnx"


def test_int8_denoiser_is_a_variant() -> None:
    info = resolve_model("denoise-s-int8", "denoise", device="cpu")
    assert info.shipped
    assert info.metadata["variant_of"] == "denoise-s"


def test_default_checksum_matches_manifest() -> None:
    manifest = json.loads((SHIPPED_MODELS / MANIFEST_NAME).read_text())
    expected = {row["file"]: row["sha256"] for row in manifest["models"]}
    info = resolve_model(None, "denoise")
    assert sha256_of(info.path) == expected[info.path.name]


def test_shipped_name_resolves() -> None:
    info = resolve_model("denoise-s", "denoise")
    assert info.shipped
    assert info.path.name == "denoise-s.onnx"


def test_models_dir_override_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_models(tmp_path)
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(folder))
    assert models_directory() == folder
    assert resolve_model(None, "denoise", device="cpu").path == (
        folder / CPU_DEFAULT_FILE
    )


# Damaged or incomplete model sets


def test_damaged_copy_raises_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = damage_model(copy_models(tmp_path))
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(damaged.parent))
    with pytest.raises(ModelError) as caught:
        resolve_model(None, "denoise", device="cpu")
    assert str(damaged) in str(caught.value)
    assert "damaged" in str(caught.value)


def test_damaged_copy_cli_one_line(tmp_path: Path) -> None:
    damaged = damage_model(copy_models(tmp_path))
    result = run_edgefx(
        "denoise",
        SAMPLE,
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
        models_dir=damaged.parent,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(damaged) in lines[0]
    assert "damaged" in lines[0]


def test_manifest_missing_file_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_models(tmp_path)
    (folder / CPU_DEFAULT_FILE).unlink()
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(folder))
    with pytest.raises(ModelError, match="shipped model file is missing") as caught:
        resolve_model(None, "denoise", device="cpu")
    assert str(folder / CPU_DEFAULT_FILE) in str(caught.value)


def test_manifest_missing_file_cli_one_line(tmp_path: Path) -> None:
    folder = copy_models(tmp_path)
    (folder / CPU_DEFAULT_FILE).unlink()
    result = run_edgefx(
        "denoise",
        SAMPLE,
        "--out",
        tmp_path / "out",
        "--device",
        "cpu",
        models_dir=folder,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert CPU_DEFAULT_FILE in lines[0]
    assert "missing" in lines[0]


def test_manifest_invalid_json_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_models(tmp_path)
    (folder / MANIFEST_NAME).write_text('{"models": [')
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(folder))
    with pytest.raises(ModelError, match="invalid model manifest") as caught:
        resolve_model(None, "denoise")
    assert str(folder / MANIFEST_NAME) in str(caught.value)


def test_manifest_unknown_field_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_models(tmp_path)
    write_manifest(folder, [{"name": "x", "task": "denoise", "filename": "x.onnx"}])
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(folder))
    with pytest.raises(ModelError, match="invalid model manifest"):
        resolve_model(None, "denoise")


def test_models_dir_without_manifest_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match=MANIFEST_NAME) as caught:
        resolve_model(None, "denoise")
    assert str(tmp_path) in str(caught.value)


def test_manifest_without_task_model_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_models(tmp_path)
    write_manifest(folder, [])
    monkeypatch.setenv("EDGEFX_MODELS_DIR", str(folder))
    with pytest.raises(ModelError, match="no denoise model is shipped"):
        resolve_model(None, "denoise")


# Names and paths


def test_unknown_name_lists_available() -> None:
    with pytest.raises(UsageError) as caught:
        resolve_model("denoise-xl", "denoise")
    message = str(caught.value)
    assert "'denoise-xl'" in message
    assert "available: denoise-s" in message


def test_unknown_task_raises_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown task 'upscale'"):
        resolve_model(None, "upscale")


def test_missing_path_raises_model_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError, match="model file not found") as caught:
        resolve_model(str(path), "denoise")
    assert str(path) in str(caught.value)


def test_random_bytes_not_valid_onnx(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a valid ONNX model") as caught:
        resolve_model(str(path), "denoise")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("kept_fraction", [0.01, 0.5, 0.999])
def test_truncated_onnx_raises_model_error(
    tmp_path: Path, kept_fraction: float
) -> None:
    data = (SHIPPED_MODELS / "denoise-s.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * kept_fraction)])
    with pytest.raises(ModelError, match="not a valid ONNX model") as caught:
        resolve_model(str(path), "denoise")
    assert str(path) in str(caught.value)


def test_random_bytes_cli_one_line(tmp_path: Path) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    result = run_edgefx(
        "denoise", SAMPLE, "--out", tmp_path / "out", "--device", "cpu", "--model", path
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "not a valid ONNX model" in lines[0]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("enhance", "this is a denoise model, not an enhance model"),
        ("classify", "this is a denoise model, not a classify model"),
    ],
)
def test_path_model_of_other_task(tmp_path: Path, task: str, expected: str) -> None:
    path = tmp_path / "copy.onnx"
    shutil.copyfile(SHIPPED_MODELS / "denoise-s.onnx", path)
    with pytest.raises(ModelError) as caught:
        resolve_model(str(path), task)
    assert str(caught.value) == f"{path}: {expected}; use it with `edgefx denoise`"


def test_path_model_of_unknown_task(tmp_path: Path) -> None:
    model = onnx.load(str(SHIPPED_MODELS / "denoise-s.onnx"))
    for prop in model.metadata_props:
        if prop.key == "task":
            prop.value = "upscale"
    path = tmp_path / "upscaler.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as caught:
        resolve_model(str(path), "enhance")
    assert str(caught.value) == (
        f"{path}: this is an upscale model, not an enhance model"
    )


def test_path_model_is_not_shipped(tmp_path: Path) -> None:
    path = tmp_path / "copy.onnx"
    shutil.copyfile(SHIPPED_MODELS / "denoise-s.onnx", path)
    info = resolve_model(str(path), "denoise")
    assert not info.shipped
    assert info.path == path
    assert info.name == "denoise-s"


# Metadata stored in the shipped model


@pytest.mark.parametrize("key", REQUIRED_METADATA)
def test_shipped_metadata_has_key(shipped_metadata: dict[str, str], key: str) -> None:
    assert shipped_metadata.get(key), f"metadata_props has no {key!r}"


def test_shipped_metadata_values(shipped_metadata: dict[str, str]) -> None:
    assert shipped_metadata["task"] == "denoise"
    assert shipped_metadata["name"] == "denoise-s"
    assert shipped_metadata["input_layout"] == "NCHW"
    assert shipped_metadata["input_range"] == "0-1"
    assert shipped_metadata["noise_level_range"] == "0-75"


def test_shipped_metadata_training_is_json(shipped_metadata: dict[str, str]) -> None:
    training = json.loads(shipped_metadata["training"])
    assert isinstance(training, dict)
    assert int(training["steps"]) > 0


def test_shipped_parameters_match_graph(shipped_metadata: dict[str, str]) -> None:
    graph = onnx.load(str(SHIPPED_MODELS / "denoise-s.onnx")).graph
    weights = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert int(shipped_metadata["parameters"]) == weights


def test_shipped_macs_match_graph(shipped_metadata: dict[str, str]) -> None:
    # Every convolution of DenoiseNet runs at half resolution, on a quarter of the
    # pixels, so each weight costs a quarter of a multiply-accumulate per input pixel.
    graph = onnx.load(str(SHIPPED_MODELS / "denoise-s.onnx")).graph
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    elements = sum(
        int(np.prod(t.dims)) for t in graph.initializer if t.name in conv_weights
    )
    assert int(shipped_metadata["macs_per_pixel"]) == elements // 4


def test_cli_ort_file_rejected(tmp_path: Path, samples_dir: Path) -> None:
    ort = tmp_path / "denoise-s.ort"
    ort.write_bytes(b"ORT flatbuffer stand-in")

    result = run_edgefx(
        "denoise",
        samples_dir / "noisy" / "camera.png",
        "--out",
        tmp_path / "out",
        "--model",
        ort.name,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "ONNX Runtime reads a file named .ort as ORT format" in result.stderr
    assert "rename it to .onnx" in result.stderr
    assert "no shipped" not in result.stderr


def test_cli_models_piped_whole_rows() -> None:
    result = run_edgefx("models", env={"COLUMNS": "80"})

    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    padded = [line for line in result.stdout.splitlines() if line != line.rstrip()]
    assert padded == []
    for summary in model_summaries(None):
        line = next(
            (row for row in result.stdout.splitlines() if f" {summary.name} " in row),
            None,
        )
        assert line is not None, summary.name
        assert summary.key_metric in line
