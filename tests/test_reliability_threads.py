"""Thread settings: ONNX Runtime gets --threads, OpenCV and BLAS get one thread each.

The library pools are sized when OpenCV and numpy load, so each check runs the CLI's
entry point in a fresh Python process and inspects that process afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from cli_helpers import run_edgefx
from PIL import Image

from edgefx.threads import LIBRARY_THREAD_LIMITS, limit_library_threads

# Runs `edgefx ARGS` through the CLI's entry point, then reports the thread settings
# that the process ended up with.
INSPECT_AFTER_CLI = """
import json, os, sys
import edgefx.cli
sys.argv = ["edgefx", *sys.argv[1:]]
try:
    edgefx.cli.main()
except SystemExit:
    pass
import cv2
names = {names!r}
print(json.dumps({{
    "opencv": cv2.getNumThreads(),
    "environment": {{name: os.environ.get(name) for name in names}},
}}))
"""


def inspect_after_cli(*arguments: str, env: dict[str, str] | None = None) -> dict:
    script = INSPECT_AFTER_CLI.format(names=tuple(LIBRARY_THREAD_LIMITS))
    child_env = {k: v for k, v in os.environ.items() if k not in LIBRARY_THREAD_LIMITS}
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_limit_sets_unset_variables() -> None:
    environ: dict[str, str] = {}
    applied = limit_library_threads(environ)
    assert applied == LIBRARY_THREAD_LIMITS
    assert environ == LIBRARY_THREAD_LIMITS


def test_limit_keeps_user_values() -> None:
    environ = {"OPENBLAS_NUM_THREADS": "4"}
    applied = limit_library_threads(environ)
    assert applied["OPENBLAS_NUM_THREADS"] == "4"
    assert applied["OPENCV_FOR_THREADS_NUM"] == "1"


def test_cli_gives_opencv_one_thread() -> None:
    state = inspect_after_cli("models")
    assert state["opencv"] == 1
    assert state["environment"] == LIBRARY_THREAD_LIMITS


def test_cli_respects_user_opencv_threads() -> None:
    state = inspect_after_cli("models", env={"OPENCV_FOR_THREADS_NUM": "2"})
    assert state["opencv"] == 2
    assert state["environment"]["OPENCV_FOR_THREADS_NUM"] == "2"


def test_train_keeps_library_threads() -> None:
    state = inspect_after_cli("train", "--help")
    assert state["environment"] == dict.fromkeys(LIBRARY_THREAD_LIMITS)


def test_cli_threads_reach_session(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(photo)

    result = run_edgefx(
        "denoise", photo, "--out", tmp_path / "out", "--device", "cpu", "--threads", "1"
    )

    assert result.returncode == 0, result.stderr
    assert "on CPUExecutionProvider, threads: 1" in result.stderr
