"""File system helpers: atomic writes, folder walks, glob patterns, error reasons.

A local output is written to a temporary file in the target's directory and then
renamed. An output in an object store is uploaded in one piece instead
(edgefx.objectstore). The folder walk and the glob expansion enter no linked folder in
recursive steps and report the folders they cannot list.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from edgefx.errors import OutputError, UsageError
from edgefx.objectstore import ObjectPath, write_object
from edgefx.text import count_noun

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# Temporary files start with this prefix so that a resumed batch can tell them apart
# from finished outputs and never mistakes a half-written file for a done one.
TEMP_PREFIX = ".edgefx-tmp-"

# The full name of a temporary file that edgefx creates: tempfile.mkstemp puts 8
# characters from [a-z0-9_] (CPython's tempfile._RandomNameSequence) between the
# prefix, which the write probes extend with "probe-", and the output's suffix.
TEMP_NAME_PATTERN = re.compile(
    re.escape(TEMP_PREFIX) + r"(probe-)?[a-z0-9_]{8}(\.[A-Za-z0-9]{1,10})?"
)

# The characters that make a path component a glob pattern, as glob.has_magic uses.
GLOB_CHARACTERS = frozenset("*?[")


def is_temporary_name(name: str) -> bool:
    """Tell whether ``name`` has the exact form of an edgefx temporary file's name."""
    return TEMP_NAME_PATTERN.fullmatch(name) is not None


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


def describe_read_error(err: OSError, path: Path) -> str:
    """Return a short reason why ``path``, an input file or folder, cannot be read."""
    if err.errno == errno.ENAMETOOLONG:
        return describe_long_path(path)
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.ELOOP:
        return (
            "too many levels of symbolic links (a link loop, or over 40 links in a row)"
        )
    if err.errno == errno.ENOENT:
        return "file not found"
    return err.strerror or str(err)


def describe_long_path(path: Path) -> str:
    """Return which length limit of the file system ``path`` exceeds (ENAMETOOLONG)."""
    folder = nearest_existing_folder(path)
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    name_max = path_limit(folder, "PC_NAME_MAX", 255)
    if longest > name_max:
        return (
            f"file name too long: a name in the path is {longest} bytes, and this file "
            f"system allows {name_max} bytes per name"
        )
    length = len(os.fsencode(str(path)))
    path_max = path_limit(folder, "PC_PATH_MAX", 4096)
    if length >= path_max:
        return (
            f"file name too long: the path is {length} bytes, and this file system "
            f"allows {path_max - 1}"
        )
    return "file name too long"


def nearest_existing_folder(path: Path) -> Path:
    """Return the absolute ``path`` or its nearest parent that exists.

    A path that cannot be checked (too long, no search permission) counts as missing.
    """
    folder = path.absolute()
    while not os.path.exists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def path_limit(folder: Path, name: str, default: int) -> int:
    """Return the pathconf value ``name`` of ``folder``, or ``default`` where unknown.

    ``name`` is PC_NAME_MAX (bytes per file name) or PC_PATH_MAX (bytes per path,
    including the terminating null byte).
    """
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):  # pathconf is missing on Windows
        return default
    return value if value > 0 else default


def find_unwritable_folder(out_dir: Path) -> tuple[Path, str] | None:
    """Return the folder that refuses new files in ``out_dir`` and why, else None.

    While ``out_dir`` does not exist, its nearest existing parent is checked.
    """
    folder = nearest_existing_folder(out_dir)
    if not os.access(folder, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):  # statvfs is missing on Windows
            read_only = False
        return folder, "read-only file system" if read_only else "permission denied"
    # os.access can say yes where writes still fail: a server that maps user ids
    # (NFS root squash), ACLs, or pseudo file systems such as /sys and /proc, even
    # for root. So the folder is tried: a file of one byte where it is ``out_dir``
    # itself, else a folder, because the batch then creates ``out_dir`` there first.
    # Interrupts wait until the probe is gone.
    with interrupts_deferred():
        try:
            if folder == out_dir.absolute():
                _probe_file(folder)
            else:
                os.rmdir(tempfile.mkdtemp(dir=folder, prefix=f"{TEMP_PREFIX}probe-"))
        except OSError as err:
            return folder, describe_os_error(err)
    return None


