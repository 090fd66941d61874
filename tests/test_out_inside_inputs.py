"""--out inside a recursive input: the files left out under it are never replaced.

The walk of the inputs leaves out the files under --out, so that a rerun does not
read its own outputs. Those files may as well be photos of the user's, so the run
logs them, and with --overwrite it stops before any work when an output would
replace one of them. The runs use the shipped denoise-s model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
from cli_helpers import run_edgefx


def _write_photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), np.uint8)
    assert cv2.imwrite(str(path), pixels)


def _make_tree(root: Path) -> dict[str, str]:
    """Write photos in ``root`` and ``root``/2023; return their digests by path."""
    _write_photo(root / "a.png", 0)
    _write_photo(root / "2023" / "a.png", 1)
    _write_photo(root / "2023" / "b.png", 2)
    return _digests(root)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_overwrite_into_input_subfolder_stops(tmp_path: Path) -> None:
    root = tmp_path / "ph"
    before = _make_tree(root)

    result = run_edgefx(
        "denoise", root, "--recursive", "--out", root / "2023", "--overwrite"
    )

    assert result.returncode == 2, result.stderr
    assert (
        f"error: {root / 'a.png'}: with --overwrite, the output would replace "
        f"{root / '2023' / 'a.png'}"
    ) in result.stderr
    assert _digests(root) == before


def test_double_star_overwrite_stops(tmp_path: Path) -> None:
    root = tmp_path / "ph"
    before = _make_tree(root)

    result = run_edgefx(
        "denoise", f"{root}/**/*.png", "--out", root / "2023", "--overwrite"
    )

    assert result.returncode == 2, result.stderr
    assert "with --overwrite, the output would replace" in result.stderr
    assert _digests(root) == before


def test_left_out_files_logged(tmp_path: Path) -> None:
    root = tmp_path / "ph"
    before = _make_tree(root)

    result = run_edgefx("denoise", root, "--recursive", "--out", root / "2023")

    assert result.returncode == 0, result.stderr
    assert (
        f"left out 2 files under --out {root / '2023'}, which lies inside the "
        f"inputs, so that earlier outputs are not read as inputs: "
        f"{root / '2023' / 'a.png'}, {root / '2023' / 'b.png'}"
    ) in result.stderr
    assert "0 done, 1 skipped (output exists), 0 failed" in result.stderr
    assert _digests(root) == before


def test_rerun_into_input_subfolder_resumes(tmp_path: Path) -> None:
    root = tmp_path / "ph"
    _make_tree(root)
    out = root / "out"

    first = run_edgefx("denoise", root, "--recursive", "--out", out)
    second = run_edgefx("denoise", root, "--recursive", "--out", out)

    assert first.returncode == 0, first.stderr
    assert "3 done, 0 skipped (output exists), 0 failed" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "0 done, 3 skipped (output exists), 0 failed" in second.stderr
    assert "left out 3 files under --out" in second.stderr
