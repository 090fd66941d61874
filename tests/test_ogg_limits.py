"""Ogg output beyond the limits of libsndfile's Ogg writer fails one file, not the run.

libsndfile 1.2.2 crashes with a segmentation fault on a Vorbis file with more than 255
channels or above 200000 Hz, so AudioWriter checks both before it opens the file. The
runs use the shipped enhance-speech model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from cli_helpers import run_edgefx
from reliability_helpers import temporaries


def _write_noise(path: Path, rate: int, channels: int, frames: int) -> None:
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal((frames, channels))).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")


def _write_lying_header(path: Path, channels: int) -> None:
    """Write a 16 kHz mono WAV whose header claims ``channels`` channels."""
    _write_noise(path, 16000, 1, 16000)
    data = bytearray(path.read_bytes())
    data[22:24] = channels.to_bytes(2, "little")  # NumChannels of the fmt chunk
    path.write_bytes(bytes(data))


def test_ogg_limits_fail_per_file(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write_noise(inputs / "ok.wav", 16000, 1, 1600)
    _write_noise(inputs / "wide.wav", 16000, 256, 1600)
    _write_noise(inputs / "fast.wav", 384000, 1, 3200)
    _write_lying_header(inputs / "lying.wav", 1000)
    out = tmp_path / "out"

    result = run_edgefx("-q", "enhance", inputs, "--out", out, "--format", "ogg")

    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    wide = [line for line in lines if line.startswith(f"failed: {out / 'wide.ogg'}:")]
    assert len(wide) == 1, result.stderr
    assert "at most 255 channels" in wide[0]
    lying = [line for line in lines if f"{out / 'lying.ogg'}:" in line]
    assert len(lying) == 1, result.stderr
    assert "with 1000 channels" in lying[0]
    fast = [line for line in lines if line.startswith(f"failed: {out / 'fast.ogg'}:")]
    assert len(fast) == 1, result.stderr
    assert "up to 200000 Hz" in fast[0]
    assert "1 done, 0 skipped (output exists), 3 failed" in result.stderr
    assert sf.info(out / "ok.ogg").frames == 1600
    assert sorted(path.name for path in out.iterdir()) == ["ok.ogg"]
    assert temporaries(out) == []


def test_ogg_255_channels_still_written(tmp_path: Path) -> None:
    source = tmp_path / "wide.wav"
    _write_noise(source, 16000, 255, 1600)
    out = tmp_path / "out"

    result = run_edgefx("-q", "enhance", source, "--out", out, "--format", "ogg")

    assert result.returncode == 0, result.stderr
    assert sf.info(out / "wide.ogg").channels == 255
