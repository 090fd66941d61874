"""Atomic file writes: a temporary file in the target's directory, then a rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from edgefx.errors import OutputError

# Temporary files start with this prefix so that a resumed batch can tell them apart
# from finished outputs and never mistakes a half-written file for a done one.
TEMP_PREFIX = ".edgefx-tmp-"


def _read_umask() -> int:
    # The umask can only be read by setting it, so it is read once, at import, before
    # any worker thread exists, and restored at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files with mode 0600; outputs get the mode the user's umask gives.
_UMASK = _read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``; readers see either the old file or the new one.

    Raises OutputError for a missing or read-only directory and for a full disk; no
    partial file is left behind in either case.
    """
    descriptor = -1
    temporary = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent
        )
        with os.fdopen(descriptor, "wb") as handle:
            descriptor = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
        temporary = ""
    except OSError as err:
        raise OutputError(path, describe_os_error(err)) from err
    finally:
        if descriptor >= 0:
            os.close(descriptor)
        if temporary:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def describe_os_error(err: OSError) -> str:
    """Return a short reason for an OSError, without the traceback."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EROFS:
        return "read-only file system"
    if err.errno == errno.ENOENT:
        return "no such file or directory"
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return "a parent of the output path is a file, not a directory"
    return err.strerror or str(err)
