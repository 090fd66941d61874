"""Events during a batch: Ctrl-C and SIGTERM, output name clashes, full and read-only
output file systems.

An interrupted batch must leave only complete outputs, and the same command run again
must skip them and finish the rest. A full disk must give one `failed:` line per file
that could not be written, not a traceback, and no partial file. An output folder that
cannot be written stops the batch before any work with one `error:` line and exit
status 2. The file system cases mount a small tmpfs, which needs root; they are skipped
with the reason elsewhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
from cli_helpers import CLI_TIMEOUT_SECONDS, run_edgefx
from PIL import Image
from reliability_helpers import (
    empty_files,
    failure_lines,
    lines_naming,
    permissions_unenforceable,
    run_edgefx_unprivileged,
    temporaries,
    tmpfs_mount,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTO = REPO_ROOT / "samples" / "noisy" / "astronaut.png"
# One CPU thread keeps an interrupted batch running long enough, on any machine, for
# the signal to arrive between its first and its last output.
SLOW_RUN = ("--device", "cpu", "--threads", "1")


def tones(frames: int, channels: int, rate: int) -> np.ndarray:
    time_axis = np.arange(frames)[:, None] / rate
    frequencies = 200.0 * (1 + np.arange(channels))[None, :]
    noise = 0.02 * np.random.default_rng(0).standard_normal((frames, channels))
    return (0.3 * np.sin(2 * np.pi * frequencies * time_axis) + noise).astype(
        np.float32
    )


def interrupt_batch(
    command: list[str], out: Path, pattern: str, signum: int
) -> subprocess.CompletedProcess[str]:
    """Start ``command``, send ``signum`` once the first output exists, and wait."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CLI_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not any(out.glob(pattern)):
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


def signal_after_line(command: list[str], prefix: str, signum: int) -> tuple[int, str]:
    """Start ``command``, send ``signum`` once a stderr line starts with ``prefix``.

    Returns the exit status and the rest of stderr.
    """
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(prefix):
            break
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
    return process.returncode, stderr


# --------------------------------------------------------------------------------------
# Interruptions


@pytest.mark.parametrize(
    ("signum", "status", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["sigint", "sigterm"],
)
def test_denoise_interrupt_then_resume(
    signum: int, status: int, word: str, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    count = 8
    for index in range(count):
        shutil.copy(PHOTO, folder / f"img{index:02d}.png")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "edgefx",
        "denoise",
        str(folder),
        "--out",
        str(out),
        *SLOW_RUN,
    ]

    stopped = interrupt_batch(command, out, "img*.png", signum)

    assert stopped.returncode == status, stopped.stderr
    assert word in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert temporaries(out) == []
    finished = sorted(out.glob("img*.png"))
    assert 0 < len(finished) < count, "the signal did not land mid-batch"
    shape = cv2.imread(str(PHOTO), cv2.IMREAD_UNCHANGED).shape
    for path in finished:
        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert pixels is not None and pixels.shape == shape, path

    rerun = subprocess.run(
        command, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS
    )

    assert rerun.returncode == 0, rerun.stderr
    done = count - len(finished)
    expected = f"{done} done, {len(finished)} skipped (output exists), 0 failed"
    assert expected in rerun.stderr, rerun.stderr
    assert len(list(out.glob("img*.png"))) == count


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["sigint", "sigterm"],
)
def test_enhance_interrupt_then_resume(signum: int, status: int, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    count, rate, frames = 10, 48000, 48000 * 20
    samples = tones(frames, 2, rate)
    for index in range(count):
        sf.write(folder / f"take{index:02d}.wav", samples, rate, subtype="PCM_24")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "edgefx",
        "enhance",
        str(folder),
        "--out",
        str(out),
        *SLOW_RUN,
    ]

    stopped = interrupt_batch(command, out, "take*.wav", signum)

    assert stopped.returncode == status, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert temporaries(out) == []
    finished = sorted(out.glob("take*.wav"))
    assert 0 < len(finished) < count, "the signal did not land mid-batch"
    for path in finished:
        info = sf.info(str(path))
        assert (info.frames, info.channels, info.subtype) == (frames, 2, "PCM_24")

    rerun = subprocess.run(
        command, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS
    )

    assert rerun.returncode == 0, rerun.stderr
    done = count - len(finished)
    expected = f"{done} done, {len(finished)} skipped (output exists), 0 failed"
    assert expected in rerun.stderr, rerun.stderr


