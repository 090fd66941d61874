"""Untrusted model files: damaged, truncated, not ONNX, unfit, or reading other files.

Every command must stop before any work with one `error:` line naming the model file
and exit status 2, and leave no output behind. External-data locations that point out
of the model's folder are rejected before ONNX Runtime opens the file. Training
checkpoints are loaded without running pickled code.
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from PIL import Image

from edgefx.errors import ModelError
from edgefx.external_data import check_external_data
from edgefx.registry import models_directory

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = ("denoise", "classify", "enhance")
# ONNX Runtime 1.31 reads models up to IR version 13; onnx 1.23 writes 14 by default.
IR_VERSION = 9


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One small input file per task."""
    folder = tmp_path_factory.mktemp("inputs")
    image = folder / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)
    Image.fromarray(pixels).save(image)
    audio = folder / "speech.wav"
    sf.write(audio, np.zeros((1600, 1), np.float32), 16000)
    return {"denoise": image, "classify": image, "enhance": audio}


def command(task: str, source: Path, out: Path) -> list[str | Path]:
    """The CLI arguments that run ``task`` on ``source``, writing under ``out``."""
    # -q keeps the log lines about the device out, so the error is the only line.
    if task == "classify":
        rows = out / "rows.jsonl"
        return ["-q", "classify", source, "--format", "jsonl", "--out", rows]
    return ["-q", task, source, "--out", out]


