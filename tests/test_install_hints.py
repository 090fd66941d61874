"""Install hints for the optional packages, in errors and in help.

edgefx is not on PyPI, so a hint such as ``pip install "edgefx[ray]"`` would look up
an unrelated package. Each hint names the packages of the pyproject.toml extra, with
its version bounds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import CLI_TIMEOUT_SECONDS


def extra_requirements(repo_root: Path, extra: str) -> list[str]:
    """The requirements that pyproject.toml lists for ``extra``."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"][extra])


def run_without(
    modules: tuple[str, ...], *args: str | Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with every import of ``modules`` failing, as if not installed."""
    # sys.modules entries set to None make every import of that name fail.
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    code = f"import sys; {blocked}from edgefx.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
        cwd=cwd,
    )


def assert_hint(text: str, requirements: list[str]) -> None:
    assert "edgefx[" not in text
    for requirement in requirements:
        assert f'"{requirement}"' in text, requirement


def test_ray_hint(repo_root: Path, samples_dir: Path, tmp_path: Path) -> None:
    photo = samples_dir / "noisy" / "camera.png"
    result = run_without(
        ("ray",),
        "denoise",
        photo,
        "--out",
        tmp_path / "out",
        "--engine",
        "ray",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert_hint(result.stderr, extra_requirements(repo_root, "ray"))
    assert 'pip install ".[ray]" in the edgefx checkout' in result.stderr


def test_train_hint(repo_root: Path, samples_dir: Path, tmp_path: Path) -> None:
    result = run_without(
        ("torch",),
        "train",
        "denoise",
        "--data",
        samples_dir / "clean",
        "--work-dir",
        tmp_path / "run",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert_hint(result.stderr, extra_requirements(repo_root, "train"))


def test_fine_tune_hint(repo_root: Path, samples_dir: Path, tmp_path: Path) -> None:
    result = run_without(
        ("torch",),
        "quantize",
        "denoise-s",
        "--calibrate",
        samples_dir / "clean",
        "--fine-tune",
        "1",
        "--out",
        tmp_path / "q.onnx",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert_hint(result.stderr, extra_requirements(repo_root, "train"))


def test_pesq_hint(repo_root: Path, samples_dir: Path, tmp_path: Path) -> None:
    # -v, so that a calibration that starts before the check shows in the log.
    result = run_without(
        ("pesq",),
        "-v",
        "quantize",
        "enhance-speech",
        "--calibrate",
        samples_dir / "audio" / "noisy",
        "--test-data",
        samples_dir / "audio",
        "--out",
        tmp_path / "q.onnx",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert_hint(result.stderr, extra_requirements(repo_root, "edge"))
    assert "calibrating" not in result.stderr
    assert "scoring" not in result.stderr
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize(
    ("args", "extra"),
    [(("train", "--help"), "train"), (("denoise", "--help"), "ray")],
)
def test_help_hints(
    repo_root: Path, tmp_path: Path, args: tuple[str, ...], extra: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgefx", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
        cwd=tmp_path,
        # Wide enough that no requirement is wrapped across two lines.
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    assert_hint(result.stdout, extra_requirements(repo_root, extra))
