"""End-to-end tests of ``edgefx enhance`` and ``edgefx train enhance``.

Every run starts ``python -m edgefx`` in a subprocess. No enhancer is shipped yet, so
``edgefx enhance`` runs with ``--model`` on an untrained network with random gains
(see test_enhance.export_random_enhancer), or on one that ``edgefx train enhance``
trains for two steps. The inputs are real recordings copied from the shared data and
files that the tests write in the formats a user may bring.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from reliability_helpers import (  # noqa: E402
    permissions_unenforceable,
    run_edgefx_unprivileged,
    temporaries,
    tmpfs_mount,
)
from test_enhance import export_random_enhancer  # noqa: E402

from edgefx.audioio import FORMAT_FOR_SUFFIX, probe  # noqa: E402
from edgefx.enhance import Enhancer  # noqa: E402
from edgefx.fsutil import TEMP_PREFIX  # noqa: E402
from edgefx.registry import read_metadata  # noqa: E402
from edgefx.runtime import RuntimeOptions  # noqa: E402

# Real recordings, by the name they get in the input folder. The 48 kHz WAV is longer
# than edgefx.enhance.BLOCK_SECONDS, so it is read and enhanced in two blocks.
REAL_FILES = {
    "street_48k.wav": "deepfilternet_assets/noisy_snr0.wav",
    "speech_16k.flac": "librispeech_resemblyzer/librispeech_test-other/3005/"
    "3005-163389-0000.flac",
    "czech_22k.ogg": "fillets_ng_data_cs/city/cs/vit-m-nebo.ogg",
    "fish_44k.wav": "noisereduce_assets/fish.wav",
}

# Files that the tests write: name -> (rate, channels, frames, subtype).
GENERATED_FILES = {
    "stereo_24bit.wav": (44100, 2, 22050, "PCM_24"),
    "six_float.wav": (96000, 6, 9600, "FLOAT"),
    "eight_bit.wav": (8000, 1, 4000, "PCM_U8"),
    "one_sample.wav": (16000, 1, 1, "PCM_16"),
    "silent.flac": (16000, 1, 16000, "PCM_16"),
}

SPEECH_FILES = (
    "librispeech_resemblyzer/librispeech_train-clean-100/5339-14133-0000.flac",
    "librispeech_resemblyzer/librispeech_train-clean-100/5561-39621-0000.flac",
    "librispeech_resemblyzer/librispeech_train-clean-100/7190-90542-0000.flac",
)
NOISE_FILES = (
    "audiomentations_demo/short_noises/friction0.wav",
    "audiomentations_demo/short_noises/"
    "130921_laptopmic-dell_tap_channel0_chunk200_aug0.wav",
)


def tones(frames: int, channels: int, rate: int, seed: int = 0) -> np.ndarray:
    """Return (frames, channels) float32 of a different tone and noise per channel."""
    rng = np.random.default_rng(seed)
    time = np.arange(frames)[:, None] / rate
    frequencies = rng.uniform(150, min(6000, rate / 3), size=(1, channels))
    signal = 0.3 * np.sin(2 * np.pi * frequencies * time)
    signal += 0.02 * rng.standard_normal((frames, channels))
    return signal.astype(np.float32)


def write_generated(folder: Path, name: str) -> Path:
    rate, channels, frames, subtype = GENERATED_FILES[name]
    samples = tones(frames, channels, rate)
    if name.startswith("silent"):
        samples[:] = 0
    path = folder / name
    sf.write(path, samples, rate, subtype=subtype)
    return path


def copy_shared(data_dir: Path, relative: str, target: Path) -> Path:
    source = data_dir / "audio" / relative
    if not source.is_file():
        pytest.skip(f"shared recording not found: {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def mtimes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file()
    }


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed: ")]


def enhance(run_cli, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("enhance", *args, "--device", "cpu", "--threads", "1")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_model") / "random.onnx"
    export_random_enhancer(path)
    return path


@pytest.fixture(scope="module")
def input_folder(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with the real recordings and the generated files."""
    folder = tmp_path_factory.mktemp("enhance_inputs") / "in"
    for name, relative in REAL_FILES.items():
        copy_shared(data_dir, relative, folder / name)
    for name in GENERATED_FILES:
        write_generated(folder, name)
    return folder


