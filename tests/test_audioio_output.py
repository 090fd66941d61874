"""Tests for the output side of edgefx.audioio: rounding and tags.

Every file is written with AudioWriter in tmp_path and read back with soundfile, so
the checks run against libsndfile itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgefx.audioio import AudioWriter

RATE = 16000


# --------------------------------------------------------------------------------------
# Rounding to integer subtypes

# Integer subtypes per format, with the bits per sample.
INTEGER_OUTPUTS = [
    ("out.wav", "PCM_U8", 8),
    ("out.wav", "PCM_16", 16),
    ("out.wav", "PCM_24", 24),
    ("out.wav", "PCM_32", 32),
    ("out.aiff", "PCM_S8", 8),
    ("out.aiff", "PCM_U8", 8),
    ("out.aiff", "PCM_16", 16),
    ("out.aiff", "PCM_24", 24),
    ("out.aiff", "PCM_32", 32),
    ("out.au", "PCM_S8", 8),
    ("out.au", "PCM_16", 16),
    ("out.au", "PCM_24", 24),
    ("out.au", "PCM_32", 32),
    ("out.flac", "PCM_S8", 8),
    ("out.flac", "PCM_16", 16),
    ("out.flac", "PCM_24", 24),
]


@pytest.mark.parametrize(("name", "subtype", "bits"), INTEGER_OUTPUTS)
def test_writer_rounds_to_nearest_step(
    tmp_path: Path, name: str, subtype: str, bits: int
) -> None:
    # libsndfile 1.2.2 rounds float down to the grid of WAV, AIFF and AU files, which
    # left every sample half a step low on average.
    path = tmp_path / name
    rng = np.random.default_rng(bits)
    samples = rng.uniform(-0.99, 0.99, size=(20000, 1)).astype(np.float32)

    with AudioWriter(path, RATE, 1, subtype=subtype) as writer:
        writer.write(samples)

    assert sf.info(str(path)).subtype == subtype
    decoded, _ = sf.read(path, dtype="float64", always_2d=True)
    error = (decoded - samples.astype(np.float64)) * 2.0 ** (bits - 1)
    assert np.abs(error).max() <= 0.5 + 1e-6
    assert abs(float(error.mean())) < 0.02


@pytest.mark.parametrize(("name", "subtype", "bits"), INTEGER_OUTPUTS)
def test_writer_full_scale_clips_to_grid(
    tmp_path: Path, name: str, subtype: str, bits: int
) -> None:
    path = tmp_path / name
    # An even count, because libsndfile 1.2.2 reads an 8-bit mono AIFF file with an
    # odd count, which has a pad byte, with one frame too many.
    samples = np.array([[1.0], [1.5], [-1.0], [-2.0], [0.0], [0.0]], np.float32)

    with AudioWriter(path, RATE, 1, subtype=subtype) as writer:
        writer.write(samples)

    # soundfile returns every integer subtype as int32 with the sample in the top bits.
    decoded, _ = sf.read(path, dtype="int32", always_2d=True)
    largest = (2 ** (bits - 1) - 1) << (32 - bits)
    assert decoded[:, 0].tolist() == [largest, largest, -(2**31), -(2**31), 0, 0]
