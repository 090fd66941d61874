"""Batch planning against awkward paths, through the CLI as a user runs it.

Covers outputs that would replace inputs. Every case uses real files in tmp_path and
the shipped models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from edgefx.batch import InputFile, plan_outputs

RATE = 16000


def write_image(path: Path, seed: int = 0) -> Path:
    """Write a small noisy 24x32 color image; the suffix picks the format."""
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels), path
    return path


def write_audio(path: Path, seed: int = 0) -> Path:
    """Write 0.5 s of a noisy tone at 16 kHz; the suffix picks the format."""
    rng = np.random.default_rng(seed)
    time = np.arange(RATE // 2) / RATE
    signal = 0.3 * np.sin(2 * np.pi * 440 * time) + 0.02 * rng.standard_normal(
        time.size
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal.astype(np.float32), RATE)
    return path


def files_in(folder: Path) -> dict[str, bytes]:
    """Return every file below ``folder`` by its relative path, with its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def failed_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("failed: ")]


# --------------------------------------------------------------------------------------
# An output path that is an input of the same run


@pytest.mark.parametrize("overwrite", [True, False])
def test_denoise_named_input_kept(run_cli, tmp_path: Path, overwrite: bool) -> None:
    # a.jpg -> a.png with --format png would land on the input a.png.
    folder = tmp_path / "col"
    write_image(folder / "a.jpg", seed=1)
    write_image(folder / "a.png", seed=2)
    before = files_in(folder)
    options = ["--overwrite"] if overwrite else []

    result = run_cli(
        "denoise",
        "col/a.jpg",
        "col/a.png",
        "--out",
        "col",
        "--format",
        "png",
        *options,
        cwd=tmp_path,
    )

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        "error: col/a.jpg: the output would replace the input col/a.png; "
        "choose an --out directory outside the inputs"
    ]
    assert files_in(folder) == before


def test_denoise_folder_into_itself(run_cli, tmp_path: Path) -> None:
    folder = tmp_path / "col"
    write_image(folder / "a.jpg", seed=1)
    write_image(folder / "a.png", seed=2)
    before = files_in(folder)

    result = run_cli(
        "denoise", folder, "--out", folder, "--format", "png", "--overwrite"
    )

    assert result.returncode == 2, result.stderr
    assert "would replace the input" in result.stderr
    assert str(folder / "a.png") in result.stderr
    assert files_in(folder) == before


def test_enhance_folder_into_itself(run_cli, tmp_path: Path) -> None:
    folder = tmp_path / "col"
    write_audio(folder / "x.wav", seed=1)
    write_audio(folder / "x.ogg", seed=2)
    before = files_in(folder)

    result = run_cli(
        "enhance", folder, "--out", folder, "--format", "ogg", "--overwrite"
    )

    assert result.returncode == 2, result.stderr
    assert "would replace the input" in result.stderr
    assert files_in(folder) == before


def test_denoise_out_link_to_input(run_cli, tmp_path: Path) -> None:
    # The output folder is a link to the input folder, so a.jpg -> out/a.png is the
    # input a.png under another path.
    folder = tmp_path / "in"
    write_image(folder / "a.jpg", seed=1)
    write_image(folder / "a.png", seed=2)
    (tmp_path / "out").symlink_to(folder)
    before = files_in(folder)

    result = run_cli(
        "denoise", folder / "a.jpg", folder / "a.png", "--out", tmp_path / "out",
        "--format", "png",
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        f"error: {folder / 'a.jpg'}: the output {tmp_path / 'out' / 'a.png'} would "
        f"replace the input {folder / 'a.png'}; choose an --out directory outside "
        "the inputs"
    ]
    assert files_in(folder) == before


def test_rerun_out_inside_input(run_cli, tmp_path: Path) -> None:
    # An output folder inside the input folder is not read back in, so the rerun
    # skips the finished outputs instead of rejecting them as inputs.
    folder = tmp_path / "photos"
    write_image(folder / "a.jpg", seed=1)
    write_image(folder / "b.png", seed=2)
    out = folder / "clean"

    first = run_cli("denoise", folder, "-r", "--out", out, "--format", "png")
    second = run_cli("denoise", folder, "-r", "--out", out, "--format", "png")

    assert first.returncode == 0, first.stderr
    assert sorted(files_in(out)) == ["a.png", "b.png"]
    assert second.returncode == 0, second.stderr
    assert "0 done, 2 skipped (output exists), 0 failed" in second.stderr


def test_rerun_same_folder_rejected(run_cli, tmp_path: Path) -> None:
    # With --out on the input folder, the first run's a.png cannot be distinguished
    # from a photo of the user's, so the rerun stops instead of skipping or replacing
    # it.
    folder = tmp_path / "photos"
    write_image(folder / "a.jpg", seed=1)

    first = run_cli("denoise", folder, "--out", folder, "--format", "png")
    written = (folder / "a.png").read_bytes()
    second = run_cli("denoise", folder, "--out", folder, "--format", "png")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 2, second.stderr
    assert "would replace the input" in second.stderr
    assert (folder / "a.png").read_bytes() == written


def test_plan_hard_link_output_allowed(tmp_path: Path) -> None:
    # The atomic rename replaces the output's directory entry, so a hard link of an
    # input in another folder leaves the input as it was.
    source = tmp_path / "in" / "a.png"
    source.parent.mkdir()
    source.write_bytes(b"photo")
    (tmp_path / "out").mkdir()
    os.link(source, tmp_path / "out" / "a.png")

    items = plan_outputs(
        [InputFile(source, Path("a.png"))], tmp_path / "out", lambda path: ".png"
    )

    assert [item.output for item in items] == [tmp_path / "out" / "a.png"]


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """Mount ``source`` at ``target`` for the ``with`` block, or skip the test."""
    target.mkdir()
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("a bind mount needs root and the mount command")
    command = [mount, "--bind", str(source), str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)


def test_denoise_out_bind_mount(run_cli, tmp_path: Path) -> None:
    # resolve() does not show that mnt/a.png is in/a.png, but the file identity does.
    folder = tmp_path / "in"
    write_image(folder / "a.jpg", seed=1)
    write_image(folder / "a.png", seed=2)
    before = files_in(folder)

    with bind_mount(folder, tmp_path / "mnt") as mounted:
        result = run_cli(
            "denoise", folder, "--out", mounted, "--format", "png", "--overwrite"
        )

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        f"error: {folder / 'a.jpg'}: the output {mounted / 'a.png'} would replace "
        f"the input {folder / 'a.png'}; choose an --out directory outside the inputs"
    ]
    assert files_in(folder) == before
