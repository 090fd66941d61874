"""Tests for the output side of edgefx.audioio: naming, containers, rounding and tags.

Every file is written with soundfile or AudioWriter in tmp_path and read back with
soundfile, so the checks run against libsndfile itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgefx import audioio
from edgefx.audioio import (
    AUDIO_SUFFIXES,
    FORMAT_FOR_SUFFIX,
    AudioInfo,
    AudioWriter,
    opus_writable,
    output_subtype,
    output_suffix,
    probe,
)

RATE = 16000


def make_signal(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Return a 300 Hz tone plus noise per channel, float32 within [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(frames)[:, None] / RATE
    tone = 0.3 * np.sin(2 * np.pi * 300.0 * seconds)
    noise = 0.05 * rng.standard_normal((frames, channels))
    return (tone + noise).astype(np.float32)


def write_file(path: Path, format: str, subtype: str) -> Path:
    sf.write(path, make_signal(RATE // 2), RATE, format=format, subtype=subtype)
    return path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def require_opus() -> None:
    if "OPUS" not in sf.available_subtypes("OGG"):
        pytest.skip("this libsndfile cannot write Opus")


def require_mp3() -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")


# --------------------------------------------------------------------------------------
# Output naming


def test_folder_suffixes_include_aliases() -> None:
    for suffix in (".opus", ".wave", ".aifc", ".snd"):
        assert suffix in AUDIO_SUFFIXES, suffix
    assert FORMAT_FOR_SUFFIX[".opus"] == "ogg"
    assert FORMAT_FOR_SUFFIX[".wave"] == "wav"
    assert FORMAT_FOR_SUFFIX[".aifc"] == "aiff"
    assert FORMAT_FOR_SUFFIX[".snd"] == "au"


def test_opus_writable_matches_libsndfile() -> None:
    require_opus()

    assert opus_writable()


@pytest.mark.parametrize(
    ("name", "format", "subtype"),
    [
        ("speech.opus", "OGG", "OPUS"),
        ("speech.ogg", "OGG", "OPUS"),
        ("speech.oga", "OGG", "VORBIS"),
        ("speech.wave", "WAV", "PCM_24"),
        ("speech.WAV", "WAV", "PCM_16"),
        ("speech.aifc", "AIFF", "FLOAT"),
        ("speech.aif", "AIFF", "PCM_16"),
        ("speech.snd", "AU", "PCM_16"),
        ("speech.flac", "FLAC", "PCM_16"),
    ],
)
def test_output_suffix_kept(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    format: str,
    subtype: str,
) -> None:
    if subtype == "OPUS":
        require_opus()
    path = write_file(tmp_path / name, format, subtype)

    assert output_suffix(path) == path.suffix
    assert warnings_of(caplog) == []


@pytest.mark.parametrize(
    ("name", "format", "subtype", "expected", "named"),
    [
        ("take.m4a", "FLAC", "PCM_16", ".flac", ["FLAC", "'.m4a'"]),
        ("take.wav", "FLAC", "PCM_24", ".flac", ["FLAC", "'.wav'"]),
        ("take.opus", "OGG", "VORBIS", ".ogg", ["Vorbis", ".opus"]),
        ("take", "WAV", "PCM_16", ".wav", ["WAV", "no suffix"]),
        ("take.caf", "CAF", "PCM_16", ".wav", ["CAF", "WAV"]),
    ],
)
def test_output_suffix_other_format_warns(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    format: str,
    subtype: str,
    expected: str,
    named: list[str],
) -> None:
    path = write_file(tmp_path / name, format, subtype)

    assert output_suffix(path) == expected
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{path}: ")
    for word in named:
        assert word in warnings[0]
    assert f"({expected})" in warnings[0]


def test_output_suffix_mp3_named_wav(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_mp3()
    path = write_file(tmp_path / "take.wav", "MP3", "MPEG_LAYER_III")

    assert output_suffix(path) == ".mp3"
    assert len(warnings_of(caplog)) == 1


def test_output_suffix_opus_not_writable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_opus()
    path = write_file(tmp_path / "take.opus", "OGG", "OPUS")
    monkeypatch.setattr(audioio, "opus_writable", lambda: False)

    assert output_suffix(path) == ".ogg"
    info = probe(path)
    assert output_subtype(info, "ogg") == "VORBIS"
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert "cannot write Opus" in warnings[0]
    assert "Ogg Vorbis (.ogg)" in warnings[0]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("notes.wav", ".wav"), ("notes.txt", ".wav"), ("notes.au", ".au")],
)
def test_output_suffix_unreadable_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, expected: str
) -> None:
    # libsndfile reads any .au file without a header as headerless audio, which the
    # reader rejects, so it gets no warning here either.
    path = tmp_path / name
    path.write_text("these are notes, not a recording\n" * 50)

    assert output_suffix(path) == expected
    assert warnings_of(caplog) == []


# --------------------------------------------------------------------------------------
# Containers


def test_writer_opus_round_trip(tmp_path: Path) -> None:
    require_opus()
    source = write_file(tmp_path / "in.opus", "OGG", "OPUS")
    info = probe(source)
    path = tmp_path / "out.opus"

    with AudioWriter(
        path, info.rate, 1, subtype=output_subtype(info, "ogg", ".opus")
    ) as writer:
        writer.write(make_signal(RATE // 2))

    written = sf.info(str(path))
    assert written.format == "OGG"
    assert written.subtype == "OPUS"
    assert written.samplerate == RATE
    assert written.frames == RATE // 2


def test_writer_opus_suffix_defaults_to_opus(tmp_path: Path) -> None:
    require_opus()
    path = tmp_path / "out.opus"

    with AudioWriter(path, RATE, 1) as writer:
        writer.write(make_signal(RATE // 2))

    assert sf.info(str(path)).subtype == "OPUS"


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "PCM_U8"])
def test_writer_aifc_is_aiff_c(tmp_path: Path, subtype: str) -> None:
    path = tmp_path / "out.aifc"
    samples = make_signal(4000)

    with AudioWriter(path, RATE, 1, subtype=subtype) as writer:
        writer.write(samples)

    header = path.read_bytes()[:12]
    assert header[:4] == b"FORM"
    assert header[8:12] == b"AIFC"
    info = sf.info(str(path))
    assert info.format == "AIFF"
    assert info.subtype == subtype
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_allclose(decoded, samples, rtol=0, atol=2.0**-7)


def test_writer_aifc_signed_8_bit_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.aifc"

    with AudioWriter(path, RATE, 1, subtype="PCM_S8") as writer:
        writer.write(make_signal(400))

    assert path.read_bytes()[8:12] == b"AIFF"
    warnings = warnings_of(caplog)
    assert len(warnings) == 1, warnings
    assert "only as plain AIFF" in warnings[0]


def test_output_subtype_aifc_signed_8_bit() -> None:
    info = AudioInfo(Path("in.aifc"), RATE, 1, 100, "AIFF", "PCM_S8")

    assert output_subtype(info, "aiff", ".aifc") == "PCM_U8"
    assert output_subtype(info, "aiff", ".aiff") == "PCM_S8"


def test_writer_aiff_suffix_stays_plain_aiff(tmp_path: Path) -> None:
    path = tmp_path / "out.aiff"

    with AudioWriter(path, RATE, 1, subtype="PCM_16") as writer:
        writer.write(make_signal(400))

    assert path.read_bytes()[8:12] == b"AIFF"


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
    ("out.aifc", "PCM_24", 24),
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
