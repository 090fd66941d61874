"""Regression tests for defects found by running the CLI against hostile inputs.

Each test names the case it guards. The cases are outputs that would replace an input,
symlink loops and file names that look like markup or contain control characters.
Others are models that return NaN or need fixed input sizes, and color profiles that do
not match the pixels.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import soundfile as sf
from cli_helpers import run_edgefx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageCms
from reliability_helpers import (
    failure_lines,
    permissions_unenforceable,
    run_edgefx_unprivileged,
    temporaries,
)
from test_classify import contract_metadata, write_color_classifier, write_solid


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    return write_color_classifier(
        tmp_path / "colors.onnx", ["N", 3, 32, 32], contract_metadata()
    )


# --------------------------------------------------------------------------------------
# classify --out


def test_classify_out_replacing_input(tmp_path: Path, classifier: Path) -> None:
    photo = write_solid(tmp_path / "red.png", "red")
    other = write_solid(tmp_path / "blue.png", "blue")
    before = photo.read_bytes()

    result = run_edgefx(
        "classify", photo, other, "--model", classifier,
        "--format", "csv", "--out", photo,
    )  # fmt: skip

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {photo}: the output would replace"), lines
    assert photo.read_bytes() == before


def test_classify_out_unwritable_folder(tmp_path: Path, classifier: Path) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    photo = write_solid(tmp_path / "red.png", "red")
    folder = tmp_path / "results"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run_edgefx_unprivileged(
            "classify", photo, "--model", classifier,
            "--format", "csv", "--out", folder / "rows.csv",
        )  # fmt: skip
    finally:
        folder.chmod(0o755)

    # One line and nothing else: the model was not even loaded, which logs a line.
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {folder / 'rows.csv'}: cannot write"), (
        lines
    )
    assert lines[0].endswith("permission denied; choose another --out file"), lines
    assert list(folder.iterdir()) == []
    assert failure_lines(result.stderr) == []


def pseudo_file_system_folder() -> Path:
    """/sys, where even root may not create files although os.access says yes."""
    folder = Path("/sys")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        pytest.skip("needs a /sys that os.access reports as writable (Linux, as root)")
    probe = folder / "edgefx-probe"
    try:
        probe.mkdir()
    except OSError:
        return folder
    probe.rmdir()
    pytest.skip("this /sys accepts new folders")


@pytest.mark.parametrize("nested", [False, True])
def test_out_on_pseudo_file_system_fails_before_work(
    tmp_path: Path, nested: bool
) -> None:
    # os.access passes for root in /sys, so each file used to fail on its own.
    folder = pseudo_file_system_folder()
    out = folder / "edgefx-out" if nested else folder
    photo = write_solid(tmp_path / "red.png", "red")

    result = run_edgefx("denoise", photo, "--out", out, "--threads", "1")

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    where = " (in /sys)" if nested else ""
    assert lines == [
        f"error: --out {out}: cannot write output files there{where}: permission "
        "denied; choose another --out directory"
    ]
    assert not (folder / "edgefx-out").exists()


# --------------------------------------------------------------------------------------
# Names that look like markup or contain control characters


def test_classify_table_markup_names(tmp_path: Path, classifier: Path) -> None:
    (tmp_path / "ab[").mkdir()
    (tmp_path / "trip [japan]").mkdir()
    write_solid(tmp_path / "ab[" / "]x.png", "red")
    write_solid(tmp_path / "trip [japan]" / "shot [b].png", "blue")
    write_solid(tmp_path / "esc\x1b[2J.png", "green")

    result = run_edgefx(
        "classify", "ab[/]x.png", "trip [japan]/shot [b].png", "esc\x1b[2J.png",
        "--model", classifier, "--device", "cpu",
        cwd=tmp_path, env={"COLUMNS": "200"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = result.stdout.splitlines()
    assert any("ab[/]x.png" in row and "red" in row for row in rows), result.stdout
    assert any("trip [japan]/shot [b].png" in row and "blue" in row for row in rows), (
        result.stdout
    )
    assert any("esc\\x1b[2J.png" in row and "green" in row for row in rows), (
        result.stdout
    )
    assert "\x1b" not in result.stdout


def test_failed_line_escapes_control_characters(tmp_path: Path) -> None:
    bad = tmp_path / "in" / "bad\x1b[2J\nname.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")

    result = run_edgefx("denoise", bad.parent, "--out", tmp_path / "out")

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert len(failed) == 1, result.stderr
    assert "bad\\x1b[2J\\nname.png" in failed[0], failed
    assert "\x1b" not in result.stderr


# --------------------------------------------------------------------------------------
# Symlink loops


def test_symlink_loop_with_out_inside_input(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_solid(folder / "ok.png", "red")
    (folder / "b.png").symlink_to("a.png")
    (folder / "a.png").symlink_to("b.png")

    # An --out inside the input folder makes the listing resolve every entry.
    result = run_edgefx("denoise", folder, "--out", folder / "out", "--device", "cpu")

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert (folder / "out" / "ok.png").is_file()
    assert len(failed) == 2, result.stderr
    assert failed[0].startswith(f"failed: {folder / 'a.png'}: "), failed
    assert failed[1].startswith(f"failed: {folder / 'b.png'}: "), failed
    assert "1 done, 0 skipped (output exists), 2 failed" in result.stderr


# --------------------------------------------------------------------------------------
# Foreign models that return NaN or need certain input sizes


def save_graph(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    metadata: dict[str, str] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def image_value(name: str, shape: list[int | str] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, TensorProto.FLOAT, shape or ["N", 3, "H", "W"]
    )


def write_nan_denoiser(path: Path) -> Path:
    """A blind denoiser that multiplies every pixel by NaN."""
    nan = numpy_helper.from_array(np.array([np.nan], np.float32), "nan")
    node = helper.make_node("Mul", ["x", "nan"], ["y"])
    return save_graph(path, [node], [image_value("x")], [image_value("y")], [nan])


def write_even_size_denoiser(path: Path, add_input: bool) -> Path:
    """A blind denoiser that keeps the size of even images only.

    2x2 max pooling and 2x nearest upsampling shrink an odd side by one pixel. With
    ``add_input``, the input is added to that, and onnxruntime fails on odd sides.
    """
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    pool = helper.make_node(
        "MaxPool", ["x"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]
    )
    resize = helper.make_node(
        "Resize", ["pooled", "", "scales"], ["up"], mode="nearest"
    )
    nodes = [pool, resize]
    if add_input:
        nodes.append(helper.make_node("Add", ["x", "up"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["up"], ["y"]))
    return save_graph(path, nodes, [image_value("x")], [image_value("y")], [scales])


def write_noise(path: Path, height: int, width: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def test_denoise_nan_model_fails_files(tmp_path: Path) -> None:
    model = write_nan_denoiser(tmp_path / "nan.onnx")
    folder = tmp_path / "in"
    folder.mkdir()
    write_noise(folder / "a.png", 24, 24)
    write_noise(folder / "b.png", 16, 20)
    out = tmp_path / "out"

    # With the noise level given, both photos reach the model. Blind, a photo too
    # small for the estimator gets sigma 0 and comes back without running it.
    result = run_edgefx(
        "denoise", folder, "--out", out, "--model", model, "--sigma", "10"
    )

    failed = failure_lines(result.stderr)
    reason = "the model output contains NaN or infinite values"
    assert result.returncode == 1, result.stderr
    assert failed == [
        f"failed: {folder / 'a.png'}: {reason}",
        f"failed: {folder / 'b.png'}: {reason}",
    ], result.stderr
    assert "RuntimeWarning" not in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_classify_nan_model_fails_files(tmp_path: Path) -> None:
    nan = numpy_helper.from_array(np.array([np.nan], np.float32), "nan")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Mul", ["features", "nan"], ["logits"]),
    ]
    model = save_graph(
        tmp_path / "nan.onnx",
        nodes,
        [image_value("image", ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [nan],
        contract_metadata(),
    )
    photo = write_solid(tmp_path / "red.png", "red")

    result = run_edgefx("classify", photo, "--model", model, "--format", "csv")

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert failed == [
        f"failed: {photo}: the model output contains NaN or infinite values"
    ], result.stderr
    assert "nan" not in result.stdout.lower(), result.stdout


def write_nan_enhancer(path: Path, factor: float = np.nan) -> Path:
    """An enhancer with the edgefx interface that multiplies the audio by ``factor``."""
    hop = 160
    nan = numpy_helper.from_array(np.array([factor], np.float32), "nan")
    hops = numpy_helper.from_array(np.array([0, -1, hop], np.int64), "hops")
    nodes = [
        helper.make_node("Mul", ["audio", "nan"], ["enhanced"]),
        helper.make_node("Identity", ["state"], ["state_out"]),
        helper.make_node("Reshape", ["audio", "hops"], ["framed"]),
        helper.make_node("ReduceMax", ["framed"], ["peak"], axes=[2], keepdims=0),
        helper.make_node("Sigmoid", ["peak"], ["high_gain"]),
    ]
    tensor = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("audio", tensor, ["C", "S"]),
        helper.make_tensor_value_info("state", tensor, ["C", 4]),
        helper.make_tensor_value_info("min_gain", tensor, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("enhanced", tensor, ["C", "S"]),
        helper.make_tensor_value_info("state_out", tensor, ["C", 4]),
        helper.make_tensor_value_info("high_gain", tensor, ["C", "F"]),
    ]
    metadata = {
        "task": "enhance",
        "sample_rate": "16000",
        "hop": str(hop),
        "state_size": "4",
        "delay": str(hop),
    }
    return save_graph(path, nodes, inputs, outputs, [nan, hops], metadata)


def test_enhance_nan_model_writes_nothing(tmp_path: Path) -> None:
    model = write_nan_enhancer(tmp_path / "nan.onnx")
    recording = tmp_path / "in" / "take.wav"
    recording.parent.mkdir()
    tone = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32)
    sf.write(recording, 0.3 * tone, 16000)
    out = tmp_path / "out"

    result = run_edgefx("enhance", recording, "--out", out, "--model", model)

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert failed == [
        f"failed: {recording}: the model output contains NaN or infinite values"
    ], result.stderr
    assert not (out / "take.wav").exists()
    assert temporaries(out) == []


@pytest.mark.parametrize(
    ("add_input", "reason"),
    [
        (True, "the model failed on a tile of shape [1, 3, 33, 33]: "),
        (False, "the model's output shape [1, 3, 32, 32] differs from the input "),
    ],
    ids=["runtime-error", "size-change"],
)
def test_denoise_odd_size_fails_one_file(
    add_input: bool, reason: str, tmp_path: Path
) -> None:
    model = write_even_size_denoiser(tmp_path / "even.onnx", add_input)
    folder = tmp_path / "in"
    folder.mkdir()
    write_noise(folder / "even.png", 32, 32)
    write_noise(folder / "odd.png", 33, 33)
    out = tmp_path / "out"

    result = run_edgefx("denoise", folder, "--out", out, "--model", model)

    failed = failure_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert (out / "even.png").is_file()
    assert len(failed) == 1, result.stderr
    assert failed[0].startswith(f"failed: {folder / 'odd.png'}: {reason}"), failed
    assert "1 done, 0 skipped (output exists), 1 failed" in result.stderr


def test_denoise_fixed_size_model_rejected(tmp_path: Path) -> None:
    model = save_graph(
        tmp_path / "fixed.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [image_value("x", [1, 3, 32, 32])],
        [image_value("y", [1, 3, 32, 32])],
        [],
    )
    photo = write_noise(tmp_path / "photo.png", 32, 32)
    out = tmp_path / "out"

    result = run_edgefx("denoise", photo, "--out", out, "--model", model)

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"error: {model}: the image input has a fixed size "
                                "32x32"), lines  # fmt: skip
    assert not (out / "photo.png").exists()


# --------------------------------------------------------------------------------------
# ICC profiles that do not match the decoded pixels


def test_cmyk_jpeg_profile_dropped(tmp_path: Path) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    # The header's color space field (bytes 16 to 20) is all a reader checks here.
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(
        folder / "cmyk.jpg", icc_profile=cmyk_profile
    )
    Image.fromarray(pixels).save(folder / "rgb.jpg", icc_profile=srgb)
    out = tmp_path / "out"

    result = run_edgefx("denoise", folder, "--out", out, "--device", "cpu")

    assert result.returncode == 0, result.stderr
    with Image.open(out / "cmyk.jpg") as converted:
        assert converted.mode == "RGB"
        assert "icc_profile" not in converted.info
    with Image.open(out / "rgb.jpg") as kept:
        assert kept.info.get("icc_profile") == srgb
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: {folder / 'cmyk.jpg'}: "), warnings
    assert "CMYK" in warnings[0], warnings


# --------------------------------------------------------------------------------------
# export and quantize --out


def test_quantize_out_unwritable_before_calibrating(tmp_path: Path) -> None:
    reason = permissions_unenforceable()
    if reason is not None:
        pytest.skip(reason)
    folder = tmp_path / "models"
    folder.mkdir()
    folder.chmod(0o555)
    # The calibration folder is empty, so calibrating would fail with its own error.
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    try:
        result = run_edgefx_unprivileged(
            "quantize", "denoise-s", "--calibrate", calibration,
            "--out", folder / "q.onnx",
        )  # fmt: skip
    finally:
        folder.chmod(0o755)

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"error: --out {folder / 'q.onnx'}: cannot write the file in {folder}: "
        "permission denied; choose another --out file"
    )


@pytest.mark.parametrize("export_format", ["ort", "onnx"])
def test_export_out_name_too_long(export_format: str, tmp_path: Path) -> None:
    # 248 bytes fit one name, but not with the temporary ".NAME.partial" suffixes.
    out = tmp_path / ("m" * 248 + f".{export_format}")
    extra = ["--fp16"] if export_format == "onnx" else []

    result = run_edgefx(
        "export", "denoise-s", "--format", export_format, *extra, "--out", out
    )

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --out {out}: the file name is too long"), lines
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# Unreadable calibration images


def test_quantize_skips_bad_calibration_images(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    # Photos of at least 64 pixels on a side; smaller ones are skipped.
    write_noise(calibration / "a.png", 72, 72)
    write_noise(calibration / "b.png", 64, 80)
    (calibration / "empty.png").write_bytes(b"")
    (calibration / "garbage.jpg").write_bytes(b"not a JPEG")
    out = tmp_path / "q.onnx"

    result = run_edgefx(
        "quantize", "denoise-s", "--calibrate", calibration, "--out", out
    )

    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert warnings == [
        f"warning: {calibration / 'empty.png'}: skipped, cannot decode this image",
        f"warning: {calibration / 'garbage.jpg'}: skipped, cannot decode this image",
        "warning: calibrating on 2 photos instead of --samples 64",
    ], result.stderr
    assert "calibrating denoise-s on 2 model inputs" in result.stderr
    # The two photos differ in size, which the percentile calibration cannot stack.
    assert "calibration inputs differ in size; cropped to image [1, 3, 64, 72]" in (
        result.stderr
    )


def test_quantize_no_readable_calibration_image(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    (calibration / "empty.png").write_bytes(b"")
    out = tmp_path / "q.onnx"

    result = run_edgefx(
        "quantize", "denoise-s", "--calibrate", calibration, "--out", out
    )

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[-1] == (
        f"error: {calibration}: none of the 1 chosen images is readable"
    ), lines
    assert not out.exists()


# --------------------------------------------------------------------------------------
# Warnings that name the file, stale temporaries, blank label lines


def test_16bit_to_jpeg_warning_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 65536, (16, 16, 3), np.uint16)
    assert cv2.imwrite(str(folder / "deep.png"), pixels)
    out = tmp_path / "out"

    result = run_edgefx(
        "denoise", folder, "--out", out, "--format", "jpeg", "--device", "cpu"
    )

    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert result.returncode == 0, result.stderr
    assert warnings == [
        f"warning: {out / 'deep.jpg'}: JPEG stores only 8-bit samples, so the "
        "16-bit image is converted"
    ], result.stderr


def test_enhance_removes_stale_hidden_temporaries(tmp_path: Path) -> None:
    model = write_nan_enhancer(tmp_path / "pass.onnx", factor=1.0)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    tone = np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000).astype(np.float32)
    sf.write(folder / "sub" / "take.wav", 0.3 * tone, 16000)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    # The name a SIGKILLed run leaves: hidden, in the mirrored subfolder.
    stale = out / "sub" / ".edgefx-tmp-vvzxlg_3.wav"
    stale.write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    fresh = out / "sub" / ".edgefx-tmp-abcdef12.wav"
    fresh.write_bytes(b"being written")
    for path in (stale, fresh):
        path.chmod(0o600)  # the mode that tempfile.mkstemp gives

    result = run_edgefx(
        "enhance", folder, "--recursive", "--out", out, "--model", model
    )

    assert result.returncode == 0, result.stderr
    assert (out / "sub" / "take.wav").is_file()
    assert not stale.exists()
    assert fresh.exists()
    assert "removed 1 temporary file left by an interrupted run" in result.stderr
    assert "kept 1 temporary file (.edgefx-tmp-*)" in result.stderr


def test_labels_blank_line_rejected(tmp_path: Path, classifier: Path) -> None:
    photo = write_solid(tmp_path / "red.png", "red")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\n\ngreen\nblue\n", encoding="utf-8")

    result = run_edgefx("classify", photo, "--model", classifier, "--labels", labels)

    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"error: --labels {labels}: line 2 is blank"), lines

    # Blank lines at the end of the file are only the end of the file.
    labels.write_text("red\ngreen\nblue\n\n\n", encoding="utf-8")
    result = run_edgefx(
        "classify", photo, "--model", classifier, "--labels", labels,
        "--format", "csv",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert ",red," in result.stdout, result.stdout
