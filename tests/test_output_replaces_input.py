"""``export`` and ``quantize`` reject an --out that is one of the files they read.

The inputs are the model, its external-data files, and for quantize the calibration
and test images. Each case must stop with exit status 2 before any work and leave every
input byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from cli_helpers import run_edgefx

from edgefx.registry import models_directory


def _save_with_external_data(shipped: str, path: Path, location: str) -> None:
    """Save a shipped model as ``path`` with its weights in the file ``location``."""
    model = onnx.load(str(models_directory() / f"{shipped}.onnx"))
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        location=location,
        size_threshold=0,
    )


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _write_photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"a{index}.png"), pixels)


@pytest.mark.parametrize("out", ["weights.onnx", "link.onnx"])
def test_export_fp16_rejects_external_data_out(tmp_path: Path, out: str) -> None:
    _save_with_external_data("denoise-s", tmp_path / "dn.onnx", "weights.onnx")
    if out == "link.onnx":  # a link to the weights file replaces it just the same
        (tmp_path / out).symlink_to("weights.onnx")
    before = _digests(tmp_path)

    result = run_edgefx(
        "export", "dn.onnx", "--format", "onnx", "--fp16", "--out", out, cwd=tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert "would replace its input weights.onnx" in result.stderr
    assert _digests(tmp_path) == before


def test_export_ort_rejects_config_on_input(tmp_path: Path) -> None:
    location = "y.required_operators.config"
    _save_with_external_data("denoise-s", tmp_path / "dn.onnx", location)
    before = _digests(tmp_path)

    result = run_edgefx(
        "export", "dn.onnx", "--format", "ort", "--out", "y.ort", cwd=tmp_path
    )

    assert result.returncode == 2, result.stderr
    assert f"would replace the input {location}" in result.stderr
    assert not (tmp_path / "y.ort").exists()
    assert _digests(tmp_path) == before


def test_export_fp16_keeps_external_data(tmp_path: Path) -> None:
    _save_with_external_data("denoise-s", tmp_path / "dn.onnx", "weights.onnx")
    before = _digests(tmp_path)

    result = run_edgefx(
        "export",
        "dn.onnx",
        "--format",
        "onnx",
        "--fp16",
        "--out",
        "half.onnx",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "half.onnx").is_file()
    after = _digests(tmp_path)
    assert after["weights.onnx"] == before["weights.onnx"]
    assert after["dn.onnx"] == before["dn.onnx"]


def test_quantize_rejects_external_data_out(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    _save_with_external_data("classify-cifar10", models / "c.onnx", "c.weights")
    _write_photos(tmp_path / "cal" / "cat", 3)
    before = _digests(tmp_path)

    result = run_edgefx(
        "quantize",
        "c.onnx",
        "--calibrate",
        "../cal",
        "--samples",
        "3",
        "--out",
        "c.weights",
        cwd=models,
    )

    assert result.returncode == 2, result.stderr
    assert "would replace its input c.weights" in result.stderr
    assert "calibrating" not in result.stderr
    assert _digests(tmp_path) == before


def test_quantize_rejects_calibration_image_out(tmp_path: Path) -> None:
    calibration = tmp_path / "cal"
    _write_photos(calibration / "cat", 3)
    (tmp_path / "link.png").symlink_to(calibration / "cat" / "a1.png")
    before = _digests(tmp_path)

    for out in (calibration / "cat" / "a1.png", tmp_path / "link.png"):
        result = run_edgefx(
            "quantize",
            "classify-cifar10",
            "--calibrate",
            calibration,
            "--samples",
            "3",
            "--out",
            out,
        )

        assert result.returncode == 2, result.stderr
        assert f"would replace its input {calibration / 'cat' / 'a1.png'}" in (
            result.stderr
        )
        assert _digests(tmp_path) == before


def test_quantize_rejects_test_image_out(tmp_path: Path) -> None:
    _write_photos(tmp_path / "cal" / "cat", 3)
    _write_photos(tmp_path / "test" / "cat", 2)
    before = _digests(tmp_path)

    result = run_edgefx(
        "quantize",
        "classify-cifar10",
        "--calibrate",
        tmp_path / "cal",
        "--test-data",
        tmp_path / "test",
        "--samples",
        "3",
        "--out",
        tmp_path / "test" / "cat" / "a0.png",
    )

    assert result.returncode == 2, result.stderr
    assert "would replace its input" in result.stderr
    assert _digests(tmp_path) == before
