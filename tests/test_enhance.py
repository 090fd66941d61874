"""Tests of the streaming speech enhancer in edgefx.enhance and its ONNX graph.

No enhancer model is shipped yet, so the module exports its own: an untrained
SpeechEnhancerNet with random decoder weights, whose gains vary from bin to bin and
from hop to hop. The tests check the streaming contract: hop by hop equals one block,
and any block size gives the same output and length. They also check the identity at
a 0 dB attenuation limit, the limit itself and the peak limiter. They do not measure
the quality of the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

torch = pytest.importorskip("torch")

from edgefx.enhance import (  # noqa: E402
    PRIME_SECONDS,
    EnhanceOptions,
    Enhancer,
    EnhanceStream,
    limit_peaks,
    pcm_to_float,
)
from edgefx.errors import UsageError  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402
from edgefx.train.enhance import export_best  # noqa: E402
from edgefx.train.export import ENHANCE_PARITY_TOLERANCE  # noqa: E402
from edgefx.train.nets import SpeechEnhancerNet  # noqa: E402

MODEL_RATE = 16000
HOP = 160

# Largest difference between a stream fed in blocks and the whole signal. soxr's
# streaming resampler and the model's state make them equal up to float rounding. With
# this file's random model the largest difference measured was 2e-8, at every rate
# from 8 to 96 kHz.
STREAM_TOLERANCE = 1e-6

# Largest difference between input and output with a 0 dB attenuation limit. At the
# model's rate only the overlap-add rounding remains (2.4e-7 measured on speech).
# Resampled rates add soxr's round-trip error on the model band, which the added-back
# high band cancels except for float rounding (5.7e-5 measured on VCTK speech).
IDENTITY_TOLERANCE = {16000: 1e-6, 44100: 2e-4, 48000: 2e-4}

# The first and last milliseconds of a resampled signal, which the identity checks
# leave out. The high-band gain's resampler starts and ends at zero gain, so there the
# output differs by up to 7e-4 at the start and 0.06 at the end. The end is tested on
# its own.
EDGE_SECONDS = 0.002

SPEECH_16K = "librispeech_resemblyzer/librispeech_test-other/3005/3005-163389-0000.flac"
SPEECH_48K = "audiomentations_demo/p286_011.wav"
NOISE_48K = "deepfilternet_assets/noise_freesound_573577.wav"

RATES = (8000, 16000, 22050, 44100, 48000, 96000)


def export_random_enhancer(path: Path, seed: int = 0) -> SpeechEnhancerNet:
    """Export an untrained enhancer whose gains vary from bin to bin and hop to hop.

    A fresh SpeechEnhancerNet has a zero decoder, so every gain is 0.9. Random decoder
    weights and a negative bias spread the gains: on a noise recording the model turns
    20 ms frames down by 6 dB in the median and by up to 20 dB. The checkpoint is
    written in the training format beside ``path`` and exported with ``export_best``,
    so the ONNX file carries the same metadata as a trained one. Returns the network.
    """
    torch.manual_seed(seed)
    net = SpeechEnhancerNet(hop=HOP, hidden=8, embedding=8)
    with torch.no_grad():
        net.decoder.weight.normal_(0.0, 0.5)
        net.decoder.bias.fill_(-3.0)
    checkpoint = path.with_suffix(".pt")
    torch.save(
        {
            "model": net.state_dict(),
            "step": 0,
            "best_score": 0.0,
            "config": {"hidden": 8, "embedding": 8, "hop": HOP},
        },
        checkpoint,
    )
    export_best(checkpoint, path)
    return net.eval()


def read_shared(data_dir: Path, relative: str, start: float, seconds: float):
    """Read ``seconds`` from ``start`` of a mono file under data_dir/audio.

    Returns the float32 samples and the file's rate.
    """
    path = data_dir / "audio" / relative
    if not path.is_file():
        pytest.skip(f"shared recording not found: {path}")
    samples, rate = sf.read(path, dtype="float32")
    return samples[int(start * rate) : int((start + seconds) * rate)], rate


def make_signal(frames: int, channels: int, rate: int, seed: int = 0) -> np.ndarray:
    """Return (frames, channels) float32 of tones and noise, different per channel."""
    rng = np.random.default_rng(seed)
    time = np.arange(frames)[:, None] / rate
    frequencies = rng.uniform(100, min(7000, rate / 2.5), size=(1, channels))
    tones = 0.2 * np.sin(2 * np.pi * frequencies * time)
    noise = 0.05 * rng.standard_normal((frames, channels))
    return (tones + noise).astype(np.float32)


def frame_rms(samples: np.ndarray, frame: int) -> np.ndarray:
    whole = len(samples) // frame * frame
    frames = samples[:whole].astype(np.float64).reshape(-1, frame)
    return np.sqrt(np.mean(frames**2, axis=1))


def run_stream(stream: EnhanceStream, audio: np.ndarray, sizes) -> np.ndarray:
    """Prime ``stream`` as Enhancer.enhance does, push ``audio`` through it in blocks
    of the given sizes, then flush."""
    stream.prime(audio[: int(PRIME_SECONDS * stream.rate)])
    pieces = []
    start = 0
    for size in sizes:
        pieces.append(stream.process(audio[start : start + size]))
        start += size
        if start >= len(audio):
            break
    pieces.append(stream.flush())
    return np.concatenate(pieces, axis=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """The random enhancer's ONNX path and its torch network."""
    path = tmp_path_factory.mktemp("enhancer") / "random.onnx"
    net = export_random_enhancer(path)
    return path, net


