"""Tests for edgefx.audioio: probing, block reading and atomic block writing.

The audio files are generated in tmp_path with soundfile. Tests that need a
permission check to fail run in a child process, and as root that child runs under
setpriv without the capabilities that let root ignore file permissions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgefx import audioio
from edgefx.audioio import (
    AUDIO_SUFFIXES,
    FORMAT_FOR_SUFFIX,
    SUFFIX_FOR_FORMAT,
    AudioInfo,
    AudioWriter,
    output_subtype,
    probe,
    read_blocks,
)
from edgefx.errors import InputError, OutputError, UsageError
from edgefx.fsutil import TEMP_PREFIX

# Largest difference between a sample written as float and read back, one
# quantization step of each integer subtype.
PCM_STEP = {
    "PCM_U8": 2.0**-7,
    "PCM_S8": 2.0**-7,
    "PCM_16": 2.0**-15,
    "PCM_24": 2.0**-23,
    "PCM_32": 2.0**-31,
    "FLOAT": 0.0,
}
LOSSY_MIN_SNR_DB = 15.0


def make_signal(frames: int, channels: int, rate: int, seed: int = 0) -> np.ndarray:
    """Return a sine per channel plus a little noise, float32 in [-0.6, 0.6]."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(frames) / rate
    tones = [
        0.5 * np.sin(2 * np.pi * (220.0 * (index + 1)) * seconds)
        for index in range(channels)
    ]
    samples = np.stack(tones, axis=1) + 0.01 * rng.standard_normal((frames, channels))
    return samples.astype(np.float32)


def read_all(path: Path, block_frames: int = 4096) -> np.ndarray:
    blocks = list(read_blocks(path, block_frames))
    return np.concatenate(blocks)


def write_blocks(
    path: Path,
    samples: np.ndarray,
    rate: int,
    block_frames: int = 1000,
    **options: str,
) -> None:
    with AudioWriter(path, rate, samples.shape[1], **options) as writer:
        for start in range(0, len(samples), block_frames):
            writer.write(samples[start : start + block_frames])


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    error = np.sum((reference - decoded) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / error))


