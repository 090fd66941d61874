"""Training recipe for the speech enhancer: clean speech and noise mixed on the fly.

Run through ``edgefx train enhance``. Every step draws fresh mixtures: a random stretch
of clean speech at a random level, with one or two noise recordings at a random
signal-to-noise ratio. Each source goes through a random spectral tilt, so the model
does not learn one microphone's response. The loss compares the output with the clean
speech on power-compressed spectra at three resolutions, in magnitude and in complex
value, optionally with a negative SI-SDR term and a differentiable STOI term
(edgefx/train/stoi.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile
import soxr
import torch

from edgefx.text import key_values
from edgefx.train.checkpoint import load_checkpoint, record_options
from edgefx.train.nets import DEEP_FILTER_ORDER, SpeechEnhancerNet
from edgefx.train.stoi import minimum_samples, stoi, stoi_loss

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

T = TypeVar("T")


@dataclass
class EnhanceTrainOptions:
    speech: list[Path]
    noise: list[Path]
    work_dir: Path
    steps: int = 8000
    batch_size: int = 24
    seconds: float = 2.5
    learning_rate: float = 2e-3
    snr_low: float = -5.0
    snr_high: float = 20.0
    hidden: int = 72
    embedding: int = 64
    refine: int = 0
    deep_filter: int = 0
    validation_fraction: float = 0.05
    noise_validation_fraction: float = 0.1
    checkpoint_every: int = 100
    validate_every: int = 250
    seed: int = 0
    threads: int = 0
    si_sdr_weight: float = 0.0
    stoi_weight: float = 0.0
    variation: bool = False
    band_limited: float = 0.0
    synthetic: float = 0.0
    equalize: float = 0.0
    init: Path | None = None


def load_mono(path: Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono at ``rate`` (channels averaged, soxr HQ)."""
    samples, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if source_rate != rate:
        mono = soxr.resample(mono, source_rate, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_recordings(
    paths: list[Path], minimum_seconds: float = 0.5
) -> list[np.ndarray]:
    """Load every readable recording, skipping (with a warning) unreadable ones."""
    recordings = []
    for path in paths:
        try:
            audio = load_mono(path)
        except (RuntimeError, soundfile.LibsndfileError) as err:
            logger.warning("%s: skipped, %s", path, err)
            continue
        if len(audio) >= minimum_seconds * SAMPLE_RATE and np.any(audio):
            recordings.append(audio)
    if not recordings:
        raise ValueError("no usable recordings among " + ", ".join(map(str, paths[:3])))
    return recordings


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _crop(recording: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``length`` samples of ``recording``, looped when it is shorter."""
    if len(recording) < length:
        repeats = length // len(recording) + 2
        recording = np.tile(recording, repeats)
    start = int(rng.integers(0, len(recording) - length + 1))
    return recording[start : start + length]


def _tilt(x: np.ndarray, rng: np.random.Generator, decibels: float = 6.0) -> np.ndarray:
    """Apply a random smooth spectral tilt of up to +-``decibels`` at the band edges."""
    spectrum = np.fft.rfft(x)
    position = np.linspace(-1.0, 1.0, len(spectrum))
    slope, curve = rng.uniform(-decibels, decibels, size=2)
    gain_db = slope * position + curve * (position**2 - 1 / 3)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=len(x)).astype(np.float32)


# Largest boost or cut in dB of one band of the random equalizer, for noise and for
# speech. Speech gets less, because its equalized copy is also the target.
EQ_NOISE_DB = 12.0
EQ_SPEECH_DB = 6.0


def random_equalizer(
    x: np.ndarray, rng: np.random.Generator, decibels: float
) -> np.ndarray:
    """Reshape the spectrum of ``x`` with one to three random bands and a low cut.

    Each band is a bell of +-``decibels`` on a log-frequency axis, centred between
    80 Hz and 7 kHz and a fifth of an octave to one and a half octaves wide. Half of
    the time a low cut below 100 to 400 Hz (12 dB per octave, at most 30 dB) is
    added, as a small microphone or a phone has. A few noise recordings heard through
    many such responses stand for rooms, microphones and sources the training set
    lacks, where the smooth tilt of ``_tilt`` only turns the whole spectrum.
    """
    frequencies = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(frequencies, 20.0) / 20.0)
    gain_db = np.zeros(len(frequencies))
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(np.log2(80 / 20), np.log2(7000 / 20))
        width = rng.uniform(0.2, 1.5)
        peak = rng.uniform(-decibels, decibels)
        gain_db += peak * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
    if rng.random() < 0.5:
        corner = rng.uniform(100.0, 400.0)
        below = np.log2(corner / np.maximum(frequencies, 1.0))
        gain_db -= np.clip(12.0 * below, 0.0, 30.0)
    spectrum = np.fft.rfft(x) * 10 ** (gain_db / 20)
    return np.fft.irfft(spectrum, n=len(x)).astype(np.float32)


def _varied_crop(
    recording: np.ndarray, length: int, rng: np.random.Generator
) -> np.ndarray:
    """Crop ``length`` samples of a noise recording, changed in speed and loudness."""
    if rng.random() < 0.5:
        speed = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        source = _crop(recording, int(np.ceil(length * speed)) + 1, rng)
        # Treating the samples as recorded at speed x our rate and resampling them to
        # our rate plays the noise back `speed` times as fast.
        piece = soxr.resample(source, SAMPLE_RATE * speed, SAMPLE_RATE, quality="LQ")
        piece = np.asarray(piece, np.float32)
        if len(piece) < length:
            piece = np.pad(piece, (0, length - len(piece)), mode="wrap")
        piece = piece[:length]
    else:
        piece = _crop(recording, length, rng).copy()
    if rng.random() < 0.3:
        knots = max(2, int(length / SAMPLE_RATE / rng.uniform(0.25, 1.0)) + 2)
        decibels = rng.uniform(-6, 6, size=knots)
        envelope = np.interp(
            np.arange(length), np.linspace(0, length - 1, knots), decibels
        )
        piece = piece * (10 ** (envelope / 20)).astype(np.float32)
    return piece


# Shares of the backgrounds that draw_mixtures makes up instead of taking them from the
# noise recordings, when it varies the noise.
BABBLE_SHARE = 0.1
COLORED_NOISE_SHARE = 0.1


def babble_noise(
    speech: list[np.ndarray],
    weights: np.ndarray,
    length: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Mix three to seven random speech stretches at levels within +-3 dB."""
    talkers = int(rng.integers(3, 8))
    mixture = np.zeros(length, np.float32)
    for _ in range(talkers):
        voice = _crop(speech[int(rng.choice(len(speech), p=weights))], length, rng)
        gain = 10 ** (rng.uniform(-3, 3) / 20) / _rms(voice)
        mixture += (voice * gain).astype(np.float32)
    return mixture


def colored_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a random smooth spectrum.

    The gain in dB follows a slope of -6 to +2 dB per octave plus two to four bumps of
    up to +-10 dB, each about an octave wide, at random frequencies.
    """
    spectrum = np.fft.rfft(rng.standard_normal(length))
    octaves = np.log2(np.maximum(np.fft.rfftfreq(length, 1 / SAMPLE_RATE), 50.0) / 50)
    gain_db = rng.uniform(-6, 2) * octaves
    for _ in range(int(rng.integers(2, 5))):
        centre = rng.uniform(0, octaves[-1])
        gain_db += rng.uniform(-10, 10) * np.exp(-0.5 * ((octaves - centre) / 0.5) ** 2)
    shaped = np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=length)
    return shaped.astype(np.float32)


def synthetic_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Make one of three kinds of noise that the recorded ambiences rarely contain.

    - tonal: mains hum at 50 or 60 Hz with up to 15 harmonics of random strength, or a
      whine of one to three steady tones between 300 Hz and 6 kHz, over a little
      Gaussian noise;
    - impulsive: 2 to 20 clicks per second (knocks, taps, keyboard-like), each a burst
      of 1 to 15 ms of noise with a random color and an exponential decay;
    - fluctuating: colored noise whose loudness follows a random envelope of 0.5 to
      8 Hz with 6 to 20 dB of depth, like traffic passing or wind gusts.
    """
    kind = int(rng.integers(3))
    time = np.arange(length) / SAMPLE_RATE
    if kind == 0:
        if rng.random() < 0.5:
            base = 50.0 if rng.random() < 0.5 else 60.0
            frequencies = base * np.arange(1, int(rng.integers(2, 16)) + 1)
        else:
            frequencies = rng.uniform(300.0, 6000.0, size=int(rng.integers(1, 4)))
        frequencies = frequencies[frequencies < SAMPLE_RATE / 2]
        amplitudes = 10 ** (rng.uniform(-20, 0, size=len(frequencies)) / 20)
        phases = rng.uniform(0, 2 * np.pi, size=len(frequencies))
        tones = (
            amplitudes[:, None]
            * np.sin(2 * np.pi * frequencies[:, None] * time + phases[:, None])
        ).sum(axis=0)
        noise = rng.standard_normal(length) * 0.01 * _rms(tones)
        return (tones + noise).astype(np.float32)
    if kind == 1:
        out = np.zeros(length, np.float64)
        count = max(1, int(rng.uniform(2, 20) * length / SAMPLE_RATE))
        for start in rng.integers(0, length, size=count):
            duration = int(rng.uniform(0.001, 0.015) * SAMPLE_RATE)
            burst = colored_noise(max(duration, 16), rng)[:duration]
            burst = burst * np.exp(-np.arange(duration) / max(1.0, duration / 4))
            stop = min(length, int(start) + duration)
            gain = 10 ** (rng.uniform(-12, 0) / 20)
            out[start:stop] += gain * burst[: stop - start] / (_rms(burst) + 1e-12)
        out += rng.standard_normal(length) * 0.003
        return out.astype(np.float32)
    rate = rng.uniform(0.5, 8.0)
    depth = rng.uniform(6.0, 20.0)
    knots = max(2, int(length / SAMPLE_RATE * rate) + 2)
    envelope_db = rng.uniform(-depth / 2, depth / 2, size=knots)
    envelope = np.interp(
        np.arange(length), np.linspace(0, length - 1, knots), envelope_db
    )
    return (colored_noise(length, rng) * 10 ** (envelope / 20)).astype(np.float32)


# Range of the cutoff frequencies of band-limited mixtures, in Hz: from a telephone
# line's 3.4 kHz to what a resampler from 44.1 or 48 kHz leaves below 8 kHz.
BAND_LIMIT_HZ = (3400.0, 7900.0)
# Cutoff of the band-limited copy of the validation mixtures, in Hz.
VALIDATION_BAND_LIMIT_HZ = 7200.0


def low_pass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Remove everything above ``cutoff`` Hz, with a 300 Hz raised-cosine transition.

    Works on the last axis, so a batch of signals gets one filter.
    """
    frequencies = np.fft.rfftfreq(x.shape[-1], 1 / SAMPLE_RATE)
    width = 300.0
    position = np.clip((frequencies - (cutoff - width)) / width, 0.0, 1.0)
    response = 0.5 * (1 + np.cos(np.pi * position))
    spectrum = np.fft.rfft(x, axis=-1) * response
    return np.fft.irfft(spectrum, n=x.shape[-1], axis=-1).astype(np.float32)


def draw_mixtures(
    speech: list[np.ndarray],
    noise: list[np.ndarray],
    count: int,
    length: int,
    rng: np.random.Generator,
    snr_low: float = -5.0,
    snr_high: float = 20.0,
    extremes: bool = True,
    variation: bool = False,
    band_limited: float = 0.0,
    synthetic: float = 0.0,
    equalize: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``count`` (noisy, clean) pairs of ``length`` samples each.

    With ``extremes``, about one pair in twenty is noise alone and one in twenty is
    clean speech alone, so the model learns to silence pure noise and to pass clean
    speech unchanged. Validation sets leave them out, because SI-SDR is undefined or
    unbounded there.

    With ``variation``, the noise recordings are stretched into new ones: half of them
    are played 0.8 to 1.25 times as fast (which shifts their pitch too), and three in
    ten get a slow random loudness envelope of +-6 dB, so that a few dozen noise files
    stand for many more. One background in ten is babble (three to seven other
    utterances of the speech set at once) and one in ten stationary noise with a random
    smooth spectrum, two kinds of noise that few recordings cover. Two SNRs in five
    are then drawn from the lowest 10 dB of the range, where the model has the most to
    learn.

    With ``variation``, a further share ``synthetic`` of the backgrounds is made up by
    ``synthetic_noise``: tonal, impulsive or fluctuating noise.

    A share ``equalize`` of the speech stretches and, drawn apart, of the backgrounds
    goes through ``random_equalizer``, at most 6 dB per band for speech and 12 dB for
    noise.

    A share ``band_limited`` of the pairs is low-passed, mixture and clean speech
    alike, at a cutoff between 3.4 and 7.9 kHz, as a recording is after a telephone
    line, a lossy codec or resampling from a higher rate. Without such pairs the model
    reads an empty top band as a sign of pure noise and cuts the speech.
    """
    weights = np.asarray([len(s) for s in speech], np.float64)
    weights /= weights.sum()
    noisy = np.zeros((count, length), np.float32)
    clean = np.zeros((count, length), np.float32)
    for i in range(count):
        utterance = speech[int(rng.choice(len(speech), p=weights))]
        if len(utterance) >= length:
            voice = _crop(utterance, length, rng)
        else:  # short utterance: place it at a random offset in silence
            voice = np.zeros(length, np.float32)
            offset = int(rng.integers(0, length - len(utterance) + 1))
            voice[offset : offset + len(utterance)] = utterance
        voice = _tilt(voice, rng)
        if equalize and rng.random() < equalize:
            voice = random_equalizer(voice, rng, EQ_SPEECH_DB)
        voice *= 10 ** (rng.uniform(-38, -12) / 20) / _rms(voice)
        if extremes and rng.random() < 0.05:
            voice[:] = 0  # noise alone: the model must learn to remove it all
        recording = noise[int(rng.integers(len(noise)))]
        kind = rng.random() if variation else 1.0
        if kind < BABBLE_SHARE:
            background = _tilt(babble_noise(speech, weights, length, rng), rng)
        elif kind < BABBLE_SHARE + COLORED_NOISE_SHARE:
            background = colored_noise(length, rng)
        elif kind < BABBLE_SHARE + COLORED_NOISE_SHARE + synthetic:
            background = synthetic_noise(length, rng)
        elif variation:
            background = _tilt(_varied_crop(recording, length, rng), rng)
        else:
            background = _tilt(_crop(recording, length, rng), rng)
        if equalize and rng.random() < equalize:
            background = random_equalizer(background, rng, EQ_NOISE_DB)
        if rng.random() < 0.3:
            second = _crop(noise[int(rng.integers(len(noise)))], length, rng)
            background = background / _rms(background) + rng.uniform(0.2, 1) * (
                second / _rms(second)
            )
        snr = rng.uniform(snr_low, snr_high)
        if variation and rng.random() < 0.4:
            snr = rng.uniform(snr_low, min(snr_high, snr_low + 10))
        level = _rms(voice) if voice.any() else 10 ** (rng.uniform(-45, -20) / 20)
        background *= level / _rms(background) / 10 ** (snr / 20)
        if extremes and rng.random() < 0.05:
            background[:] = 0  # clean speech must come through unharmed
        mixture = voice + background
        peak = float(np.max(np.abs(mixture)))
        if peak > 0.99:  # keep the mixture inside full scale, like a real recording
            mixture *= 0.99 / peak
            voice *= 0.99 / peak
        if band_limited and rng.random() < band_limited:
            cutoff = rng.uniform(*BAND_LIMIT_HZ)
            mixture, voice = low_pass(np.stack([mixture, voice]), cutoff)
        noisy[i], clean[i] = mixture, voice
    return noisy, clean


def _compressed(spectrum: torch.Tensor, power: float = 0.3) -> torch.Tensor:
    magnitude = spectrum.abs().clamp_min(1e-8)
    return spectrum * (magnitude ** (power - 1))


def spectral_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Compressed magnitude and complex spectral distance at three resolutions.

    Frames overlap by half rather than the usual three quarters: it halves the cost
    of the loss, the largest part of a training step here.
    """
    total = output.new_zeros(())
    for n_fft in (256, 512, 1024):
        window = torch.hann_window(n_fft)
        specs = [
            torch.stft(x, n_fft, n_fft // 2, window=window, return_complex=True)
            for x in (output, target)
        ]
        estimate, reference = (_compressed(s) for s in specs)
        magnitude = (estimate.abs() - reference.abs()).square().mean()
        complex_part = (estimate - reference).abs().square().mean()
        total = total + magnitude + 0.3 * complex_part
    return total


def si_sdr_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative mean SI-SDR in dB over the signals (B, N) that contain speech."""
    voiced = target.square().sum(dim=1) > 1e-8
    if not bool(voiced.any()):
        return output.new_zeros(())
    estimate = output[voiced] - output[voiced].mean(dim=1, keepdim=True)
    reference = target[voiced] - target[voiced].mean(dim=1, keepdim=True)
    scale = (estimate * reference).sum(dim=1, keepdim=True) / (
        reference.square().sum(dim=1, keepdim=True) + 1e-8
    )
    projection = scale * reference
    residual = estimate - projection
    ratio = (projection.square().sum(dim=1) + 1e-8) / (
        residual.square().sum(dim=1) + 1e-8
    )
    return -10 * torch.log10(ratio).mean()


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019)."""
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    scale = np.dot(estimate, reference) / (np.dot(reference, reference) + 1e-12)
    target = scale * reference
    residual = estimate - target
    return float(
        10
        * np.log10(
            (np.dot(target, target) + 1e-12) / (np.dot(residual, residual) + 1e-12)
        )
    )


def enhance_offline(model: SpeechEnhancerNet, noisy: torch.Tensor) -> torch.Tensor:
    """Run ``model`` over whole signals (B, N) and return outputs aligned to the input.

    The signals are padded to whole hops plus one hop for the model's delay.
    """
    hop = model.hop
    length = noisy.shape[1]
    hops = -(-length // hop) + 1
    padded = torch.nn.functional.pad(noisy, (0, hops * hop - length))
    state = noisy.new_zeros(noisy.shape[0], model.state_size)
    enhanced, _, _ = model(padded, state, noisy.new_zeros(1))
    return enhanced[:, hop : hop + length]


def set_feature_statistics(model: SpeechEnhancerNet, noisy: np.ndarray) -> None:
    """Set the per-bin log-power normalization from sample mixtures."""
    hop = model.hop
    usable = noisy[:, : noisy.shape[1] // (2 * hop) * 2 * hop]
    frames = torch.from_numpy(usable).reshape(-1, 2 * hop)
    real, imag = model.spectrum(frames)
    logs = torch.log(real * real + imag * imag + 1e-10)
    model.feature_mean.copy_(logs.mean(dim=0))
    model.feature_scale.copy_(1 / logs.std(dim=0).clamp_min(1e-3))


def split_recordings(
    items: list[T], fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Hold out a fixed ``fraction`` of the recordings (or paths) for validation."""
    order = np.random.default_rng(seed).permutation(len(items))
    held = max(1, int(round(len(items) * fraction))) if len(items) > 1 else 0
    validation = [items[i] for i in sorted(order[:held])]
    train = [items[i] for i in sorted(order[held:])]
    return train, validation or train


# Flags of the network options in a checkpoint's config; the others are fixed.
NETWORK_FLAGS = {
    "hidden": "--hidden",
    "refine": "--refine",
    "deep_filter": "--deep-filter",
}


def _network_difference(saved: object, config: dict[str, int]) -> str:
    """Name the network options in which a checkpoint's config differs from
    ``config``, with the checkpoint's value and the requested one."""
    if not isinstance(saved, dict):
        return "the checkpoint has no network configuration"
    changes = []
    for key in sorted(set(saved) | set(config)):
        # refine and deep_filter are left out of the config when 0.
        old, new = saved.get(key, 0), config.get(key, 0)
        if old != new:
            changes.append(f"{NETWORK_FLAGS.get(key, key)} {old} (now {new})")
    return ", ".join(changes)


def learning_rate_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 5 % of the peak."""
    warmup = max(1, int(total * 0.05))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(options: EnhanceTrainOptions) -> Path:
    """Train (or resume) a speech enhancer; return the path of its best checkpoint."""
    if options.stoi_weight and options.seconds * SAMPLE_RATE < minimum_samples(
        SAMPLE_RATE
    ):
        raise ValueError(
            "--stoi-weight needs training mixtures of at least "
            f"{minimum_samples(SAMPLE_RATE) / SAMPLE_RATE:.2f} s, got --seconds "
            f"{options.seconds:g}; give --seconds 0.4 or more"
        )
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    checkpoint_path = options.work_dir / "checkpoint.pt"
    log_path = options.work_dir / "log.jsonl"
    model = SpeechEnhancerNet(
        hidden=options.hidden,
        embedding=options.embedding,
        refine=options.refine,
        deep_filter=options.deep_filter,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.learning_rate, weight_decay=1e-4
    )
    config: dict[str, int] = {
        "hidden": options.hidden,
        "embedding": options.embedding,
        "hop": model.hop,
    }
    if options.refine:
        # Only set when used, so that checkpoints from before the option still resume.
        config["refine"] = options.refine
    if options.deep_filter:
        config["deep_filter"] = options.deep_filter
    step = 0
    best_score = -math.inf
    best_record: dict[str, float] = {}  # validation scores of the best checkpoint
    resumed = checkpoint_path.exists()
    if resumed:
        state = load_checkpoint(checkpoint_path)
        if state.get("config") != config:
            raise ValueError(
                f"{checkpoint_path} was trained with other network options: "
                f"{_network_difference(state.get('config'), config)}; use another "
                "--work-dir or the same options"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        best_score = float(state["best_score"])
        best_record = dict(state.get("best_record", {}))
        logger.info("resumed from %s at step %d", checkpoint_path, step)
    elif options.init is not None:
        start = load_enhancer_weights(options.init)
        if (start.hidden, start.embedding, start.hop) != (
            options.hidden,
            options.embedding,
            model.hop,
        ):
            raise ValueError(
                f"{options.init} has {start.hidden} GRU units and an embedding of "
                f"{start.embedding} (this recipe: {options.hidden} and "
                f"{options.embedding}); train with --hidden {start.hidden}"
            )
        if start.refine not in (0, options.refine):
            raise ValueError(
                f"{options.init} has a refinement of {start.refine} channels; train "
                "with the same --refine"
            )
        if start.deep_filter not in (0, options.deep_filter):
            bins = "bin" if start.deep_filter == 1 else "bins"
            raise ValueError(
                f"{options.init} has a deep filter over {start.deep_filter} {bins}; "
                "train with the same --deep-filter"
            )
        # A start without the refinement or the deep filter leaves them at their
        # initialization, which keeps the start's output.
        model.load_state_dict(
            start.state_dict(),
            strict=(start.refine, start.deep_filter)
            == (options.refine, options.deep_filter),
        )
        logger.info("starting from the weights of %s", options.init)
    # The network options are checked above, before the recordings are loaded and
    # before the work folder exists, so that a mistake costs no time and leaves
    # nothing behind.
    # Unreadable files are dropped before the split, so that a bad file cannot leave
    # the validation set empty.
    speech, validation_speech = split_recordings(
        load_recordings(sorted(options.speech)),
        options.validation_fraction,
        options.seed,
    )
    # Held-out noise files make the validation score measure how the model does on
    # noises it has not heard, which is what users feed it.
    noise, validation_noise = split_recordings(
        load_recordings(sorted(options.noise), minimum_seconds=0.1),
        options.noise_validation_fraction,
        options.seed,
    )
    logger.info(
        "%d training and %d validation speech files (%.1f min), %d training and %d "
        "validation noise files (%.1f min of training noise)",
        len(speech),
        len(validation_speech),
        sum(map(len, speech)) / SAMPLE_RATE / 60,
        len(noise),
        len(validation_noise) if validation_noise is not noise else 0,
        sum(map(len, noise)) / SAMPLE_RATE / 60,
    )
    length = int(options.seconds * SAMPLE_RATE)
    validation_noisy, validation_clean = draw_mixtures(
        validation_speech,
        validation_noise,
        48,
        4 * SAMPLE_RATE,
        np.random.default_rng(options.seed + 12345),
        options.snr_low,
        options.snr_high,
        extremes=False,
    )
    # The same mixtures with an empty top band, scored beside the full-band ones.
    limited_noisy = low_pass(validation_noisy, VALIDATION_BAND_LIMIT_HZ)
    limited_clean = low_pass(validation_clean, VALIDATION_BAND_LIMIT_HZ)

    if not resumed and options.init is None:
        sample_noisy, _ = draw_mixtures(
            speech, noise, 64, length, np.random.default_rng(options.seed + 1)
        )
        set_feature_statistics(model, sample_noisy)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    record_options(
        options.work_dir,
        options,
        resumed=resumed,
        flags={
            "speech": "--speech/--data",
            "noise": "--noise/--data",
            "synthetic": "--synthetic-share",
            "equalize": "--random-eq",
        },
    )

    def save(path: Path) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_score": best_score,
            "best_record": best_record,
            "config": config,
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)

    def score(
        noisy_set: np.ndarray, clean_set: np.ndarray
    ) -> tuple[float, float, torch.Tensor]:
        """Return the mean SI-SDR of the model's output and of its input in dB, and
        the output itself."""
        with torch.no_grad():
            output = enhance_offline(model, torch.from_numpy(noisy_set))
        scores, baseline = [], []
        for estimate, noisy, reference in zip(
            output.numpy(), noisy_set, clean_set, strict=True
        ):
            if reference.any():
                scores.append(si_sdr(estimate, reference))
                baseline.append(si_sdr(noisy, reference))
        return float(np.mean(scores)), float(np.mean(baseline)), output

    def validate() -> dict[str, float]:
        model.eval()
        full, baseline, output = score(validation_noisy, validation_clean)
        intelligibility = float(
            stoi(output, torch.from_numpy(validation_clean), SAMPLE_RATE)
        )
        record = {
            "validation_si_sdr": round(full, 3),
            "validation_si_sdr_gain": round(full - baseline, 3),
            # The training loss's approximation of STOI (edgefx/train/stoi.py).
            "validation_stoi": round(intelligibility, 4),
        }
        if options.band_limited:
            limited, _, _ = score(limited_noisy, limited_clean)
            record["validation_si_sdr_band_limited"] = round(limited, 3)
            # The checkpoint is chosen on both, so that neither kind of input is
            # given up for the other.
            record["validation_score"] = round((full + limited) / 2, 3)
        else:
            record["validation_score"] = record["validation_si_sdr"]
        model.train()
        return record

    started = time.monotonic()
    running = 0.0
    count = 0
    model.train()
    while step < options.steps:
        # Each step draws from its own seed, so a resumed run gets the same data.
        rng = np.random.default_rng(options.seed * 1_000_003 + step)
        noisy, clean = draw_mixtures(
            speech,
            noise,
            options.batch_size,
            length,
            rng,
            options.snr_low,
            options.snr_high,
            variation=options.variation,
            band_limited=options.band_limited,
            synthetic=options.synthetic,
            equalize=options.equalize,
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, options.steps, options.learning_rate)
        enhanced = enhance_offline(model, torch.from_numpy(noisy))
        target = torch.from_numpy(clean)
        loss = spectral_loss(enhanced, target)
        if options.si_sdr_weight:
            loss = loss + options.si_sdr_weight * si_sdr_loss(enhanced, target)
        if options.stoi_weight:
            loss = loss + options.stoi_weight * stoi_loss(enhanced, target, SAMPLE_RATE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        running += loss.item()
        count += 1
        if step % options.validate_every == 0 or step == options.steps:
            record: dict[str, float] = {
                "step": step,
                "loss": round(running / max(1, count), 5),
                **validate(),
                "seconds": round(time.monotonic() - started, 1),
            }
            running, count = 0.0, 0
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            logger.info("step %d: %s", step, key_values(record, exclude=("step",)))
            if record["validation_score"] > best_score:
                best_score = record["validation_score"]
                best_record = {k: v for k, v in record.items() if k != "seconds"}
                save(options.work_dir / "best.pt")
        if step % options.checkpoint_every == 0:
            save(checkpoint_path)
    save(checkpoint_path)
    best = options.work_dir / "best.pt"
    if not best.exists():
        save(best)
    return best


def load_enhancer_checkpoint(path: Path) -> tuple[SpeechEnhancerNet, dict]:
    """Build the network from a checkpoint (loaded without pickle code)."""
    state = load_checkpoint(path)
    config = state["config"]
    model = SpeechEnhancerNet(
        config["hop"],
        config["hidden"],
        config["embedding"],
        config.get("refine", 0),
        config.get("deep_filter", 0),
    )
    model.load_state_dict(state["model"])
    return model.eval(), state


def _gru_from_onnx(
    gru: torch.nn.GRU, w: np.ndarray, r: np.ndarray, b: np.ndarray
) -> None:
    # ONNX stacks the gates as update, reset, new, and PyTorch as reset, update, new.
    def reorder(matrix: np.ndarray) -> torch.Tensor:
        update, reset, new = np.split(matrix, 3, axis=0)
        return torch.from_numpy(np.concatenate([reset, update, new], axis=0).copy())

    input_bias, recurrent_bias = np.split(b[0], 2)
    sources = {
        "weight_ih_l0": w[0],
        "weight_hh_l0": r[0],
        "bias_ih_l0": input_bias,
        "bias_hh_l0": recurrent_bias,
    }
    with torch.no_grad():
        for name, source in sources.items():
            gru.get_parameter(name).copy_(reorder(source))


def load_enhancer_weights(path: Path) -> SpeechEnhancerNet:
    """Build the network from a training checkpoint or from an exported ONNX file.

    Reading the ONNX file lets a user fine-tune the shipped model on new recordings
    without its training checkpoint.
    """
    if path.suffix.lower() != ".onnx":
        return load_enhancer_checkpoint(path)[0]
    import onnx
    from onnx import numpy_helper

    model_proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in model_proto.metadata_props}
    if metadata.get("task") != "enhance":
        raise ValueError(f"{path}: not an edgefx speech enhancer (task metadata)")
    graph = model_proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    bins = int(metadata["hop"]) + 1
    tables = {"analysis_cos", "analysis_sin", "synthesis_cos", "synthesis_sin"}
    weights = [
        values[n.input[1]]
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in values and n.input[1] not in tables
    ]
    grus = [n for n in graph.node if n.op_type == "GRU"]
    encoders = [w for w in weights if w.shape[0] == bins]
    decoders = [w for w in weights if w.shape[1] == bins and w.shape[0] != bins]
    if len(grus) != 2 or len(encoders) != 1 or len(decoders) != 1:
        raise ValueError(f"{path}: not laid out like an edgefx speech enhancer")
    encoder, decoder = encoders[0], decoders[0]
    hidden = int(values[grus[0].input[2]].shape[2])
    refine = int(values["refine1.weight"].shape[0]) if "refine1.weight" in values else 0
    # The filter's size comes from its weights, which cannot disagree with the graph
    # as a metadata entry can.
    filter_bias = values.get("filter_head.bias")
    deep_filter = (
        0 if filter_bias is None else filter_bias.size // (2 * DEEP_FILTER_ORDER)
    )
    if metadata.get("deep_filter", str(deep_filter)) != str(deep_filter):
        raise ValueError(
            f"{path}: metadata deep_filter is {metadata['deep_filter']!r}, but the "
            f"graph's deep filter covers {deep_filter} bins"
        )
    model = SpeechEnhancerNet(
        int(metadata["hop"]), hidden, encoder.shape[1], refine, deep_filter
    )
    with torch.no_grad():
        if filter_bias is not None:
            outputs = DEEP_FILTER_ORDER * 2 * deep_filter
            heads = [w for w in weights if w.shape == (hidden, outputs)]
            if len(heads) != 1:
                raise ValueError(f"{path}: its deep filter weights are not found")
            model.filter_head.weight.copy_(torch.from_numpy(heads[0].T.copy()))
            model.filter_head.bias.copy_(torch.from_numpy(filter_bias.copy()))
        for name in ("refine1", "refine2", "refine_out") if refine else ():
            layer = model.get_submodule(name)
            for kind in ("weight", "bias"):
                layer.get_parameter(kind).copy_(
                    torch.from_numpy(values[f"{name}.{kind}"].copy())
                )
        model.feature_mean.copy_(torch.from_numpy(values["feature_mean"].copy()))
        model.feature_scale.copy_(torch.from_numpy(values["feature_scale"].copy()))
        model.encoder.weight.copy_(torch.from_numpy(encoder.T.copy()))
        model.encoder.bias.copy_(torch.from_numpy(values["encoder.bias"].copy()))
        model.decoder.weight.copy_(torch.from_numpy(decoder.T.copy()))
        model.decoder.bias.copy_(torch.from_numpy(values["decoder.bias"].copy()))
    for gru, node in zip((model.gru1, model.gru2), grus, strict=True):
        _gru_from_onnx(gru, *(values[name] for name in node.input[1:4]))
    return model.eval()


def export_best(
    checkpoint: Path,
    out_path: Path,
    name: str | None = None,
    data_description: str | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Export an enhancer checkpoint to ONNX in its streaming form."""
    from edgefx.train.export import export_enhancer

    model, state = load_enhancer_checkpoint(checkpoint)
    parameters = sum(p.numel() for p in model.parameters())
    metadata = {
        "task": "enhance",
        "name": name or out_path.stem,
        "version": "1",
        "sample_rate": str(SAMPLE_RATE),
        "hop": str(model.hop),
        "state_size": str(model.state_size),
        "buffer_size": str(model.buffer_size),
        "delay": str(model.hop),
        "parameters": str(parameters),
        "training": json.dumps(
            {
                "data": data_description or "user data",
                "steps": int(state["step"]),
                "validation_si_sdr": round(float(state["best_score"]), 2),
                **{
                    key: value
                    for key, value in state.get("best_record", {}).items()
                    if key.startswith("validation_")
                },
            },
            sort_keys=True,
        ),
    }
    if model.deep_filter:
        metadata["deep_filter"] = str(model.deep_filter)
    metadata.update(extra_metadata or {})
    export_enhancer(model, out_path, metadata)
    return out_path
