"""Tests for the classifier training recipe: a tiny run on a folder of labelled images,
export with the parity check, resume, and the exported model through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_helpers import run_edgefx  # noqa: E402

from edgefx.registry import read_metadata  # noqa: E402
from edgefx.train.checkpoint import load_checkpoint  # noqa: E402
from edgefx.train.classify import (  # noqa: E402
    apply_views,
    augment,
    load_image_set,
    split_validation,
)

COLORS = {"red": (0, 0, 255), "blue": (255, 0, 0)}  # BGR, as cv2 writes


def write_color_set(folder: Path, per_class: int = 12, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name, bgr in COLORS.items():
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            noise = rng.normal(0, 20, (size, size, 3))
            pixels = np.clip(np.asarray(bgr, float) * 0.8 + 25 + noise, 0, 255)
            cv2.imwrite(
                str(folder / name / f"{index:02d}.png"), pixels.astype(np.uint8)
            )
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("classify")
    data = write_color_set(root / "data")
    work = root / "work"
    result = run_edgefx(
        "train", "classify",
        "--data", data, "--test-data", data, "--work-dir", work,
        "--epochs", "8", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--export", work / "tiny.onnx",
    )  # fmt: skip
    return data, work, result


def test_train_classify_exits_zero(trained) -> None:
    _, _, result = trained

    assert result.returncode == 0, result.stderr
    assert "test accuracy:" in result.stdout


def test_train_classify_writes_files(trained) -> None:
    _, work, _ = trained

    assert (work / "checkpoint.pt").is_file()
    assert (work / "best.pt").is_file()
    assert (work / "tiny.onnx").is_file()
    assert len((work / "log.jsonl").read_text().splitlines()) == 8


def test_export_metadata_has_preprocessing(trained) -> None:
    _, work, _ = trained

    metadata = read_metadata(work / "tiny.onnx")

    assert metadata["task"] == "classify"
    assert json.loads(metadata["labels"]) == ["blue", "red"]
    assert json.loads(metadata["input_size"]) == [16, 16]
    assert len(json.loads(metadata["mean"])) == 3
    assert len(json.loads(metadata["std"])) == 3
    assert metadata["resize"] == "stretch"


def test_exported_model_classifies(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "classify", data / "red" / "00.png", "--model", work / "tiny.onnx",
        "--format", "jsonl",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["label"] in ("red", "blue")


def test_train_classify_resumes(trained, tmp_path: Path) -> None:
    import shutil

    data, work, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)

    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", copy,
        "--epochs", "9", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert len((copy / "log.jsonl").read_text().splitlines()) == 9


TINY_NETWORK = (
    "--batch-size", "8", "--size", "16", "--width", "8", "--blocks", "1",
    "--threads", "1",
)  # fmt: skip


def test_init_starts_from_checkpoint(trained, tmp_path: Path) -> None:
    data, work, _ = trained
    fresh = tmp_path / "fresh"

    # A learning rate of 0 leaves the weights where --init put them.
    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", fresh, "--epochs", "1",
        "--learning-rate", "0", "--init", work / "best.pt", *TINY_NETWORK,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert f"starting from the weights of {work / 'best.pt'}" in result.stderr
    start = load_checkpoint(work / "best.pt")["model"]
    now = load_checkpoint(fresh / "checkpoint.pt")["model"]
    weights = [name for name, value in start.items() if value.is_floating_point()]
    weights = [name for name in weights if "running" not in name]
    assert weights
    for name in weights:
        assert torch.equal(now[name], start[name]), name


def test_init_other_width_exit_2(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "w",
        "--epochs", "1", "--init", work / "best.pt", "--batch-size", "8",
        "--size", "16", "--width", "16", "--blocks", "1", "--threads", "1",
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert "was trained with other --width" in result.stderr
    assert not (tmp_path / "w" / "checkpoint.pt").exists()


def test_init_onnx_exit_2(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "w",
        "--epochs", "1", "--init", work / "tiny.onnx", *TINY_NETWORK,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    assert "an ONNX file; give the best.pt training checkpoint" in result.stderr


def test_train_classify_one_class_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "only"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8, 3), np.uint8))

    result = run_edgefx(
        "train", "classify", "--data", tmp_path / "data", "--work-dir", tmp_path / "w"
    )

    assert result.returncode == 2
    assert "at least 2 are needed" in result.stderr


def test_split_keeps_every_class(tmp_path: Path) -> None:
    data = load_image_set(write_color_set(tmp_path / "data", per_class=10), 16)

    train, validation = split_validation(data, 0.2, seed=0)

    assert sorted(set(validation.labels.tolist())) == [0, 1]
    assert len(train.labels) + len(validation.labels) == 20
    assert len(validation.labels) == 4


def _logits(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(model), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"image": images})[0]


def _random_images(size: int = 16) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(5, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def plain_export(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained checkpoint exported again without mirror-image averaging."""
    data, work, _ = trained
    out = tmp_path_factory.mktemp("plain") / "plain.onnx"
    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", work,
        "--epochs", "8", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--no-flip-average", "--export", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_export_averages_mirror_images(trained) -> None:
    _, work, _ = trained
    images = _random_images()

    logits = _logits(work / "tiny.onnx", images)
    mirrored = _logits(work / "tiny.onnx", images[:, :, :, ::-1].copy())

    assert read_metadata(work / "tiny.onnx")["test_time_augmentation"]
    np.testing.assert_allclose(logits, mirrored, atol=1e-5)