def listing(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def run_without_permission_override(
    code: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a child that file permissions apply to, even as root."""
    command = [sys.executable, "-c", code, *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv is not installed to drop root")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, "--bounding-set", drop, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and result.stderr.startswith("setpriv:"):
        pytest.skip(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return result


# --------------------------------------------------------------------------------------
# Format tables


def test_suffix_tables_cover_outputs() -> None:
    suffixes = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif")
    for suffix in (*suffixes, ".aiff", ".aifc", ".au", ".snd"):
        assert suffix in AUDIO_SUFFIXES
    assert FORMAT_FOR_SUFFIX[".wav"] == "wav"
    assert FORMAT_FOR_SUFFIX[".flac"] == "flac"
    assert FORMAT_FOR_SUFFIX[".ogg"] == "ogg"
    assert FORMAT_FOR_SUFFIX[".oga"] == "ogg"
    for name, suffix in SUFFIX_FOR_FORMAT.items():
        assert FORMAT_FOR_SUFFIX[suffix] == name
        assert name.upper() in sf.available_formats()


# --------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    ("suffix", "subtype"),
    [
        (".wav", "PCM_U8"),
        (".wav", "PCM_16"),
        (".wav", "PCM_24"),
        (".wav", "FLOAT"),
        (".flac", "PCM_16"),
        (".flac", "PCM_24"),
        (".aiff", "PCM_24"),
        (".au", "FLOAT"),
    ],
)
def test_round_trip_lossless(tmp_path: Path, suffix: str, subtype: str) -> None:
    rate = 16000
    samples = make_signal(5000, 2, rate)
    path = tmp_path / f"out{suffix}"
    write_blocks(path, samples, rate, subtype=subtype)

    info = probe(path)
    assert info.subtype == subtype
    assert info.format == FORMAT_FOR_SUFFIX[suffix].upper()
    assert info.rate == rate
    assert info.channels == 2
    assert info.frames == len(samples)
    assert info.duration == pytest.approx(len(samples) / rate)
    decoded = read_all(path)
    assert decoded.dtype == np.float32
    assert decoded.shape == samples.shape
    np.testing.assert_allclose(decoded, samples, rtol=0, atol=PCM_STEP[subtype])


@pytest.mark.parametrize("suffix", [".ogg", ".mp3"])
def test_round_trip_lossy(tmp_path: Path, suffix: str) -> None:
    if suffix not in FORMAT_FOR_SUFFIX:
        pytest.skip(f"this libsndfile cannot write {suffix}")
    rate = 44100
    samples = make_signal(rate // 2, 2, rate)
    path = tmp_path / f"out{suffix}"
    write_blocks(path, samples, rate)

    info = probe(path)
    assert info.subtype == ("VORBIS" if suffix == ".ogg" else "MPEG_LAYER_III")
    assert info.frames == len(samples)
    decoded = read_all(path)
    assert decoded.shape == samples.shape
    assert snr_db(samples, decoded) > LOSSY_MIN_SNR_DB


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("rate", [8000, 44100, 96000])
@pytest.mark.parametrize(
    ("suffix", "subtype"), [(".wav", "PCM_16"), (".flac", "PCM_24")]
)
def test_round_trip_channels_rates(
    tmp_path: Path, channels: int, rate: int, suffix: str, subtype: str
) -> None:
    samples = make_signal(rate // 10, channels, rate, seed=channels)
    path = tmp_path / f"out{suffix}"
    write_blocks(path, samples, rate, block_frames=777, subtype=subtype)

    info = probe(path)
    assert info.rate == rate
    assert info.channels == channels
    assert info.frames == len(samples)
    decoded = read_all(path, block_frames=1000)
    assert decoded.shape == (len(samples), channels)
    np.testing.assert_allclose(decoded, samples, rtol=0, atol=PCM_STEP[subtype])


def test_round_trip_vorbis_six_channels(tmp_path: Path) -> None:
    rate = 96000
    samples = make_signal(rate // 4, 6, rate)
    path = tmp_path / "surround.ogg"
    write_blocks(path, samples, rate, block_frames=4096)

    info = probe(path)
    assert info.channels == 6
    assert info.rate == rate
    decoded = read_all(path)
    assert decoded.shape == samples.shape
    assert snr_db(samples, decoded) > LOSSY_MIN_SNR_DB


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_one_sample_file(tmp_path: Path, suffix: str) -> None:
    if suffix not in FORMAT_FOR_SUFFIX:
        pytest.skip(f"this libsndfile cannot write {suffix}")
    path = tmp_path / f"one{suffix}"
    with AudioWriter(path, 16000, 1) as writer:
        writer.write(np.array([[0.25]], dtype=np.float32))

    assert probe(path).frames == 1
    blocks = list(read_blocks(path, 4096))
    assert len(blocks) == 1
    assert blocks[0].shape == (1, 1)
    if suffix in (".wav", ".flac"):
        assert blocks[0][0, 0] == pytest.approx(0.25, abs=PCM_STEP["PCM_16"])


def test_mono_writer_takes_flat_block(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    samples = make_signal(300, 1, 8000)
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(samples[:, 0])
    np.testing.assert_allclose(read_all(path), samples, atol=PCM_STEP["PCM_16"])


def test_writer_format_overrides_suffix(tmp_path: Path) -> None:
    path = tmp_path / "audio.bin"
    with AudioWriter(path, 8000, 1, format="FLAC", subtype="PCM_24") as writer:
        writer.write(make_signal(100, 1, 8000))
    info = probe(path)
    assert info.format == "FLAC"
    assert info.subtype == "PCM_24"


# --------------------------------------------------------------------------------------
# Block reading


@pytest.mark.parametrize("block_frames", [1, 7, 4096, 100000])
def test_blocks_match_whole_read(tmp_path: Path, block_frames: int) -> None:
    path = tmp_path / "in.flac"
    sf.write(path, make_signal(20011, 2, 22050), 22050, subtype="PCM_24")
    whole, _ = sf.read(path, dtype="float32", always_2d=True)

    blocks = list(read_blocks(path, block_frames))
    for block in blocks[:-1]:
        assert block.shape == (block_frames, 2)
    assert 1 <= len(blocks[-1]) <= block_frames
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_blocks_reject_zero_block_size(tmp_path: Path) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, make_signal(100, 1, 8000), 8000)
    with pytest.raises(ValueError, match="block_frames"):
        next(read_blocks(path, 0))


def test_blocks_of_speech_match_whole_read(data_dir: Path, tmp_path: Path) -> None:
    speech = sorted((data_dir / "audio").glob("librispeech_*/**/*.flac"))
    if not speech:
        pytest.skip(f"no LibriSpeech FLAC files under {data_dir / 'audio'}")
    source = speech[0]
    whole, rate = sf.read(source, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(read_all(source, block_frames=16000), whole)

    info = probe(source)
    copy = tmp_path / "speech.flac"
    write_blocks(copy, whole, rate, subtype=output_subtype(info, "flac"))
    np.testing.assert_array_equal(read_all(copy), whole)


def test_mp3_without_xing_header_reads(data_dir: Path) -> None:
    # Without a Xing or Info header, libmpg123 estimates the length from the size.
    candidates = [
        path
        for path in sorted((data_dir / "audio").glob("**/*.mp3"))
        if b"Xing" not in path.read_bytes()[:4096]
        and b"Info" not in path.read_bytes()[:4096]
    ]
    if not candidates:
        pytest.skip(f"no MP3 file without a Xing header under {data_dir / 'audio'}")
    info = probe(candidates[0])
    decoded = read_all(candidates[0], block_frames=65536)
    assert decoded.shape[1] == info.channels
    assert len(decoded) >= info.frames * (1 - audioio.MP3_LENGTH_TOLERANCE)


# --------------------------------------------------------------------------------------
# Bad inputs


def assert_input_error(path: Path, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        probe(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_probe_missing_file(tmp_path: Path) -> None:
    assert_input_error(tmp_path / "missing.wav", "file not found")


def test_probe_directory(tmp_path: Path) -> None:
    directory = tmp_path / "folder.wav"
    directory.mkdir()
    assert_input_error(directory, "not a regular file")


def test_probe_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    assert_input_error(path, "empty file")


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg", ".aiff", ".au"])
def test_probe_text_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are meeting notes, not audio\n" * 50)
    assert_input_error(path, "cannot decode audio: not a valid")


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg", ".au"])
def test_probe_random_bytes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(np.random.default_rng(3).bytes(6000))
    assert_input_error(path, "cannot decode audio")


def test_probe_mp3_error_names_format(tmp_path: Path) -> None:
    # libsndfile's own message for this file is "File does not exist".
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(4).bytes(6000))
    with pytest.raises(InputError) as caught:
        probe(path)
    assert "not a valid MP3 file" in caught.value.reason
    assert "does not exist" not in caught.value.reason


def test_probe_wav_header_without_data(tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    full = tmp_path / "full.wav"
    sf.write(full, make_signal(100, 1, 8000), 8000)
    path.write_bytes(full.read_bytes()[:30])
    assert_input_error(path, "not a valid WAV file")


def data_chunk_offset(data: bytes, chunk_id: bytes) -> int:
    """Return the offset of the first chunk header named ``chunk_id`` in ``data``."""
    offset = data.find(chunk_id, 12)
    assert offset > 0, f"no {chunk_id!r} chunk"
    return offset


@pytest.mark.parametrize(
    ("major", "endian", "contained"),
    [
        ("WAV", "FILE", 0.499),
        ("WAV", "BIG", 0.499),  # RIFX
        ("WAVEX", "FILE", 0.497),
        ("RF64", "FILE", 0.497),
        ("AIFF", "FILE", 0.498),
    ],
)
def test_probe_wav_cut_in_half(
    tmp_path: Path, major: str, endian: str, contained: float
) -> None:
    full = tmp_path / "full.bin"
    sf.write(full, make_signal(8000, 1, 8000), 8000, format=major, endian=endian)
    data = full.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(
        path,
        "truncated: the header declares 1.000 s of audio, but the file contains "
        f"{contained:.3f} s",
    )
    with pytest.raises(InputError, match="truncated: the header declares"):
        next(read_blocks(path, 100))


def test_probe_cut_stereo_24bit_wav(tmp_path: Path) -> None:
    full = tmp_path / "full.wav"
    sf.write(full, make_signal(44100, 2, 44100), 44100, subtype="PCM_24")
    data = full.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        probe(path)
    assert str(caught.value) == (
        f"{path}: truncated: the header declares 1.000 s of audio, but the file "
        "contains 0.500 s"
    )


def test_probe_wav_trailing_garbage(tmp_path: Path) -> None:
    samples = make_signal(8000, 2, 8000)
    path = tmp_path / "padded.wav"
    sf.write(path, samples, 8000)
    with path.open("ab") as handle:
        handle.write(np.random.default_rng(5).bytes(3001))
    assert probe(path).frames == 8000
    np.testing.assert_allclose(read_all(path), samples, atol=PCM_STEP["PCM_16"])


@pytest.mark.parametrize("endian", ["FILE", "BIG"])
def test_probe_wav_streaming_placeholder(tmp_path: Path, endian: str) -> None:
    # A writer that cannot seek back leaves 0xFFFFFFFF in the RIFF and data sizes.
    samples = make_signal(8000, 1, 8000)
    full = tmp_path / "full.wav"
    sf.write(full, samples, 8000, endian=endian)
    data = bytearray(full.read_bytes())
    placeholder = b"\xff\xff\xff\xff"
    data[4:8] = placeholder
    size_at = data_chunk_offset(bytes(data), b"data") + 4
    data[size_at : size_at + 4] = placeholder
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(data))
    assert probe(path).frames == 8000
    np.testing.assert_allclose(read_all(path), samples, atol=PCM_STEP["PCM_16"])

    # With a placeholder size, a cut stream reads as a shorter one, without an error.
    cut = tmp_path / "stream_cut.wav"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    assert probe(cut).frames < 8000


def test_probe_wav_zero_placeholder_not_truncated(tmp_path: Path) -> None:
    full = tmp_path / "full.wav"
    sf.write(full, make_signal(8000, 1, 8000), 8000)
    data = bytearray(full.read_bytes())
    size_at = data_chunk_offset(bytes(data), b"data") + 4
    data[size_at : size_at + 4] = bytes(4)
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(data))
    # libsndfile 1.2.2 takes a data size of 0 as no samples.
    assert_input_error(path, "no audio samples")


def test_probe_rf64_ds64_size_checked(tmp_path: Path) -> None:
    full = tmp_path / "full.wav"
    sf.write(full, make_signal(8000, 1, 8000), 8000, format="RF64")
    data = bytearray(full.read_bytes())
    ds64 = data_chunk_offset(bytes(data), b"ds64")
    size_at = data_chunk_offset(bytes(data), b"data") + 4
    assert struct.unpack("<I", data[size_at : size_at + 4]) == (0xFFFFFFFF,)
    # The ds64 body starts with the 64-bit RIFF size, then the 64-bit data size.
    assert struct.unpack("<Q", data[ds64 + 16 : ds64 + 24]) == (16000,)
    data[ds64 + 16 : ds64 + 24] = struct.pack("<Q", 32000)
    path = tmp_path / "long.wav"
    path.write_bytes(bytes(data))
    assert_input_error(
        path,
        "truncated: the header declares 2.000 s of audio, but the file contains "
        "1.000 s",
    )


def test_probe_wav_truncation_in_bytes(tmp_path: Path) -> None:
    # Without a byte rate in the fmt chunk or a PCM subtype, sizes are in bytes.
    full = tmp_path / "full.wav"
    sf.write(full, make_signal(8000, 1, 8000), 8000, subtype="ULAW")
    data = bytearray(full.read_bytes())
    fmt = data_chunk_offset(bytes(data), b"fmt ")
    data[fmt + 16 : fmt + 20] = bytes(4)  # bytes per second
    data_start = data_chunk_offset(bytes(data), b"data") + 8
    path = tmp_path / "cut.wav"
    path.write_bytes(bytes(data[: data_start + 3000]))
    assert_input_error(
        path,
        "truncated: the header declares 8000 bytes of audio data, but the file "
        "contains 3000 bytes",
    )


def test_probe_wav_odd_chunk_before_data(tmp_path: Path) -> None:
    # A 3-byte chunk is followed by a pad byte, which the chunk size leaves out.
    samples = make_signal(8000, 1, 8000)
    full = tmp_path / "full.wav"
    sf.write(full, samples, 8000)
    data = full.read_bytes()
    data_at = data_chunk_offset(data, b"data")
    extra = b"abcd" + struct.pack("<I", 3) + b"xyz\0"
    body = data[12:data_at] + extra + data[data_at:]
    riff = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE"
    path = tmp_path / "extra.wav"
    path.write_bytes(riff + body)
    assert probe(path).frames == 8000
    np.testing.assert_allclose(read_all(path), samples, atol=PCM_STEP["PCM_16"])

    cut = tmp_path / "extra_cut.wav"
    cut.write_bytes((riff + body)[: len(riff + body) - 4000])
    assert_input_error(
        cut,
        "truncated: the header declares 1.000 s of audio, but the file contains "
        "0.750 s",
    )


def test_probe_flac_of_unknown_length(tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    sf.write(full, make_signal(2000, 1, 8000), 8000)
    data = bytearray(full.read_bytes())
    # STREAMINFO follows "fLaC" and a 4-byte block header. Its total sample count is
    # the low 36 bits of the 8 bytes at offset 18, and 0 means unknown.
    (fields,) = struct.unpack(">Q", data[18:26])
    assert fields & (2**36 - 1) == 2000
    data[18:26] = struct.pack(">Q", fields & ~(2**36 - 1))
    path = tmp_path / "stream.flac"
    path.write_bytes(bytes(data))
    assert_input_error(path, "the header does not state the length")


def test_probe_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 8000)
    assert path.stat().st_size > 0
    assert_input_error(path, "no audio samples")


def test_blocks_of_zero_frames_raise(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 2), dtype=np.float32), 8000)
    with pytest.raises(InputError, match="no audio samples"):
        list(read_blocks(path, 100))


def test_probe_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    sf.write(path, make_signal(100, 1, 8000), 8000)
    path.chmod(0)
    code = (
        "import sys\n"
        "from edgefx.audioio import probe\n"
        "from edgefx.errors import InputError\n"
        "try:\n"
        "    probe(sys.argv[1])\n"
        "except InputError as err:\n"
        "    print(err)\n"
        "else:\n"
        "    print('no error')\n"
    )
    try:
        result = run_without_permission_override(code, str(path))
    finally:
        path.chmod(0o644)
    assert result.stdout.strip() == f"{path}: permission denied"


def test_blocks_truncated_flac(tmp_path: Path) -> None:
    rate = 16000
    full = tmp_path / "full.flac"
    sf.write(full, make_signal(3 * rate, 2, rate), rate)
    path = tmp_path / "cut.flac"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    assert probe(path).frames == 3 * rate  # the header still declares the full length
    yielded = 0
    with pytest.raises(InputError) as caught:
        for block in read_blocks(path, 4096):
            yielded += len(block)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert "truncated or damaged" in caught.value.reason
    assert 0 < yielded < 3 * rate


@pytest.mark.parametrize("block_frames", [4096, 3 * 16000])
def test_truncated_flac_reports_reached_second(
    tmp_path: Path, block_frames: int
) -> None:
    rate = 16000
    full = tmp_path / "full.flac"
    sf.write(full, make_signal(3 * rate, 2, rate), rate)
    path = tmp_path / "cut.flac"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    # libsndfile writes the frames that it decodes into the buffer before soundfile's
    # seek fails, so the rows that are still NaN are the frames it never reached.
    with sf.SoundFile(path) as audio:
        buffer = np.full((audio.frames, 2), np.nan, dtype=np.float32)
        with pytest.raises(sf.LibsndfileError):
            audio.read(out=buffer)
    decoded = int(np.isfinite(buffer).all(axis=1).sum())
    assert 0 < decoded < 3 * rate

    with pytest.raises(InputError) as caught:
        list(read_blocks(path, block_frames))
    match = re.search(r"after second (\d+\.\d+):", caught.value.reason)
    assert match is not None, caught.value.reason
    assert float(match.group(1)) == pytest.approx(decoded / rate, abs=0.002)


def test_blocks_truncated_mp3(tmp_path: Path) -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")
    rate = 16000
    full = tmp_path / "full.mp3"
    write_blocks(full, make_signal(3 * rate, 2, rate), rate)
    path = tmp_path / "cut.mp3"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])

    with pytest.raises(InputError) as caught:
        list(read_blocks(path, 4096))
    assert caught.value.path == path
    assert "the file is truncated" in caught.value.reason


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_blocks_reject_nonfinite(
    tmp_path: Path, bad_value: float, subtype: str
) -> None:
    rate = 8000
    samples = make_signal(rate, 2, rate)
    samples[rate // 2, 1] = bad_value
    path = tmp_path / "float.wav"
    sf.write(path, samples, rate, subtype=subtype)

    assert probe(path).subtype == subtype
    with pytest.raises(InputError) as caught:
        list(read_blocks(path, 1000))
    assert caught.value.path == path
    assert caught.value.reason == "contains NaN or infinite samples at second 0.500"


# --------------------------------------------------------------------------------------
# Writer: atomic output and clean-up


def test_writer_uses_prefixed_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(100, 1, 8000))
        names = listing(tmp_path)
        assert len(names) == 1
        assert names[0].startswith(TEMP_PREFIX)
        assert not path.exists()
    assert listing(tmp_path) == ["out.wav"]


def test_writer_mode_honors_umask(tmp_path: Path) -> None:
    path = tmp_path / "out.flac"
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(100, 1, 8000))
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_writer_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.wav"
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(100, 1, 8000))
    assert probe(path).frames == 100


@pytest.mark.parametrize("error", [RuntimeError("model failed"), KeyboardInterrupt()])
@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_writer_exception_leaves_nothing(
    tmp_path: Path, error: BaseException, suffix: str
) -> None:
    path = tmp_path / f"out{suffix}"
    with pytest.raises(type(error)), AudioWriter(path, 8000, 2) as writer:
        writer.write(make_signal(4000, 2, 8000))
        raise error
    assert listing(tmp_path) == []


def test_truncated_input_leaves_no_output(tmp_path: Path) -> None:
    rate = 16000
    full = tmp_path / "full.flac"
    sf.write(full, make_signal(3 * rate, 1, rate), rate)
    source = tmp_path / "cut.flac"
    source.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out_dir = tmp_path / "out"

    with pytest.raises(InputError), AudioWriter(out_dir / "cut.wav", rate, 1) as writer:
        for block in read_blocks(source, 4096):
            writer.write(block)
    assert listing(out_dir) == []


def test_writer_exception_keeps_old_output(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sf.write(path, make_signal(100, 1, 8000), 8000)
    before = path.read_bytes()
    with pytest.raises(RuntimeError), AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(5000, 1, 8000, seed=9))
        raise RuntimeError("interrupted")
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["out.wav"]


def test_writer_replaces_old_output(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    sf.write(path, make_signal(100, 1, 8000), 8000)
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(300, 1, 8000))
    assert probe(path).frames == 300
    assert listing(tmp_path) == ["out.wav"]


def test_writer_rejects_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    with pytest.raises(OutputError) as caught, AudioWriter(path, 8000, 1) as writer:
        writer.write(np.zeros((0, 1), dtype=np.float32))
    assert caught.value.path == path
    assert "no audio samples" in caught.value.reason
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (np.zeros((10, 3), dtype=np.float32), "shape"),
        (np.zeros((2, 10), dtype=np.float32), "shape"),
        (np.zeros((10, 2), dtype=np.int16), "dtype"),
        (np.full((10, 2), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_writer_rejects_bad_block(
    tmp_path: Path, block: np.ndarray, message: str
) -> None:
    path = tmp_path / "out.wav"
    with pytest.raises(ValueError, match=message), AudioWriter(path, 8000, 2) as writer:
        writer.write(block)
    assert listing(tmp_path) == []


def test_writer_write_outside_with(tmp_path: Path) -> None:
    writer = AudioWriter(tmp_path / "out.wav", 8000, 1)
    with pytest.raises(RuntimeError, match="with block"):
        writer.write(np.zeros((1, 1), dtype=np.float32))
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "wma"}, "unsupported audio format"),
        ({"format": "flac", "subtype": "FLOAT"}, "cannot store the subtype FLOAT"),
        ({"format": "ogg", "subtype": "PCM_16"}, "cannot store the subtype PCM_16"),
    ],
)
def test_writer_rejects_bad_format(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        AudioWriter(tmp_path / "out.wav", 8000, 1, **options)
    assert listing(tmp_path) == []


def test_writer_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown audio suffix"):
        AudioWriter(tmp_path / "out.wma", 8000, 1)


def test_writer_unsupported_rate(tmp_path: Path) -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "out.mp3"
    with pytest.raises(OutputError) as caught, AudioWriter(path, 96000, 2):
        pass
    assert caught.value.path == path
    assert "96000 Hz" in caught.value.reason
    assert "only supports sample rates" in caught.value.reason
    assert listing(tmp_path) == []


def test_writer_detects_missing_frames(tmp_path: Path) -> None:
    path = tmp_path / "out.flac"
    with pytest.raises(OutputError) as caught, AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(100, 1, 8000))
        writer.frames += 1  # as if libsndfile had dropped a frame
    assert caught.value.reason == (
        "the written file is incomplete: it reads back with 100 of 101 frames"
    )
    assert listing(tmp_path) == []


def test_writer_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audioio.MAX_DATA_BYTES, "WAV", 1000)
    path = tmp_path / "out.wav"
    with pytest.raises(OutputError) as caught, AudioWriter(path, 8000, 1) as writer:
        writer.write(np.zeros((400, 1), dtype=np.float32))  # 800 bytes of PCM_16
        writer.write(np.zeros((400, 1), dtype=np.float32))
    assert "at most 1000 bytes" in caught.value.reason
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------------------
# Writer: clipping


@pytest.mark.parametrize(
    ("subtype", "expected"),
    [
        ("PCM_16", [32767, -32768, 32767, -32768, 16384, 0]),
        ("PCM_24", [8388607, -8388608, 8388607, -8388608, 4194304, 0]),
        ("PCM_U8", [127, -128, 127, -128, 64, 0]),
    ],
)
def test_writer_clips_integer(
    tmp_path: Path, subtype: str, expected: list[int]
) -> None:
    path = tmp_path / "loud.wav"
    block = np.array([[1.5], [-1.5], [1.0], [-1.0], [0.5], [0.0]], dtype=np.float32)
    with AudioWriter(path, 8000, 1, subtype=subtype) as writer:
        writer.write(block)
    stored, _ = sf.read(path, dtype="int32")
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_U8": 8}[subtype]
    assert (stored >> (32 - bits)).tolist() == expected


def test_writer_clips_pcm16_far_overshoot(tmp_path: Path) -> None:
    path = tmp_path / "loud.flac"
    block = np.array([[2.0, -3.0], [100.0, -100.0], [np.inf, -np.inf]], np.float32)
    with AudioWriter(path, 8000, 2) as writer:
        writer.write(block)
    stored, _ = sf.read(path, dtype="int16")
    assert stored[:, 0].tolist() == [32767, 32767, 32767]
    assert stored[:, 1].tolist() == [-32768, -32768, -32768]


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_writer_clips_float(tmp_path: Path, subtype: str) -> None:
    # libsndfile stores values above full scale unchanged in float files.
    path = tmp_path / "loud.wav"
    block = np.array([[1.5], [-1.5], [0.25]], dtype=np.float32)
    with AudioWriter(path, 8000, 1, subtype=subtype) as writer:
        writer.write(block)
    stored, _ = sf.read(path, dtype="float64")
    assert stored.tolist() == [1.0, -1.0, 0.25]


# --------------------------------------------------------------------------------------
# Writer: output errors


def test_writer_parent_is_file(tmp_path: Path) -> None:
    parent = tmp_path / "report.txt"
    parent.write_text("a file, not a directory")
    for path in (parent / "out.wav", parent / "deeper" / "out.wav"):
        with pytest.raises(OutputError) as caught, AudioWriter(path, 8000, 1):
            pass
        assert caught.value.path == path
        assert str(path) in str(caught.value)
        assert "is a file, not a directory" in caught.value.reason
    assert listing(tmp_path) == ["report.txt"]


def test_writer_read_only_directory(tmp_path: Path) -> None:
    directory = tmp_path / "locked"
    directory.mkdir()
    directory.chmod(0o555)
    path = directory / "out.wav"
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from edgefx.audioio import AudioWriter\n"
        "from edgefx.errors import OutputError\n"
        "try:\n"
        "    with AudioWriter(sys.argv[1], 8000, 1) as writer:\n"
        "        writer.write(np.zeros((10, 1), dtype=np.float32))\n"
        "except OutputError as err:\n"
        "    print(err)\n"
        "else:\n"
        "    print('no error')\n"
    )
    try:
        result = run_without_permission_override(code, str(path))
    finally:
        directory.chmod(0o755)
    assert (
        result.stdout.strip() == f"{path}: cannot write the output: permission denied"
    )
    assert listing(directory) == []


# The child writes one reference file without a limit, then the same audio under
# smaller file size limits (RLIMIT_FSIZE, which root is subject to too), and reports
# each outcome. A limit one byte under the full size fails the last buffered write,
# which libsndfile makes at sf_close for FLAC, Vorbis and MP3.
FILE_SIZE_LIMIT_CHILD = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from edgefx.audioio import AudioWriter
from edgefx.errors import OutputError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
directory, suffix = Path(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
samples = (0.3 * rng.standard_normal((16000, 2))).astype(np.float32)

def write(path):
    with AudioWriter(path, 16000, 2) as writer:
        for start in range(0, len(samples), 4000):
            writer.write(samples[start : start + 4000])

reference = directory / ("reference" + suffix)
write(reference)
full = reference.stat().st_size
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
outcomes = []
for limit in (full - 1, full // 2, 100):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        write(directory / ("limited" + suffix))
    except OutputError as err:
        outcomes.append({"limit": limit, "error": str(err)})
    else:
        outcomes.append({"limit": limit, "error": None})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print(json.dumps(outcomes))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX only")
@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_writer_file_size_limit(tmp_path: Path, suffix: str) -> None:
    if suffix not in FORMAT_FOR_SUFFIX:
        pytest.skip(f"this libsndfile cannot write {suffix}")
    result = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT_CHILD, str(tmp_path), suffix],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    limited = tmp_path / f"limited{suffix}"
    for outcome in outcomes:
        expected = f"{limited}: cannot write the output: File too large"
        assert outcome["error"] == expected, outcome
    assert listing(tmp_path) == [f"reference{suffix}"]


def test_writer_open_failure_counts_channels(tmp_path: Path) -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")
    path = tmp_path / "out.mp3"
    with pytest.raises(OutputError) as caught, AudioWriter(path, 96000, 1):
        pass
    assert "at 96000 Hz with 1 channel:" in caught.value.reason


# --------------------------------------------------------------------------------------
# Paths that libsndfile cannot open by name: soundfile encodes a path as strict UTF-8,
# and libsndfile rejects a path of 1024 bytes or more.


def long_folder(root: Path) -> Path:
    """Return a folder under ``root`` whose path is longer than 1024 characters."""
    folder = root.joinpath(*["d" * 200] * 6)
    folder.mkdir(parents=True)
    return folder


def non_utf8_folder(root: Path) -> Path:
    """Return a folder under ``root`` whose name is not valid UTF-8."""
    folder = root / os.fsdecode(b"take\xff")
    try:
        folder.mkdir()
    except (OSError, UnicodeEncodeError) as err:
        pytest.skip(f"this file system rejects a name that is not UTF-8: {err}")
    return folder


def write_through_python(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write a 16-bit WAV file through a Python file object, which takes any path."""
    with path.open("wb") as handle:
        sf.write(handle, samples, rate, format="WAV", subtype="PCM_16")


def frames_through_python(path: Path) -> int:
    with path.open("rb") as handle:
        return sf.info(handle).frames


@pytest.mark.parametrize("make_folder", [long_folder, non_utf8_folder])
def test_rejected_path_reads(tmp_path: Path, make_folder) -> None:
    folder = make_folder(tmp_path)
    samples = make_signal(8000, 2, 8000)
    path = folder / "in.wav"
    write_through_python(path, samples, 8000)

    assert probe(path).frames == 8000
    decoded = np.concatenate(list(read_blocks(path, 3000)))
    assert np.abs(decoded - samples).max() <= PCM_STEP["PCM_16"]
    assert audioio.output_suffix(path) == ".wav"


@pytest.mark.parametrize("make_folder", [long_folder, non_utf8_folder])
def test_rejected_path_writes(tmp_path: Path, make_folder) -> None:
    folder = make_folder(tmp_path)
    path = folder / "out.flac"
    with AudioWriter(path, 8000, 1) as writer:
        writer.write(make_signal(8000, 1, 8000))

    assert frames_through_python(path) == 8000
    assert listing(folder) == [path.name]


def test_rejected_path_truncated_flac(tmp_path: Path) -> None:
    # The point where decoding fails is found by opening the file again.
    folder = long_folder(tmp_path)
    path = folder / "cut.flac"
    with path.open("wb") as handle:
        sf.write(handle, make_signal(16000, 1, 8000), 8000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(InputError) as caught:
        list(read_blocks(path, 16000))
    match = re.search(r"after second (\d+\.\d+):", caught.value.reason)
    assert match is not None, caught.value.reason
    assert 0.2 < float(match.group(1)) < 1.8


# --------------------------------------------------------------------------------------
# Output subtype


def info_with(major: str, subtype: str, rate: int = 16000) -> AudioInfo:
    return AudioInfo(Path("in"), rate, 1, 100, major, subtype)


@pytest.mark.parametrize(
    ("major", "subtype", "out_format", "expected"),
    [
        ("WAV", "PCM_16", "wav", "PCM_16"),
        ("WAV", "PCM_24", "wav", "PCM_24"),
        ("WAV", "PCM_32", "wav", "PCM_32"),
        ("WAV", "FLOAT", "wav", "FLOAT"),
        ("WAV", "DOUBLE", "wav", "DOUBLE"),
        ("WAV", "PCM_U8", "wav", "PCM_U8"),
        ("WAV", "ULAW", "wav", "ULAW"),
        ("FLAC", "PCM_24", "flac", "PCM_24"),
        ("WAV", "FLOAT", "flac", "PCM_24"),
        ("WAV", "DOUBLE", "flac", "PCM_24"),
        ("WAV", "PCM_32", "flac", "PCM_24"),
        ("WAV", "PCM_U8", "flac", "PCM_S8"),
        ("WAV", "ULAW", "flac", "PCM_16"),
        ("AIFF", "PCM_S8", "wav", "PCM_U8"),
        ("WAV", "PCM_U8", "au", "PCM_S8"),
        ("WAV", "FLOAT", "au", "FLOAT"),
        ("WAV", "PCM_16", "ogg", "VORBIS"),
        ("WAV", "FLOAT", "ogg", "VORBIS"),
        ("OGG", "VORBIS", "ogg", "VORBIS"),
        ("OGG", "OPUS", "ogg", "OPUS"),
        ("OGG", "VORBIS", "flac", "PCM_16"),
        ("OGG", "OPUS", "wav", "PCM_16"),
        ("MP3", "MPEG_LAYER_III", "wav", "PCM_16"),
        ("MP3", "MPEG_LAYER_III", "flac", "PCM_16"),
        ("WAV", "PCM_24", "WAV", "PCM_24"),
    ],
)
def test_output_subtype(
    major: str, subtype: str, out_format: str, expected: str
) -> None:
    chosen = output_subtype(info_with(major, subtype), out_format)
    assert chosen == expected
    assert sf.check_format(out_format.upper(), chosen)


def test_output_subtype_opus_rate() -> None:
    assert output_subtype(info_with("OGG", "OPUS", rate=44100), "ogg") == "VORBIS"


def test_output_subtype_mp3() -> None:
    if "mp3" not in SUFFIX_FOR_FORMAT:
        pytest.skip("this libsndfile cannot write MP3")
    assert output_subtype(info_with("WAV", "PCM_24"), "mp3") == "MPEG_LAYER_III"


def test_output_subtype_unknown_format() -> None:
    with pytest.raises(UsageError, match="unsupported audio format"):
        output_subtype(info_with("WAV", "PCM_16"), "wma")


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_output_subtype_round_trip(tmp_path: Path, subtype: str) -> None:
    source = tmp_path / "in.wav"
    samples = make_signal(2000, 2, 16000)
    sf.write(source, samples, 16000, subtype=subtype)
    info = probe(source)

    output = tmp_path / "out.wav"
    with AudioWriter(
        output, info.rate, info.channels, subtype=output_subtype(info, "wav")
    ) as writer:
        for block in read_blocks(source, 500):
            writer.write(block)
    assert probe(output).subtype == subtype
    whole, _ = sf.read(source, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(read_all(output), whole)


# --------------------------------------------------------------------------------------
# Text tags


def wav_with_info(path: Path, items: list[tuple[bytes, bytes]]) -> Path:
    """Write a 16-bit mono WAV whose LIST/INFO chunk contains ``items`` as given."""
    samples = (make_signal(1600, 1, 16000)[:, 0] * 32767).astype("<i2").tobytes()

    def chunk(chunk_id: bytes, data: bytes) -> bytes:
        padding = b"\0" if len(data) % 2 else b""
        return chunk_id + struct.pack("<I", len(data)) + data + padding

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    info = b"INFO" + b"".join(chunk(key, value) for key, value in items)
    body = b"WAVE" + chunk(b"fmt ", fmt) + chunk(b"LIST", info)
    body += chunk(b"data", samples)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def write_tagged(path: Path, tags: tuple[tuple[str, str], ...]) -> None:
    with AudioWriter(path, 16000, 1, tags=tags) as writer:
        writer.write(make_signal(1600, 1, 16000))


def test_probe_reads_windows_1252_tags(tmp_path: Path) -> None:
    path = wav_with_info(
        tmp_path / "latin.wav",
        [(b"ICOP", b"\xa9 2020 Caf\xe9\0"), (b"INAM", b"\x93Take\x94\0")],
    )

    tags = dict(probe(path).tags)

    assert tags["copyright"] == "\u00a9 2020 Caf\u00e9"
    assert tags["title"] == "\u201cTake\u201d"


def test_probe_keeps_utf8_tags(tmp_path: Path) -> None:
    path = wav_with_info(tmp_path / "utf8.wav", [(b"INAM", "Café ü 😀\0".encode())])

    assert dict(probe(path).tags) == {"title": "Café ü 😀"}


def test_probe_leaves_out_empty_tags(tmp_path: Path) -> None:
    # libsndfile lists every ID3v1 field of an MP3 file, unset ones as "".
    path = tmp_path / "tagged.mp3"
    with sf.SoundFile(path, "w", 16000, 1, format="MP3") as audio:
        audio.title = "Take 3"
        audio.write(make_signal(16000, 1, 16000))

    assert probe(path).tags == (("title", "Take 3"),)


def test_writer_wav_drops_license_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.wav"

    write_tagged(path, (("title", "Take 3"), ("license", "CC0")))

    assert dict(probe(path).tags) == {"title": "Take 3"}
    assert "the license tag was not kept" in caplog.text


@pytest.mark.parametrize("length", [3000, 60_000])
def test_writer_wav_drops_long_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    # libsndfile 1.2.2 reads no WAV tag from the long one on, and a title followed
    # by a comment of 60 kB makes it write a header without the data chunk.
    path = tmp_path / "out.wav"
    tags = (("title", "Take 3"), ("comment", "c" * length), ("genre", "Speech"))

    write_tagged(path, tags)

    assert dict(probe(path).tags) == {"title": "Take 3", "genre": "Speech"}
    assert f"the comment tag was not kept: its {length} bytes" in caplog.text


def test_writer_aiff_drops_long_tag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # libsndfile 1.2.2 cannot open an AIFF file that it wrote with a longer tag.
    path = tmp_path / "out.aiff"

    write_tagged(path, (("title", "Take 3"), ("comment", "c" * 9000)))

    assert dict(probe(path).tags) == {"title": "Take 3"}
    assert "the comment tag was not kept: its 9000 bytes" in caplog.text


def test_writer_mp3_keeps_other_characters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # MP3 tags are written as UTF-8 ID3v2.4 frames, so no character is replaced.
    path = tmp_path / "out.mp3"
    comment = "\u201cquoted\u201d \u00e9t\u00e9 \U0001f600"

    write_tagged(path, (("comment", comment),))

    assert dict(probe(path).tags) == {"comment": comment}
    assert "warning" not in caplog.text.lower()


def test_writer_tag_failure_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"

    # A lone surrogate cannot be encoded as UTF-8.
    write_tagged(path, (("title", "bad \udcff"),))

    assert dict(probe(path).tags) == {"title": "bad ?"}
    assert listing(tmp_path) == ["out.wav"]


def test_writer_rejects_unknown_tag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tag names"):
        AudioWriter(tmp_path / "out.wav", 16000, 1, tags=(("composer", "Bach"),))

    assert listing(tmp_path) == []
