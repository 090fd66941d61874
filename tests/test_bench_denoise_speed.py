"""Smoke test of bench/denoise_speed.py on a small upscaled sample photo."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "denoise_speed.py"
ROW = re.compile(r"^\| (.+?) \| ([\d.]+) \| (\d+)% \| (\d+)% to (\d+)% \|$")


def test_speed_bench_prints_table() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--rounds",
            "1",
            "--ceiling-seconds",
            "0.5",
            "--scale",
            "2",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    ceiling = re.search(
        r"(\d+) to (\d+) GFLOP/s, which allows ([\d.]+) MP/s", result.stdout
    )
    assert ceiling is not None, result.stdout
    # One round: the range of the ceiling is that round's value.
    assert ceiling.group(1) == ceiling.group(2)
    gflops, allowed = float(ceiling.group(1)), float(ceiling.group(3))
    macs = re.search(r"denoise-s: ([\d,]+) multiply-accumulates", result.stdout)
    assert macs is not None, result.stdout
    # Twice the model's multiply-accumulates per pixel turn GFLOP/s into MP/s.
    per_pixel = int(macs.group(1).replace(",", ""))
    assert allowed * 2 * per_pixel / 1e3 == pytest.approx(gflops, rel=0.02, abs=1.0)
    rows = {
        m.group(1): m for line in result.stdout.splitlines() if (m := ROW.match(line))
    }
    assert set(rows) == {
        "Denoiser.denoise, sigma given, no file I/O",
        "CLI, sigma given",
        "CLI, blind",
    }
    for mode, match in rows.items():
        speed, share = float(match.group(2)), int(match.group(3))
        assert speed > 0.0, mode
        # Speeds and the ceiling are printed to 0.01 MP/s, so at one thread on a
        # small photo their rounding alone can move the share by more than a point.
        rounding = 100 * 0.005 * (1 / allowed + speed / allowed**2)
        assert abs(share - 100 * speed / allowed) <= 0.5 + rounding, mode
        # With one round the range is that round's share.
        assert int(match.group(4)) == int(match.group(5)) == share, mode
