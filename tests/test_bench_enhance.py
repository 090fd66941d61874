"""Smoke test of bench/enhance_speech.py on one test utterance at one SNR.

The recordings are not part of the repository. The test looks for them where the
script does, in $EDGEFX_DATA/audio when EDGEFX_DATA is set, else in ../shared/data/audio
beside the repository, and skips when they are absent. It runs edgefx alone: the other
tools come with the bench extra only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "enhance_speech.py"


def find_audio() -> Path | None:
    if os.environ.get("EDGEFX_DATA"):
        folder = Path(os.environ["EDGEFX_DATA"]).expanduser() / "audio"
    else:
        folder = REPO_ROOT.parent / "shared" / "data" / "audio"
    return folder if folder.is_dir() else None


def test_bench_snr_and_noise_tables(tmp_path: Path) -> None:
    data = find_audio()
    if data is None:
        pytest.skip(
            "audio data not found: set EDGEFX_DATA to a folder that contains audio/, "
            "or place the data in ../shared/data beside the repository"
        )
    pytest.importorskip("pesq", reason="pesq comes with the dev and bench extras")
    pytest.importorskip("pystoi", reason="pystoi comes with the dev and bench extras")
    output = tmp_path / "bench.json"
    command = [
        sys.executable, str(SCRIPT), "--data", str(data), "--tools", "noisy,edgefx",
        "--limit", "1", "--snrs", "0", "--json", str(output),
    ]  # fmt: skip

    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False
    )

    assert completed.returncode == 0, completed.stderr
    payload = json.loads(output.read_text(encoding="utf-8"))
    mixtures = payload["mixtures"]
    assert [row["tool"] for row in mixtures] == ["noisy", "edgefx"]
    noisy, enhanced = mixtures
    # At 0 dB the input's SI-SDR is 0 by construction, and the enhancer must raise it
    # (on this mixture, cafe noise, the shipped model gains about 1 dB).
    assert abs(noisy["si_sdr_db"]) < 0.5
    assert enhanced["si_sdr_db"] > noisy["si_sdr_db"] + 0.5
    assert 0 < enhanced["stoi"] <= 1
    noise_file = noisy["noise_file"]
    lines = completed.stdout.splitlines()
    assert any(line.startswith("| 0 | edgefx |") for line in lines)
    by_noise = [line for line in lines if line.startswith(f"| {noise_file} |")]
    assert [line.split("|")[2].strip() for line in by_noise] == ["noisy", "edgefx"]
