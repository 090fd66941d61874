"""Helpers shared by the reliability tests: runs without root's file access, mounts."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CLI_TIMEOUT_SECONDS

from edgefx.fsutil import TEMP_PREFIX

# Capabilities that let root read and write files whatever their mode. Dropping them
# from the bounding set makes `chmod 000` stop a root process, as it stops any user.
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@functools.cache
def permissions_unenforceable() -> str | None:
    """Return why file modes cannot stop the CLI here, or None when they can.

    A process that is not root obeys file modes. Root obeys them under ``setpriv``
    without the capabilities that bypass them, when setpriv exists and may drop them.
    """
    if not is_root():
        return None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return "running as root, and setpriv is not installed to drop root's access"
    probe = subprocess.run(
        [setpriv, "--bounding-set", DAC_CAPABILITIES, "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"setpriv cannot drop capabilities here: {probe.stderr.strip()}"
    return None


def run_edgefx_unprivileged(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m edgefx ARGS`` so that file permissions apply, even as root.

    As root the CLI runs under ``setpriv`` without the capabilities that bypass file
    modes. Where that is impossible (see permissions_unenforceable), the CLI runs
    as it is, and callers leave out the cases that need file modes to apply.
    """
    command = [sys.executable, "-m", "edgefx", *map(str, args)]
    setpriv = shutil.which("setpriv")
    if is_root() and permissions_unenforceable() is None and setpriv is not None:
        command = [setpriv, "--bounding-set", DAC_CAPABILITIES, *command]
    child_env = {k: v for k, v in os.environ.items() if k != "EDGEFX_MODELS_DIR"}
    child_env.update(env or {})
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=child_env,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )
    return result


def failure_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed: ")]


def lines_naming(stderr: str, path: Path) -> list[str]:
    """Return the `failed:` lines that name ``path``."""
    return [line for line in failure_lines(stderr) if f"failed: {path}: " in line]


def temporaries(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


def empty_files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size == 0)


@contextlib.contextmanager
def tmpfs_mount(target: Path, size_kib: int, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kib`` KiB on ``target`` for the ``with`` block.

    Skips the test when this process cannot mount (not root, or no CAP_SYS_ADMIN in a
    container).
    """
    target.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kib}k,mode=0755" + (",ro" if read_only else "")
    mount = shutil.which("mount")
    if mount is None or not is_root():
        pytest.skip("mounting a tmpfs needs root and the mount command")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "edgefx-test", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