@pytest.fixture(scope="module")
def enhancer(exported) -> Enhancer:
    path, _ = exported
    return Enhancer(str(path), RuntimeOptions(device="cpu", threads=1))


@pytest.fixture(scope="module")
def speech_16k(data_dir: Path) -> np.ndarray:
    samples, rate = read_shared(data_dir, SPEECH_16K, 0.0, 2.0)
    assert rate == 16000
    return samples


@pytest.fixture(scope="module")
def speech_48k(data_dir: Path) -> np.ndarray:
    """Two seconds of VCTK speech that end in the middle of a word."""
    samples, rate = read_shared(data_dir, SPEECH_48K, 0.0, 2.0)
    assert rate == 48000
    return samples


@pytest.fixture(scope="module")
def noise_48k(data_dir: Path) -> np.ndarray:
    samples, rate = read_shared(data_dir, NOISE_48K, 0.0, 2.0)
    assert rate == 48000
    return samples


def speech_at(rate: int, speech_16k: np.ndarray, speech_48k: np.ndarray) -> np.ndarray:
    """Real speech at ``rate``: the 16 kHz recording, or the 48 kHz one resampled."""
    if rate == 16000:
        return speech_16k
    if rate == 48000:
        return speech_48k
    return soxr.resample(speech_48k, 48000, rate).astype(np.float32)


# --------------------------------------------------------------------------------------
# The ONNX graph


def run_graph_hop_by_hop(session, audio: np.ndarray, min_gain: np.ndarray):
    state = np.zeros((audio.shape[0], session_state_size(session)), np.float32)
    enhanced, gains = [], []
    for start in range(0, audio.shape[1], HOP):
        piece, state, gain = session.run(
            None,
            {
                "audio": audio[:, start : start + HOP],
                "state": state,
                "min_gain": min_gain,
            },
        )
        enhanced.append(piece)
        gains.append(gain)
    return np.concatenate(enhanced, axis=1), state, np.concatenate(gains, axis=1)


def session_state_size(session) -> int:
    shape = next(i.shape for i in session.get_inputs() if i.name == "state")
    return int(shape[1])


@pytest.fixture(scope="module")
def graph_inputs(speech_16k: np.ndarray, noise_48k: np.ndarray) -> np.ndarray:
    """Two channels of whole hops: clean speech, and speech with noise at 0 dB SNR."""
    noise = soxr.resample(noise_48k, 48000, 16000).astype(np.float32)
    length = min(len(speech_16k), len(noise)) // HOP * HOP
    speech = speech_16k[:length]
    noisy = speech + noise[:length] * np.std(speech) / np.std(noise[:length])
    return np.stack([speech, noisy]).astype(np.float32)


