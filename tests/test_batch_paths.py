"""Batch planning against awkward paths, through the CLI as a user runs it.

Covers outputs that would replace inputs, names too long for the file system, link
loops under ``**``, bad ``--out`` values and folders that cannot be listed. Every
case uses real files in tmp_path and the shipped models.
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
from reliability_helpers import permissions_unenforceable, run_edgefx_unprivileged

from edgefx.batch import InputFile, plan_outputs
from edgefx.errors import UsageError
from edgefx.fsutil import expand_pattern, list_folder
from edgefx.objectstore import parse_output

RATE = 16000
LONG_NAME = "z" * 300  # over the 255-byte name limit of ext4, XFS, Btrfs and tmpfs


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


# --------------------------------------------------------------------------------------
# Names too long for the file system


@pytest.mark.parametrize("command", ["denoise", "classify", "enhance"])
def test_long_input_name(run_cli, tmp_path: Path, command: str) -> None:
    args = ["--out", "out"] if command != "classify" else []

    result = run_cli(command, f"{LONG_NAME}.png", *args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"error: {LONG_NAME}.png: file name too long: a name in the path is 304 "
        "bytes, and this file system allows 255 bytes per name"
    ]


def test_long_input_name_batch_goes_on(run_cli, tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png")

    result = run_cli(
        "denoise", f"{LONG_NAME}.png", "ok.png", "--out", "out", cwd=tmp_path
    )

    assert result.returncode == 1, result.stderr
    assert len(failed_lines(result)) == 1
    assert failed_lines(result)[0].startswith(f"failed: {LONG_NAME}.png: file name")
    assert (tmp_path / "out" / "ok.png").is_file()


@pytest.mark.parametrize(
    ("command", "out"),
    [
        ("denoise", LONG_NAME),
        ("enhance", f"{LONG_NAME}/sub"),
        ("classify", f"{LONG_NAME}.csv"),
    ],
)
def test_long_out_name(run_cli, tmp_path: Path, command: str, out: str) -> None:
    write_image(tmp_path / "ok.png")
    write_audio(tmp_path / "ok.wav")
    source = "ok.wav" if command == "enhance" else "ok.png"

    result = run_cli(command, source, "--out", out, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1
    assert error_lines(result)[0].startswith(f"error: --out {out}: file name too long")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ok.png", "ok.wav"]


# --------------------------------------------------------------------------------------
# Link loops under ** and in recursive walks


@pytest.fixture
def looped_tree(tmp_path: Path) -> Path:
    """t/d/ok.wav with the link t/d/loop -> .. (back to t)."""
    tree = tmp_path / "t"
    write_audio(tree / "d" / "ok.wav")
    (tree / "d" / "loop").symlink_to("..")
    return tree


def test_enhance_double_star_loop(run_cli, looped_tree: Path, tmp_path: Path) -> None:
    result = run_cli("enhance", "t/**/*.wav", "--out", "o", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "same file" not in result.stderr
    assert sorted(files_in(tmp_path / "o")) == ["d/ok.wav"]


def test_enhance_recursive_loop(run_cli, looped_tree: Path, tmp_path: Path) -> None:
    result = run_cli("enhance", "t", "-r", "--out", "o", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert sorted(files_in(tmp_path / "o")) == ["d/ok.wav"]


def test_expand_pattern_glob_rules(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("a.wav", ".hidden.wav", "d/b.wav", ".h/c.wav", "e/f/g.wav"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.wav").write_bytes(b"x")
    (tree / "link").symlink_to(tmp_path / "elsewhere")

    def names(pattern: str) -> list[str]:
        matches, unreadable = expand_pattern(str(tree / pattern))
        assert unreadable == []
        return [match.relative_to(tree).as_posix() for match in matches]

    # ** skips hidden folders and enters no linked folder; * follows a link.
    assert names("**/*.wav") == ["a.wav", "d/b.wav", "e/f/g.wav"]
    assert names("*/*.wav") == ["d/b.wav", "link/x.wav"]
    assert names(".*.wav") == [".hidden.wav"]
    assert names(".h/*.wav") == [".h/c.wav"]
    assert names("e/**") == ["e", "e/f", "e/f/g.wav"]
    assert names("**/**/b.wav") == ["d/b.wav"]
    assert names("d/b.wav") == ["d/b.wav"]
    assert names("nothing/*.wav") == []


def test_list_folder_skips_linked_folders(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"x")
    (tmp_path / "d" / "up").symlink_to("..")

    entries, unreadable = list_folder(tmp_path, recursive=True)

    assert sorted(path.relative_to(tmp_path).as_posix() for path in entries) == [
        "d",
        "d/a.png",
        "d/up",
    ]
    assert unreadable == []


# --------------------------------------------------------------------------------------
# --out values


def test_empty_out_rejected(run_cli, tmp_path: Path) -> None:
    write_audio(tmp_path / "in" / "ok.wav")

    result = run_cli("enhance", "in/ok.wav", "--out", "", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == ["error: --out is empty; give a path"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in"]


def test_dangling_out_link_rejected(run_cli, tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png")
    (tmp_path / "dangling_out").symlink_to("missing")

    result = run_cli("denoise", "ok.png", "--out", "dangling_out", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        "error: --out dangling_out is a symbolic link to missing, which does not "
        "exist; create that directory or give another --out directory"
    ]
    assert not (tmp_path / "missing").exists()


def test_out_link_loop_rejected(run_cli, tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png")
    (tmp_path / "loop").symlink_to("loop")

    result = run_cli("denoise", "ok.png", "--out", "loop/sub", cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        "error: --out loop/sub: loop is a symbolic link in a loop; give another "
        "--out directory"
    ]


@pytest.mark.parametrize("command", ["denoise", "classify"])
def test_file_uri_out_rejected(run_cli, tmp_path: Path, command: str) -> None:
    write_image(tmp_path / "ok.png")
    target = tmp_path / "target"

    result = run_cli(command, tmp_path / "ok.png", "--out", f"file://{target}")

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        f"error: --out file://{target}: file:// URIs are not accepted; give the local "
        f"path {target}"
    ]
    assert not target.exists()


def test_parse_output_empty() -> None:
    with pytest.raises(UsageError, match="--out is empty"):
        parse_output("")


# --------------------------------------------------------------------------------------
# Folders that cannot be listed


@pytest.fixture
def locked_tree(tmp_path: Path):
    """in/top.wav, in/ok/a.wav and in/locked/b.wav, with in/locked at mode 000."""
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    tree = tmp_path / "in"
    write_audio(tree / "top.wav")
    write_audio(tree / "ok" / "a.wav")
    write_audio(tree / "locked" / "b.wav")
    (tree / "locked").chmod(0)
    yield tree
    (tree / "locked").chmod(0o755)


def test_recursive_reports_locked_folder(locked_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run_edgefx_unprivileged("enhance", locked_tree, "-r", "--out", out)

    assert result.returncode == 1, result.stderr
    assert failed_lines(result) == [
        f"failed: {locked_tree / 'locked'}: cannot list the files in this folder: "
        "permission denied"
    ]
    assert sorted(files_in(out)) == ["ok/a.wav", "top.wav"]


def test_locked_folder_named(locked_tree: Path, tmp_path: Path) -> None:
    result = run_edgefx_unprivileged(
        "enhance", locked_tree / "locked", "--out", tmp_path / "out"
    )

    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        f"error: {locked_tree / 'locked'}: cannot list the files in this folder: "
        "permission denied"
    ]


def test_double_star_reports_locked_folder(locked_tree: Path, tmp_path: Path) -> None:
    pattern = str(locked_tree / "**" / "*.wav")

    result = run_edgefx_unprivileged("enhance", pattern, "--out", tmp_path / "out")

    assert result.returncode == 1, result.stderr
    assert len(failed_lines(result)) == 1
    assert "locked: cannot list the files in this folder" in failed_lines(result)[0]
    assert sorted(files_in(tmp_path / "out")) == ["ok/a.wav", "top.wav"]
