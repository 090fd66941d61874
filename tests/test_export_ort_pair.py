"""``export --format ort`` writes the .ort file and its operators config together.

On a disk too small for the .ort file, neither file may be left behind, and no partial
file either. The disk is a tmpfs, which needs root to mount; elsewhere the test skips.
"""

from __future__ import annotations

from pathlib import Path

from cli_helpers import run_edgefx
from reliability_helpers import tmpfs_mount

# Room for the 1-byte write probe and the operators config (about 230 bytes), not for
# the .ort file of denoise-s (about 1.5 MB).
TINY_DISK_KIB = 300


def test_ort_export_writes_both_files(tmp_path: Path) -> None:
    out = tmp_path / "y.ort"

    result = run_edgefx("export", "denoise-s", "--format", "ort", "--out", out)

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "y.ort",
        "y.required_operators.config",
    ]


def test_ort_export_disk_full_leaves_nothing(tmp_path: Path) -> None:
    with tmpfs_mount(tmp_path / "tiny", TINY_DISK_KIB) as disk:
        out = disk / "y.ort"

        result = run_edgefx("export", "denoise-s", "--format", "ort", "--out", out)

        assert result.returncode == 1, result.stderr
        assert f"error: {out}: No space left on device" in result.stderr
        assert list(disk.iterdir()) == []
