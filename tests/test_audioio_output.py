"""Tests for the output side of edgefx.audioio: rounding and tags.

Every file is written with AudioWriter in tmp_path and read back with soundfile, so
the checks run against libsndfile itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgefx.audioio import FORMAT_FOR_SUFFIX, AudioWriter, probe

RATE = 16000


def make_signal(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Return a 300 Hz tone plus noise per channel, float32 within [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(frames)[:, None] / RATE
    tone = 0.3 * np.sin(2 * np.pi * 300.0 * seconds)
    noise = 0.05 * rng.standard_normal((frames, channels))
    return (tone + noise).astype(np.float32)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def require_mp3() -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")


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


# --------------------------------------------------------------------------------------
# MP3 tags


def write_tagged_mp3(path: Path, tags: tuple[tuple[str, str], ...]) -> None:
    with AudioWriter(path, RATE, 1, tags=tags) as writer:
        writer.write(make_signal(RATE))


def test_writer_mp3_writes_only_given_tags(tmp_path: Path) -> None:
    # libsndfile writes MP3 tags with an ID3v1 tag from LAME, whose unset fixed
    # fields read back as empty album, date and comment tags.
    require_mp3()
    path = tmp_path / "out.mp3"

    write_tagged_mp3(path, (("title", "Take 3"), ("artist", "Field crew")))

    with sf.SoundFile(path) as audio:
        assert audio.copy_metadata() == {"title": "Take 3", "artist": "Field crew"}
    data = path.read_bytes()
    assert data.startswith(b"ID3\x04")
    assert data[-128:-125] != b"TAG"


def test_writer_mp3_without_tags_has_none(tmp_path: Path) -> None:
    require_mp3()
    path = tmp_path / "out.mp3"

    write_tagged_mp3(path, ())

    with sf.SoundFile(path) as audio:
        assert audio.copy_metadata() == {}
    assert not path.read_bytes().startswith(b"ID3")


def test_writer_mp3_tags_round_trip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_mp3()
    path = tmp_path / "out.mp3"
    tags = {
        # Longer than the 30 bytes of an ID3v1 field.
        "title": "Caf\u00e9 \u00fcber alles, \u00e0 la fran\u00e7aise, s'il vous "
        "pla\u00eet",
        "artist": "\u201cField\u201d crew \U0001f600",
        "album": "Street recordings",
        "comment": "Modified copy: noise added",
        "date": "2024-05-01",
        "tracknumber": "3/12",
        "genre": "Speech",
        "copyright": "\u00a9 2024 Caf\u00e9 SA",
        "software": "edgefx",
    }

    write_tagged_mp3(path, (*tags.items(), ("license", "CC0")))

    assert dict(probe(path).tags) == tags
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert "the license tag was not kept" in warnings[0]
    assert sf.info(str(path)).frames == RATE


def test_writer_mp3_tags_in_utf8(tmp_path: Path) -> None:
    require_mp3()
    path = tmp_path / "out.mp3"
    title = "Caf\u00e9 \u201cquoted\u201d"

    write_tagged_mp3(path, (("title", title),))

    data = path.read_bytes()
    assert b"TIT2" in data
    assert title.encode("utf-8") in data
