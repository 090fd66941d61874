"""Smoke tests of bench/denoise_cbsd68.py on the first photos of each test set.

The images are not part of the repository. The tests look for them where the script
does, in $EDGEFX_DATA/images/test/CBSD68 (with BSD68 and Set12 beside it) when
EDGEFX_DATA is set, else in ../shared/data/images/test beside the repository, and skip
when they are absent. The bm3d test also skips when the bm3d package, which only the
bench extra installs, is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "denoise_cbsd68.py"
CBSD68 = Path("images", "test", "CBSD68")
SETS = ("CBSD68", "BSD68", "Set12")
# Published means at sigma 25 that the script prints: CBM3D and FFDNet from the FFDNet
# paper, BM3D and DnCNN-S from the DnCNN paper.
PUBLISHED_AT_25 = {
    "CBSD68": {"CBM3D": 30.71, "FFDNet": 31.21},
    "BSD68": {"BM3D": 28.57, "DnCNN-S": 29.23},
    "Set12": {"BM3D": 29.97, "DnCNN-S": 30.44},
}


def find_cbsd68() -> Path | None:
    """Return the script's default CBSD68 folder if BSD68 and Set12 are beside it."""
    if os.environ.get("EDGEFX_DATA"):
        folder = Path(os.environ["EDGEFX_DATA"]).expanduser() / CBSD68
    else:
        folder = REPO_ROOT.parent / "shared" / "data" / CBSD68
    if all((folder.parent / name).is_dir() for name in SETS):
        return folder
    return None


def run_bench(tmp_path: Path, *options: str) -> tuple[str, dict[str, Any]]:
    """Run the script at sigma 25 on the first 2 images of each set.

    Returns its standard output and the JSON that it wrote.
    """
    data = find_cbsd68()
    if data is None:
        pytest.skip(
            "CBSD68, BSD68 and Set12 not found: set EDGEFX_DATA to a folder that "
            "contains images/test/CBSD68, BSD68 and Set12, or place the data in "
            "../shared/data beside the repository"
        )
    output = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--limit",
        "2",
        "--sigmas",
        "25",
        "--nlm-grid",
        "20",
        "--tune-images",
        "1",
        "--json",
        str(output),
        *options,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(output.read_text(encoding="utf-8"))


def table_rows(stdout: str, set_name: str) -> list[list[str]]:
    """Return the cells of every table row of ``set_name`` at sigma 25, in order."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith(f"| {set_name} | 25 |"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_three_sets_without_bm3d(tmp_path: Path) -> None:
    stdout, report = run_bench(tmp_path, "--bm3d-limit", "0")

    assert report["settings"]["sets"] == list(SETS)
    assert report["settings"]["edgefx_unclipped"] is True
    for result in report["results"]:
        name = result["name"]
        assert result["image_count"] == 2
        assert result["color"] is (name == "CBSD68")
        assert result["bm3d_images"] == []
        (row,) = result["sigmas"]
        noisy = row["noisy_psnr"]
        assert row["nlm_best_h"] == 20.0
        assert row["nlm_psnr"] > noisy
        assert row["blind_psnr"] > noisy
        assert row["known_psnr"] > noisy
        assert row["known_unclipped_psnr"] > row["noisy_psnr_unclipped"]
        assert row["bm3d_psnr"] is None
        assert row["bm3d_mps"] is None
        assert row["nlm_mps"] > 0.0
        assert row["blind_mps"] > 0.0
        assert row["known_mps"] > 0.0
        assert row["published_psnr"] == PUBLISHED_AT_25[name]
        assert len(row["images"]) == 2

        # The quality, bm3d and speed tables, in that order.
        quality, bm3d, speed = table_rows(stdout, name)
        assert len(quality) == 11, quality
        first_published = next(iter(PUBLISHED_AT_25[name].values()))
        expected_difference = row["known_unclipped_psnr"] - first_published
        assert float(quality[10]) == pytest.approx(expected_difference, abs=0.011)
        assert bm3d[3] == "-"
        assert len(speed) == 6, speed
        assert float(speed[5]) > 0.0
    assert "bm3d on 0: none" in stdout


@pytest.mark.slow
def test_bench_bm3d_on_first_image(tmp_path: Path) -> None:
    pytest.importorskip("bm3d", reason="bm3d is installed by the bench extra only")
    stdout, report = run_bench(
        tmp_path, "--bm3d-limit", "1", "--sets", "CBSD68", "Set12"
    )

    assert [result["name"] for result in report["results"]] == ["CBSD68", "Set12"]
    for result in report["results"]:
        (row,) = result["sigmas"]
        first, second = row["images"]
        assert result["bm3d_images"] == [first["name"]]
        assert f"bm3d on 1: {first['name']}" in stdout
        assert first["bm3d_psnr"] > first["noisy_psnr"] + 3.0
        assert first["bm3d_seconds"] > 0.0
        assert second["bm3d_psnr"] is None
        assert row["bm3d_psnr"] == first["bm3d_psnr"]
        assert row["bm3d_subset_known_psnr"] == first["known_psnr"]
        assert row["bm3d_mps"] > 0.0

        _, bm3d, _ = table_rows(stdout, result["name"])
        assert len(bm3d) == 9, bm3d
        assert float(bm3d[3]) == pytest.approx(first["bm3d_psnr"], abs=0.006)
        assert float(bm3d[8]) > 1.0  # edgefx runs faster than bm3d
