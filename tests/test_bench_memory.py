"""Smoke test of bench/memory.py on a small photo and a few seconds of audio."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "memory.py"


def test_memory_bench_small_cases() -> None:
    command = [
        sys.executable,
        str(SCRIPT),
        "--megapixels",
        "0.3",
        "--hours",
        "0.002",
        "--rate",
        "16000",
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in completed.stdout.splitlines()
        if line.startswith(("| denoise", "| enhance"))
    ]
    assert [row[0].split()[0] for row in rows] == ["denoise", "enhance"], rows
    for row in rows:
        peak_mib = float(row[1].removesuffix(" MiB"))
        assert 20.0 < peak_mib < 2048.0, row
        assert row[4] == "0", row
        assert row[5] == "yes", row
