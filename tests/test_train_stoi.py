"""The training recipe's differentiable STOI (edgefx.train.stoi) against pystoi.

The speech is the shipped sample sentence. It is mixed with white or brown noise at
several signal-to-noise ratios, and the shipped noisy copies of it are scored too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

torch = pytest.importorskip("torch")
pystoi = pytest.importorskip("pystoi")

from edgefx.train.stoi import minimum_samples, stoi, stoi_loss  # noqa: E402

RATE = 16000
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "audio"
# The approximation reads 0.020 to 0.025 below pystoi on these inputs.
TOLERANCE = 0.035


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


def test_batch_is_mean_of_signals(clean: np.ndarray) -> None:
    noisy = np.stack([mix(clean, "white", 0), mix(clean, "brown", 5)])
    references = np.stack([clean, clean])

    batch = float(stoi(torch.from_numpy(noisy), torch.from_numpy(references), RATE))

    singles = [ours(noisy[i], clean) for i in range(2)]
    assert batch == pytest.approx(np.mean(singles), abs=1e-5)


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


def test_too_short_raises() -> None:
    short = torch.zeros(1, minimum_samples(RATE) - 1)
    with pytest.raises(ValueError, match="needs at least"):
        stoi(short, short, RATE)
    long_enough = torch.randn(1, minimum_samples(RATE))
    assert torch.isfinite(stoi(long_enough, long_enough, RATE))