def assert_one_line_error(result, model: Path, reason: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert str(model) in lines[0], lines[0]
    assert reason in lines[0], lines[0]


def shipped_file(task: str) -> Path:
    manifest = models_directory() / "manifest.json"
    import json

    from edgefx.runtime import cuda_usable

    rows = json.loads(manifest.read_text())["models"]
    rows = [row for row in rows if row["task"] == task]
    # Without CUDA, a task's CPU-default variant (an int8 model) is the file that runs.
    cpu_rows = [row for row in rows if row.get("cpu_default")]
    if cpu_rows and not cuda_usable():
        return models_directory() / cpu_rows[0]["file"]
    entry = next(row for row in rows if row["default"])
    return models_directory() / entry["file"]


# --------------------------------------------------------------------------------------
# Damaged, truncated and non-ONNX files


@pytest.mark.parametrize("task", TASKS)
def test_checksum_mismatch_stops_batch(task: str, inputs, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    shutil.copytree(models_directory(), folder)
    damaged = folder / shipped_file(task).name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"

    result = run_edgefx(*command(task, inputs[task], out), models_dir=folder)

    assert_one_line_error(result, damaged, "model file is damaged")
    assert not out.exists()


@pytest.mark.parametrize("task", TASKS)
def test_truncated_model_stops_batch(task: str, inputs, tmp_path: Path) -> None:
    data = shipped_file(task).read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"

    result = run_edgefx(*command(task, inputs[task], out), "--model", truncated)

    assert_one_line_error(result, truncated, "not a valid ONNX model")
    assert not out.exists()


@pytest.mark.parametrize(
    ("task", "content"),
    [("denoise", "text"), ("classify", "random"), ("enhance", "random")],
)
def test_not_onnx_stops_batch(task: str, content: str, inputs, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    if content == "text":
        model.write_text("this is a README, not a model\n")
    else:
        model.write_bytes(np.random.default_rng(2).bytes(4096))
    out = tmp_path / "out"

    result = run_edgefx(*command(task, inputs[task], out), "--model", model)

    assert_one_line_error(result, model, "not a valid ONNX model")
    assert not out.exists()


@pytest.fixture(scope="module")
def ort_model(tmp_path_factory) -> Path:
    """The shipped denoiser exported to ORT format by `edgefx export`."""
    output = tmp_path_factory.mktemp("ort") / "denoise-s.ort"
    result = run_edgefx("export", "denoise-s", "--format", "ort", "--out", output)
    assert result.returncode == 0, result.stderr
    return output


@pytest.mark.parametrize("name", ["denoise-s.ort", "denoise-s.bin"])
def test_ort_format_model_rejected(
    ort_model: Path, name: str, inputs, tmp_path: Path
) -> None:
    model = tmp_path / name
    shutil.copyfile(ort_model, model)
    out = tmp_path / "out"

    result = run_edgefx(*command("denoise", inputs["denoise"], out), "--model", model)

    assert_one_line_error(result, model, "the file is in ORT format, not ONNX")
    assert "ORT-format files run only in minimal ONNX Runtime builds" in result.stderr
    assert "give the .onnx file it was converted from" in result.stderr
    assert "Wire format" not in result.stderr
    assert not out.exists()


def test_ort_format_model_name_rejected(ort_model: Path, inputs, tmp_path: Path):
    # A name without a slash that is not a shipped model, but a file in this folder.
    shutil.copyfile(ort_model, tmp_path / "denoise-s.ort")
    out = tmp_path / "out"

    result = run_edgefx(
        *command("denoise", inputs["denoise"], out),
        "--model",
        "denoise-s.ort",
        cwd=tmp_path,
    )

    assert_one_line_error(result, Path("denoise-s.ort"), "in ORT format, not ONNX")
    assert not out.exists()


def test_onnx_named_ort_rejected(inputs, tmp_path: Path) -> None:
    model = tmp_path / "denoise-s.ort"
    shutil.copyfile(shipped_file("denoise"), model)
    out = tmp_path / "out"

    result = run_edgefx(*command("denoise", inputs["denoise"], out), "--model", model)

    assert_one_line_error(result, model, "rename it to .onnx")
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Models whose inputs do not fit the task


def save_identity_model(path: Path, shape: list[int | str]) -> Path:
    """An ONNX model that returns its one float input, of ``shape``, unchanged."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        ("denoise", "do not fit a denoiser"),
        ("classify", "expected one float input (N, 3, H, W)"),
        ("enhance", "not an edgefx enhancer"),
    ],
)
def test_unfit_inputs_stop_batch(task: str, reason: str, inputs, tmp_path: Path):
    model = save_identity_model(tmp_path / "flat.onnx", ["N", 5])
    out = tmp_path / "out"

    result = run_edgefx(*command(task, inputs[task], out), "--model", model)

    assert_one_line_error(result, model, reason)
    assert not out.exists()


def test_model_of_other_task_rejected(inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    classifier = shipped_file("classify")

    arguments = command("denoise", inputs["denoise"], out)
    result = run_edgefx(*arguments, "--model", classifier)

    assert_one_line_error(result, classifier, "not a denoise model")
    assert not out.exists()


# --------------------------------------------------------------------------------------
# External data


def save_scaling_model(folder: Path, location: str, stored_in: Path) -> Path:
    """A blind denoiser-shaped model, image * w, with w's bytes in ``stored_in``.

    The model names the data file as ``location``, relative to the model's folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored_in.parent.mkdir(parents=True, exist_ok=True)
    stored_in.write_bytes(np.ones(1, np.float32).tobytes())
    weight = numpy_helper.from_array(np.ones(1, np.float32), "w")
    set_external_data(weight, location=location)
    weight.ClearField("raw_data")
    shape: list[int | str] = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "w"], ["restored"])],
        "scale",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("restored", TensorProto.FLOAT, shape)],
        [weight],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_external_data_inside_folder_runs(inputs, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    model = save_scaling_model(folder, "weights/w.bin", folder / "weights" / "w.bin")
    out = tmp_path / "out"

    result = run_edgefx("denoise", inputs["denoise"], "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert (out / "photo.png").is_file()


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "nested-parent"])
def test_external_data_outside_folder_rejected(
    kind: str, inputs, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    secret = tmp_path / "secret.bin"
    if kind == "parent":
        model = save_scaling_model(folder, "../secret.bin", secret)
    elif kind == "nested-parent":
        (folder / "sub").mkdir(parents=True)
        model = save_scaling_model(folder, "sub/../../secret.bin", secret)
    elif kind == "absolute":
        model = save_scaling_model(folder, str(secret), secret)
    else:
        model = save_scaling_model(folder, "link.bin", secret)
        os.symlink(secret, folder / "link.bin")
    out = tmp_path / "out"

    arguments = command("denoise", inputs["denoise"], out)
    result = run_edgefx(*arguments, "--model", model)

    assert_one_line_error(result, model, "external data must be a file inside")
    assert not out.exists()


def test_external_data_in_constant_node_checked(tmp_path: Path) -> None:
    # A tensor inside a Constant node's attribute can use external data too.
    value = numpy_helper.from_array(np.ones(1, np.float32), "c")
    set_external_data(value, location="/etc/passwd")
    value.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "constant",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "constant.onnx"
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    onnx.save(model, str(path))

    with pytest.raises(ModelError, match="is an absolute path"):
        check_external_data(path)


# --------------------------------------------------------------------------------------
# Training checkpoints


def torch_load_calls() -> list[tuple[Path, ast.Call]]:
    """Every torch.load(...) call in the package, the tools and the bench scripts."""
    calls = []
    for folder in ("edgefx", "tools", "bench"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                ):
                    calls.append((path, node))
    return calls


def test_torch_load_always_weights_only() -> None:
    calls = torch_load_calls()
    assert calls, "no torch.load call found; the scan itself is broken"
    for path, call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        where = f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
        assert "weights_only" in keywords, where
        flag = keywords["weights_only"]
        assert isinstance(flag, ast.Constant) and flag.value is True, where


class _PlantFile:
    """A pickled object that creates a file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("module", "loader"),
    [
        ("edgefx.train.export", "load_denoiser_checkpoint"),
        ("edgefx.train.classify", "load_classifier_checkpoint"),
        ("edgefx.train.enhance", "load_enhancer_checkpoint"),
    ],
)
def test_malicious_checkpoint_rejected(module: str, loader: str, tmp_path: Path):
    torch = pytest.importorskip("torch")
    import importlib

    marker = tmp_path / "planted"
    checkpoint = tmp_path / "last.pt"
    torch.save({"config": _PlantFile(marker), "model": {}}, checkpoint)
    load = getattr(importlib.import_module(module), loader)

    with pytest.raises(ModelError, match="rejected") as caught:
        load(checkpoint)
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert str(checkpoint) in str(caught.value)
    assert not marker.exists()


def test_train_cli_rejects_malicious_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "planted"
    checkpoint = work / "checkpoint.pt"
    torch.save({"config": _PlantFile(marker), "model": {}}, checkpoint)
    data = REPO_ROOT / "samples" / "clean"

    result = run_edgefx(
        "train", "denoise", "--data", data, "--work-dir", work, "--steps", "1"
    )

    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1, result.stderr
    assert str(checkpoint) in errors[0]
    assert not marker.exists()