def _probe_file(folder: Path) -> None:
    """Create, write one byte to and delete a file in ``folder``; raise OSError."""
    handle, probe = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}probe-")
    try:
        os.write(handle, b"\0")
    finally:
        os.close(handle)
        os.unlink(probe)


def check_output_file(path: Path, temporary_names: tuple[str, ...] = ()) -> None:
    """Raise UsageError when the file ``path`` (an --out option) cannot be created.

    Checks, before any work: that ``path`` is no directory, that its folder (or the
    nearest existing parent) accepts new files, and that its name and the
    ``temporary_names`` written next to it fit the file system's name length limit.
    """
    try:
        is_dir = path.is_dir()
    except OSError as err:
        reason = describe_read_error(err, path)
        raise UsageError(f"--out {path}: {reason}; choose another --out file") from err
    if is_dir:
        raise UsageError(f"--out {path} is a directory; give a file path")
    folder = nearest_existing_folder(path.parent)
    if not folder.is_dir():
        raise UsageError(f"--out {path}: {folder} is a file, not a directory")
    problem = find_unwritable_folder(path.parent)
    if problem is not None:
        where, reason = problem
        raise UsageError(
            f"--out {path}: cannot write the file in {where}: {reason}; "
            "choose another --out file"
        )
    name_max = path_limit(folder, "PC_NAME_MAX", 255)
    longest = max(len(os.fsencode(name)) for name in (path.name, *temporary_names))
    if longest > name_max:
        raise UsageError(
            f"--out {path}: the file name is too long; shorten it by "
            f"{longest - name_max} bytes (this file system allows {name_max} bytes "
            "per name, including the temporary files written next to it)"
        )


