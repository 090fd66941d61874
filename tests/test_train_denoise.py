"""Tests for ``edgefx train denoise`` and the ONNX export of the denoiser.

Training runs are tiny (4 to 6 steps on crops of three sample photos), so the module
stays fast. They check the files, resume and export, not the model's quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest

torch = pytest.importorskip("torch")

from cli_helpers import run_edgefx  # noqa: E402

from edgefx.registry import read_metadata, resolve_any_model  # noqa: E402
from edgefx.train.denoise import (  # noqa: E402
    DenoiseTrainOptions,
    load_denoiser_weights,
    train,
)
from edgefx.train.export import (  # noqa: E402
    DENOISE_PARITY_TOLERANCE,
    denoiser_metadata,
    denoiser_parity_error,
    export_denoiser,
    load_denoiser_checkpoint,
)
from edgefx.train.nets import DenoiseNet  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
TRAINING_PHOTOS = ("coffee.png", "camera.png", "astronaut.png")
CLI_TIMEOUT_SECONDS = 300
CROP_SIZE = 96

TINY_OPTIONS = (
    "--batch-size",
    "4",
    "--patch-size",
    "32",
    "--features",
    "8",
    "--blocks",
    "1",
)


def train_tiny(data: Path, work_dir: Path, steps: int, *extra: str | Path):
    return run_edgefx(
        "train",
        "denoise",
        "--data",
        data,
        "--work-dir",
        work_dir,
        "--steps",
        str(steps),
        *TINY_OPTIONS,
        *extra,
    )


def log_records(work_dir: Path) -> list[dict[str, float]]:
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def write_training_crops(folder: Path) -> Path:
    """Write top-left crops of three clean sample photos (two color, one grayscale).

    Crops keep loading and validation short, and 96 px leaves room for random 32 px
    patches.
    """
    for name in TRAINING_PHOTOS:
        pixels = cv2.imread(str(SAMPLES / "clean" / name), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(folder / name), pixels[:CROP_SIZE, :CROP_SIZE])
    return folder


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_training_crops(tmp_path_factory.mktemp("train_data"))


@pytest.fixture(scope="module")
def first_run(
    data_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run 4 training steps with export. Tests that change the work dir copy it."""
    work_dir = tmp_path_factory.mktemp("train_run") / "W"
    result = train_tiny(data_folder, work_dir, 4, "--export", work_dir / "tiny.onnx")
    return result, work_dir


# First run


def test_train_cli_exits_zero(first_run) -> None:
    result, _ = first_run
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["checkpoint.pt", "log.jsonl", "tiny.onnx"])
def test_train_writes_file(first_run, name: str) -> None:
    _, work_dir = first_run
    assert (work_dir / name).is_file()


def test_train_checkpoint_at_last_step(first_run) -> None:
    _, work_dir = first_run
    assert checkpoint_step(work_dir / "checkpoint.pt") == 4


def test_train_log_ends_at_last_step(first_run) -> None:
    _, work_dir = first_run
    assert [record["step"] for record in log_records(work_dir)] == [4]


def test_train_log_lines_readable(first_run) -> None:
    result, _ = first_run
    lines = result.stderr.splitlines()

    assert any(line.startswith("step 4: loss=") for line in lines), result.stderr
    assert "{'" not in result.stderr
    exported = [
        line for line in lines + result.stdout.splitlines() if "exported" in line
    ]
    assert len(exported) == 1, exported


def test_exported_metadata(first_run) -> None:
    _, work_dir = first_run
    metadata = read_metadata(work_dir / "tiny.onnx")
    training = json.loads(metadata["training"])
    assert metadata["task"] == "denoise"
    assert metadata["name"] == "tiny"
    assert training["steps"] == 4
    assert training["patch_size"] == 32


# Resume


def test_train_resumes_from_checkpoint(
    first_run, data_folder: Path, tmp_path: Path
) -> None:
    _, first_dir = first_run
    work_dir = tmp_path / "W"
    shutil.copytree(first_dir, work_dir)

    result = train_tiny(data_folder, work_dir, 6)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {work_dir / 'checkpoint.pt'} at step 4" in result.stderr
    assert [record["step"] for record in log_records(work_dir)] == [4, 6]
    assert checkpoint_step(work_dir / "checkpoint.pt") == 6