@pytest.mark.parametrize(
    ("first", "status"), [("KeyboardInterrupt", 130), ("Terminated", 143)]
)
def test_signal_after_stop_exits_at_once(first: str, status: int) -> None:
    # Once a stop is reported, a second Ctrl-C or SIGTERM, which would otherwise land
    # in the interpreter's shutdown with an "Exception ignored" traceback, ends the
    # process at once with the stop's status.
    code = (
        "import os, signal, sys, time, typer\n"
        "from edgefx.cli._common import Terminated, handle_errors\n"
        "try:\n"
        "    with handle_errors('stopped'):\n"
        f"        raise {first}()\n"
        "except typer.Exit:\n"
        "    pass\n"
        "for number in (signal.SIGINT, signal.SIGTERM):\n"
        "    os.kill(os.getpid(), number)\n"
        "    time.sleep(0.5)\n"
        "    print('still running', flush=True)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )

    assert result.returncode == status, result.stderr
    assert "still running" not in result.stdout
    assert "Traceback" not in result.stderr


def test_startup_interrupt_no_traceback(tmp_path: Path) -> None:
    """Ctrl-C while the command line is still importing exits 130 without a traceback.

    The signal is sent at several moments of the first half second, so that some land
    in the imports of the command line and some in the command. One that lands while
    Python itself starts, before edgefx's entry point runs, ends the process with a
    traceback of the interpreter's own imports, which no program can catch. Such a
    traceback must not reach edgefx's command line or the libraries it imports.
    """
    command = [sys.executable, "-m", "edgefx", "denoise", str(PHOTO)]
    for delay in (0.03, 0.06, 0.1, 0.15, 0.25, 0.4):
        out = tmp_path / f"out-{delay}"
        process = subprocess.Popen(
            [*command, "--out", str(out), *SLOW_RUN], stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=CLI_TIMEOUT_SECONDS)
        # 1 and -SIGINT: the interpreter's start-up (its site module, or runpy) was
        # interrupted.
        assert process.returncode in (130, -signal.SIGINT, 1, 0), (delay, stderr)
        if process.returncode in (-signal.SIGINT, 1):
            for late_frame in ("edgefx/cli", "edgefx/launch.py", "typer", "rich"):
                assert late_frame not in stderr, (delay, stderr)
        else:
            assert "Traceback" not in stderr, (delay, stderr)
        if process.returncode == 130:
            assert "interrupted" in stderr, (delay, stderr)


def test_import_interrupt_arrives_after(tmp_path: Path, monkeypatch) -> None:
    from edgefx.cli._common import _import_holding_interrupts

    # A module that is interrupted half way through its own import, as torch can be.
    (tmp_path / "edgefx_slow_module.py").write_text(
        "import os\nimport signal\nimport time\n"
        "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.05)\nLOADED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "edgefx_slow_module", raising=False)
    # Another thread, as ONNX Runtime and torch start them: the kernel may deliver
    # the signal to it rather than to the main thread.
    other = threading.Thread(target=time.sleep, args=(0.5,))
    other.start()

    with pytest.raises(KeyboardInterrupt):
        _import_holding_interrupts(("edgefx_slow_module",))

    other.join()

    assert sys.modules["edgefx_slow_module"].LOADED


def test_classify_interrupt_writes_no_rows(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(1500):
        pixels = rng.integers(0, 256, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:04d}.png")
    rows = tmp_path / "results" / "rows.csv"
    rows.parent.mkdir()
    command = [sys.executable, "-m", "edgefx", "-v", "classify", str(folder)]
    command += ["--format", "csv", "--out", str(rows)]
    # The debug log names each file as it is read, so the batch is running once the
    # first one appears.
    status, stderr = signal_after_line(command, "debug: read ", signal.SIGINT)

    assert status == 130, stderr
    assert "interrupted: no results were written" in stderr
    # Classify writes its results only at the end, so there is nothing to resume.
    assert "finished outputs are kept" not in stderr
    assert "Traceback" not in stderr
    assert list(rows.parent.iterdir()) == []


def test_quantize_terminated_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="--fine-tune needs PyTorch")
    out = tmp_path / "out"
    out.mkdir()
    model = out / "denoise-int8.onnx"
    command = [sys.executable, "-m", "edgefx", "quantize", "denoise-s"]
    command += ["--calibrate", str(REPO_ROOT / "samples" / "clean"), "--samples", "2"]
    command += ["--fine-tune", "100000", "--threads", "1", "--out", str(model)]
    status, stderr = signal_after_line(command, "fine-tuning ", signal.SIGTERM)

    assert status == 143, stderr
    assert "terminated: nothing was written" in stderr
    # quantize writes one file at the end, so there is no batch to resume.
    assert "finished outputs are kept" not in stderr
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------
# Output name clashes


def test_enhance_name_clash_before_work(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "take.wav", tones(1600, 1, 16000), 16000)
    sf.write(folder / "take.flac", tones(1600, 1, 16000), 16000)
    out = tmp_path / "out"

    result = run_edgefx("enhance", folder, "--format", "wav", "--out", out)

    assert result.returncode == 2, result.stderr
    assert "would both be written" in result.stderr
    assert str(folder / "take.wav") in result.stderr
    assert str(folder / "take.flac") in result.stderr
    assert not out.exists()


def test_denoise_name_clash_across_folders(tmp_path: Path) -> None:
    # Two explicit files from different folders keep only their names, so they clash.
    first, second = tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"
    for path in (first, second):
        path.parent.mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    out = tmp_path / "out"

    result = run_edgefx("denoise", first, second, "--out", out)

    assert result.returncode == 2, result.stderr
    assert "would both be written" in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Full disk


def write_small_and_large_photos(folder: Path) -> tuple[Path, Path]:
    """A 16x16 crop (a 1 KB output) and the whole photo (a 250 KB output)."""
    folder.mkdir(parents=True)
    pixels = cv2.imread(str(PHOTO), cv2.IMREAD_UNCHANGED)
    small = folder / "a_small.png"
    assert cv2.imwrite(str(small), pixels[:16, :16])
    large = folder / "b_large.png"
    shutil.copy(PHOTO, large)
    return small, large


def test_denoise_full_disk(tmp_path: Path) -> None:
    small, large = write_small_and_large_photos(tmp_path / "in")
    with tmpfs_mount(tmp_path / "out", size_kib=128) as out:
        result = run_edgefx("denoise", small.parent, "--out", out, "--device", "cpu")

        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert (out / small.name).is_file()
        assert not (out / large.name).exists()
        named = lines_naming(result.stderr, out / large.name)
        assert len(named) == 1, result.stderr
        assert named[0].endswith("no space left on the device"), named[0]
        assert len(failure_lines(result.stderr)) == 1, result.stderr
        assert temporaries(out) == []
        assert empty_files(out) == []


def test_enhance_full_disk(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a_short.wav", tones(8000, 1, 16000), 16000)
    sf.write(folder / "b_long.wav", tones(480000, 2, 48000), 48000)
    with tmpfs_mount(tmp_path / "out", size_kib=128) as out:
        result = run_edgefx("enhance", folder, "--out", out, "--device", "cpu")

        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert sf.info(str(out / "a_short.wav")).frames == 8000
        assert not (out / "b_long.wav").exists()
        named = lines_naming(result.stderr, out / "b_long.wav")
        assert len(named) == 1, result.stderr
        assert named[0].endswith("no space left on the device"), named[0]
        assert temporaries(out) == []
        assert empty_files(out) == []


def fill_file_system(path: Path) -> None:
    """Write zeros to ``path`` until the file system has no space left."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as caught:
            while True:
                os.write(descriptor, b"\0" * 4096)
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


def test_classify_results_full_disk(tmp_path: Path) -> None:
    small, _ = write_small_and_large_photos(tmp_path / "in")
    with tmpfs_mount(tmp_path / "mnt", size_kib=16) as mount:
        fill_file_system(mount / "filler")
        rows = mount / "rows.csv"

        result = run_edgefx("classify", small, "--format", "csv", "--out", rows)

        # The --out check writes a byte before any image is classified, so a full
        # disk stops the run at once with a usage error.
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert lines == [
            f"error: --out {rows}: cannot write the file in {mount}: no space left "
            "on the device; choose another --out file"
        ], lines
        assert "Traceback" not in result.stderr
        assert not rows.exists()
        assert temporaries(mount) == []


# --------------------------------------------------------------------------------------
# Read-only output folder


def assert_usage_error(result, out: Path, reason: str) -> None:
    """Check for exit status 2 and one `error:` line about ``out`` and ``reason``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {out}: cannot write output files"), lines
    assert lines[0].endswith(f"{reason}; choose another --out directory"), lines


def test_denoise_read_only_mount(tmp_path: Path) -> None:
    small, _ = write_small_and_large_photos(tmp_path / "in")
    with tmpfs_mount(tmp_path / "out", size_kib=1024, read_only=True) as out:
        result = run_edgefx("-q", "denoise", small.parent, "--out", out)

        assert_usage_error(result, out, "read-only file system")
        assert list(out.iterdir()) == []

        # An --out that does not exist yet is checked in its nearest existing parent.
        nested = out / "new" / "folder"
        result = run_edgefx("-q", "denoise", small.parent, "--out", nested)

        assert_usage_error(result, nested, "read-only file system")
        assert f"(in {out})" in result.stderr


def test_enhance_read_only_mount(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "take.wav", tones(8000, 1, 16000), 16000)
    with tmpfs_mount(tmp_path / "out", size_kib=1024, read_only=True) as out:
        result = run_edgefx("-q", "enhance", folder, "--out", out)

        assert_usage_error(result, out, "read-only file system")
        assert list(out.iterdir()) == []


def test_rerun_on_read_only_copy_skips(tmp_path: Path) -> None:
    # Outputs that all exist need no writing, so a read-only output folder is fine.
    small, _ = write_small_and_large_photos(tmp_path / "in")
    small.with_name("b_large.png").unlink()
    with tmpfs_mount(tmp_path / "out", size_kib=1024) as out:
        first = run_edgefx("denoise", small.parent, "--out", out, "--device", "cpu")
        assert first.returncode == 0, first.stderr
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(out)], capture_output=True, text=True
        )
        assert remount.returncode == 0, remount.stderr

        rerun = run_edgefx("denoise", small.parent, "--out", out, "--device", "cpu")

        assert rerun.returncode == 0, rerun.stderr
        assert "0 done, 1 skipped (output exists), 0 failed" in rerun.stderr


def test_read_only_subfolder_fails_its_files(tmp_path: Path) -> None:
    # The output folder is writable, but the mirrored subfolder of one input is on a
    # read-only file system, so only that file fails, with the reason.
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    pixels = cv2.imread(str(PHOTO), cv2.IMREAD_UNCHANGED)[:16, :16]
    assert cv2.imwrite(str(folder / "top.png"), pixels)
    assert cv2.imwrite(str(folder / "sub" / "inner.png"), pixels)
    out = tmp_path / "out"
    with tmpfs_mount(out / "sub", size_kib=1024, read_only=True):
        result = run_edgefx(
            "denoise", folder, "--recursive", "--out", out, "--device", "cpu"
        )

        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert (out / "top.png").is_file()
        named = lines_naming(result.stderr, out / "sub" / "inner.png")
        assert len(named) == 1, result.stderr
        assert named[0].endswith("read-only file system"), named[0]
        assert list((out / "sub").iterdir()) == []


def test_denoise_output_folder_without_write_permission(tmp_path: Path) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    small, _ = write_small_and_large_photos(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run_edgefx_unprivileged("-q", "denoise", small, "--out", out)
    finally:
        out.chmod(0o755)

    assert_usage_error(result, out, "permission denied")
    assert list(out.iterdir()) == []
