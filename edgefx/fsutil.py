"""Atomic file writes: a temporary file in the target's directory, then a rename.

An output in an object store is uploaded in one piece instead (edgefx.objectstore).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from edgefx.errors import OutputError, UsageError
from edgefx.objectstore import ObjectPath, write_object

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


def atomic_write_bytes(path: Path | ObjectPath, data: bytes) -> None:
    """Write ``data`` to ``path``; readers see either the old file or the new one.

    Raises OutputError for a missing or read-only directory, for a full disk and for
    a failed upload. No partial file or object is left behind in any case.
    """
    if isinstance(path, ObjectPath):
        write_object(path, data)
        return
    descriptor = -1
    temporary = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with interrupts_deferred():
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


def find_unwritable_folder(out_dir: Path) -> tuple[Path, str] | None:
    """Return the folder that refuses new files in ``out_dir`` and why, else None.

    While ``out_dir`` does not exist, its nearest existing parent is checked.
    """
    folder = out_dir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    # NOTE: os.access can be wrong where the server maps user ids (NFS root squash) or
    # applies ACLs. A folder that passes it but rejects writes still fails file by file.
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # statvfs is missing on Windows
        read_only = False
    return folder, "read-only file system" if read_only else "permission denied"


def check_output_file(path: Path, temporary_names: tuple[str, ...] = ()) -> None:
    """Raise UsageError when the file ``path`` (an --out option) cannot be created.

    Checks, before any work: that ``path`` is no directory, that its folder (or the
    nearest existing parent) accepts new files, and that its name and the
    ``temporary_names`` written next to it fit the file system's name length limit.
    """
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file path")
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: {folder} is a file, not a directory")
    problem = find_unwritable_folder(path.parent)
    if problem is not None:
        where, reason = problem
        raise UsageError(
            f"--out {path}: cannot write the file in {where}: {reason}; "
            "choose another --out file"
        )
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # pathconf is missing on Windows
        name_max = 255
    longest = max(len(os.fsencode(name)) for name in (path.name, *temporary_names))
    if longest > name_max:
        raise UsageError(
            f"--out {path}: the file name is too long; shorten it by "
            f"{longest - name_max} bytes (this file system allows {name_max} bytes "
            "per name, including the temporary files written next to it)"
        )


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs, then deliver them.

    Python runs signal handlers between bytecodes, so a Ctrl-C or SIGTERM could land
    between creating a temporary file and recording its name, and no cleanup would know
    the file. Blocking the signals for those few statements closes that gap. Only the
    main thread of a POSIX process can do this; elsewhere the block runs as it is.
    """
    if not hasattr(signal, "pthread_sigmask") or (
        threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    interrupts = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, interrupts)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
