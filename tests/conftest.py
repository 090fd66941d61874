"""Fixtures shared by the test suite: repository paths and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Seconds after which a CLI run counts as hung. The slowest run in the suite, all six
# noisy samples, took 9 to 25 s on a 2-core CPU shared with a training job.
CLI_TIMEOUT_SECONDS = 180

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
        pytest.skip(f"shared data not found at {path}")
    return path


def run_edgefx(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgefx ARGS`` as a user does and capture stdout and stderr.

    ``env`` entries are added to the current environment, so the child finds the same
    virtual environment and edgefx install.
    """
    command = [sys.executable, "-m", "edgefx", *map(str, args)]
    child_env = {**os.environ, **(env or {})}
    return subprocess.run(
        command,
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """The ``run_edgefx`` function: ``run_cli(*args, cwd=None, env=None)``."""
    return run_edgefx
