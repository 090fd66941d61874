"""Fixtures shared by the test suite: repository paths and a CLI runner."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_edgefx

REPO_ROOT = Path(__file__).resolve().parent.parent


RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def samples_dir(repo_root: Path) -> Path:
    """The shipped sample photos: clean/ originals and their noisy/ copies."""
    return repo_root / "samples"


@pytest.fixture(scope="session")
def data_dir(repo_root: Path) -> Path:
    """Shared data folder: $EDGEFX_DATA, or shared/data beside the repository."""
    configured = os.environ.get("EDGEFX_DATA")
    path = Path(configured) if configured else repo_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(
            f"shared data not found at {path}; set EDGEFX_DATA to the data folder"
        )
    return path


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """The ``run_edgefx`` function: ``run_cli(*args, cwd=None, env=None)``."""
    return run_edgefx
