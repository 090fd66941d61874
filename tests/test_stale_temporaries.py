"""The sweep of stale temporary files removes only what a killed edgefx run left.

Each run of ``edgefx denoise`` first removes old temporary files from the folders it
writes to. A file is taken as such a leftover only when its whole name has the form
that tempfile.mkstemp gives with edgefx's prefix, it has mode 0600, and it is not an
input of the run. Files elsewhere under --out are not searched. The runs use the
shipped denoise-s model.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from cli_helpers import run_edgefx

from edgefx.fsutil import TEMP_PREFIX, is_temporary_name

TWO_HOURS_AGO = time.time() - 7200


def _write_photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def _make_old(path: Path, mode: int) -> Path:
    """Give ``path`` the mode ``mode`` and a modification time two hours ago."""
    path.chmod(mode)
    os.utime(path, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    return path


def test_mkstemp_names_match_pattern(tmp_path: Path) -> None:
    for suffix in (".png", ".jpeg", ".flac", ".csv", ""):
        handle, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=tmp_path)
        os.close(handle)
        assert is_temporary_name(Path(name).name), name


def test_temporary_name_pattern_is_strict() -> None:
    assert is_temporary_name(".edgefx-tmp-9kv3705g.ogg")
    assert is_temporary_name(".edgefx-tmp-probe-a_b1c2d3")
    assert not is_temporary_name(".edgefx-tmp-holiday.png")  # 7 characters
    assert not is_temporary_name(".edgefx-tmp-Holidays.png")  # an upper-case letter
    assert not is_temporary_name(".edgefx-tmp-9kv3705g.png.bak")
    assert not is_temporary_name(".edgefx-tmp-9kv3705g copy.png")
    assert not is_temporary_name("edgefx-tmp-9kv3705g.png")


def test_sweep_keeps_input_in_output_folder(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    disguised = _make_old(_write_photo(folder / ".edgefx-tmp-holidays.png"), 0o600)
    content = disguised.read_bytes()
    other = _write_photo(tmp_path / "b.png", seed=1)

    result = run_edgefx(
        "denoise", disguised, other, "--out", folder, "--format", "jpeg"
    )

    assert result.returncode == 1, result.stderr
    assert disguised.read_bytes() == content
    assert f"failed: {disguised}: the output name .edgefx-tmp-holidays.jpg" in (
        result.stderr
    )
    assert (folder / "b.jpg").is_file()
    assert not (folder / ".edgefx-tmp-holidays.jpg").exists()


def test_temporary_output_name_rejected(tmp_path: Path) -> None:
    source = _write_photo(tmp_path / "in" / ".edgefx-tmp-holidays.png")
    out = tmp_path / "out"

    result = run_edgefx("denoise", source, "--out", out)

    assert result.returncode == 2, result.stderr
    assert "has the form of an edgefx temporary file" in result.stderr
    assert source.is_file()
    assert not (out / source.name).exists()


def test_sweep_removes_only_own_leftovers(tmp_path: Path) -> None:
    source = _write_photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    leftover = _make_old(_write_photo(out / ".edgefx-tmp-k3_9zq0a.png"), 0o600)
    copied = _make_old(_write_photo(out / ".edgefx-tmp-vacation.png"), 0o644)
    short_name = _make_old(_write_photo(out / ".edgefx-tmp-holiday.png"), 0o600)
    elsewhere = _make_old(
        _write_photo(out / "other" / ".edgefx-tmp-abcd1234.png"), 0o600
    )

    result = run_edgefx("denoise", source, "--out", out)

    assert result.returncode == 0, result.stderr
    assert "removed 1 temporary file left by an interrupted run" in result.stderr
    assert not leftover.exists()
    assert copied.is_file()
    assert short_name.is_file()
    assert elsewhere.is_file()
    assert (out / "a.png").is_file()