@pytest.fixture(scope="module")
def batch_run(
    run_cli, model: Path, input_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("enhance_batch") / "out"
    result = enhance(run_cli, input_folder, "--out", out, "--model", model)
    return result, out


ALL_NAMES = sorted([*REAL_FILES, *GENERATED_FILES])


# --------------------------------------------------------------------------------------
# A batch of real and generated files


def test_batch_exit_0(batch_run) -> None:
    result, _ = batch_run

    summary = f"{len(ALL_NAMES)} done, 0 skipped (output exists), 0 failed"
    assert result.returncode == 0, result.stderr
    assert summary in result.stderr


def test_batch_one_output_each(batch_run) -> None:
    _, out = batch_run

    assert sorted(path.name for path in out.iterdir()) == ALL_NAMES


@pytest.mark.parametrize("name", ALL_NAMES)
def test_batch_keeps_audio_properties(batch_run, input_folder: Path, name: str) -> None:
    _, out = batch_run
    source = sf.info(input_folder / name)
    output = sf.info(out / name)

    assert output.samplerate == source.samplerate
    assert output.channels == source.channels
    assert output.frames == source.frames
    assert output.format == source.format
    assert output.subtype == source.subtype


def test_batch_changes_noisy_speech(batch_run, input_folder: Path) -> None:
    # The random model turns most hops down, so an output as loud as its input would
    # mean that the model was not applied.
    _, out = batch_run
    before, _ = sf.read(input_folder / "street_48k.wav")
    after, _ = sf.read(out / "street_48k.wav")

    assert np.std(after) < 0.8 * np.std(before)


def test_batch_silent_stays_silent(batch_run) -> None:
    _, out = batch_run
    samples, _ = sf.read(out / "silent.flac")

    assert not np.any(samples)


def test_batch_no_temporaries(batch_run) -> None:
    _, out = batch_run

    assert sorted(out.rglob(f"{TEMP_PREFIX}*")) == []


# --------------------------------------------------------------------------------------
# --format and --atten-limit


FLAC_INPUTS = {
    "fish_44k.wav": "PCM_16",
    "stereo_24bit.wav": "PCM_24",
    "six_float.wav": "PCM_24",  # FLAC cannot store float, so 24-bit PCM is used
}


@pytest.fixture(scope="module")
def flac_run(
    run_cli, model: Path, input_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``--format flac --atten-limit 0`` on three WAV files."""
    out = tmp_path_factory.mktemp("enhance_flac") / "out"
    sources = [input_folder / name for name in FLAC_INPUTS]
    result = enhance(
        run_cli,
        *sources,
        "--out",
        out,
        "--model",
        model,
        "--format",
        "flac",
        "--atten-limit",
        "0",
    )
    return result, out


def test_format_flac_changes_suffix(flac_run) -> None:
    result, out = flac_run

    assert result.returncode == 0, result.stderr
    expected = sorted(Path(name).with_suffix(".flac").name for name in FLAC_INPUTS)
    assert sorted(path.name for path in out.iterdir()) == expected


@pytest.mark.parametrize("name", sorted(FLAC_INPUTS))
def test_format_flac_keeps_audio_properties(
    flac_run, input_folder: Path, name: str
) -> None:
    _, out = flac_run
    source = sf.info(input_folder / name)
    output = sf.info(out / Path(name).with_suffix(".flac").name)

    assert output.format == "FLAC"
    assert output.subtype == FLAC_INPUTS[name]
    assert output.samplerate == source.samplerate
    assert output.channels == source.channels
    assert output.frames == source.frames


def test_zero_limit_keeps_stereo_file(flac_run, input_folder: Path) -> None:
    # At 0 dB the output equals the input, channel for channel, apart from the first
    # and last 2 ms (see test_enhance) and 24-bit rounding.
    _, out = flac_run
    before, rate = sf.read(input_folder / "stereo_24bit.wav", dtype="float32")
    after, _ = sf.read(out / "stereo_24bit.flac", dtype="float32")
    edge = int(0.002 * rate)

    assert after.shape == before.shape
    assert np.max(np.abs(after - before)[edge:-edge]) <= 1e-4


# --------------------------------------------------------------------------------------
# Output format kept by default

# Noisy speech for the format tests: a LibriSpeech test-other recording with noise
# added, after one second of noise alone.
NOISY_SPEECH = (
    "librispeech_resemblyzer/librispeech_test-other/1688/1688-142285-0000.flac"
)
BACKGROUND_NOISE = "speechbrain_test_noise/noise1.wav"


@pytest.fixture(scope="module")
def noisy_speech(data_dir: Path) -> np.ndarray:
    """Return 4 s of mono float32 at 16 kHz: 1 s of noise, then speech in noise."""
    paths = [data_dir / "audio" / NOISY_SPEECH, data_dir / "audio" / BACKGROUND_NOISE]
    for path in paths:
        if not path.is_file():
            pytest.skip(f"shared recording not found: {path}")
    speech, speech_rate = sf.read(paths[0], dtype="float32")
    noise, noise_rate = sf.read(paths[1], dtype="float32")
    assert speech_rate == noise_rate == 16000
    mix = 0.04 * noise[: 4 * 16000].copy()
    mix[16000:] += speech[: 3 * 16000]
    return np.clip(mix, -1.0, 1.0)


def require_opus() -> None:
    if "OPUS" not in sf.available_subtypes("OGG"):
        pytest.skip("this libsndfile cannot write Opus")


# Inputs whose suffix is not the standard one of their format: name -> (format,
# subtype, endian). BIG makes libsndfile write AIFF-C.
ALIAS_FILES = {
    "street.opus": ("OGG", "OPUS", "FILE"),
    "street_opus.ogg": ("OGG", "OPUS", "FILE"),
    "street.wave": ("WAV", "PCM_24", "FILE"),
    "street.aifc": ("AIFF", "PCM_16", "BIG"),
}


@pytest.fixture(scope="module")
def alias_run(
    run_cli,
    model: Path,
    noisy_speech: np.ndarray,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """A folder run on .opus, Opus in .ogg, .wave and .aifc inputs."""
    require_opus()
    root = tmp_path_factory.mktemp("enhance_alias")
    folder = root / "in"
    folder.mkdir()
    for name, (format, subtype, endian) in ALIAS_FILES.items():
        sf.write(
            folder / name,
            noisy_speech,
            16000,
            format=format,
            subtype=subtype,
            endian=endian,
        )
    out = root / "out"
    result = enhance(run_cli, folder, "--out", out, "--model", model)
    return result, folder, out


def test_alias_suffixes_exit_0(alias_run) -> None:
    result, _, _ = alias_run

    assert result.returncode == 0, result.stderr
    assert f"{len(ALIAS_FILES)} done, 0 skipped" in result.stderr
    assert "warning" not in result.stderr


def test_alias_suffixes_kept(alias_run) -> None:
    _, _, out = alias_run

    assert sorted(path.name for path in out.iterdir()) == sorted(ALIAS_FILES)


@pytest.mark.parametrize("name", sorted(ALIAS_FILES))
def test_alias_keeps_audio_properties(alias_run, name: str) -> None:
    _, folder, out = alias_run
    source = sf.info(folder / name)
    output = sf.info(out / name)

    assert output.format == source.format
    assert output.subtype == source.subtype
    assert output.samplerate == source.samplerate
    assert output.channels == source.channels
    assert output.frames == source.frames


def test_aifc_output_is_aiff_c(alias_run) -> None:
    _, folder, out = alias_run

    assert (folder / "street.aifc").read_bytes()[8:12] == b"AIFC"
    assert (out / "street.aifc").read_bytes()[8:12] == b"AIFC"


def test_folder_of_opus_files(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    require_opus()
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("first.opus", "second.opus"):
        sf.write(folder / name, noisy_speech, 16000, format="OGG", subtype="OPUS")
    out = tmp_path / "out"

    result = enhance(run_cli, folder, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped (output exists), 0 failed" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["first.opus", "second.opus"]
    assert sf.info(out / "first.opus").subtype == "OPUS"


def test_flac_named_m4a_written_as_flac(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    source = tmp_path / "take.m4a"
    sf.write(source, noisy_speech, 16000, format="FLAC", subtype="PCM_16")
    out = tmp_path / "out"

    result = enhance(run_cli, source, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["take.flac"]
    output = sf.info(out / "take.flac")
    assert output.format == "FLAC"
    assert output.subtype == "PCM_16"
    warnings = [line for line in result.stderr.splitlines() if "take.m4a" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: {source}: ")
    assert "FLAC" in warnings[0]
    assert "'.m4a'" in warnings[0]
    assert "(.flac)" in warnings[0]


def test_float_above_full_scale_warns_once(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    normalized = noisy_speech / np.max(np.abs(noisy_speech))
    # 25 s: a peak of 2 in the first 10-second block and of 4 in the second one.
    long = np.concatenate([normalized * 0.5] * (25 * 16000 // len(normalized) + 1))
    long = long[: 25 * 16000]
    long[5 * 16000 : 5 * 16000 + len(normalized)] = normalized * 2.0
    long[15 * 16000 : 15 * 16000 + len(normalized)] = normalized * 4.0
    sf.write(tmp_path / "loud.wav", long, 16000, subtype="FLOAT")
    sf.write(tmp_path / "fine.wav", normalized, 16000, subtype="FLOAT")
    sf.write(tmp_path / "integer.wav", normalized, 16000, subtype="PCM_16")
    out = tmp_path / "out"

    result = enhance(run_cli, tmp_path, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "full scale" in line]
    assert warnings == [
        f"warning: {tmp_path / 'loud.wav'}: float samples reach 4 times full scale "
        "(+12.04 dBFS), so the limiter turned the loudest parts of the output down"
    ]
    assert np.max(np.abs(sf.read(out / "loud.wav")[0])) <= 1.0


def test_float_click_above_full_scale_no_warning(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    # One sample at 3 in quiet audio: the enhancer removes the click, so the
    # limiter has nothing to turn down and there is nothing to warn about.
    quiet = noisy_speech / np.max(np.abs(noisy_speech)) * 0.05
    quiet[len(quiet) // 2] = 3.0
    sf.write(tmp_path / "click.wav", quiet, 16000, subtype="FLOAT")
    out = tmp_path / "out"

    result = enhance(run_cli, tmp_path / "click.wav", "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert np.max(np.abs(sf.read(out / "click.wav")[0])) < 0.999
    assert "full scale" not in result.stderr


def dbfs(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64))))


def test_eight_bit_output_rounds_to_nearest(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    # libsndfile 1.2.2 rounds float down to 8 bits, which made the noise-only lead of
    # this output 10 dB louder than the float output of the same audio.
    source = tmp_path / "take.wav"
    sf.write(source, noisy_speech, 16000, subtype="PCM_U8")
    out = tmp_path / "out"

    result = enhance(run_cli, source, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert sf.info(out / "take.wav").subtype == "PCM_U8"
    written, _ = sf.read(out / "take.wav", dtype="float64")
    decoded, _ = sf.read(source, dtype="float32")
    runtime = RuntimeOptions(device="cpu", threads=1)
    expected = Enhancer(str(model), runtime).enhance(decoded, 16000).astype(np.float64)
    error_steps = (written - expected) * 128
    assert np.abs(error_steps).max() <= 0.5 + 1e-3
    assert abs(float(error_steps.mean())) < 0.05
    # The lead is about 0.3 of a step (RMS), and rounding it to the nearest step
    # moved its level by 0.8 dB here.
    lead = slice(0, 16000)
    assert dbfs(written[lead]) == pytest.approx(dbfs(expected[lead]), abs=1.5)


# --------------------------------------------------------------------------------------
# Bad inputs, skipping and option errors


@pytest.fixture(scope="module")
def bad_batch_run(
    run_cli, model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """One good FLAC, text named .wav, a zero-byte .flac and a FLAC cut in half."""
    root = tmp_path_factory.mktemp("enhance_bad")
    folder = root / "in"
    copy_shared(data_dir, REAL_FILES["speech_16k.flac"], folder / "good.flac")
    (folder / "notes.wav").write_text("these are notes, not audio\n")
    (folder / "empty.flac").write_bytes(b"")
    whole = (folder / "good.flac").read_bytes()
    (folder / "cut.flac").write_bytes(whole[: len(whole) // 2])
    out = root / "out"
    result = enhance(run_cli, folder, "--out", out, "--model", model)
    return result, folder, out


def test_bad_files_exit_1(bad_batch_run) -> None:
    result, _, _ = bad_batch_run

    assert result.returncode == 1, result.stderr
    assert "1 done, 0 skipped (output exists), 3 failed" in result.stderr


def test_bad_files_good_one_written(bad_batch_run) -> None:
    _, folder, out = bad_batch_run

    assert sorted(path.name for path in out.iterdir()) == ["good.flac"]
    assert sf.info(out / "good.flac").frames == sf.info(folder / "good.flac").frames


@pytest.mark.parametrize("name", ["notes.wav", "empty.flac", "cut.flac"])
def test_bad_file_named_once(bad_batch_run, name: str) -> None:
    result, folder, _ = bad_batch_run
    named = [line for line in result.stderr.splitlines() if name in line]

    assert len(named) == 1, result.stderr
    assert named[0].startswith(f"failed: {folder / name}: "), named[0]
    assert len(failure_lines(result.stderr)) == 3


def test_truncated_wav_fails(run_cli, model: Path, tmp_path: Path) -> None:
    whole = write_generated(tmp_path, "stereo_24bit.wav").read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cut.wav").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"

    result = enhance(run_cli, folder, "--out", out, "--model", model)

    assert result.returncode == 1, result.stderr
    assert not (out / "cut.wav").exists()


def test_rerun_skips_finished(
    run_cli, model: Path, input_folder: Path, batch_run, tmp_path: Path
) -> None:
    _, first_out = batch_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    before = mtimes(out)
    (out / "fish_44k.wav").unlink()

    result = enhance(run_cli, input_folder, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    skipped = len(ALL_NAMES) - 1
    assert f"1 done, {skipped} skipped (output exists), 0 failed" in result.stderr
    after = mtimes(out)
    assert sorted(after) == ALL_NAMES
    for name, mtime in before.items():
        if name != "fish_44k.wav":
            assert after[name] == mtime, f"{name} was rewritten"


def test_negative_atten_limit_exit_2(run_cli, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = write_generated(tmp_path, "one_sample.wav")

    result = enhance(
        run_cli, source, "--out", out, "--model", model, "--atten-limit", "-3"
    )

    assert result.returncode == 2, result.stderr
    assert "--atten-limit" in result.stderr
    assert not out.exists()


def test_denoise_model_rejected_exit_2(
    run_cli, repo_root: Path, tmp_path: Path
) -> None:
    denoiser = repo_root / "models" / "denoise-s.onnx"
    out = tmp_path / "out"
    source = write_generated(tmp_path, "one_sample.wav")

    result = enhance(run_cli, source, "--out", out, "--model", denoiser)

    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(f"error: {denoiser}: "), result.stderr
    assert "denoise model" in lines[-1]
    assert "edgefx denoise" in lines[-1]
    assert not out.exists()


def test_enhance_help_lists_options(run_cli) -> None:
    result = run_cli("enhance", "--help")

    assert result.returncode == 0, result.stderr
    for option in ("--out", "--atten-limit", "--format", "--model", "--overwrite"):
        assert option in result.stdout, option


# --------------------------------------------------------------------------------------
# edgefx train enhance


@pytest.fixture(scope="module")
def train_folders(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Folders with three speech files (one in a subfolder) and two noise files."""
    root = tmp_path_factory.mktemp("enhance_train_data")
    for index, relative in enumerate(SPEECH_FILES):
        subfolder = "more" if index == 2 else ""
        copy_shared(
            data_dir, relative, root / "speech" / subfolder / Path(relative).name
        )
    for relative in NOISE_FILES:
        copy_shared(data_dir, relative, root / "noise" / Path(relative).name)
    return root / "speech", root / "noise"


@pytest.fixture(scope="module")
def train_run(
    run_cli, train_folders, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    speech, noise = train_folders
    work_dir = tmp_path_factory.mktemp("enhance_train") / "W"
    export = work_dir.parent / "tiny.onnx"
    result = run_cli(
        "train", "enhance",
        "--speech", speech, "--noise", noise, "--work-dir", work_dir,
        "--steps", "2", "--batch-size", "2", "--seconds", "0.5", "--hidden", "8",
        "--threads", "1", "--random-eq", "0.5", "--export", export,
    )  # fmt: skip
    return result, work_dir, export


def test_train_cli_exit_0(train_run) -> None:
    result, work_dir, export = train_run

    assert result.returncode == 0, result.stderr
    assert f"best checkpoint: {work_dir / 'best.pt'}" in result.stdout
    assert f"exported: {export}" in result.stdout


def test_train_cli_uses_every_file(train_run) -> None:
    # The speech folder is searched recursively, so the file in its subfolder counts.
    result, _, _ = train_run

    assert "2 training and 1 validation speech files" in result.stderr
    # With two noise files, one is held out to score the model on unheard noise.
    assert "1 training and 1 validation noise files" in result.stderr


def test_train_cli_passes_random_eq(train_run) -> None:
    _, work_dir, _ = train_run

    options = json.loads((work_dir / "options.json").read_text())

    assert options["equalize"] == 0.5


def test_train_cli_export_metadata(train_run) -> None:
    _, _, export = train_run
    metadata = read_metadata(export)

    assert metadata["task"] == "enhance"
    assert metadata["name"] == "tiny"
    assert metadata["state_size"] == str(2 * 160 + 2 * 8)
    assert json.loads(metadata["training"])["data"] == "speech + noise"


def test_trained_model_enhances(
    run_cli, train_run, input_folder: Path, tmp_path: Path
) -> None:
    _, _, export = train_run
    out = tmp_path / "out"
    sources = [input_folder / "speech_16k.flac", input_folder / "stereo_24bit.wav"]

    result = enhance(run_cli, *sources, "--out", out, "--model", export)

    assert result.returncode == 0, result.stderr
    for source in sources:
        assert sf.info(out / source.name).frames == sf.info(source).frames


@pytest.mark.parametrize("given", ["--speech", "--noise"])
def test_train_cli_needs_both_folders(
    run_cli, train_folders, tmp_path: Path, given: str
) -> None:
    speech, noise = train_folders
    folder = speech if given == "--speech" else noise
    work_dir = tmp_path / "W"

    result = run_cli(
        "train", "enhance", given, folder, "--work-dir", work_dir, "--steps", "2"
    )

    assert result.returncode == 2, result.stderr
    assert "give --speech and --noise together" in result.stderr
    assert not work_dir.exists()


# --------------------------------------------------------------------------------------
# Text tags

TAGS = {
    "title": "Take 3",
    "artist": "Field crew",
    "comment": "Modified copy: noise added",
    "copyright": "CC BY 4.0",
}


@pytest.fixture(scope="module")
def tagged_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tagged") / "take.wav"
    with sf.SoundFile(path, "w", 16000, 2, subtype="PCM_16") as audio:
        for name, value in TAGS.items():
            setattr(audio, name, value)
        audio.write(tones(16000, 2, 16000))
    return path


@pytest.mark.parametrize("format", ["wav", "flac", "ogg", "mp3"])
def test_tags_kept(run_cli, tagged_file: Path, tmp_path: Path, format: str) -> None:
    if f".{format}" not in FORMAT_FOR_SUFFIX:
        pytest.skip(f"this libsndfile cannot write {format}")
    result = enhance(run_cli, tagged_file, "--out", tmp_path, "--format", format)

    assert result.returncode == 0, result.stderr
    assert "tag was not kept" not in result.stderr
    with sf.SoundFile(tmp_path / f"take.{format}") as audio:
        written_tags = audio.copy_metadata()
    for name, value in TAGS.items():
        assert written_tags.get(name) == value, name


def test_mp3_drops_license_with_warning(run_cli, tmp_path: Path) -> None:
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")
    source = tmp_path / "take.flac"
    with sf.SoundFile(source, "w", 16000, 1, format="FLAC") as audio:
        audio.title = "Take 3"
        audio.license = "CC0"
        audio.write(tones(16000, 1, 16000))

    result = enhance(run_cli, source, "--out", tmp_path / "out", "--format", "mp3")

    assert result.returncode == 0, result.stderr
    assert "the license tag was not kept" in result.stderr
    with sf.SoundFile(tmp_path / "out" / "take.mp3") as audio:
        assert audio.copy_metadata() == {"title": "Take 3"}


def id3v23_tag(frames: dict[bytes, bytes]) -> bytes:
    """Build an ID3v2.3 tag of Latin-1 text frames, as many MP3 tools write them."""
    body = b"".join(
        frame_id + struct.pack(">IH", len(text) + 1, 0) + b"\x00" + text
        for frame_id, text in frames.items()
    )
    size = len(body)
    synchsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + synchsafe + body


def test_mp3_output_has_only_input_tags(
    run_cli, model: Path, noisy_speech: np.ndarray, tmp_path: Path
) -> None:
    # libsndfile writes MP3 tags with an ID3v1 tag, whose unset fixed fields read
    # back as empty album and date tags.
    if ".mp3" not in FORMAT_FOR_SUFFIX:
        pytest.skip("this libsndfile cannot write MP3")
    plain = tmp_path / "plain.mp3"
    sf.write(plain, noisy_speech, 16000, format="MP3")
    tag = id3v23_tag(
        {
            b"TIT2": b"Street take",
            b"TPE1": b"Field crew",
            b"COMM": b"eng\x00noise added",
        }
    )
    source = tmp_path / "in" / "take.mp3"
    source.parent.mkdir()
    source.write_bytes(tag + plain.read_bytes())
    with sf.SoundFile(source) as audio:
        input_tags = audio.copy_metadata()
    assert input_tags == {
        "title": "Street take",
        "artist": "Field crew",
        "comment": "noise added",
    }

    result = enhance(run_cli, source, "--out", tmp_path / "out", "--model", model)

    assert result.returncode == 0, result.stderr
    with sf.SoundFile(tmp_path / "out" / "take.mp3") as audio:
        assert audio.copy_metadata() == input_tags


def test_tags_from_mp3_without_warnings(run_cli, tmp_path: Path) -> None:
    # libsndfile lists the unset ID3v1 fields of an MP3 file as empty strings.
    source = tmp_path / "take.mp3"
    with sf.SoundFile(source, "w", 16000, 1, format="MP3") as audio:
        audio.title = "Take 3"
        audio.write(tones(16000, 1, 16000))

    result = enhance(run_cli, source, "--out", tmp_path / "out", "--format", "wav")

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    with sf.SoundFile(tmp_path / "out" / "take.wav") as audio:
        assert audio.copy_metadata() == {"title": "Take 3"}


def test_long_tag_to_wav_kept_out(run_cli, tmp_path: Path) -> None:
    source = tmp_path / "take.flac"
    with sf.SoundFile(source, "w", 16000, 1, format="FLAC") as audio:
        audio.title = "Take 3"
        audio.comment = "c" * 60_000
        audio.write(tones(16000, 1, 16000))

    result = enhance(run_cli, source, "--out", tmp_path / "out", "--format", "wav")

    assert result.returncode == 0, result.stderr
    assert "the comment tag was not kept: its 60000 bytes" in result.stderr
    with sf.SoundFile(tmp_path / "out" / "take.wav") as audio:
        assert audio.copy_metadata() == {"title": "Take 3"}


@pytest.mark.parametrize("format", ["flac", "mp3"])
def test_windows_1252_tag_converted(run_cli, tmp_path: Path, format: str) -> None:
    # A copyright sign and an e acute as Windows-1252 bytes, as older Windows tools
    # write them into WAV INFO chunks.
    source = tmp_path / "take.wav"
    sf.write(source, tones(16000, 1, 16000), 16000)
    data = bytearray(source.read_bytes())
    info = b"INFO" + b"ICMT" + struct.pack("<I", 16) + b"\xa9 2020 Caf\xe9 SA\0\0"
    data += b"LIST" + struct.pack("<I", len(info)) + info
    data[4:8] = struct.pack("<I", len(data) - 8)
    source.write_bytes(bytes(data))

    result = enhance(run_cli, source, "--out", tmp_path / "out", "--format", format)

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    tags = dict(probe(tmp_path / "out" / f"take.{format}").tags)
    assert tags["comment"] == "\u00a9 2020 Caf\u00e9 SA"


# --------------------------------------------------------------------------------------
# Paths that libsndfile rejects, and output errors


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Write a 16-bit WAV through a Python file object, which takes any path."""
    with path.open("wb") as handle:
        sf.write(handle, samples, rate, format="WAV", subtype="PCM_16")


def frames_of(path: Path) -> int:
    with path.open("rb") as handle:
        return sf.info(handle).frames


def test_name_not_utf8_enhanced(run_cli, model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"take\xff.wav")
    try:
        write_wav(folder / name, tones(16000, 1, 16000), 16000)
    except (OSError, UnicodeEncodeError) as err:
        pytest.skip(f"this file system rejects a name that is not UTF-8: {err}")
    write_wav(folder / "plain.wav", tones(8000, 1, 16000), 16000)
    out = tmp_path / "out"

    result = enhance(run_cli, folder, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped (output exists), 0 failed" in result.stderr
    assert frames_of(out / name) == 16000
    assert frames_of(out / "plain.wav") == 8000


def test_path_over_1024_characters_enhanced(
    run_cli, model: Path, tmp_path: Path
) -> None:
    # libsndfile rejects a path of 1024 bytes or more, for the input and for the
    # temporary output alike.
    deep = Path(*["d" * 200] * 5)
    source = tmp_path / "in" / deep / "take.wav"
    source.parent.mkdir(parents=True)
    write_wav(source, tones(16000, 2, 16000), 16000)
    out = tmp_path / "out" / deep
    assert len(str(source)) > 1024
    assert len(str(out / "take.wav")) > 1024

    result = enhance(run_cli, source, "--out", out, "--model", model)

    assert result.returncode == 0, result.stderr
    assert frames_of(out / "take.wav") == 16000


def fill_file_system(path: Path) -> None:
    """Write zeros to ``path`` until the file system has no space left."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError) as caught:
            while True:
                os.write(descriptor, b"\0" * 4096)
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


def test_full_disk_before_the_header(run_cli, model: Path, tmp_path: Path) -> None:
    # With no byte left, libsndfile fails to write the header as it opens the file.
    source = tmp_path / "take.wav"
    write_wav(source, tones(16000, 1, 16000), 16000)
    with tmpfs_mount(tmp_path / "full", size_kib=200) as mount:
        fill_file_system(mount / "filler")
        out = mount / "out"

        result = enhance(run_cli, source, "--out", out, "--model", model)

        assert result.returncode == 1, result.stderr
        assert failure_lines(result.stderr) == [
            f"failed: {out / 'take.wav'}: cannot write the output: no space left on "
            "the device"
        ], result.stderr
        assert temporaries(mount) == []


def test_unwritable_output_folder_says_write(model: Path, tmp_path: Path) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    source = tmp_path / "in" / "sub" / "take.wav"
    source.parent.mkdir(parents=True)
    write_wav(source, tones(16000, 1, 16000), 16000)
    locked = tmp_path / "out" / "sub"
    locked.mkdir(parents=True)
    locked.chmod(0o555)
    try:
        result = run_edgefx_unprivileged(
            "enhance",
            tmp_path / "in",
            "-r",
            "--out",
            tmp_path / "out",
            "--model",
            model,
            "--device",
            "cpu",
            "--threads",
            "1",
        )
    finally:
        locked.chmod(0o755)

    assert result.returncode == 1, result.stderr
    assert failure_lines(result.stderr) == [
        f"failed: {locked / 'take.wav'}: cannot write the output: permission denied"
    ], result.stderr
    assert list(locked.iterdir()) == []


def test_verbose_log_channel_count(run_cli, samples_dir: Path, tmp_path: Path) -> None:
    noisy = samples_dir / "audio" / "noisy"
    mono = noisy / "arctic_a0007_room_5db.flac"
    stereo = noisy / "arctic_a0007_fan_0db_stereo.wav"

    result = run_cli("-v", "enhance", mono, stereo, "--out", tmp_path / "out")

    assert result.returncode == 0, result.stderr
    assert f"{mono}: 16000 Hz, 1 channel, " in result.stderr
    assert f"{stereo}: 44100 Hz, 2 channels, " in result.stderr
    assert "1 channels" not in result.stderr
