"""Bad and unusual audio files in one batch with good ones, through enhance.

The corpus is generated here, once per module, and `edgefx enhance` runs once over it
with the shipped model. A good file must come out with the input's rate, channel
count, length and sample format. A bad file must get exactly one `failed: PATH: reason`
line and no output, while the rest of the batch goes on and the exit status is 1.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from reliability_helpers import (
    empty_files,
    failure_lines,
    lines_naming,
    permissions_unenforceable,
    run_edgefx_unprivileged,
    temporaries,
)

# The peak limiter in edgefx.enhance keeps output peaks at or below this level.
LIMITER_CEILING = 0.999


@dataclass(frozen=True)
class GoodAudio:
    relative: str
    rate: int
    channels: int
    frames: int
    subtype: str
    format: str = "WAV"


@dataclass(frozen=True)
class BadAudio:
    relative: str
    reason: str


def tones(frames: int, channels: int, rate: int, seed: int = 0) -> np.ndarray:
    """(frames, channels) float32: one tone per channel in light noise."""
    rng = np.random.default_rng(seed)
    time = np.arange(frames)[:, None] / rate
    frequencies = 220.0 * (1 + np.arange(channels))[None, :]
    signal = 0.3 * np.sin(2 * np.pi * frequencies * time)
    signal = signal + 0.02 * rng.standard_normal((frames, channels))
    return signal.astype(np.float32)


def build_corpus(folder: Path) -> tuple[list[GoodAudio], list[BadAudio]]:
    """Write the audio corpus into ``folder``; return what each file must give."""
    folder.mkdir(parents=True)
    good: list[GoodAudio] = []
    bad: list[BadAudio] = []

    def write(relative: str, samples: np.ndarray, rate: int, subtype: str) -> Path:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, rate, subtype=subtype)
        return path

    def add_good(relative: str, rate: int, channels: int, frames: int, subtype: str):
        write(relative, tones(frames, channels, rate), rate, subtype)
        suffix = Path(relative).suffix.lower()
        major = {".wav": "WAV", ".flac": "FLAC"}[suffix]
        good.append(GoodAudio(relative, rate, channels, frames, subtype, major))

    # Sample formats, channel counts and rates.
    add_good("eight_bit.wav", 8000, 1, 4000, "PCM_U8")
    add_good("sixteen_bit.wav", 16000, 1, 8000, "PCM_16")
    add_good("stereo_24bit.wav", 44100, 2, 22050, "PCM_24")
    add_good("float.wav", 16000, 1, 8000, "FLOAT")
    add_good("six_channels.wav", 48000, 6, 24000, "PCM_16")
    add_good("hires_96k.wav", 96000, 2, 48000, "PCM_24")
    add_good("speech.flac", 16000, 1, 8000, "PCM_16")
    add_good("dir with spaces é/запись 录音 1.wav", 16000, 1, 8000, "PCM_16")

    # One sample, and one second of digital silence.
    write("one_sample.wav", np.array([[0.25]], np.float32), 16000, "PCM_16")
    good.append(GoodAudio("one_sample.wav", 16000, 1, 1, "PCM_16"))
    write("silent.wav", np.zeros((16000, 1), np.float32), 16000, "PCM_16")
    good.append(GoodAudio("silent.wav", 16000, 1, 16000, "PCM_16"))

    # Full scale: a square wave at +-1 in float, and one at the 16-bit maximum.
    square = np.sign(np.sin(2 * np.pi * 300 * np.arange(16000) / 16000))
    write("full_scale.wav", square[:, None].astype(np.float32), 16000, "FLOAT")
    good.append(GoodAudio("full_scale.wav", 16000, 1, 16000, "FLOAT"))
    write("full_scale_16bit.wav", square[:, None] * (32767 / 32768), 48000, "PCM_16")
    good.append(GoodAudio("full_scale_16bit.wav", 48000, 1, 16000, "PCM_16"))

    # A file with a header and no samples.
    write("no_samples.wav", np.zeros((0, 1), np.float32), 16000, "PCM_16")
    bad.append(BadAudio("no_samples.wav", "no audio samples"))

    # NaN and infinity in float WAV files.
    with_nan = tones(8000, 1, 16000)
    with_nan[4000] = np.nan
    write("nan.wav", with_nan, 16000, "FLOAT")
    bad.append(BadAudio("nan.wav", "NaN or infinite samples at second 0.250"))
    with_inf = tones(8000, 2, 16000)
    with_inf[2000, 1] = np.inf
    write("inf.wav", with_inf, 16000, "FLOAT")
    bad.append(BadAudio("inf.wav", "NaN or infinite samples at second 0.125"))

    # Empty, text and random files with audio suffixes.
    (folder / "empty.wav").write_bytes(b"")
    bad.append(BadAudio("empty.wav", "empty file"))
    (folder / "notes.wav").write_text("these are notes, not a recording\n")
    bad.append(BadAudio("notes.wav", "not a valid WAV file"))
    random_bytes = np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes()
    (folder / "random.flac").write_bytes(random_bytes)
    bad.append(BadAudio("random.flac", "not a valid FLAC file"))

    # Truncated files: the first 60 % of a valid file.
    for name in ("truncated.wav", "truncated.flac"):
        whole = write(name, tones(32000, 2, 16000), 16000, "PCM_16")
        data = whole.read_bytes()
        whole.write_bytes(data[: len(data) * 6 // 10])
        bad.append(BadAudio(name, "truncated"))

    # A file that cannot be read because of its permissions, where file modes can
    # stop the CLI (test_unreadable_file_covered reports when they cannot).
    if permissions_unenforceable() is None:
        locked = write("locked.wav", tones(800, 1, 16000), 16000, "PCM_16")
        locked.chmod(0)
        bad.append(BadAudio("locked.wav", "permission denied"))
    return good, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[GoodAudio], list[BadAudio]]:
    folder = tmp_path_factory.mktemp("audio") / "in"
    good, bad = build_corpus(folder)
    return folder, good, bad


@pytest.fixture(scope="module")
def enhance_run(corpus) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder, _, _ = corpus
    out = folder.parent / "enhanced"
    result = run_edgefx_unprivileged(
        "enhance", folder, "--recursive", "--out", out, "--device", "cpu"
    )
    return result, out


def test_enhance_corpus_exit_1(enhance_run) -> None:
    result, _ = enhance_run
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_enhance_corpus_summary(enhance_run, corpus) -> None:
    result, _ = enhance_run
    _, good, bad = corpus
    expected = f"{len(good)} done, 0 skipped (output exists), {len(bad)} failed"
    assert expected in result.stderr, result.stderr


def test_enhance_corpus_keeps_properties(enhance_run, corpus) -> None:
    _, out = enhance_run
    _, good, _ = corpus
    for case in good:
        output = out / case.relative
        assert output.is_file(), case.relative
        info = sf.info(str(output))
        assert info.format == case.format, case.relative
        assert info.subtype == case.subtype, case.relative
        assert info.samplerate == case.rate, case.relative
        assert info.channels == case.channels, case.relative
        assert info.frames == case.frames, case.relative


def test_enhance_corpus_outputs_finite(enhance_run, corpus) -> None:
    _, out = enhance_run
    _, good, _ = corpus
    for case in good:
        samples, _ = sf.read(str(out / case.relative), dtype="float32")
        assert np.isfinite(samples).all(), case.relative
        assert np.abs(samples).max() <= 1.0, case.relative


def test_enhance_corpus_silence_stays_silent(enhance_run) -> None:
    _, out = enhance_run
    samples, _ = sf.read(str(out / "silent.wav"), dtype="int16")
    assert np.abs(samples.astype(np.int32)).max() <= 1


@pytest.mark.parametrize("name", ["full_scale.wav", "full_scale_16bit.wav"])
def test_enhance_corpus_full_scale_not_clipped(enhance_run, name: str) -> None:
    _, out = enhance_run
    samples, _ = sf.read(str(out / name), dtype="float64")
    # The limiter turns peaks down smoothly, so no sample reaches full scale, where
    # a clipped waveform would sit flat.
    assert np.abs(samples).max() <= LIMITER_CEILING + 1 / 32768
    assert np.abs(samples).max() > 0.05


def test_enhance_corpus_bad_files_one_line(enhance_run, corpus) -> None:
    result, _ = enhance_run
    folder, _, bad = corpus
    for case in bad:
        named = lines_naming(result.stderr, folder / case.relative)
        assert len(named) == 1, f"{case.relative}: {named}\n{result.stderr}"
        assert case.reason in named[0], named[0]
    assert len(failure_lines(result.stderr)) == len(bad), result.stderr


def test_enhance_corpus_bad_files_no_output(enhance_run, corpus) -> None:
    _, out = enhance_run
    _, _, bad = corpus
    for case in bad:
        assert not (out / case.relative).exists(), case.relative
    assert temporaries(out) == []
    assert empty_files(out) == []


def test_unreadable_file_covered(corpus) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    bad = corpus[-1]
    assert "locked.wav" in [case.relative for case in bad]
