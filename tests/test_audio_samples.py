"""End-to-end test of ``edgefx enhance`` on the shipped audio samples.

One ``python -m edgefx enhance samples/audio/noisy`` run with the shipped model
(models/enhance-speech.onnx) is checked for what the README promises. Every output
keeps its input's rate, channels, length, format and sample format. The speech in it
is closer to the clean recording in samples/audio/clean/ than the noisy input was.
The samples themselves are checked against what samples/README.md states about them.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

# SHA-256 of arctic_a0007.wav in the pysptk 1.0.1 source distribution. The clean
# sample is that file unchanged.
CLEAN_SHA256 = "1b850392f8c87ee2efe5a686523f1bab61d2a38d59bc43d1127e17e406f9e57d"

# Noisy sample -> SNR in dB of each channel, as samples/README.md states it.
NOISY_SNR_DB = {
    "arctic_a0007_room_5db.flac": 5.0,
    "arctic_a0007_fan_0db_stereo.wav": 0.0,
}

# The shipped model raised the SI-SDR of every channel of both samples by at least
# 3.8 dB: version 2 by 3.8 dB (5.03 -> 8.86 dB for the FLAC, 0.16 -> 3.99 and 0.18 ->
# 4.02 dB for the stereo WAV), version 3 by 4.6 to 5.0 dB (9.82, 4.80 and 5.22 dB),
# version 4 by 4.6 to 5.0 dB (10.06, 4.75 and 4.92 dB), measured on a 2-core x86 CPU
# with ONNX Runtime 1.31.1. Half of version 2's gain
# catches a broken pipeline (misaligned output, wrong resampling or channel handling)
# and a retrained model that is clearly worse.
MIN_SI_SDR_GAIN_DB = 1.9


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Return the scale-invariant signal-to-distortion ratio in dB.

    Both signals are made zero-mean. The ratio is the power of the estimate's
    projection on the reference over the power of the rest of the estimate.
    """
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    scale = np.dot(estimate, reference) / np.dot(reference, reference)
    target = scale * reference
    residual = estimate - target
    return float(10 * np.log10(np.dot(target, target) / np.dot(residual, residual)))


def clean_reference(audio_dir: Path, rate: int) -> np.ndarray:
    """Return the clean recording at ``rate``, resampled as make_audio_samples does."""
    clean, clean_rate = sf.read(audio_dir / "clean" / "arctic_a0007.wav")
    if rate == clean_rate:
        return clean
    return soxr.resample(clean, clean_rate, rate, quality="VHQ")


@pytest.fixture(scope="module")
def audio_dir(samples_dir: Path) -> Path:
    return samples_dir / "audio"


@pytest.fixture(scope="module")
def enhance_run(
    run_cli, audio_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("audio_samples") / "enhanced"
    result = run_cli(
        "enhance",
        audio_dir / "noisy",
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
    )
    return result, out


def test_clean_sample_is_original(audio_dir: Path) -> None:
    data = (audio_dir / "clean" / "arctic_a0007.wav").read_bytes()

    assert hashlib.sha256(data).hexdigest() == CLEAN_SHA256


def test_license_next_to_clean(audio_dir: Path) -> None:
    text = (audio_dir / "clean" / "COPYING").read_text(encoding="utf-8")

    assert "Carnegie Mellon University" in text
    assert "Copyright (c) 2003" in text


@pytest.mark.parametrize("name", sorted(NOISY_SNR_DB))
def test_noisy_sample_snr(audio_dir: Path, name: str) -> None:
    noisy, rate = sf.read(audio_dir / "noisy" / name, always_2d=True)
    reference = clean_reference(audio_dir, rate)

    assert len(noisy) == len(reference)
    for channel in range(noisy.shape[1]):
        noise = noisy[:, channel] - reference
        snr = 10 * np.log10(np.sum(reference**2) / np.sum(noise**2))
        assert snr == pytest.approx(NOISY_SNR_DB[name], abs=0.05), f"channel {channel}"


def test_noisy_samples_listed(audio_dir: Path) -> None:
    names = sorted(path.name for path in (audio_dir / "noisy").iterdir())

    assert names == sorted(NOISY_SNR_DB)


def test_enhance_samples_exit_0(enhance_run) -> None:
    result, _ = enhance_run

    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped (output exists), 0 failed" in result.stderr


def test_enhance_samples_one_output_each(enhance_run) -> None:
    _, out = enhance_run

    assert sorted(path.name for path in out.iterdir()) == sorted(NOISY_SNR_DB)


@pytest.mark.parametrize("name", sorted(NOISY_SNR_DB))
def test_enhance_keeps_audio_properties(
    enhance_run, audio_dir: Path, name: str
) -> None:
    _, out = enhance_run
    source = sf.info(audio_dir / "noisy" / name)
    output = sf.info(out / name)

    assert output.samplerate == source.samplerate
    assert output.channels == source.channels
    assert output.frames == source.frames
    assert output.format == source.format
    assert output.subtype == source.subtype


@pytest.mark.parametrize("name", sorted(NOISY_SNR_DB))
def test_enhance_si_sdr_gain(enhance_run, audio_dir: Path, name: str) -> None:
    _, out = enhance_run
    noisy, rate = sf.read(audio_dir / "noisy" / name, always_2d=True)
    enhanced, _ = sf.read(out / name, always_2d=True)
    reference = clean_reference(audio_dir, rate)

    # The enhancer removes the model's delay, so the output is compared sample for
    # sample with no alignment search.
    for channel in range(noisy.shape[1]):
        before = si_sdr(noisy[:, channel], reference)
        after = si_sdr(enhanced[:, channel], reference)
        assert after - before >= MIN_SI_SDR_GAIN_DB, (
            f"{name} channel {channel}: SI-SDR {before:.2f} dB noisy, "
            f"{after:.2f} dB enhanced"
        )