# Starting from exported weights


def test_load_weights_from_onnx_match_checkpoint(first_run) -> None:
    _, work_dir = first_run
    expected = load_denoiser_checkpoint(work_dir / "best.pt").state_dict()

    loaded = load_denoiser_weights(work_dir / "tiny.onnx").state_dict()

    assert loaded.keys() == expected.keys()
    for name, value in loaded.items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_load_weights_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="not an edgefx denoiser"):
        load_denoiser_weights(REPO_ROOT / "models" / "classify-cifar10.onnx")


def test_init_starts_from_given_weights(
    first_run, data_folder: Path, tmp_path: Path
) -> None:
    _, first_dir = first_run
    work_dir = tmp_path / "W"
    # A learning rate of 0 leaves the weights where they started.
    result = train_tiny(
        data_folder,
        work_dir,
        1,
        "--init",
        first_dir / "tiny.onnx",
        "--learning-rate",
        "0",
    )

    assert result.returncode == 0, result.stderr
    assert "starting from the weights of" in result.stderr
    start = load_denoiser_weights(first_dir / "tiny.onnx").state_dict()
    after = torch.load(work_dir / "checkpoint.pt", weights_only=True)["model"]
    for name, value in start.items():
        assert torch.allclose(after[name], value, atol=1e-6), name


def test_init_by_shipped_name(data_folder: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "W"
    # The shipped network's own size, one step at a learning rate of 0.
    result = run_edgefx(
        "train",
        "denoise",
        "--data",
        data_folder,
        "--work-dir",
        work_dir,
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--patch-size",
        "32",
        "--learning-rate",
        "0",
        "--init",
        "denoise-s",
    )

    assert result.returncode == 0, result.stderr
    shipped = resolve_any_model("denoise-s").path
    assert f"starting from the weights of {shipped}" in result.stderr
    start = load_denoiser_weights(shipped).state_dict()
    after = torch.load(work_dir / "checkpoint.pt", weights_only=True)["model"]
    for name, value in start.items():
        assert torch.allclose(after[name], value, atol=1e-6), name


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("no-such-model", "no shipped denoise model has that name"),
        ("enhance-speech", "no shipped denoise model has that name"),
        ("missing.onnx", "file not found"),
    ],
)
def test_init_unknown_exits_two(
    data_folder: Path, tmp_path: Path, init: str, message: str
) -> None:
    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", init)

    assert result.returncode == 2
    assert message in result.stderr.splitlines()[-1]
    assert not (tmp_path / "W" / "checkpoint.pt").exists()


def test_init_other_network_exits_two(
    first_run, data_folder: Path, tmp_path: Path
) -> None:
    _, first_dir = first_run

    result = train_tiny(
        data_folder,
        tmp_path / "W",
        1,
        "--init",
        first_dir / "tiny.onnx",
        "--features",
        "16",
    )

    assert result.returncode == 2
    assert "same --features" in result.stderr


