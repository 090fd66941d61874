"""Regression tests for defects found by running the CLI against hostile inputs.

Each test names the case it guards: an output that would replace an input, symlink
loops, file names that look like markup or contain control characters, models that
return NaN or need fixed input sizes, color profiles that do not match the pixels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_edgefx
from reliability_helpers import (
    failure_lines,
    permissions_unenforceable,
    run_edgefx_unprivileged,
)
from test_classify import contract_metadata, write_color_classifier, write_solid


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    return write_color_classifier(
        tmp_path / "colors.onnx", ["N", 3, 32, 32], contract_metadata()
    )


# --------------------------------------------------------------------------------------
# classify --out


def test_classify_out_replacing_input(tmp_path: Path, classifier: Path) -> None:
    photo = write_solid(tmp_path / "red.png", "red")
    other = write_solid(tmp_path / "blue.png", "blue")
    before = photo.read_bytes()

    result = run_edgefx(
        "classify", photo, other, "--model", classifier,
        "--format", "csv", "--out", photo,
    )  # fmt: skip

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {photo}: the output would replace"), lines
    assert photo.read_bytes() == before


def test_classify_out_unwritable_folder(tmp_path: Path, classifier: Path) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    photo = write_solid(tmp_path / "red.png", "red")
    folder = tmp_path / "results"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run_edgefx_unprivileged(
            "classify", photo, "--model", classifier,
            "--format", "csv", "--out", folder / "rows.csv",
        )  # fmt: skip
    finally:
        folder.chmod(0o755)

    # One line and nothing else: the model was not even loaded, which logs a line.
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {folder / 'rows.csv'}: cannot write"), (
        lines
    )
    assert lines[0].endswith("permission denied; choose another --out file"), lines
    assert list(folder.iterdir()) == []
    assert failure_lines(result.stderr) == []


# --------------------------------------------------------------------------------------
# Names that look like markup or contain control characters


def test_classify_table_markup_names(tmp_path: Path, classifier: Path) -> None:
    (tmp_path / "ab[").mkdir()
    (tmp_path / "trip [japan]").mkdir()
    write_solid(tmp_path / "ab[" / "]x.png", "red")
    write_solid(tmp_path / "trip [japan]" / "shot [b].png", "blue")
    write_solid(tmp_path / "esc\x1b[2J.png", "green")

    result = run_edgefx(
        "classify", "ab[/]x.png", "trip [japan]/shot [b].png", "esc\x1b[2J.png",
        "--model", classifier, "--device", "cpu",
        cwd=tmp_path, env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = result.stdout.splitlines()
    assert any("ab[/]x.png" in row and "red" in row for row in rows), result.stdout
    assert any("trip [japan]/shot [b].png" in row and "blue" in row for row in rows), (
        result.stdout
    )
    assert any("esc\\x1b[2J.png" in row and "green" in row for row in rows), (
        result.stdout
    )
    assert "\x1b" not in result.stdout


def test_failed_line_escapes_control_characters(tmp_path: Path) -> None:
    bad = tmp_path / "in" / "bad\x1b[2J\nname.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")

    result = run_edgefx("denoise", bad.parent, "--out", tmp_path / "out")

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert len(failed) == 1, result.stderr
    assert "bad\\x1b[2J\\nname.png" in failed[0], failed
    assert "\x1b" not in result.stderr


# --------------------------------------------------------------------------------------
# Symlink loops


def test_symlink_loop_with_out_inside_input(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_solid(folder / "ok.png", "red")
    (folder / "b.png").symlink_to("a.png")
    (folder / "a.png").symlink_to("b.png")

    # An --out inside the input folder makes the listing resolve every entry.
    result = run_edgefx("denoise", folder, "--out", folder / "out", "--device", "cpu")

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (folder / "out" / "ok.png").is_file()
    assert len(failed) == 2, result.stderr
    assert failed[0].startswith(f"failed: {folder / 'a.png'}: "), failed
    assert failed[1].startswith(f"failed: {folder / 'b.png'}: "), failed
    assert "1 done, 0 skipped (output exists), 2 failed" in result.stderr
