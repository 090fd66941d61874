"""Fixtures shared by the test suite: repository paths and a CLI runner."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import run_edgefx
from s3_helpers import DUMMY_AWS_ENV, S3TestServer

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """An S3-compatible server (moto) on loopback, with dummy AWS credentials.

    The credentials and the other DUMMY_AWS_ENV variables are set in this process for
    the session, and CLI runs inherit them. Tests that use it skip where moto or
    pyarrow is not installed.
    """
    pytest.importorskip("pyarrow.fs", reason="pyarrow is not installed")
    pytest.importorskip(
        "moto.server",
        reason='moto is not installed; pip install "moto[server]" (in the dev extra)',
    )
    patch = pytest.MonkeyPatch()
    for name, value in DUMMY_AWS_ENV.items():
        patch.setenv(name, value)
    server = S3TestServer()
    yield server
    server.stop()
    patch.undo()
