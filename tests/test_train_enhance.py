"""Tests of the speech enhancer's training recipe (edgefx.train.enhance) and its export.

The training runs are tiny: 4 to 6 steps of two half-second mixtures, with 8 GRU units,
on a few real recordings from the shared data. They check the files, resume, rejection
of other network options and the export, not the quality of the model.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from cli_helpers import run_edgefx  # noqa: E402

from edgefx.enhance import Enhancer  # noqa: E402
from edgefx.errors import ModelError  # noqa: E402
from edgefx.registry import read_metadata  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402
from edgefx.train.enhance import (  # noqa: E402
    SAMPLE_RATE,
    EnhanceTrainOptions,
    babble_noise,
    colored_noise,
    draw_mixtures,
    export_best,
    load_enhancer_checkpoint,
    load_enhancer_weights,
    load_recordings,
    low_pass,
    random_equalizer,
    si_sdr,
    si_sdr_loss,
    split_recordings,
    synthetic_noise,
    train,
)
from edgefx.train.export import (  # noqa: E402
    ENHANCE_PARITY_TOLERANCE,
    export_enhancer,
)
from edgefx.train.nets import SpeechEnhancerNet  # noqa: E402

# Short recordings from the training split of the shared data: three LibriSpeech
# train-clean-100 utterances of under 3 s, and noises in three rates and formats.
SPEECH_FILES = (
    "librispeech_resemblyzer/librispeech_train-clean-100/5339-14133-0000.flac",
    "librispeech_resemblyzer/librispeech_train-clean-100/5561-39621-0000.flac",
    "librispeech_resemblyzer/librispeech_train-clean-100/7190-90542-0000.flac",
)
NOISE_FILES = (
    "audiomentations_demo/short_noises/friction0.wav",
    "audiomentations_demo/short_noises/"
    "130921_laptopmic-dell_tap_channel0_chunk200_aug0.wav",
    "blanket_sounds/wind.ogg",
)

TINY = {
    "steps": 4,
    "batch_size": 2,
    "seconds": 0.5,
    "hidden": 8,
    "embedding": 8,
    "validate_every": 4,
    "threads": 1,
}
TINY_CONFIG = {"hidden": 8, "embedding": 8, "hop": 160}
METADATA_KEYS = ("task", "sample_rate", "hop", "state_size", "delay", "parameters")


def shared_files(data_dir: Path, names: tuple[str, ...]) -> list[Path]:
    paths = [data_dir / "audio" / name for name in names]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        pytest.skip(f"shared recordings not found: {', '.join(missing)}")
    return paths


def log_steps(work_dir: Path) -> list[int]:
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def recordings(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """Paths of the speech and noise recordings used for training."""
    return shared_files(data_dir, SPEECH_FILES), shared_files(data_dir, NOISE_FILES)


@pytest.fixture(scope="session")
def trained(
    recordings, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EnhanceTrainOptions, Path]:
    """A 4-step run. Tests that change its work dir copy it first."""
    speech, noise = recordings
    work_dir = tmp_path_factory.mktemp("enhance_run") / "W"
    options = EnhanceTrainOptions(speech=speech, noise=noise, work_dir=work_dir, **TINY)
    best = train(options)
    return options, best


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, best = trained
    path = tmp_path_factory.mktemp("enhance_export") / "tiny.onnx"
    export_best(best, path, data_description="three LibriSpeech files")
    return path


def copied_options(trained, tmp_path: Path, **changes) -> EnhanceTrainOptions:
    """The first run's options on a private copy of its work dir."""
    options, _ = trained
    work_dir = tmp_path / "W"
    shutil.copytree(options.work_dir, work_dir)
    return replace(options, work_dir=work_dir, **changes)


# --------------------------------------------------------------------------------------
# The first run


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt", "log.jsonl"])
def test_train_writes_file(trained, name: str) -> None:
    options, _ = trained

    assert (options.work_dir / name).is_file()


def test_train_returns_best(trained) -> None:
    options, best = trained

    assert best == options.work_dir / "best.pt"


def test_train_checkpoint_at_last_step(trained) -> None:
    options, _ = trained
    state = load_checkpoint(options.work_dir / "checkpoint.pt")

    assert state["step"] == 4
    assert state["config"] == TINY_CONFIG


def test_train_log_records(trained) -> None:
    options, _ = trained
    lines = (options.work_dir / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]

    assert [record["step"] for record in records] == [4]
    for key in ("loss", "validation_si_sdr", "validation_si_sdr_gain"):
        assert math.isfinite(records[0][key]), key


def test_best_score_is_logged_score(trained) -> None:
    options, best = trained
    record = json.loads((options.work_dir / "log.jsonl").read_text().splitlines()[-1])

    assert load_checkpoint(best)["best_score"] == record["validation_si_sdr"]


# --------------------------------------------------------------------------------------
# Resume