@pytest.mark.parametrize("floor", [0.0, 0.25])
def test_graph_hop_by_hop_equals_block(exported, graph_inputs, floor: float) -> None:
    import onnxruntime

    path, _ = exported
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    state = np.zeros((2, session_state_size(session)), np.float32)
    min_gain = np.asarray([floor], np.float32)
    feeds = {"audio": graph_inputs, "state": state, "min_gain": min_gain}
    block, block_state, block_gain = session.run(None, feeds)

    streamed, streamed_state, streamed_gain = run_graph_hop_by_hop(
        session, graph_inputs, min_gain
    )

    assert np.max(np.abs(streamed - block)) <= ENHANCE_PARITY_TOLERANCE
    assert np.max(np.abs(streamed_state - block_state)) <= ENHANCE_PARITY_TOLERANCE
    assert np.max(np.abs(streamed_gain - block_gain)) <= ENHANCE_PARITY_TOLERANCE
    # The gains must vary, or equal outputs would prove nothing.
    assert np.ptp(block_gain) > 0.1
    assert block_gain.min() >= floor - 1e-6


def test_graph_matches_torch(exported, graph_inputs) -> None:
    import onnxruntime

    path, net = exported
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    state = np.zeros((2, net.state_size), np.float32)
    min_gain = np.asarray([0.1], np.float32)
    onnx_outputs = session.run(
        None, {"audio": graph_inputs, "state": state, "min_gain": min_gain}
    )
    with torch.no_grad():
        torch_outputs = net(
            torch.from_numpy(graph_inputs),
            torch.from_numpy(state),
            torch.from_numpy(min_gain),
        )

    for onnx_output, torch_output in zip(onnx_outputs, torch_outputs, strict=True):
        difference = np.max(np.abs(onnx_output - torch_output.numpy()))
        assert difference <= ENHANCE_PARITY_TOLERANCE


def test_enhancer_reads_metadata(enhancer: Enhancer) -> None:
    assert enhancer.rate == MODEL_RATE
    assert enhancer.hop == HOP
    assert enhancer.state_size == 2 * HOP + 2 * 8
    assert enhancer.delay == HOP


# --------------------------------------------------------------------------------------
# Streaming


