"""Smoke test of bench/denoise_cbsd68.py on one CBSD68 photo.

The photos are not part of the repository. The test looks for them where the script
does, in $EDGEFX_DATA/images/test/CBSD68 when EDGEFX_DATA is set, else in
../shared/data/images/test/CBSD68 beside the repository, and skips when they are absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "denoise_cbsd68.py"
CBSD68 = Path("images", "test", "CBSD68")


def find_cbsd68() -> Path | None:
    """Return the CBSD68 folder that the script would use by default, if it exists."""
    if os.environ.get("EDGEFX_DATA"):
        folder = Path(os.environ["EDGEFX_DATA"]).expanduser() / CBSD68
    else:
        folder = REPO_ROOT.parent / "shared" / "data" / CBSD68
    return folder if folder.is_dir() else None


def test_bench_one_image_sigma_25() -> None:
    data = find_cbsd68()
    if data is None:
        pytest.skip(
            "CBSD68 photos not found: set EDGEFX_DATA to a folder that contains "
            "images/test/CBSD68, or place the data in ../shared/data beside the "
            "repository"
        )
    command = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--limit",
        "1",
        "--sigmas",
        "25",
        "--nlm-grid",
        "20",
        "--tune-images",
        "1",
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr

    rows = [line for line in completed.stdout.splitlines() if line.startswith("| 25 |")]
    assert len(rows) == 1, completed.stdout
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    # sigma, noisy PSNR, NLM h, NLM PSNR, edgefx blind PSNR, edgefx known-sigma PSNR,
    # then three speeds and their ratio.
    assert len(cells) == 10, rows[0]
    values = [float(cell) for cell in cells]
    noisy_psnr, nlm_h, nlm_psnr, blind_psnr, known_psnr = values[1:6]
    assert nlm_h == 20.0
    assert nlm_psnr > noisy_psnr
    assert blind_psnr > noisy_psnr
    assert known_psnr > noisy_psnr
    assert all(speed > 0.0 for speed in values[6:])