def check_replaces_no_input(
    out: Path, written: Iterable[Path], inputs: Iterable[Path]
) -> None:
    """Raise UsageError when a file that a run writes is one of the run's inputs.

    ``out`` is the --out file, and ``written`` lists every path the run writes: ``out``
    and the temporary or companion files next to it. Paths are compared after
    resolving symbolic links and ``..``, so a link to an input counts as that input.
    """
    resolved_inputs: dict[str, Path] = {}
    for path in inputs:
        resolved_inputs.setdefault(os.path.realpath(path), path)
    for path in written:
        match = resolved_inputs.get(os.path.realpath(path))
        if match is None:
            continue
        if path == out:
            raise UsageError(
                f"--out {out}: the output would replace its input {match}; choose "
                "another --out file"
            )
        raise UsageError(
            f"--out {out}: {path}, written next to the output, would replace the "
            f"input {match}; choose another --out file"
        )


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs, then deliver them.

    Python runs signal handlers between bytecodes, so a Ctrl-C or SIGTERM could land
    between creating a temporary file and recording its name, and no cleanup would know
    the file. While the block runs, both signals only get recorded; once it is done,
    the previous handlers are back and each recorded signal is raised again. Blocking
    the signals with a thread mask would not do: the kernel then delivers them to
    another thread, and Python still raises in the main thread. Only the main thread
    can set handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous = {
        number: signal.signal(number, record)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


# A folder that could not be listed, and the reason from describe_read_error.
UnreadableFolder = tuple[Path, str]


def list_folder(
    folder: Path, recursive: bool, prune: Callable[[Path], bool] | None = None
) -> tuple[list[Path], list[UnreadableFolder]]:
    """List the entries of ``folder``, and of all its subfolders when ``recursive``.

    Returns the entries in no set order, and each folder that could not be listed
    with the reason. A subfolder that is a symbolic link is listed as an entry but not
    entered, as pathlib's ``**`` (before Python 3.13) and ``find`` without -L do, so a
    link loop cannot repeat the walk. ``prune(path)`` returning True keeps the walk out
    of that subfolder.
    """
    entries: list[Path] = []
    unreadable: list[UnreadableFolder] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as scan:
                children = list(scan)
        except OSError as err:
            unreadable.append((current, describe_read_error(err, current)))
            continue
        for child in children:
            path = current / child.name
            entries.append(path)
            if recursive and _is_real_folder(child) and not (prune and prune(path)):
                pending.append(path)
    return entries, unreadable


def expand_pattern(
    pattern: str, prune: Callable[[Path], bool] | None = None
) -> tuple[list[Path], list[UnreadableFolder]]:
    """Return the paths that match a glob pattern, sorted, and the unreadable folders.

    The rules are those of ``glob.glob(pattern, recursive=True)``: ``*``, ``?`` and
    ``[...]`` match within one name, a name that starts with a dot matches only a
    pattern that starts with one, and a ``**`` component matches zero or more
    folders. Two rules differ. ``**`` enters no folder that is a symbolic link, as
    list_folder, so a link loop (``loop -> ..``) is visited once and not 40 times
    down to the ELOOP limit. A folder that a wildcard needs listed but that cannot
    be read is returned with the reason, where glob skips it without a word.
    ``prune(path)`` returning True keeps ``**`` out of that subfolder.
    """
    parts = Path(pattern).parts
    matches: dict[Path, None] = {}
    unreadable: dict[Path, str] = {}
    seen: set[tuple[Path, int]] = set()
    pending = [(Path(), 0)]
    while pending:
        folder, index = pending.pop()
        if (folder, index) in seen:
            continue  # `a/**/**/b` reaches the same folder at the same part twice
        seen.add((folder, index))
        if index == len(parts):
            matches[folder] = None
            continue
        part = parts[index]
        last = index == len(parts) - 1
        if not GLOB_CHARACTERS & set(part):
            path = folder / part
            if os.path.lexists(path) if last else os.path.isdir(path):
                pending.append((path, index + 1))
            continue
        try:
            with os.scandir(folder) as scan:
                children = [entry for entry in scan if _may_match(entry.name, part)]
        except OSError as err:
            unreadable[folder] = describe_read_error(err, folder)
            continue
        if part == "**":
            pending.append((folder, index + 1))
            for child in children:
                path = folder / child.name
                if last:
                    matches[path] = None
                if _is_real_folder(child) and not (prune and prune(path)):
                    pending.append((path, index))
            continue
        for child in children:
            if not fnmatch.fnmatch(child.name, part):
                continue
            path = folder / child.name
            if last:
                matches[path] = None
            elif os.path.isdir(path):
                pending.append((path, index + 1))
    return sorted(matches, key=str), sorted(unreadable.items(), key=lambda u: str(u[0]))


def _may_match(name: str, part: str) -> bool:
    """Tell whether glob's rule for dot names lets ``part`` match ``name`` at all."""
    return not name.startswith(".") or part.startswith(".")


def _is_real_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


# Lock file inside each work folder: its owner holds an exclusive lock on it for the
# folder's lifetime, and the kernel drops the lock when the owner dies in any way.
WORK_FOLDER_LOCK = ".lock"
# A work folder without a lock file is removed only when older than this, because its
# owner may be between creating the folder and the lock file.
UNLOCKED_WORK_FOLDER_SECONDS = 3600.0


def _owner_is_gone(folder: Path) -> bool:
    """Return True when no process holds the lock of the work folder ``folder``."""
    try:
        handle = os.open(folder / WORK_FOLDER_LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        age = time.time() - folder.stat().st_mtime
        return age > UNLOCKED_WORK_FOLDER_SECONDS
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(handle)  # closing releases the trial lock
    return True


def remove_dead_work_folders(prefix: str) -> int:
    """Delete the ``prefix``* work folders whose process no longer runs; count them.

    A killed process (SIGKILL, a power cut) cannot remove its temporary folder, and
    a quantization's copies of a model can take hundreds of megabytes. A folder is
    taken as dead when nothing holds the lock on its lock file, which also holds
    across PID namespaces that share the temporary directory. Only this user's real
    folders are removed, never links; without fcntl (Windows) nothing is removed.
    """
    if fcntl is None:
        return 0
    removed = 0
    try:
        candidates = list(Path(tempfile.gettempdir()).glob(f"{prefix}*"))
    except OSError:
        return 0
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            if folder.stat().st_uid != os.getuid() or not _owner_is_gone(folder):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    if removed:
        logger.info(
            "removed %s that killed runs left in %s",
            count_noun(removed, "work folder"),
            tempfile.gettempdir(),
        )
    return removed


@contextlib.contextmanager
def work_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder, locked while it exists and removed on the way out.

    Folders that earlier, killed processes left under the same prefix are removed
    first, which a plain TemporaryDirectory cannot do: nothing in it tells whether
    its owner still runs.
    """
    remove_dead_work_folders(prefix)
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as work:
        folder = Path(work)
        handle = os.open(folder / WORK_FOLDER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield folder
        finally:
            os.close(handle)