def test_export_without_flip_average(plain_export: Path) -> None:
    images = _random_images()

    logits = _logits(plain_export, images)
    mirrored = _logits(plain_export, images[:, :, :, ::-1].copy())

    assert "test_time_augmentation" not in read_metadata(plain_export)
    assert np.max(np.abs(logits - mirrored)) > 1e-4


def test_flip_average_tool_matches_views(plain_export: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "add_flip_average.py"
    out = tmp_path / "averaged.onnx"
    images = _random_images()

    result = subprocess.run(
        [sys.executable, tool, plain_export, "--out", out, "--version", "7"],
        capture_output=True,
        text=True,
    )
    again = subprocess.run([sys.executable, tool, out], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    expected = (
        _logits(plain_export, images)
        + _logits(plain_export, images[:, :, :, ::-1].copy())
    ) / 2
    np.testing.assert_allclose(_logits(out, images), expected, atol=1e-5)
    assert read_metadata(out)["version"] == "7"
    assert again.returncode == 2
    assert "already averages" in again.stderr


def test_shift_average_export_matches_views(
    trained, plain_export: Path, tmp_path: Path
) -> None:
    data, work, _ = trained
    out = tmp_path / "shifted.onnx"
    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", work,
        "--epochs", "8", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--shift-average", "--export", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    images = _random_images()
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    views = [
        padded[:, :, 1 + dy : 17 + dy, 1 + dx : 17 + dx]
        for dy, dx in ((0, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))
    ]
    views += [view[:, :, :, ::-1] for view in views]
    expected = np.mean(
        [_logits(plain_export, np.ascontiguousarray(view)) for view in views], axis=0
    )
    np.testing.assert_allclose(_logits(out, images), expected, atol=1e-5)
    assert "10 views" in read_metadata(out)["test_time_augmentation"]


def test_shift_average_needs_flip_average(trained, tmp_path: Path) -> None:
    data, work, _ = trained
    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", work,
        "--no-flip-average", "--shift-average", "--export", tmp_path / "x.onnx",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--shift-average needs --flip-average" in result.stderr


def write_png_header_only(path: Path, width: int, height: int) -> None:
    """Write a PNG whose header claims ``width`` x ``height`` but has no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    )


def test_train_classify_skips_unreadable_images(tmp_path: Path) -> None:
    # OpenCV raised cv2.error, a traceback, on an empty file and on a header that
    # claims more pixels than its limit, instead of returning None.
    data = write_color_set(tmp_path / "data", per_class=4)
    (data / "red" / "empty.png").write_bytes(b"")
    write_png_header_only(data / "blue" / "huge.png", 65500, 65500)

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "work",
        "--epochs", "1", "--batch-size", "4", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{data}: skipped 2 unreadable or unknown-class images" in result.stderr


FILL = np.asarray([1, 2, 3], np.uint8)


def painted_pixels(images: np.ndarray) -> np.ndarray:
    return np.all(images == FILL, axis=3).sum(axis=(1, 2))


def test_cutout_paints_clipped_squares() -> None:
    images = np.full((200, 32, 32, 3), 200, np.uint8)

    out = augment(images, np.random.default_rng(0), cutout=10, fill=FILL)

    painted = painted_pixels(out)
    assert painted.max() == 100  # a whole square inside the image
    assert painted.min() >= 25  # at least a quarter: the centre is inside the image
    assert painted.min() < 100  # some squares are clipped at the border


def test_cutout_zero_paints_nothing() -> None:
    images = np.full((50, 32, 32, 3), 200, np.uint8)

    out = augment(images, np.random.default_rng(0), cutout=0, fill=FILL)

    assert painted_pixels(out).max() == 0


def test_distillation_from_a_teacher(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", tmp_path / "student",
        "--epochs", "2", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--teacher", work / "best.pt", "--teacher", work / "best.pt",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "distilling from 2 teacher(s)" in result.stderr
    options = json.loads((tmp_path / "student" / "options.json").read_text())
    assert options["teachers"] == [str(work / "best.pt")] * 2
    assert len((tmp_path / "student" / "log.jsonl").read_text().splitlines()) == 2


def test_teacher_with_other_input_size_exit_2(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", tmp_path / "student",
        "--epochs", "1", "--batch-size", "8", "--size", "12",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--teacher", work / "best.pt",
    )  # fmt: skip

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "has other input size: 16, the student's are 12" in errors[0]


def test_apply_views_crops_mirrors_and_paints() -> None:
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(1, 8, 8, 3)
    # A crop at (4, 4) of the 4-pixel padded image is the image itself.
    same, mirrored, shifted, painted = (
        apply_views(image, np.asarray([view], np.int16), cutout=2, fill=FILL)[0]
        for view in ([4, 4, 0, -1, -1], [4, 4, 1, -1, -1], [5, 4, 0, -1, -1],
                     [4, 4, 0, 0, 3])
    )  # fmt: skip

    assert np.array_equal(same, image[0])
    assert np.array_equal(mirrored, image[0, :, ::-1])
    assert np.array_equal(shifted[:7], image[0, 1:])
    assert np.all(painted[0, 2:4] == FILL)  # a 2x2 square at (0, 3), cut at the top
    assert np.count_nonzero(np.all(painted == FILL, axis=2)) == 2


def test_teacher_views_bank_made_reused_and_extended(trained, tmp_path: Path) -> None:
    from edgefx.train.classify import load_classifier_checkpoint, to_tensor

    data, work, _ = trained
    student = tmp_path / "student"
    common = (
        "--data", data, "--work-dir", student, "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1", "--cutout", "4",
        "--precision", "fp32", "--teacher", work / "best.pt",
    )  # fmt: skip

    first = run_edgefx("train", "classify", *common, "--epochs", "1",
                       "--teacher-views", "2")  # fmt: skip

    assert first.returncode == 0, first.stderr
    assert "teacher logits: view 2 of 2 done" in first.stderr
    with np.load(student / "teacher-bank.npz") as bank:
        views, logits = bank["views"], bank["logits"]
    train_count = len(views)
    assert views.shape == (train_count, 2, 5)
    assert logits.shape == (train_count, 2, 2)
    assert not np.array_equal(views[:, 0], views[:, 1])
    # The stored logits are the teacher's on the stored views.
    dataset = load_image_set(data, 16)
    train_set, _ = split_validation(dataset, 0.1, 0)
    teacher, state = load_classifier_checkpoint(work / "best.pt")
    config = state["config"]
    fill = np.asarray([round(255 * m) for m in config["mean"]], np.uint8)
    images = apply_views(train_set.images, views[:, 1], 4, fill)
    with torch.no_grad():
        expected = teacher(to_tensor(images, config["mean"], config["std"])).numpy()
    np.testing.assert_allclose(logits[:, 1], expected, atol=0.02, rtol=0.01)

    resumed = run_edgefx("train", "classify", *common, "--epochs", "2",
                         "--teacher-views", "2")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "teacher logits of 2 views per image from" in resumed.stderr
    assert "view 1 of" not in resumed.stderr

    extended = run_edgefx("train", "classify", *common, "--epochs", "3",
                          "--teacher-views", "3")  # fmt: skip
    assert extended.returncode == 0, extended.stderr
    assert "view 3 of 3 done" in extended.stderr
    assert "view 2 of 3" not in extended.stderr
    with np.load(student / "teacher-bank.npz") as bank:
        assert np.array_equal(bank["views"][:, :2], views)


def test_teacher_views_without_teacher_exit_2(trained, tmp_path: Path) -> None:
    data, _, _ = trained

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "student",
        "--epochs", "1", "--size", "16", "--teacher-views", "2",
    )  # fmt: skip

    assert result.returncode == 2
    assert "--teacher-views needs --teacher" in result.stderr
    assert not (tmp_path / "student").exists()


def test_distillation_loss_is_zero_only_for_matching_logits() -> None:
    from edgefx.train.classify import distillation_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])

    same = distillation_loss(logits, logits.clone(), temperature=4.0)
    other = distillation_loss(logits, logits.flip(1), temperature=4.0)

    assert abs(float(same)) < 1e-6
    assert float(other) > 0.01


def test_resume_without_the_teacher_warns(trained, tmp_path: Path) -> None:
    data, work, _ = trained
    student = tmp_path / "student"
    common = (
        "--data", data, "--work-dir", student, "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
    )  # fmt: skip
    first = run_edgefx("train", "classify", *common, "--epochs", "1",
                       "--teacher", work / "best.pt")  # fmt: skip
    assert first.returncode == 0, first.stderr

    resumed = run_edgefx("train", "classify", *common, "--epochs", "2")

    assert resumed.returncode == 0, resumed.stderr
    assert "now continues with none" in resumed.stderr


def test_onnx_teacher_exit_2(trained, tmp_path: Path) -> None:
    data, work, _ = trained

    result = run_edgefx(
        "train", "classify",
        "--data", data, "--work-dir", tmp_path / "student",
        "--epochs", "1", "--batch-size", "8", "--size", "16",
        "--width", "8", "--blocks", "1", "--threads", "1",
        "--teacher", work / "tiny.onnx",
    )  # fmt: skip

    assert result.returncode == 2
    assert "an ONNX file; give the best.pt training checkpoint" in result.stderr


def label_of_blue_image(data: Path, model: Path) -> str:
    """Classify one blue training image through the CLI and return its label."""
    classified = run_edgefx(
        "classify", data / "blue" / "03.png", "--model", model, "--format", "jsonl"
    )
    assert classified.returncode == 0, classified.stderr
    return str(json.loads(classified.stdout)["label"])


def test_convnet_trains_exports_and_teaches(trained, tmp_path: Path) -> None:
    data, _, _ = trained
    teacher = tmp_path / "teacher"
    common = ("--data", data, "--batch-size", "8", "--size", "16", "--threads", "1")

    trained_teacher = run_edgefx(
        "train", "classify", *common, "--work-dir", teacher, "--epochs", "2",
        "--arch", "convnet", "--width", "8", "--export", teacher / "conv.onnx",
    )  # fmt: skip
    assert trained_teacher.returncode == 0, trained_teacher.stderr
    assert label_of_blue_image(data, teacher / "conv.onnx") in ("red", "blue")
    state = torch.load(teacher / "best.pt", weights_only=True)
    assert state["config"]["arch"] == "convnet"
    # A 3x3 stem of 24 channels, then widths 8, 32 and 32, and the linear head.
    convolutions = 3 * 24 + 24 * 8 + 8 * 8 + 8 * 32 + 32 * 32 + 32 * 32 + 32 * 32
    metadata = read_metadata(teacher / "conv.onnx")
    batch_norm = 2 * (24 + 8 + 8 + 32 + 32 + 32 + 32)
    assert int(metadata["parameters"]) == 9 * convolutions + batch_norm + 32 * 2 + 2

    student = run_edgefx(
        "train", "classify", *common, "--work-dir", tmp_path / "student",
        "--epochs", "1", "--width", "8", "--blocks", "1",
        "--teacher", teacher / "best.pt",
    )  # fmt: skip
    assert student.returncode == 0, student.stderr
    assert "distilling from 1 teacher(s)" in student.stderr


def test_densenet_trains_exports_and_classifies(trained, tmp_path: Path) -> None:
    data, _, _ = trained
    work = tmp_path / "dense"

    result = run_edgefx(
        "train", "classify", "--data", data, "--batch-size", "8", "--size", "16",
        "--threads", "1", "--work-dir", work, "--epochs", "2", "--arch", "densenet",
        "--width", "4", "--blocks", "2", "--export", work / "dense.onnx",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ONNX matches torch" in result.stderr
    assert label_of_blue_image(data, work / "dense.onnx") in ("red", "blue")
    state = torch.load(work / "best.pt", weights_only=True)
    assert state["config"]["arch"] == "densenet"
    assert state["config"]["blocks"] == 2

    # Growth 4, 2 layers per block: the stem makes 8 channels; blocks end at 16,
    # 8 + 8 = 16 and 8 + 8 = 16 channels, halved by the first two transitions.
    def layer(channels: int) -> int:  # batch norm, 1x1 to 16, batch norm, 3x3 to 4
        return 2 * channels + channels * 16 + 2 * 16 + 16 * 9 * 4

    blocks = sum(layer(c) for c in (8, 12, 8, 12, 8, 12))
    transitions = 2 * (2 * 16 + 16 * 8)
    expected = 3 * 9 * 8 + blocks + transitions + 2 * 16 + 16 * 2 + 2
    assert int(read_metadata(work / "dense.onnx")["parameters"]) == expected


def test_unknown_arch_exit_2(trained, tmp_path: Path) -> None:
    data, _, _ = trained

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "work",
        "--epochs", "1", "--arch", "transformer",
    )  # fmt: skip

    assert result.returncode == 2
    expected = "unknown --arch 'transformer'; choose resnet, convnet or densenet"
    assert expected in result.stderr
    assert not (tmp_path / "work").exists()  # rejected before any work


def test_blocks_with_convnet_exit_2(trained, tmp_path: Path) -> None:
    data, _, _ = trained

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "work",
        "--epochs", "1", "--arch", "convnet", "--blocks", "7",
    )  # fmt: skip

    assert result.returncode == 2
    assert (
        "--blocks applies to --arch resnet and densenet, not convnet" in result.stderr
    )


def test_resume_with_other_arch_names_it(trained, tmp_path: Path) -> None:
    import shutil

    data, work, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", copy, "--epochs", "9",
        "--batch-size", "8", "--size", "16", "--width", "8", "--arch", "convnet",
    )  # fmt: skip

    assert result.returncode == 2
    assert "was trained with other --arch, --blocks; use another" in result.stderr


def test_teacher_config_without_blocks_exit_2(trained, tmp_path: Path) -> None:
    data, work, _ = trained
    state = torch.load(work / "best.pt", weights_only=True)
    del state["config"]["blocks"]  # a ResNet config must say how deep it is
    torch.save(state, tmp_path / "odd.pt")

    result = run_edgefx(
        "train", "classify", "--data", data, "--work-dir", tmp_path / "student",
        "--epochs", "1", "--batch-size", "8", "--size", "16", "--width", "8",
        "--teacher", tmp_path / "odd.pt",
    )  # fmt: skip

    assert result.returncode == 2
    assert "odd.pt: not an edgefx classify training checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_of_diverged_network_rejected(tmp_path: Path) -> None:
    from edgefx.errors import ModelError
    from edgefx.train.export import export_classifier
    from edgefx.train.nets import CifarResNet

    network = CifarResNet(2, 4, 1)
    with torch.no_grad():
        network.head.weight.fill_(float("inf"))

    with pytest.raises(ModelError, match="logits are not finite: training diverged"):
        export_classifier(network, tmp_path / "bad.onnx", {"task": "classify"}, 16)
    assert list(tmp_path.iterdir()) == []