def test_resume_continues_from_step(trained, tmp_path: Path, caplog) -> None:
    options = copied_options(trained, tmp_path, steps=6)
    checkpoint = options.work_dir / "checkpoint.pt"

    with caplog.at_level(logging.INFO, logger="edgefx.train.enhance"):
        train(options)

    assert f"resumed from {checkpoint} at step 4" in caplog.text
    # Only the longer schedule is named. The work folder moved too, which needs no
    # warning.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].endswith("options than it ran with before: --steps 4 -> 6")
    assert log_steps(options.work_dir) == [4, 6]
    state = load_checkpoint(checkpoint)
    assert state["step"] == 6
    # AdamW counts its own steps, so 6 shows that its state was restored too.
    assert int(state["optimizer"]["state"][0]["step"]) == 6


def test_resume_names_changed_mixing(trained, tmp_path: Path, caplog) -> None:
    options, _ = trained
    changed = copied_options(trained, tmp_path, equalize=0.5)

    with caplog.at_level(logging.WARNING, logger="edgefx.train"):
        train(changed)

    assert f"--random-eq {options.equalize!r} -> 0.5" in caplog.text
    saved = json.loads((changed.work_dir / "options.json").read_text())
    assert saved["equalize"] == 0.5


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"hidden": 12}, "--hidden 8 (now 12)"),
        ({"embedding": 16}, "embedding 8 (now 16)"),
        ({"deep_filter": 20}, "--deep-filter 0 (now 20)"),
    ],
)
def test_resume_other_options_raises(
    trained, tmp_path: Path, changes: dict, named: str
) -> None:
    options = copied_options(trained, tmp_path, steps=6, **changes)
    checkpoint = options.work_dir / "checkpoint.pt"

    with pytest.raises(ValueError, match="other network options") as caught:
        train(options)

    assert str(checkpoint) in str(caught.value)
    assert named in str(caught.value)
    assert load_checkpoint(checkpoint)["step"] == 4
    assert log_steps(options.work_dir) == [4]


# --------------------------------------------------------------------------------------
# Export


def test_export_metadata(trained, exported: Path) -> None:
    _, best = trained
    metadata = read_metadata(exported)
    model, _ = load_enhancer_checkpoint(best)

    for key in METADATA_KEYS:
        assert key in metadata, key
    assert metadata["task"] == "enhance"
    assert metadata["name"] == "tiny"
    assert metadata["sample_rate"] == str(SAMPLE_RATE)
    assert metadata["hop"] == "160"
    assert metadata["state_size"] == str(2 * 160 + 2 * 8)
    assert metadata["delay"] == "160"
    assert metadata["parameters"] == str(sum(p.numel() for p in model.parameters()))


def test_export_training_record(exported: Path) -> None:
    training = json.loads(read_metadata(exported)["training"])

    assert training["steps"] == 4
    assert training["data"] == "three LibriSpeech files"
    assert math.isfinite(training["validation_si_sdr"])


def test_export_passes_parity_check(trained, tmp_path: Path) -> None:
    _, best = trained
    model, _ = load_enhancer_checkpoint(best)

    error = export_enhancer(model, tmp_path / "parity.onnx", {"task": "enhance"})

    assert error <= ENHANCE_PARITY_TOLERANCE


def test_export_matches_torch_hop_by_hop(trained, exported: Path, recordings) -> None:
    import onnxruntime

    _, best = trained
    model, _ = load_enhancer_checkpoint(best)
    speech, noise = recordings
    rng = np.random.default_rng(3)
    noisy, _ = draw_mixtures(
        load_recordings(speech), load_recordings(noise, 0.1), 2, 16000, rng
    )
    state = np.zeros((2, model.state_size), np.float32)
    min_gain = np.zeros(1, np.float32)
    with torch.no_grad():
        expected = model(
            torch.from_numpy(noisy), torch.from_numpy(state), torch.from_numpy(min_gain)
        )[0].numpy()
    session = onnxruntime.InferenceSession(
        str(exported), providers=["CPUExecutionProvider"]
    )

    pieces = []
    for start in range(0, noisy.shape[1], model.hop):
        feeds = {
            "audio": noisy[:, start : start + model.hop],
            "state": state,
            "min_gain": min_gain,
        }
        piece, state, _ = session.run(None, feeds)
        pieces.append(piece)

    streamed = np.concatenate(pieces, axis=1)
    assert np.max(np.abs(streamed - expected)) <= ENHANCE_PARITY_TOLERANCE


def test_exported_model_enhances(exported: Path, recordings) -> None:
    speech, _ = recordings
    audio, rate = sf.read(speech[0], dtype="float32")
    enhancer = Enhancer(str(exported), RuntimeOptions(device="cpu", threads=1))

    result = enhancer.enhance(audio, rate)

    assert result.shape == audio.shape
    assert np.all(np.isfinite(result))
    assert not np.array_equal(result, audio)


