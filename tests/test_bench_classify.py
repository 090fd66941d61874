"""Smoke tests of bench/classify_cifar10.py: bad arguments, and twenty test images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSIFY_SCRIPT = REPO_ROOT / "bench" / "classify_cifar10.py"
CIFAR10_TEST = Path("cifar10", "test.zip")


def find_cifar10_test() -> Path | None:
    """Return the CIFAR-10 test zip that the script would use by default, if any."""
    if os.environ.get("EDGEFX_DATA"):
        path = Path(os.environ["EDGEFX_DATA"]).expanduser() / CIFAR10_TEST
    else:
        path = REPO_ROOT.parent / "shared" / "data" / CIFAR10_TEST
    return path if path.is_file() else None


@pytest.mark.parametrize(
    "arguments",
    [["--limit", "0"], ["--threads", "x"], ["--data", "/nonexistent/test.zip"]],
)
def test_bench_classify_rejects_bad_arguments(arguments: list[str]) -> None:
    completed = subprocess.run(
        [sys.executable, str(CLASSIFY_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "error" in completed.stderr


def test_bench_classify_twenty_images(tmp_path: Path) -> None:
    data = find_cifar10_test()
    if data is None:
        pytest.skip(
            "CIFAR-10 test zip not found: set EDGEFX_DATA to a folder that contains "
            "cifar10/test.zip, or place the data in ../shared/data beside the "
            "repository"
        )
    report = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(CLASSIFY_SCRIPT),
        "--data",
        str(data),
        "--limit",
        "20",
        "--jpeg-count",
        "10",
        "--repeat",
        "1",
        "--json",
        str(report),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert "Accuracy:" in completed.stdout

    results = json.loads(report.read_text(encoding="utf-8"))
    accuracy = results["accuracy"]
    assert accuracy["images"] == 20
    assert accuracy["missing"] == 0
    assert 0.0 <= accuracy["accuracy_percent"] <= 100.0
    assert results["settings"]["jpeg_images"] == 10
    assert results["cli_onnxruntime_agreement_percent"] == 100.0
    for key in ("startup", "classify_one_file", "classify_jpeg", "onnxruntime"):
        assert len(results[key]["runs"]) == 1, key
        assert results[key]["median"] > 0.0, key
    torch_result = results["torch"]
    if torch_result["skipped"] is None:
        assert torch_result["images_per_second"] > 0.0
        assert results["ratios"]["onnxruntime_over_torch"] > 0.0
