"""Ctrl-C or SIGTERM while ``export`` or ``quantize`` writes the model leaves no file.

Both commands copy the finished model to ``.NAME.partial`` next to --out and rename it
over --out. Each test makes that partial path a symbolic link to a pseudo-terminal
whose other end the test reads only once. The write then blocks when the terminal's
buffer is full, which the models here exceed. (shutil.copyfile rejects a FIFO there.)
The first bytes read tell that the write has started, and the test then sends the
signal to the edgefx subprocess that it started, and only to it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import CLI_TIMEOUT_SECONDS

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _interrupt_while_writing(
    args: list[str | Path], partial: Path, signum: signal.Signals
) -> subprocess.CompletedProcess[str]:
    """Run edgefx ``args`` and send ``signum`` once ``partial`` receives data."""
    try:
        terminal, device = os.openpty()
    except OSError as err:
        pytest.skip(f"no pseudo-terminal: {err}")
    partial.symlink_to(os.ttyname(device))
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefx", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
        while not select.select([terminal], [], [], 0.1)[0]:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the model write never started"
        assert os.read(terminal, 16)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
        os.close(device)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_export_interrupt_removes_partial(
    tmp_path: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "x.onnx"
    partial = tmp_path / ".x.onnx.partial"

    result = _interrupt_while_writing(
        ["export", "denoise-s", "--format", "onnx", "--fp16", "--out", out],
        partial,
        signum,
    )

    assert result.returncode == EXIT_STATUS[signum], result.stderr
    assert "nothing was written" in result.stderr
    assert not os.path.lexists(partial)
    assert not out.exists()


def test_quantize_interrupt_removes_partial(tmp_path: Path) -> None:
    calibration = tmp_path / "cal" / "cat"
    calibration.mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, (40, 40, 3), np.uint8)
        assert cv2.imwrite(str(calibration / f"a{index}.png"), pixels)
    out = tmp_path / "q.onnx"
    partial = tmp_path / ".q.onnx.partial"

    result = _interrupt_while_writing(
        [
            "quantize",
            "classify-cifar10",
            "--calibrate",
            tmp_path / "cal",
            "--samples",
            "3",
            "--out",
            out,
        ],
        partial,
        signal.SIGINT,
    )

    assert result.returncode == 130, result.stderr
    assert "interrupted: nothing was written" in result.stderr
    assert not os.path.lexists(partial)
    assert not out.exists()