# --------------------------------------------------------------------------------------
# Data


@pytest.fixture(scope="module")
def loaded(recordings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    speech, noise = recordings
    return load_recordings(speech), load_recordings(noise, minimum_seconds=0.1)


def test_draw_mixtures_shapes(loaded) -> None:
    speech, noise = loaded

    noisy, clean = draw_mixtures(speech, noise, 8, 8000, np.random.default_rng(0))

    assert noisy.shape == (8, 8000)
    assert clean.shape == (8, 8000)
    assert noisy.dtype == np.float32
    assert clean.dtype == np.float32
    assert np.max(np.abs(noisy)) <= 0.99 + 1e-6


@pytest.mark.parametrize("variation", [False, True])
def test_draw_mixtures_snr_in_range(loaded, variation: bool) -> None:
    speech, noise = loaded
    rng = np.random.default_rng(1)

    noisy, clean = draw_mixtures(
        speech,
        noise,
        12,
        8000,
        rng,
        snr_low=0.0,
        snr_high=10.0,
        extremes=False,
        variation=variation,
    )

    for index, (mixture, voice) in enumerate(zip(noisy, clean, strict=True)):
        background = mixture.astype(np.float64) - voice
        snr = 10 * np.log10(
            np.sum(voice.astype(np.float64) ** 2) / np.sum(background**2)
        )
        assert -0.01 <= snr <= 10.01, f"pair {index}: SNR {snr:.2f} dB"


def test_draw_mixtures_variation_changes_noise(loaded) -> None:
    speech, noise = loaded

    plain = draw_mixtures(speech, noise, 8, 8000, np.random.default_rng(3))
    varied = draw_mixtures(
        speech, noise, 8, 8000, np.random.default_rng(3), variation=True
    )

    assert varied[0].shape == plain[0].shape
    assert np.max(np.abs(varied[0])) <= 0.99 + 1e-6
    assert not np.allclose(varied[0], plain[0])


def test_draw_mixtures_variation_repeats_with_seed(loaded) -> None:
    speech, noise = loaded

    first = draw_mixtures(
        speech, noise, 6, 8000, np.random.default_rng(5), variation=True
    )
    second = draw_mixtures(
        speech, noise, 6, 8000, np.random.default_rng(5), variation=True
    )

    assert np.array_equal(first[0], second[0])


def top_band_share(signals: np.ndarray, above_hz: float) -> np.ndarray:
    """Share of each signal's energy above ``above_hz``."""
    power = np.abs(np.fft.rfft(signals.astype(np.float64), axis=-1)) ** 2
    frequencies = np.fft.rfftfreq(signals.shape[-1], 1 / SAMPLE_RATE)
    return power[:, frequencies > above_hz].sum(axis=-1) / power.sum(axis=-1)


def test_low_pass_keeps_passband() -> None:
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(SAMPLE_RATE).astype(np.float32)

    filtered = low_pass(signal[None], 4000.0)[0]

    spectrum = np.abs(np.fft.rfft(filtered)) / np.abs(np.fft.rfft(signal))
    frequencies = np.fft.rfftfreq(SAMPLE_RATE, 1 / SAMPLE_RATE)
    np.testing.assert_allclose(spectrum[frequencies < 3700], 1.0, atol=1e-3)
    assert spectrum[frequencies > 4000].max() < 1e-4


def test_band_limited_empties_top_band(loaded) -> None:
    speech, noise = loaded

    noisy, clean = draw_mixtures(
        speech,
        noise,
        8,
        8000,
        np.random.default_rng(3),
        extremes=False,
        band_limited=1.0,
    )
    full_noisy, _ = draw_mixtures(
        speech, noise, 8, 8000, np.random.default_rng(3), extremes=False
    )

    # Every cutoff is at most 7.9 kHz, so the mixture and the clean target keep nothing
    # above it. The same mixtures without band-limiting have content there.
    assert top_band_share(noisy, 7900).max() < 1e-10
    assert top_band_share(clean, 7900).max() < 1e-10
    assert top_band_share(full_noisy, 7900).min() > 1e-8


def test_band_limited_share(loaded) -> None:
    speech, noise = loaded

    noisy, _ = draw_mixtures(
        speech,
        noise,
        200,
        4000,
        np.random.default_rng(4),
        extremes=False,
        band_limited=0.25,
    )

    limited = int(np.sum(top_band_share(noisy, 7900) < 1e-10))
    assert 30 <= limited <= 70, limited


def test_band_limited_scores_both_sets(trained, tmp_path: Path) -> None:
    options, _ = trained
    options = replace(
        options, work_dir=tmp_path / "W", steps=2, validate_every=2, band_limited=0.5
    )

    best = train(options)

    record = json.loads((options.work_dir / "log.jsonl").read_text().splitlines()[-1])
    full = record["validation_si_sdr"]
    limited = record["validation_si_sdr_band_limited"]
    assert math.isfinite(limited)
    assert record["validation_score"] == pytest.approx((full + limited) / 2, abs=1e-3)
    assert load_checkpoint(best)["best_score"] == record["validation_score"]


def test_stoi_weight_trains_and_logs_validation_stoi(trained, tmp_path: Path) -> None:
    options, _ = trained
    options = replace(
        options, work_dir=tmp_path / "W", steps=2, validate_every=2, stoi_weight=1.0
    )

    train(options)

    record = json.loads((options.work_dir / "log.jsonl").read_text().splitlines()[-1])
    assert 0.0 < record["validation_stoi"] <= 1.0
    assert math.isfinite(record["loss"])


def test_stoi_weight_rejects_short_mixtures(trained, tmp_path: Path) -> None:
    options, _ = trained
    options = replace(options, work_dir=tmp_path / "W", seconds=0.3, stoi_weight=1.0)

    with pytest.raises(ValueError, match="--stoi-weight needs training mixtures"):
        train(options)
    assert not options.work_dir.exists()


def test_colored_noise_is_shaped() -> None:
    rng = np.random.default_rng(2)
    noises = [colored_noise(SAMPLE_RATE, rng) for _ in range(8)]

    low_to_high = []
    for noise in noises:
        assert noise.shape == (SAMPLE_RATE,)
        assert np.all(np.isfinite(noise))
        power = np.abs(np.fft.rfft(noise)) ** 2
        low_to_high.append(power[100:1000].mean() / power[5000:8000].mean())
    # White noise has a ratio near 1; random slopes and bumps spread it widely.
    assert max(low_to_high) / min(low_to_high) > 10


def equalizer_response(decibels: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the frequencies and the gain in dB of one random equalizer draw."""
    impulse = np.zeros(4096, np.float32)
    impulse[0] = 1.0
    out = random_equalizer(impulse, np.random.default_rng(seed), decibels)
    gain = 20 * np.log10(np.abs(np.fft.rfft(out.astype(np.float64))) + 1e-12)
    return np.fft.rfftfreq(len(impulse), 1 / SAMPLE_RATE), gain


def test_random_equalizer_stays_in_its_bounds() -> None:
    responses = [equalizer_response(12.0, seed)[1] for seed in range(40)]

    for gain in responses:
        # Three bands of at most 12 dB each, plus a low cut of at most 30 dB.
        assert gain.max() <= 36.0 + 0.1
        assert gain.min() >= -66.0 - 0.1
    spread = np.ptp(np.stack(responses), axis=0)
    assert np.median(spread) > 6.0  # the draws differ: no fixed response


def test_random_equalizer_low_cut_only_cuts_lows() -> None:
    cut = 0
    for seed in range(20):
        frequencies, gain = equalizer_response(0.0, seed)
        # Without bands only the low cut is left: nothing above 400 Hz changes.
        assert np.allclose(gain[frequencies > 400], 0.0, atol=1e-3)
        assert gain.max() <= 1e-3
        cut += bool(gain[frequencies < 50].max() < -10)
    assert 4 <= cut <= 16  # about half of the draws


def test_draw_mixtures_random_eq_changes_both_sources(loaded) -> None:
    speech, noise = loaded

    plain = draw_mixtures(speech, noise, 8, 8000, np.random.default_rng(3))
    shaped = draw_mixtures(
        speech, noise, 8, 8000, np.random.default_rng(3), equalize=1.0
    )

    assert not np.allclose(shaped[1], plain[1])  # the clean target is equalized too
    assert not np.allclose(shaped[0], plain[0])
    assert np.max(np.abs(shaped[0])) <= 0.99 + 1e-6


def test_babble_mixes_several_talkers(loaded) -> None:
    speech, _ = loaded
    weights = np.full(len(speech), 1 / len(speech))

    babble = babble_noise(speech, weights, 8000, np.random.default_rng(4))

    assert babble.shape == (8000,)
    assert babble.dtype == np.float32
    # Each of three or more talkers is scaled to unit RMS before mixing.
    assert np.sqrt(np.mean(babble.astype(np.float64) ** 2)) > 1.0


def test_draw_mixtures_repeat_with_seed(loaded) -> None:
    speech, noise = loaded

    first = draw_mixtures(speech, noise, 4, 4000, np.random.default_rng(7))
    second = draw_mixtures(speech, noise, 4, 4000, np.random.default_rng(7))

    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_load_recordings_resamples_to_16k(recordings) -> None:
    _, noise = recordings
    friction = noise[0]  # 44.1 kHz WAV
    info = sf.info(friction)

    (audio,) = load_recordings([friction], minimum_seconds=0.1)

    assert info.samplerate == 44100
    assert audio.dtype == np.float32
    assert abs(len(audio) - info.frames * SAMPLE_RATE / 44100) <= 1


def test_load_recordings_averages_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    left = 0.1 * rng.standard_normal(16000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, 0.5 * left], axis=1), 16000, subtype="FLOAT")

    (audio,) = load_recordings([path])

    np.testing.assert_allclose(audio, 0.75 * left, atol=1e-6)


def test_load_recordings_skips_unreadable(recordings, tmp_path: Path, caplog) -> None:
    speech, _ = recordings
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="edgefx.train.enhance"):
        loaded = load_recordings([text, speech[0], empty])

    assert len(loaded) == 1
    assert str(text) in caplog.text
    assert str(empty) in caplog.text


def test_load_recordings_none_usable_raises(tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    sf.write(short, np.full(1600, 0.1, np.float32), 16000)  # 0.1 s
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")

    with pytest.raises(ValueError, match="no usable recordings"):
        load_recordings([short, silent, text])


def test_split_holds_out_speech(recordings) -> None:
    speech, _ = recordings

    train_paths, validation_paths = split_recordings(speech, 0.05, seed=0)

    assert len(validation_paths) == 1
    assert sorted(train_paths + validation_paths) == sorted(speech)
    assert not set(train_paths) & set(validation_paths)


def test_train_survives_unreadable_validation_file(recordings, tmp_path: Path) -> None:
    speech, noise = recordings
    folder = tmp_path / "speech"
    folder.mkdir()
    shutil.copyfile(speech[0], folder / "a.flac")
    shutil.copyfile(speech[1], folder / "b.flac")
    # With seed 0, split_recordings holds out the last of three sorted paths.
    (folder / "c.wav").write_text("not audio")
    paths = sorted(folder.iterdir())
    assert split_recordings(paths, 0.05, seed=0)[1] == [folder / "c.wav"]
    options = EnhanceTrainOptions(
        speech=paths, noise=noise, work_dir=tmp_path / "W", **{**TINY, "steps": 1}
    )

    best = train(options)

    assert best.is_file()


# --------------------------------------------------------------------------------------
# The SI-SDR loss term


def test_si_sdr_loss_matches_metric() -> None:
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((3, 4000)).astype(np.float32)
    estimate = clean + 0.3 * rng.standard_normal((3, 4000)).astype(np.float32)

    loss = si_sdr_loss(torch.from_numpy(estimate), torch.from_numpy(clean))

    expected = -np.mean([si_sdr(e, c) for e, c in zip(estimate, clean, strict=True)])
    assert float(loss) == pytest.approx(expected, abs=1e-3)


def test_si_sdr_loss_skips_silent_references() -> None:
    rng = np.random.default_rng(1)
    clean = rng.standard_normal((2, 4000)).astype(np.float32)
    clean[1] = 0
    estimate = clean + 0.1 * rng.standard_normal((2, 4000)).astype(np.float32)

    loss = si_sdr_loss(torch.from_numpy(estimate), torch.from_numpy(clean))

    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(-si_sdr(estimate[0], clean[0]), abs=1e-3)


def test_si_sdr_loss_all_silent_is_zero() -> None:
    silent = torch.zeros(2, 100)

    assert float(si_sdr_loss(torch.ones(2, 100), silent)) == 0.0


# --------------------------------------------------------------------------------------
# Starting from exported weights


def test_load_weights_from_onnx_match_checkpoint(trained, exported: Path) -> None:
    _, best = trained
    expected, _ = load_enhancer_checkpoint(best)

    loaded_model = load_enhancer_weights(exported)

    reference = expected.state_dict()
    for name, value in loaded_model.state_dict().items():
        assert torch.allclose(value, reference[name], atol=1e-6), name


def test_load_weights_rejects_other_models(tmp_path: Path) -> None:
    models = Path(__file__).resolve().parents[1] / "models"

    with pytest.raises(ValueError, match="not an edgefx speech enhancer"):
        load_enhancer_weights(models / "classify-cifar10.onnx")


@pytest.mark.parametrize("refine", [0, 4])
def test_init_starts_from_given_weights(
    trained, exported: Path, tmp_path: Path, refine: int
) -> None:
    options, _ = trained
    # A learning rate of 0 leaves the weights where they started. With --refine, the
    # start has no refinement stage, which stays at zero.
    run = replace(
        options,
        work_dir=tmp_path / "W",
        init=exported,
        refine=refine,
        steps=1,
        validate_every=1,
        learning_rate=0.0,
    )

    best = train(run)

    start = load_enhancer_weights(exported).state_dict()
    after = load_checkpoint(best)["model"]
    for name, value in start.items():
        assert torch.allclose(after[name], value, atol=1e-6), name
    assert load_checkpoint(best)["config"].get("refine", 0) == refine
    if refine:
        assert not after["refine_out.weight"].any()


def test_init_other_network_raises(trained, exported: Path, tmp_path: Path) -> None:
    options, _ = trained
    run = replace(options, work_dir=tmp_path / "W", init=exported, hidden=12)

    with pytest.raises(ValueError, match="train with --hidden 8"):
        train(run)


# --------------------------------------------------------------------------------------
# The local refinement (--refine)


def _random_refined(refine: int = 4) -> SpeechEnhancerNet:
    """A tiny network whose refinement is on, with non-zero output weights."""
    torch.manual_seed(0)
    net = SpeechEnhancerNet(hidden=8, embedding=8, refine=refine).eval()
    with torch.no_grad():
        for parameter in net.refine_out.parameters():
            parameter.normal_(0.0, 0.5)
    return net


def test_refine_starts_from_the_gains_it_refines() -> None:
    torch.manual_seed(0)
    plain = SpeechEnhancerNet(hidden=8, embedding=8).eval()
    refined = SpeechEnhancerNet(hidden=8, embedding=8, refine=4).eval()
    refined.load_state_dict(plain.state_dict(), strict=False)
    audio = 0.1 * torch.randn(2, 30 * 160)

    with torch.no_grad():
        expected = plain(audio, torch.zeros(2, plain.state_size), torch.zeros(1))[0]
        state = torch.zeros(2, refined.state_size)
        got = refined(audio, state, torch.zeros(1))[0]

    assert torch.equal(got, expected)


def test_refine_changes_the_output_once_trained() -> None:
    net = _random_refined()
    plain = SpeechEnhancerNet(hidden=8, embedding=8).eval()
    plain.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("refine")}
    )
    audio = 0.1 * torch.randn(1, 30 * 160)

    with torch.no_grad():
        refined = net(audio, torch.zeros(1, net.state_size), torch.zeros(1))[0]
        base = plain(audio, torch.zeros(1, plain.state_size), torch.zeros(1))[0]

    assert float((refined - base).abs().max()) > 1e-3


def test_refine_hop_by_hop_matches_one_block() -> None:
    net = _random_refined()
    audio = 0.1 * torch.randn(2, 25 * 160)

    with torch.no_grad():
        block = net(audio, torch.zeros(2, net.state_size), torch.zeros(1))[0]
        state = torch.zeros(2, net.state_size)
        pieces = []
        for start in range(0, audio.shape[1], 160):
            piece, state, _ = net(audio[:, start : start + 160], state, torch.zeros(1))
            pieces.append(piece)

    assert float((torch.cat(pieces, dim=1) - block).abs().max()) < 1e-5


def test_refine_state_holds_both_histories() -> None:
    net = SpeechEnhancerNet(hidden=8, embedding=8, refine=4)

    # Two past frames of the 2 input channels and of the 4 hidden ones, 161 bins each.
    assert net.state_size == 2 * 160 + 2 * 8 + 2 * 161 * (2 + 4)


def _metadata(net: SpeechEnhancerNet, path: Path, **extra: str) -> dict[str, str]:
    """Return the metadata that an enhancer needs to run in edgefx enhance."""
    return {
        "task": "enhance",
        "name": path.stem,
        "sample_rate": str(SAMPLE_RATE),
        "hop": "160",
        "state_size": str(net.state_size),
        "delay": "160",
        **extra,
    }


def _export_and_enhance(
    net: SpeechEnhancerNet, path: Path, **metadata: str
) -> tuple[float, Enhancer, np.ndarray, np.ndarray]:
    """Export ``net`` and enhance a noisy sample with it in ONNX Runtime.

    Returns the export's parity error, the runtime's enhancer, the input and output.
    """
    # The export checks ONNX Runtime against torch, block and hop by hop.
    error = export_enhancer(net, path, _metadata(net, path, **metadata))
    enhancer = Enhancer(str(path), RuntimeOptions(device="cpu", threads=1))
    sample = (
        Path(__file__).parents[1] / "samples/audio/noisy/arctic_a0007_room_5db.flac"
    )
    audio, rate = sf.read(sample, dtype="float32")
    return error, enhancer, audio, enhancer.enhance(audio, rate)


def _assert_same_weights(loaded: SpeechEnhancerNet, net: SpeechEnhancerNet) -> None:
    for name, value in net.state_dict().items():
        assert torch.allclose(loaded.state_dict()[name], value, atol=1e-6), name


def test_refine_export_runs_in_the_runtime(tmp_path: Path) -> None:
    net = _random_refined()
    path = tmp_path / "refined.onnx"

    error, _, audio, out = _export_and_enhance(net, path)

    assert error <= ENHANCE_PARITY_TOLERANCE
    assert out.shape == audio.shape
    assert np.isfinite(out).all()
    loaded = load_enhancer_weights(path)
    assert loaded.refine == 4
    _assert_same_weights(loaded, net)


def test_init_with_other_refine_raises(trained, tmp_path: Path) -> None:
    options, _ = trained
    path = tmp_path / "refined.onnx"
    net = _random_refined(refine=6)
    export_enhancer(
        net,
        path,
        {"task": "enhance", "hop": "160", "state_size": str(net.state_size)},
    )
    run = replace(options, work_dir=tmp_path / "W", init=path, refine=4)

    with pytest.raises(ValueError, match="same --refine"):
        train(run)

    assert not run.work_dir.exists()


# --------------------------------------------------------------------------------------
# Deep filter (--deep-filter)


def _random_filtered(bins: int = 6) -> SpeechEnhancerNet:
    """A tiny network with a deep filter over ``bins`` bins and non-zero weights."""
    torch.manual_seed(0)
    net = SpeechEnhancerNet(hidden=8, embedding=8, deep_filter=bins).eval()
    with torch.no_grad():
        net.decoder.weight.normal_(0.0, 0.3)
        net.filter_head.weight.normal_(0.0, 0.5)
        net.filter_head.bias.normal_(0.0, 0.5)
    return net


def _run(net: SpeechEnhancerNet, audio: torch.Tensor, floor: float = 0.0):
    state = torch.zeros(audio.shape[0], net.state_size)
    with torch.no_grad():
        return net(audio, state, torch.tensor([floor]))[0]


def test_deep_filter_starts_as_identity() -> None:
    torch.manual_seed(0)
    plain = SpeechEnhancerNet(hidden=8, embedding=8).eval()
    with torch.no_grad():
        plain.decoder.weight.normal_(0.0, 0.3)  # gains that vary by bin and frame
    filtered = SpeechEnhancerNet(hidden=8, embedding=8, deep_filter=6).eval()
    filtered.load_state_dict(plain.state_dict(), strict=False)
    audio = 0.1 * torch.randn(2, 30 * 160)

    assert torch.equal(_run(filtered, audio), _run(plain, audio))


def test_deep_filter_changes_only_low_bins() -> None:
    net = _random_filtered(bins=6)
    plain = SpeechEnhancerNet(hidden=8, embedding=8).eval()
    plain.load_state_dict(net.state_dict(), strict=False)
    audio = 0.1 * torch.randn(1, 40 * 160)

    difference = _run(net, audio) - _run(plain, audio)
    spectrum = torch.fft.rfft(difference[0, 320:-320] * torch.hann_window(5760))
    power = spectrum.abs() ** 2
    # 6 bins of 50 Hz: up to 300 Hz, plus the leakage of the 20 ms window.
    below = power[: int(500 / 16000 * 5760)].sum()

    assert float(difference.abs().max()) > 1e-3
    assert below > 0.99 * power.sum()


def test_deep_filter_streams_like_block() -> None:
    net = _random_filtered()
    audio = 0.1 * torch.randn(2, 25 * 160)
    floor = torch.tensor([0.2])

    with torch.no_grad():
        block = net(audio, torch.zeros(2, net.state_size), floor)[0]
        state = torch.zeros(2, net.state_size)
        pieces = []
        for start in range(0, audio.shape[1], 160):
            piece, state, _ = net(audio[:, start : start + 160], state, floor)
            pieces.append(piece)

    assert float((torch.cat(pieces, dim=1) - block).abs().max()) < 1e-5


def test_deep_filter_state_size() -> None:
    net = SpeechEnhancerNet(hidden=8, embedding=8, deep_filter=20)

    # Real and imaginary parts of the 20 bins, kept with the overlap tails.
    assert net.buffer_size == 2 * 160 + 2 * 20
    assert net.state_size == net.buffer_size + 2 * 8


def test_deep_filter_attenuation_limit() -> None:
    net = _random_filtered(bins=161)  # every bin filtered
    with torch.no_grad():
        net.decoder.bias.fill_(-30.0)  # gains of 0: only the limit lets sound through
    audio = 0.1 * torch.randn(1, 40 * 160)

    output = _run(net, audio, floor=0.1)
    # The output lags one hop; a tenth of the input comes through, whatever the filter.
    expected = 0.1 * audio[0, :-160]

    assert torch.allclose(output[0, 160:], expected, atol=1e-4)


def test_deep_filter_export_round_trip(tmp_path: Path) -> None:
    net = _random_filtered(bins=6)
    path = tmp_path / "filtered.onnx"

    error, enhancer, audio, out = _export_and_enhance(
        net, path, buffer_size=str(net.buffer_size), deep_filter="6"
    )

    assert error <= ENHANCE_PARITY_TOLERANCE
    assert enhancer.buffer_size == net.buffer_size
    assert out.shape == audio.shape
    assert np.isfinite(out).all()
    loaded = load_enhancer_weights(path)
    assert loaded.deep_filter == 6
    _assert_same_weights(loaded, net)


def test_deep_filter_fp16_export_runs(tmp_path: Path) -> None:
    net = _random_filtered(bins=6)
    path = tmp_path / "filtered.onnx"
    export_enhancer(net, path, _metadata(net, path, buffer_size=str(net.buffer_size)))
    half = tmp_path / "filtered-fp16.onnx"
    sample = Path(__file__).parents[1] / "samples/audio/noisy"

    exported = run_edgefx("export", path, "--format", "onnx", "--fp16", "-o", half)
    # Separate processes: ONNX Runtime 1.31.1 crashed while loading this file.
    result = run_edgefx(
        "enhance", sample, "--model", half, "--out", tmp_path / "out", "--device",
        "cpu",
    )  # fmt: skip

    assert exported.returncode == 0, exported.stderr
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_deep_filter_without_buffer_size_rejected(tmp_path: Path) -> None:
    net = _random_filtered(bins=6)
    path = tmp_path / "filtered.onnx"
    export_enhancer(net, path, _metadata(net, path, deep_filter="6"))

    with pytest.raises(ModelError, match="deep_filter but no buffer_size") as caught:
        Enhancer(str(path), RuntimeOptions(device="cpu", threads=1))

    assert str(path) in str(caught.value)


def test_deep_filter_found_without_metadata(tmp_path: Path) -> None:
    net = _random_filtered(bins=6)
    path = tmp_path / "filtered.onnx"
    # No deep_filter entry: the size comes from the graph's weights.
    export_enhancer(
        net, path, {"task": "enhance", "hop": "160", "state_size": str(net.state_size)}
    )

    loaded = load_enhancer_weights(path)

    assert loaded.deep_filter == 6
    _assert_same_weights(loaded, net)


def test_deep_filter_metadata_mismatch_raises(tmp_path: Path) -> None:
    net = _random_filtered(bins=6)
    path = tmp_path / "filtered.onnx"
    metadata = {"task": "enhance", "hop": "160", "state_size": str(net.state_size)}
    export_enhancer(net, path, {**metadata, "deep_filter": "abc"})

    with pytest.raises(ValueError, match="metadata deep_filter is 'abc'") as caught:
        load_enhancer_weights(path)

    assert str(path) in str(caught.value)


def test_train_deep_filter_from_plain(trained, exported: Path, tmp_path: Path) -> None:
    options, _ = trained
    run = replace(
        options, work_dir=tmp_path / "W", init=exported, deep_filter=4, steps=2
    )

    best = train(run)
    model, state = load_enhancer_checkpoint(best)

    assert state["config"]["deep_filter"] == 4
    assert model.deep_filter == 4
    # The filter was trained: its weights left the identity it started from.
    assert float(model.filter_head.weight.detach().abs().max()) > 0


# --------------------------------------------------------------------------------------
# Synthetic backgrounds (--synthetic-share)


def _synthetic_by_kind(kind: int, seed: int = 0) -> np.ndarray:
    """Draw synthetic noise until the generator picks ``kind`` (its first draw)."""
    for offset in range(100):
        rng = np.random.default_rng(seed + offset)
        if int(np.random.default_rng(seed + offset).integers(3)) == kind:
            return synthetic_noise(SAMPLE_RATE, rng)
    raise AssertionError(f"no seed picked kind {kind}")


def test_synthetic_tonal_noise_has_few_strong_bins() -> None:
    noise = _synthetic_by_kind(0)
    power = np.abs(np.fft.rfft(noise)) ** 2

    # Tones put most of the power into a handful of 1 Hz bins.
    strongest = np.sort(power)[::-1]
    assert strongest[:60].sum() > 0.9 * power.sum()


def test_synthetic_impulsive_noise_is_sparse() -> None:
    noise = _synthetic_by_kind(1)
    energy = noise.astype(np.float64) ** 2

    # Clicks put most of the energy into a small share of the samples.
    strongest = np.sort(energy)[::-1]
    assert strongest[: len(noise) // 10].sum() > 0.8 * energy.sum()


def test_synthetic_fluctuating_noise_changes_level() -> None:
    noise = _synthetic_by_kind(2)
    frames = noise[: len(noise) // 800 * 800].reshape(-1, 800).astype(np.float64)
    levels = 10 * np.log10((frames**2).mean(axis=1))

    assert levels.max() - levels.min() > 4.0


def test_synthetic_noise_is_finite_and_sized() -> None:
    for seed in range(12):
        noise = synthetic_noise(4000, np.random.default_rng(seed))
        assert noise.shape == (4000,)
        assert noise.dtype == np.float32
        assert np.isfinite(noise).all()
        assert np.abs(noise).max() > 0


def test_draw_mixtures_synthetic_share_changes_backgrounds(loaded) -> None:
    speech, noise = loaded

    def draw(synthetic: float) -> np.ndarray:
        noisy, clean = draw_mixtures(
            speech, noise, 16, 8000, np.random.default_rng(5),
            extremes=False, variation=True, synthetic=synthetic,
        )  # fmt: skip
        return noisy - clean

    assert np.array_equal(draw(0.0), draw(0.0))
    assert not np.array_equal(draw(0.0), draw(0.8))
