"""The training recipe's differentiable STOI (edgefx.train.stoi) against pystoi.

The speech is the shipped sample sentence. It is mixed with white or brown noise at
several signal-to-noise ratios, and the shipped noisy copies of it are scored too.
Training clips often hold a short utterance in digital silence, so some tests pad the
sentence with zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

torch = pytest.importorskip("torch")
pystoi = pytest.importorskip("pystoi")

from edgefx.train.stoi import (  # noqa: E402
    BANDS,
    minimum_samples,
    stoi,
    stoi_loss,
    third_octave_matrix,
)

RATE = 16000
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "audio"
# The approximation reads within 0.006 of pystoi on these inputs, and 0.008 on the
# padded sentence.
TOLERANCE = 0.01


def load(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, RATE).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return load(SAMPLES / "clean" / "arctic_a0007.wav")


def noise(kind: str, length: int) -> np.ndarray:
    values = np.random.default_rng(3).standard_normal(length)
    if kind == "brown":
        values = np.cumsum(values)
        values -= np.convolve(values, np.ones(400) / 400, mode="same")
    return values.astype(np.float32)


def mix(clean: np.ndarray, kind: str, snr: float) -> np.ndarray:
    background = noise(kind, len(clean))
    gain = np.sqrt(np.mean(clean**2) / np.mean(background**2) / 10 ** (snr / 10))
    return clean + gain * background


def pad(signal: np.ndarray, before: int, after: int) -> np.ndarray:
    return np.concatenate(
        [np.zeros(before, np.float32), signal, np.zeros(after, np.float32)]
    )


def ours(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(
        stoi(torch.from_numpy(estimate)[None], torch.from_numpy(reference)[None], RATE)
    )


@pytest.mark.parametrize("kind", ["white", "brown"])
def test_matches_pystoi_across_snrs(clean: np.ndarray, kind: str) -> None:
    snrs = (-10, -5, 0, 5, 10, 20)
    reference = [pystoi.stoi(clean, mix(clean, kind, snr), RATE) for snr in snrs]
    approximation = [ours(mix(clean, kind, snr), clean) for snr in snrs]

    assert np.allclose(approximation, reference, atol=TOLERANCE), (
        approximation,
        reference,
    )
    assert np.all(np.diff(approximation) > 0), approximation


@pytest.mark.parametrize(
    "name", ["arctic_a0007_fan_0db_stereo.wav", "arctic_a0007_room_5db.flac"]
)
def test_matches_pystoi_on_sample_recordings(clean: np.ndarray, name: str) -> None:
    noisy = load(SAMPLES / "noisy" / name)
    length = min(len(noisy), len(clean))
    noisy, reference = noisy[:length], clean[:length]

    assert ours(noisy, reference) == pytest.approx(
        pystoi.stoi(reference, noisy, RATE), abs=TOLERANCE
    )


def test_identical_signals_score_one(clean: np.ndarray) -> None:
    assert ours(clean, clean) == pytest.approx(1.0, abs=1e-4)


def test_band_matrix_matches_pystoi_bands() -> None:
    reference, _ = pystoi.utils.thirdoct(RATE, 1024, BANDS, 150)
    matrix = third_octave_matrix(RATE, 1024).numpy()

    assert matrix.shape == reference.shape
    for band in range(BANDS):
        ours_bins = np.flatnonzero(matrix[band])
        reference_bins = np.flatnonzero(reference[band])
        # pystoi rounds each band edge to the nearest bin, so the edges differ by
        # at most one bin.
        assert abs(ours_bins[0] - reference_bins[0]) <= 1, band
        assert abs(ours_bins[-1] - reference_bins[-1]) <= 1, band
        assert np.all(np.diff(ours_bins) == 1), band
    assert matrix.sum(axis=0).max() == 1


def test_silence_padding_does_not_change_score(clean: np.ndarray) -> None:
    padded_clean = pad(clean, RATE, 2 * RATE)
    background = noise("white", len(padded_clean))
    background *= np.sqrt(np.mean(clean**2) / np.mean(background**2))  # 0 dB SNR
    padded_noisy = padded_clean + background
    noisy = clean + background[RATE : RATE + len(clean)]

    padded = ours(padded_noisy, padded_clean)

    assert padded == pytest.approx(
        pystoi.stoi(padded_clean, padded_noisy, RATE), abs=TOLERANCE
    )
    assert padded == pytest.approx(ours(noisy, clean), abs=TOLERANCE)
    assert ours(padded_clean, padded_clean) == pytest.approx(1.0, abs=1e-4)


def test_batch_is_mean_of_signals(clean: np.ndarray) -> None:
    # The second clip contains a quarter of the speech of the first.
    short = pad(clean[RATE : 2 * RATE], RATE, len(clean) - 2 * RATE)
    references = np.stack([clean, short])
    noisy = np.stack([mix(clean, "white", 0), mix(short, "brown", 5)])

    batch = float(stoi(torch.from_numpy(noisy), torch.from_numpy(references), RATE))

    singles = [ours(noisy[i], references[i]) for i in range(2)]
    assert batch == pytest.approx(np.mean(singles), abs=1e-5)


def test_silent_estimate_scores_zero(clean: np.ndarray) -> None:
    silent = np.zeros_like(clean)

    assert ours(silent, clean) == pytest.approx(0.0, abs=1e-6)
    assert pystoi.stoi(clean, silent, RATE) == pytest.approx(0.0, abs=1e-6)


def test_float64_matches_float32(clean: np.ndarray) -> None:
    noisy = mix(clean, "white", 0)
    double = stoi(
        torch.from_numpy(noisy).double()[None],
        torch.from_numpy(clean).double()[None],
        RATE,
    )

    assert double.dtype == torch.float64
    assert float(double) == pytest.approx(ours(noisy, clean), abs=1e-4)


def test_loss_gradient_points_towards_clean(clean: np.ndarray) -> None:
    noisy = torch.from_numpy(mix(clean, "white", 0))[None].requires_grad_(True)
    reference = torch.from_numpy(clean)[None]

    loss = stoi_loss(noisy, reference, RATE)
    loss.backward()
    assert noisy.grad is not None
    assert torch.isfinite(noisy.grad).all()
    with torch.no_grad():
        stepped = noisy - 1e-3 * noisy.grad / noisy.grad.abs().max()
        assert float(stoi_loss(stepped, reference, RATE)) < float(loss)


def test_silent_reference_gets_no_weight(clean: np.ndarray) -> None:
    silent = np.zeros_like(clean)
    pair = torch.from_numpy(
        np.stack([mix(clean, "white", 5), noise("white", len(clean))])
    )
    references = torch.from_numpy(np.stack([clean, silent]))

    assert float(stoi(pair, references, RATE)) == pytest.approx(
        ours(mix(clean, "white", 5), clean), abs=1e-5
    )
    only_silence = torch.from_numpy(silent)[None]
    assert float(stoi(only_silence, only_silence, RATE)) == 0.0


def test_short_speech_gets_no_weight(clean: np.ndarray) -> None:
    # 0.2 s of speech spans fewer than the 30 frames of one window.
    burst = pad(clean[RATE : RATE + RATE // 5], RATE, len(clean) - RATE - RATE // 5)
    pair = torch.from_numpy(np.stack([mix(clean, "white", 5), mix(burst, "white", 5)]))
    references = torch.from_numpy(np.stack([clean, burst]))

    assert float(stoi(pair, references, RATE)) == pytest.approx(
        ours(mix(clean, "white", 5), clean), abs=1e-5
    )


def test_gradient_finite_with_silent_clips(clean: np.ndarray) -> None:
    silent = np.zeros_like(clean)
    estimates = torch.from_numpy(
        np.stack([mix(clean, "white", 0), silent, noise("white", len(clean))])
    ).requires_grad_(True)
    references = torch.from_numpy(np.stack([clean, clean, silent]))

    stoi_loss(estimates, references, RATE).backward()

    assert estimates.grad is not None
    assert torch.isfinite(estimates.grad).all()
    assert estimates.grad[0].abs().max() > 0
    # A silent reference carries no weight, so its estimate gets no gradient.
    assert estimates.grad[2].abs().max() == 0


def test_silent_batch_loss_is_differentiable() -> None:
    silent = torch.zeros(2, minimum_samples(RATE))
    estimates = torch.randn(2, minimum_samples(RATE)).requires_grad_(True)

    loss = stoi_loss(estimates, silent, RATE)
    loss.backward()

    assert float(loss.detach()) == 1.0
    assert estimates.grad is not None
    assert estimates.grad.abs().max() == 0


def test_too_short_raises() -> None:
    short = torch.zeros(1, minimum_samples(RATE) - 1)
    with pytest.raises(ValueError, match="needs at least"):
        stoi(short, short, RATE)
    long_enough = torch.randn(1, minimum_samples(RATE))
    assert torch.isfinite(stoi(long_enough, long_enough, RATE))


def test_mismatched_shapes_raise() -> None:
    signal = torch.zeros(1, minimum_samples(RATE))
    with pytest.raises(ValueError, match="same"):
        stoi(signal[:, 1:], signal[:, :-1].repeat(2, 1), RATE)
    with pytest.raises(ValueError, match="same"):
        stoi(signal[0], signal[0], RATE)