def test_resume_other_features_exits_two(
    first_run, data_folder: Path, tmp_path: Path
) -> None:
    _, first_dir = first_run
    work_dir = tmp_path / "W"
    shutil.copytree(first_dir, work_dir)
    result = run_edgefx(
        "train",
        "denoise",
        "--data",
        data_folder,
        "--work-dir",
        work_dir,
        "--steps",
        "6",
        "--features",
        "16",
        "--blocks",
        "1",
        "--batch-size",
        "4",
        "--patch-size",
        "32",
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ")
    assert str(work_dir / "checkpoint.pt") in lines[-1]
    assert checkpoint_step(work_dir / "checkpoint.pt") == 4


def test_logged_loss_is_step_mean(data_folder: Path, tmp_path: Path) -> None:
    # Both runs take the same 4 steps, so the mean loss over them must be the same
    # whether or not step 4 is a multiple of validation_every.
    losses = []
    for every in (250, 4):
        work_dir = tmp_path / f"every_{every}"
        options = DenoiseTrainOptions(
            data=data_folder,
            work_dir=work_dir,
            steps=4,
            batch_size=4,
            patch_size=32,
            features=8,
            blocks=1,
            validation_every=every,
        )
        train(options)
        losses.append(log_records(work_dir)[-1]["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


# Export parity


def perturb(model: DenoiseNet, seed: int = 0) -> DenoiseNet:
    """Replace every weight with N(0, 0.1) noise, so the net is far from the identity.

    A fresh DenoiseNet has a zero tail and returns its input unchanged.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def test_parity_fresh_net(tmp_path: Path) -> None:
    model = DenoiseNet(3, 8, 1)
    path = tmp_path / "fresh.onnx"
    export_denoiser(model, path, denoiser_metadata(model, "fresh", "1", {}))
    assert denoiser_parity_error(model, path) < DENOISE_PARITY_TOLERANCE


def test_parity_perturbed_net(tmp_path: Path) -> None:
    model = perturb(DenoiseNet(3, 8, 1))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        change = (model(image, torch.full((1, 1, 1, 1), 0.1)) - image).abs().mean()
    path = tmp_path / "perturbed.onnx"
    export_denoiser(model, path, denoiser_metadata(model, "perturbed", "1", {}))

    assert change > 0.01
    assert denoiser_parity_error(model, path) < DENOISE_PARITY_TOLERANCE


# Using the exported model, and invalid input folders


def test_tiny_model_denoises_via_cli(first_run, tmp_path: Path) -> None:
    _, work_dir = first_run
    source = SAMPLES / "noisy" / "coffee.png"
    out = tmp_path / "out"
    result = run_edgefx(
        "denoise",
        source,
        "--out",
        out,
        "--model",
        work_dir / "tiny.onnx",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert (out / source.name).is_file()


def test_train_empty_data_exits_two(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = train_tiny(empty, tmp_path / "W", 4)
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(empty) in lines[0]
    assert "no image files found" in lines[0]


def test_train_odd_patch_size_exits_two(data_folder: Path, tmp_path: Path) -> None:
    result = run_edgefx(
        "train",
        "denoise",
        "--data",
        data_folder,
        "--work-dir",
        tmp_path / "W",
        "--steps",
        "1",
        "--patch-size",
        "33",
    )
    assert result.returncode == 2
    assert "invalid --patch-size 33" in result.stderr
    assert not (tmp_path / "W").exists()


# --init files that are not denoiser weights


def test_init_not_onnx_exits_two(data_folder: Path, tmp_path: Path) -> None:
    init = tmp_path / "notes.onnx"
    init.write_text("not a model\n")

    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", init)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "not a valid ONNX model" in result.stderr.splitlines()[-1]


def test_init_empty_exits_two(data_folder: Path, tmp_path: Path) -> None:
    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", "")

    assert result.returncode == 2, result.stderr
    assert "--init is empty" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("name", ["weights", "weights.onnx"])
def test_init_directory_exits_two(data_folder: Path, tmp_path: Path, name: str) -> None:
    init = tmp_path / name
    init.mkdir()

    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", init)

    assert result.returncode == 2, result.stderr
    assert "is a directory" in result.stderr.splitlines()[-1]


def test_init_enhancer_checkpoint_exits_two(data_folder: Path, tmp_path: Path) -> None:
    # The configuration that edgefx train enhance stores in its checkpoints.
    init = tmp_path / "enhancer.pt"
    torch.save({"config": {"hidden": 8, "embedding": 8, "hop": 160}, "model": {}}, init)

    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", init)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "not an edgefx denoise training checkpoint" in result.stderr.splitlines()[-1]


def test_init_other_task_name_exits_two(data_folder: Path, tmp_path: Path) -> None:
    result = train_tiny(data_folder, tmp_path / "W", 1, "--init", "enhance-speech")

    assert result.returncode == 2, result.stderr
    assert "use it with edgefx train enhance" in result.stderr.splitlines()[-1]


def test_init_ignored_when_resuming(
    first_run, data_folder: Path, tmp_path: Path
) -> None:
    _, first_dir = first_run
    work_dir = tmp_path / "W"
    shutil.copytree(first_dir, work_dir)
    init = tmp_path / "notes.onnx"
    init.write_text("not a model\n")

    result = train_tiny(data_folder, work_dir, 5, "--init", init)

    assert result.returncode == 0, result.stderr
    assert f"resumed from {work_dir / 'checkpoint.pt'} at step 4" in result.stderr