@pytest.mark.parametrize("rate", RATES)
def test_stream_random_blocks_equal_whole(enhancer: Enhancer, rate: int) -> None:
    audio = make_signal(rate // 2, 2, rate)
    whole = enhancer.enhance(audio, rate)
    sizes = np.random.default_rng(rate).integers(1, 3000, size=len(audio))

    streamed = run_stream(enhancer.stream(rate, 2), audio, sizes)

    assert streamed.shape == audio.shape
    assert np.max(np.abs(streamed - whole)) <= STREAM_TOLERANCE


@pytest.mark.parametrize("rate", [16000, 48000])
def test_stream_one_sample_blocks(enhancer: Enhancer, rate: int) -> None:
    audio = make_signal(rate // 10, 2, rate)
    whole = enhancer.enhance(audio, rate)

    streamed = run_stream(enhancer.stream(rate, 2), audio, [1] * len(audio))

    assert streamed.shape == audio.shape
    assert np.max(np.abs(streamed - whole)) <= STREAM_TOLERANCE


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("frames", [1, 37, 4321])
@pytest.mark.parametrize("rate", RATES)
def test_enhance_keeps_length(
    enhancer: Enhancer, rate: int, frames: int, channels: int
) -> None:
    audio = make_signal(frames, channels, rate)

    result = enhancer.enhance(audio, rate)

    assert result.shape == (frames, channels)
    assert result.dtype == np.float32
    assert np.all(np.isfinite(result))


def test_enhance_keeps_mono_shape(enhancer: Enhancer) -> None:
    audio = make_signal(1000, 1, 22050)[:, 0]

    result = enhancer.enhance(audio, 22050)

    assert result.shape == (1000,)


@pytest.mark.parametrize("shape", [(0,), (0, 2)])
def test_enhance_empty_signal(enhancer: Enhancer, shape: tuple[int, ...]) -> None:
    result = enhancer.enhance(np.zeros(shape, np.float32), 16000)

    assert result.shape == shape


def test_enhance_int16_scaled_like_float(enhancer: Enhancer) -> None:
    audio = make_signal(4000, 1, 16000)[:, 0]
    pcm = np.round(audio * 16000).astype(np.int16)

    from_int = enhancer.enhance(pcm, 16000)
    from_float = enhancer.enhance(pcm.astype(np.float32) / 32768, 16000)

    assert from_int.dtype == np.float32
    np.testing.assert_array_equal(from_int, from_float)


@pytest.mark.parametrize(
    ("pcm", "expected"),
    [
        (np.array([-32768, 0, 16384], np.int16), [-1.0, 0.0, 0.5]),
        (np.array([-(2**31), 2**30], np.int32), [-1.0, 0.5]),
        (np.array([0, 128, 192], np.uint8), [-1.0, 0.0, 0.5]),
        (np.array([0.25], np.float64), [0.25]),
    ],
    ids=["int16", "int32", "uint8", "float64"],
)
def test_pcm_to_float_full_scale(pcm: np.ndarray, expected: list[float]) -> None:
    result = pcm_to_float(pcm)

    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, np.array(expected, np.float32))


def test_pcm_to_float_rejects_bool() -> None:
    with pytest.raises(TypeError, match="dtype bool"):
        pcm_to_float(np.array([True, False]))


def test_prime_after_process_raises(enhancer: Enhancer) -> None:
    stream = enhancer.stream(16000, 1)
    stream.process(np.zeros(320, np.float32))

    with pytest.raises(RuntimeError, match="before the first process"):
        stream.prime(np.zeros(320, np.float32))


def test_unprimed_stream_differs_from_enhance(enhancer: Enhancer) -> None:
    # Without prime() the recurrent state starts at zero, so the output differs from
    # Enhancer.enhance, which primes. The equality tests above cannot see a prime()
    # that does nothing, and this one can.
    audio = make_signal(8000, 1, 16000)
    whole = enhancer.enhance(audio, 16000)

    cold = enhancer.stream(16000, 1)
    unprimed = np.concatenate([cold.process(audio), cold.flush()])

    assert np.max(np.abs(unprimed - whole)) > 100 * STREAM_TOLERANCE


def test_stream_rejects_wrong_channel_count(enhancer: Enhancer) -> None:
    stream = enhancer.stream(16000, 2)

    with pytest.raises(ValueError):
        stream.process(np.zeros((100, 4), np.float32))


@pytest.mark.parametrize("rate", [16000, 48000])
def test_channels_enhanced_independently(enhancer: Enhancer, rate: int) -> None:
    audio = make_signal(rate // 4, 3, rate)

    together = enhancer.enhance(audio, rate)

    for channel in range(3):
        alone = enhancer.enhance(audio[:, channel], rate)
        assert np.max(np.abs(together[:, channel] - alone)) <= STREAM_TOLERANCE


def test_stream_rejects_invalid_rate(enhancer: Enhancer) -> None:
    with pytest.raises(ValueError, match="0 Hz"):
        enhancer.stream(0, 1)


# --------------------------------------------------------------------------------------
# Identity at a 0 dB attenuation limit


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_zero_limit_is_identity(
    enhancer: Enhancer, speech_16k, speech_48k, rate: int
) -> None:
    speech = speech_at(rate, speech_16k, speech_48k)
    edge = int(EDGE_SECONDS * rate)

    result = enhancer.enhance(speech, rate, atten_limit_db=0)

    assert result.shape == speech.shape
    error = np.abs(result - speech)[edge:-edge]
    assert error.max() <= IDENTITY_TOLERANCE[rate]


def test_random_model_changes_speech(enhancer: Enhancer, speech_48k) -> None:
    # Without the limit the same model turns the speech down, so the identity above
    # comes from the limit and not from a model that passes everything.
    result = enhancer.enhance(speech_48k, 48000)

    assert np.std(result) < 0.8 * np.std(speech_48k)


def test_zero_limit_keeps_last_samples(enhancer: Enhancer, speech_48k) -> None:
    edge = int(EDGE_SECONDS * 48000)

    result = enhancer.enhance(speech_48k, 48000, atten_limit_db=0)

    error = np.abs(result - speech_48k)[-edge:]
    assert error.max() <= 1e-3


# --------------------------------------------------------------------------------------
# Attenuation limit


@pytest.mark.parametrize("limit_db", [6.0, 12.0])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_atten_limit_bounds_removal(
    enhancer: Enhancer, noise_48k, rate: int, limit_db: float
) -> None:
    noise = noise_48k if rate == 48000 else soxr.resample(noise_48k, 48000, rate)
    noise = noise.astype(np.float32)
    frame = int(0.02 * rate)
    before = frame_rms(noise, frame)

    limited = frame_rms(enhancer.enhance(noise, rate, atten_limit_db=limit_db), frame)
    unlimited = frame_rms(enhancer.enhance(noise, rate), frame)

    # 0.2 dB of margin for the window overlap and the resampler ringing.
    floor = 10 ** (-(limit_db + 0.2) / 20)
    assert np.min(limited / before) >= floor
    # The model removes more than the limit somewhere, so the limit is what binds.
    assert np.min(unlimited / before) < 10 ** (-(limit_db + 1) / 20)


@pytest.mark.parametrize("limit_db", [-3.0, float("nan")])
def test_options_reject_invalid_limit(limit_db: float) -> None:
    with pytest.raises(UsageError, match="--atten-limit"):
        EnhanceOptions(atten_limit_db=limit_db)


@pytest.mark.parametrize(
    ("limit_db", "min_gain"), [(None, 0.0), (0.0, 1.0), (20.0, 0.1), (6.0, 0.501187)]
)
def test_options_min_gain(limit_db: float | None, min_gain: float) -> None:
    assert EnhanceOptions(atten_limit_db=limit_db).min_gain == pytest.approx(
        min_gain, rel=1e-5
    )


# --------------------------------------------------------------------------------------
# Peaks


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_full_scale_input_stays_in_range(
    enhancer: Enhancer, speech_16k, speech_48k, rate: int
) -> None:
    # Speech turned up 8 times and clipped, as in an overdriven recording. Resampling
    # such flat tops overshoots full scale.
    speech = speech_at(rate, speech_16k, speech_48k)
    clipped = np.clip(8 * speech, -1.0, 1.0)

    for limit_db in (0.0, None):
        result = enhancer.enhance(clipped, rate, atten_limit_db=limit_db)
        assert np.max(np.abs(result)) <= 1.0


def peak_block() -> tuple[np.ndarray, int]:
    """A stereo 0.5 amplitude tone with one sample at 1.5 in channel 0."""
    time = np.arange(2000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 250 * time)
    block = np.stack([tone, 0.8 * tone], axis=1).astype(np.float32)
    peak = 1000
    block[peak, 0] = 1.5
    return block, peak


def test_limit_peaks_keeps_shape() -> None:
    block, peak = peak_block()

    result = limit_peaks(block)

    assert result.shape == block.shape
    assert result.dtype == np.float32
    assert np.max(np.abs(result)) <= 0.999 + 1e-6


def test_limit_peaks_scales_smoothly() -> None:
    block, peak = peak_block()
    # Gains are read from channel 1 where it is far from zero, so that float32
    # rounding stays below the tolerances.
    usable = np.abs(block[:, 1]) > 0.05

    result = limit_peaks(block)

    gain = np.full(len(block), np.nan)
    gain[usable] = result[usable, 1] / block[usable, 1]
    # One gain for all channels of a frame, constant around the peak, so the waveform
    # keeps its shape there instead of being flattened like a hard clip.
    assert result[peak, 0] == pytest.approx(0.999, abs=1e-6)
    assert result[peak, 0] / block[peak, 0] == pytest.approx(gain[peak], abs=1e-6)
    near = gain[peak - 24 : peak + 25]
    assert np.nanmax(np.abs(near - 0.999 / 1.5)) <= 1e-5
    # Farther away the gain returns to 1 in steps of at most a 49th of the drop.
    step = (1 - 0.999 / 1.5) / 49
    assert np.nanmax(np.abs(np.diff(gain))) <= step + 1e-5
    assert np.nanmin(gain[: peak - 100]) == pytest.approx(1.0, abs=1e-6)
    assert np.nanmin(gain[peak + 100 :]) == pytest.approx(1.0, abs=1e-6)


def test_limit_peaks_leaves_quiet_block() -> None:
    block, peak = peak_block()
    block[peak, 0] = 0.9

    result = limit_peaks(block)

    assert np.array_equal(result, block)


def test_stream_blocks_equal_whole_at_peak(enhancer: Enhancer) -> None:
    # At the model's rate the output lags the input by one hop, so a first block of
    # peak + HOP + 10 frames emits output up to 10 frames after the peak. A float WAV
    # may hold samples above full scale, as here.
    audio, peak = peak_block()
    split = peak + HOP + 10
    whole = enhancer.enhance(audio, 16000, atten_limit_db=0)

    streamed = run_stream(
        enhancer.stream(16000, 2, EnhanceOptions(0)), audio, [split, len(audio)]
    )

    assert np.max(np.abs(streamed - whole)) <= STREAM_TOLERANCE
