"""Tests for edgefx.runtime: option checks, execution providers and session options.

Sessions are real ONNX Runtime sessions on a tiny model that each test writes with
onnx.helper, or on the shipped denoiser where the test goes through the CLI.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper

import edgefx.runtime
from edgefx.errors import DeviceError, ModelError, UsageError
from edgefx.runtime import (
    DEVICES,
    OPTIMIZATION_LEVELS,
    RuntimeOptions,
    create_session,
    diagnose_cuda,
    provider_name,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "noisy" / "coffee.png"

# Markers of ONNX Runtime's own log and banner lines: C++ source locations, the
# "[E:onnxruntime:..." log prefix and the Python wrapper's "EP Error" banner.
ORT_LOG_MARKERS = (".cc:", "[E:onnxruntime", "[W:onnxruntime", "EP Error")

ADD_INPUT_SHAPE = (1, 3, 4, 4)


def write_add_model(path: Path) -> Path:
    """Write an ONNX model that returns its (1, 3, 4, 4) float input plus one."""
    one = numpy_helper.from_array(np.ones(ADD_INPUT_SHAPE, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ADD_INPUT_SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ADD_INPUT_SHAPE)],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def add_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_add_model(tmp_path_factory.mktemp("runtime") / "add_one.onnx")


@cache
def provider_runs(provider: str, model_path: str) -> bool:
    """Return whether a real session on ``provider`` starts without a CPU fallback."""
    if provider not in onnxruntime.get_available_providers():
        return False
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(
            model_path, sess_options=options, providers=[provider]
        )
    except Exception:  # noqa: BLE001 - any failure means the provider cannot start
        return False
    return session.get_providers()[0] == provider


def skip_if_provider_runs(provider: str, model_path: Path) -> None:
    if provider_runs(provider, str(model_path)):
        pytest.skip(f"{provider} starts on this machine, so there is no fallback")


def ort_log_lines(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if any(m in line for m in ORT_LOG_MARKERS)
    ]


# RuntimeOptions checks


def test_options_defaults() -> None:
    options = RuntimeOptions()
    assert options.device == "auto"
    assert options.threads == 0
    assert options.optimization == "all"


@pytest.mark.parametrize("device", ["gpu", "CUDA", "", "cpu "])
def test_options_reject_invalid_device(device: str) -> None:
    with pytest.raises(UsageError, match="invalid device") as caught:
        RuntimeOptions(device=device)
    for valid in DEVICES:
        assert valid in str(caught.value)


@pytest.mark.parametrize("level", ["none", "ALL", "99", ""])
def test_options_reject_invalid_optimization(level: str) -> None:
    with pytest.raises(UsageError, match="invalid optimization level") as caught:
        RuntimeOptions(optimization=level)
    for valid in OPTIMIZATION_LEVELS:
        assert valid in str(caught.value)


@pytest.mark.parametrize("threads", [-1, -8, 257, 100_000])
def test_options_reject_bad_thread_counts(threads: int) -> None:
    with pytest.raises(UsageError, match=f"invalid thread count {threads}"):
        RuntimeOptions(threads=threads)


# Sessions on the CPU


def test_cpu_session_runs_tiny_model(add_model: Path) -> None:
    session = create_session(add_model, RuntimeOptions(device="cpu"))
    x = np.arange(np.prod(ADD_INPUT_SHAPE), dtype=np.float32).reshape(ADD_INPUT_SHAPE)
    (y,) = session.run(None, {"x": x})
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert provider_name(session) == "cpu"
    np.testing.assert_array_equal(y, x + 1)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_session_applies_threads(add_model: Path, threads: int) -> None:
    session = create_session(add_model, RuntimeOptions(device="cpu", threads=threads))
    applied = session.get_session_options()
    assert applied.intra_op_num_threads == threads
    assert applied.inter_op_num_threads == 1


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("disable", onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL),
        ("basic", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("extended", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("all", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ],
)
def test_session_applies_optimization_level(
    add_model: Path, level: str, expected: onnxruntime.GraphOptimizationLevel
) -> None:
    session = create_session(
        add_model, RuntimeOptions(device="cpu", optimization=level)
    )
    x = np.zeros(ADD_INPUT_SHAPE, np.float32)
    (y,) = session.run(None, {"x": x})
    assert session.get_session_options().graph_optimization_level == expected
    np.testing.assert_array_equal(y, np.ones(ADD_INPUT_SHAPE, np.float32))


def test_second_session_logs_model_at_debug(
    add_model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("edgefx"), "propagate", True)
    monkeypatch.setattr(edgefx.runtime, "_ANNOUNCED", set())
    caplog.set_level(logging.DEBUG, logger="edgefx.runtime")

    for _ in range(3):
        create_session(add_model, RuntimeOptions(device="cpu", threads=1))

    levels = [
        record.levelno
        for record in caplog.records
        if record.getMessage().startswith(f"model {add_model} on ")
    ]
    assert levels == [logging.INFO, logging.DEBUG, logging.DEBUG]


def test_session_unloadable_file_raises_model_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not protobuf bytes\n")
    with pytest.raises(ModelError, match="cannot load the model") as caught:
        create_session(path, RuntimeOptions(device="cpu"))
    assert str(path) in str(caught.value)


# CUDA and TensorRT on a machine where they cannot start


def test_auto_falls_back_to_cpu_with_reason(
    add_model: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider, so auto never tries")
    skip_if_provider_runs("CUDAExecutionProvider", add_model)
    # An in-process CLI run elsewhere in the suite turns propagation off for "edgefx".
    monkeypatch.setattr(logging.getLogger("edgefx"), "propagate", True)
    # Sessions opened by earlier tests would make this one log at DEBUG only.
    monkeypatch.setattr(edgefx.runtime, "_ANNOUNCED", set())
    caplog.set_level(logging.INFO, logger="edgefx.runtime")

    session = create_session(add_model, RuntimeOptions(device="auto"))

    cuda_lines = [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()]
    assert provider_name(session) == "cpu"
    assert len(cuda_lines) == 1
    assert "CUDA is not usable" in cuda_lines[0]
    assert diagnose_cuda() in cuda_lines[0]


def test_explicit_cuda_raises_device_error(add_model: Path) -> None:
    skip_if_provider_runs("CUDAExecutionProvider", add_model)
    with pytest.raises(DeviceError) as caught:
        create_session(add_model, RuntimeOptions(device="cuda"))
    message = str(caught.value)
    assert "--device cuda" in message
    assert "--device cpu" in message


def test_explicit_tensorrt_raises_device_error(add_model: Path) -> None:
    skip_if_provider_runs("TensorrtExecutionProvider", add_model)
    with pytest.raises(DeviceError) as caught:
        create_session(add_model, RuntimeOptions(device="tensorrt"))
    message = str(caught.value)
    assert "--device tensorrt" in message
    assert "--device cpu" in message


def test_cli_cuda_error_is_one_line(tmp_path: Path, add_model: Path) -> None:
    skip_if_provider_runs("CUDAExecutionProvider", add_model)
    result = run_edgefx(
        "denoise", SAMPLE, "--out", tmp_path / "out", "--device", "cuda"
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "missing" in lines[0]
    assert "--device cpu" in lines[0]
    assert ort_log_lines(result.stderr) == []
    assert ort_log_lines(result.stdout) == []
    assert not (tmp_path / "out" / SAMPLE.name).exists()


def test_cli_tensorrt_error_has_no_ort_banner(tmp_path: Path, add_model: Path) -> None:
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT provider")
    skip_if_provider_runs("TensorrtExecutionProvider", add_model)
    result = run_edgefx(
        "denoise", SAMPLE, "--out", tmp_path / "out", "--device", "tensorrt"
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert ort_log_lines(result.stdout) == []


def test_cli_auto_has_no_ort_log_lines(tmp_path: Path) -> None:
    result = run_edgefx(
        "denoise", SAMPLE, "--out", tmp_path / "out", "--device", "auto"
    )
    assert result.returncode == 0, result.stderr
    assert ort_log_lines(result.stderr) == []
    assert ort_log_lines(result.stdout) == []
    assert (tmp_path / "out" / SAMPLE.name).is_file()
