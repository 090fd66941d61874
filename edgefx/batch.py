"""Batch engine shared by the commands: input listing, output naming, skip and resume.

A batch maps every input file to one output path under the output directory, mirroring
the input tree. An output that already exists is skipped unless overwrite is set, and
every output is written atomically, so an interrupted batch resumes where it stopped
when the same command runs again. The output directory is a local path or a prefix in
an object store (edgefx.objectstore), with the same rules.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefx.errors import (
    DeviceError,
    EdgefxError,
    InputError,
    ModelError,
    OutputError,
    UsageError,
)
from edgefx.fsutil import (
    GLOB_CHARACTERS,
    TEMP_PREFIX,
    describe_read_error,
    expand_pattern,
    find_unwritable_folder,
    is_temporary_name,
    list_folder,
)
from edgefx.objectstore import (
    ObjectPath,
    OutputPath,
    check_prefix,
    finished_keys,
    is_finished_object,
    parse_output,
)
from edgefx.text import count_noun, throughput_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    """One file to process and its path relative to the input it was found under."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class BatchItem:
    source: Path
    output: OutputPath


@dataclass
class FileResult:
    source: Path
    output: OutputPath | None
    status: str  # "done", "skipped" or "failed"
    error: str | None = None
    seconds: float = 0.0
    units: float = 0.0  # task-specific amount of work: megapixels or audio seconds


@dataclass
class BatchSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass(frozen=True)
class BatchOptions:
    """Output settings: the output directory and the policy for existing outputs.

    ``out_dir`` may be given as a ``str``, any path-like object or an ObjectPath. A
    string with a URI scheme (``s3://bucket/prefix``) is stored as an ObjectPath and
    anything else as a ``Path``.
    """

    out_dir: OutputPath
    recursive: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", parse_output(self.out_dir))


class Reporter:
    """Receives progress events; the CLI subclasses it to draw a progress bar."""

    def start(self, total: int) -> None:
        """Called once with the number of files, before the first one is processed."""

    def result(self, result: FileResult) -> None:
        """Called once per file, when it is done, skipped or failed."""


PathsArgument = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def path_list(paths: PathsArgument) -> list[str]:
    """Return ``paths`` as a list of strings; one str or Path counts as one path."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(path) for path in paths]


def no_inputs_message(paths: PathsArgument, kind: str, recursive: bool) -> str:
    """Say that no ``kind`` files were found, and hint at --recursive when it helps."""
    names = path_list(paths)
    message = f"no {kind} files found in {', '.join(names)}"
    if not recursive and any(_has_subfolder(Path(name)) for name in names):
        message += " (use --recursive to search subfolders)"
    return message


def _has_subfolder(path: Path) -> bool:
    try:
        return path.is_dir() and any(child.is_dir() for child in path.iterdir())
    except OSError:
        return False


def collect_inputs(
    paths: PathsArgument,
    suffixes: Iterable[str],
    recursive: bool = False,
    exclude: Path | None = None,
    left_out: dict[Path, bool] | None = None,
) -> tuple[list[InputFile], list[FileResult]]:
    """List the input files named by files, directories and glob patterns.

    Returns the files found and a failed result for every named path that does not
    exist or cannot be read, and for every folder that cannot be listed, so that the
    batch reports them and goes on. Directories contribute the files with a known
    suffix (top level only unless ``recursive``). Explicit files are taken whatever
    their suffix, so that a wrong extension gets a clear error from the reader. Files
    under ``exclude`` (the output directory) are left out, so that a rerun never takes
    its own outputs as inputs. Each file or folder left out for that reason is added
    to ``left_out`` when given. A folder maps to True when its subfolders would have
    been searched too. Recursive walks and ``**`` enter no linked folder
    (fsutil.list_folder).
    """
    paths = path_list(paths)
    if left_out is None:
        left_out = {}
    wanted = {s.lower() for s in suffixes}
    excluded = exclude.resolve() if exclude else None
    found: list[InputFile] = []
    missing: list[FileResult] = []
    for name in paths:
        path = Path(name).expanduser()
        try:
            if (
                path.is_dir()
                and len(paths) > 1
                and excluded
                and _inside(path, excluded)
            ):
                # A shell glob such as `photos/*` also names the output directory
                # inside photos/ on a rerun; its files are earlier outputs, not inputs.
                logger.debug("skipping the output directory %s among the inputs", path)
                left_out[path] = recursive
                continue
            if path.is_dir():
                listed = _collect_folder(path, wanted, recursive, excluded, left_out)
            elif path.is_file():
                listed = [InputFile(path, Path(path.name))], []
            elif path.exists():
                listed = [], [_failure(path, "not a regular file")]
            elif GLOB_CHARACTERS & set(name):
                listed = _collect_pattern(name, wanted, excluded, left_out)
            else:
                listed = [], [_failure(path, _describe_missing(path))]
        except OSError as err:  # such as a name too long for the file system
            listed = [], [_failure(path, describe_read_error(err, path))]
        found += listed[0]
        missing += listed[1]

    unique: dict[Path, InputFile] = {}
    folders: dict[Path, Path] = {}
    for item in found:
        first = unique.setdefault(resolve_file(item.path, folders), item)
        if first is not item and first.path != item.path:
            logger.warning(
                "%s is the same file as %s (a link), so it is processed once",
                item.path,
                first.path,
            )
    return list(unique.values()), missing


Collected = tuple[list[InputFile], list[FileResult]]


def _describe_missing(path: Path) -> str:
    """Return why a named input that does not exist cannot be read.

    Path.exists returns False both for a missing file and for a symbolic link loop,
    so stat distinguishes them.
    """
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return describe_read_error(err, path)
    return "file not found"


def _collect_folder(
    folder: Path,
    wanted: set[str],
    recursive: bool,
    excluded: Path | None,
    left_out: dict[Path, bool],
) -> Collected:
    # An output directory inside this input directory contains earlier outputs,
    # which must not come back as inputs. When both are the same directory,
    # plan_outputs reports each output that would replace an input instead.
    skip = excluded if excluded and _strictly_inside(excluded, folder) else None

    def is_skipped(path: Path) -> bool:
        return skip is not None and _resolves_inside(path, skip)

    def prune(path: Path) -> bool:
        # Called only in a recursive walk, for each subfolder it would enter.
        pruned = is_skipped(path)
        if pruned:
            left_out[path] = True
        return pruned

    entries, unreadable = list_folder(folder, recursive, prune=prune)
    found: list[InputFile] = []
    missing = [_unreadable_failure(path, reason) for path, reason in unreadable]
    for child in sorted(entries):
        if is_skipped(child):
            if not child.is_dir():
                left_out[child] = False
            continue
        try:
            if _is_candidate(child, wanted):
                found.append(InputFile(child, child.relative_to(folder)))
            elif _is_broken_candidate(child, wanted):
                missing.append(_failure(child, "not a regular file or a broken link"))
        except OSError as err:  # a folder that can be listed but not searched
            missing.append(_failure(child, describe_read_error(err, child)))
    return found, missing


def _collect_pattern(
    pattern: str,
    wanted: set[str],
    excluded: Path | None,
    left_out: dict[Path, bool],
) -> Collected:
    base = _glob_base(pattern)
    skip = excluded if excluded and _strictly_inside(excluded, base) else None

    def is_skipped(path: Path) -> bool:
        return skip is not None and _resolves_inside(path, skip)

    def prune(path: Path) -> bool:
        # Called for each subfolder that a `**` component would enter.
        pruned = is_skipped(path)
        if pruned:
            left_out[path] = True
        return pruned

    matches, unreadable = expand_pattern(os.path.expanduser(pattern), prune)
    found: list[InputFile] = []
    missing = [_unreadable_failure(path, reason) for path, reason in unreadable]
    for match in matches:
        if is_skipped(match):
            if not match.is_dir():
                left_out[match] = False
            continue
        try:
            if match.is_file() and not match.name.startswith(TEMP_PREFIX):
                found.append(InputFile(match, _relative_or_name(match, base)))
            elif _is_broken_candidate(match, wanted):
                missing.append(_failure(match, "not a regular file or a broken link"))
        except OSError as err:
            missing.append(_failure(match, describe_read_error(err, match)))
    if not matches and not unreadable:
        path = Path(os.path.expanduser(pattern))
        missing.append(_failure(path, "no file matches this pattern"))
    return found, missing


def _unreadable_failure(folder: Path, reason: str) -> FileResult:
    return _failure(folder, f"cannot list the files in this folder: {reason}")


def resolve_file(path: Path, folders: dict[Path, Path]) -> Path:
    """Return ``path.resolve()``, resolving each parent folder once in ``folders``.

    Path.resolve walks every component of the path, which cost more than decoding a
    32x32 JPEG file. A file that is not a symlink resolves to its resolved folder
    plus its name.
    """
    if path.is_symlink():
        return path.resolve()
    folder = folders.get(path.parent)
    if folder is None:
        folder = folders[path.parent] = path.parent.resolve()
    return folder / path.name


def _resolves_inside(path: Path, folder: Path) -> bool:
    """Tell whether ``path`` resolves to a place inside ``folder``.

    A symlink loop cannot be resolved; it counts as outside, so that the caller
    reports it as a broken link instead of crashing.
    """
    try:
        return path.resolve().is_relative_to(folder)
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a loop
        return False


def _inside(inner: Path, outer: Path) -> bool:
    return inner.resolve().is_relative_to(outer.resolve())


def _is_broken_candidate(path: Path, suffixes: set[str]) -> bool:
    """Tell whether ``path`` looks like an input but is a broken link or a FIFO."""
    if path.suffix.lower() not in suffixes or path.name.startswith((".", TEMP_PREFIX)):
        return False
    return not path.is_dir() and not path.is_file()


def _strictly_inside(inner: Path, outer: Path) -> bool:
    outer = outer.resolve()
    return inner != outer and inner.is_relative_to(outer)


def _is_candidate(path: Path, suffixes: set[str]) -> bool:
    # The name checks come first, because is_file costs a system call.
    return (
        path.suffix.lower() in suffixes
        and not path.name.startswith((TEMP_PREFIX, "."))
        and path.is_file()
    )


def _glob_base(pattern: str) -> Path:
    """Return the directory part of a glob pattern before its first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = []
    for part in parts:
        if GLOB_CHARACTERS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_or_name(path: Path, base: Path) -> Path:
    try:
        return path.relative_to(base)
    except ValueError:
        return Path(path.name)


def _failure(path: Path, reason: str) -> FileResult:
    return FileResult(
        source=path, output=None, status="failed", error=f"{path}: {reason}"
    )


def check_out_dir(out_dir: Path) -> None:
    """Raise UsageError unless ``out_dir`` is a directory or can be created as one.

    It rejects a file, a path under a file, a path through a broken symbolic link
    (mkdir cannot create the folder that the link names) and a path too long for the
    file system.
    """
    try:
        for path in (out_dir, *out_dir.parents):
            if path.exists():
                if path.is_dir():
                    return
                if path == out_dir:
                    raise UsageError(f"--out {out_dir} is a file; give a directory")
                raise UsageError(f"--out {out_dir}: {path} is a file, not a directory")
            if path.is_symlink():
                where = "" if path == out_dir else f": {path}"
                problem = _describe_broken_link(path)
                raise UsageError(f"--out {out_dir}{where} {problem}")
    except OSError as err:  # such as a name too long for the file system
        reason = describe_read_error(err, out_dir)
        raise UsageError(
            f"--out {out_dir}: {reason}; choose another --out directory"
        ) from err


def _describe_broken_link(link: Path) -> str:
    try:
        link.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link in a loop; give another --out directory"
    return (
        f"is a symbolic link to {os.readlink(link)}, which does not exist; create "
        "that directory or give another --out directory"
    )


def check_out_dir_writable(out_dir: Path) -> None:
    """Raise UsageError when files cannot be created in ``out_dir``.

    While ``out_dir`` does not exist, its nearest existing parent is checked, because
    the batch creates ``out_dir`` there. A read-only file system, missing write
    permission and a pseudo file system such as /sys are found this way, and so is a
    disk that is already full where the file system reports it on the first write
    (tmpfs does, but ext4 may wait until the data is flushed). A disk that fills
    during the batch fails the files from then on.
    """
    problem = find_unwritable_folder(out_dir)
    if problem is None:
        return
    folder, reason = problem
    where = "" if folder == out_dir.absolute() else f" (in {folder})"
    raise UsageError(
        f"--out {out_dir}: cannot write output files there{where}: {reason}; "
        "choose another --out directory"
    )


def plan_outputs(
    inputs: Sequence[InputFile],
    out_dir: OutputPath,
    suffix_for: Callable[[Path], str],
) -> list[BatchItem]:
    """Map inputs to output paths under ``out_dir``, mirroring their relative paths.

    ``suffix_for(source)`` returns the output suffix. Raises UsageError before any work
    when an output path is one of the inputs, whatever the overwrite setting, or when
    two inputs map to the same output. An input at an output path may be the output
    of an earlier run into the same folder (a.jpg -> a.png with --format png), but it
    may as well be a file of the user's, so it is never replaced.
    """
    folders: dict[Path, Path] = {}
    inputs_by_path = {resolve_file(entry.path, folders): entry.path for entry in inputs}
    inputs_by_file = _inputs_by_file(inputs) if isinstance(out_dir, Path) else {}
    items: list[BatchItem] = []
    owners: dict[OutputPath, Path] = {}
    for entry in inputs:
        output = out_dir / entry.relative.with_suffix(suffix_for(entry.path))
        key: OutputPath = output
        if isinstance(output, Path):
            key = output.resolve()
            replaced = inputs_by_path.get(key) or _same_input_file(
                output, inputs_by_file
            )
            if replaced is not None:
                raise UsageError(_replace_message(entry.path, output, replaced))
        if key in owners:
            raise UsageError(
                f"{owners[key]} and {entry.path} would both be written to {output}; "
                "rename one of them or process them in separate runs"
            )
        owners[key] = entry.path
        items.append(BatchItem(entry.path, output))
    return items


FileId = tuple[int, int]  # (st_dev, st_ino)


def _inputs_by_file(inputs: Sequence[InputFile]) -> dict[FileId, list[Path]]:
    found: dict[FileId, list[Path]] = {}
    for entry in inputs:
        try:
            status = entry.path.stat()
        except OSError:
            continue  # the reader reports this input, and no output can match it
        found.setdefault((status.st_dev, status.st_ino), []).append(entry.path)
    return found


def _same_input_file(output: Path, inputs: dict[FileId, list[Path]]) -> Path | None:
    """Return the input that ``output`` names by another path, else None.

    Resolving links misses two cases: a case-insensitive file system (a.PNG and
    a.png) and a bind mount. There the existing output is the input's own file in
    the input's own folder. A hard link of an input has the same file but another
    directory entry, which the atomic rename of an output replaces without touching
    the input, so it counts only when the folders are the same as well.
    """
    try:
        status = output.stat()
        candidates = inputs.get((status.st_dev, status.st_ino), [])
        if not candidates:
            return None
        folder = output.parent.stat()
        for candidate in candidates:
            parent = candidate.parent.stat()
            if (parent.st_dev, parent.st_ino) == (folder.st_dev, folder.st_ino):
                return candidate
    except OSError:
        return None  # no output file yet, or a folder that cannot be checked
    return None


def _replace_message(source: Path, output: Path, replaced: Path) -> str:
    written = "the output" if output == replaced else f"the output {output}"
    victim = "the input" if replaced == source else f"the input {replaced}"
    return (
        f"{source}: {written} would replace {victim}; "
        "choose an --out directory outside the inputs"
    )


# A temporary output older than this was left by a process that was killed (SIGKILL,
# power loss) mid-write. Younger ones may belong to another edgefx run writing to the
# same directory right now, so they are left alone.
STALE_TEMPORARY_SECONDS = 3600.0


def _may_be_own_temporary(status: os.stat_result) -> bool:
    """Tell whether a file's owner and mode are those of an unfinished temporary.

    tempfile.mkstemp creates files of this user with mode 0600, and edgefx sets the
    output's mode only just before the rename. A file with other bits, such as a
    photo copied with a umask of 022, was not left by edgefx.

    NOTE: a file system without Unix modes (FAT, most SMB mounts) shows one fixed
    mode for every file, usually not 0600, so leftovers there are kept.
    """
    owner = getattr(os, "getuid", None)  # missing on Windows
    if owner is not None and status.st_uid != owner():
        return False
    return stat.S_IMODE(status.st_mode) == 0o600


def remove_stale_temporaries(
    items: Sequence[BatchItem], other_inputs: Iterable[Path] = ()
) -> int:
    """Delete temporary outputs that killed runs left where ``items`` go; count them.

    Only the folders that the items' outputs go to are searched, not their subfolders.
    A file there is removed when its whole name has the form that edgefx gives its
    temporary files (fsutil.TEMP_NAME_PATTERN), its owner and mode are those of an
    unfinished temporary (_may_be_own_temporary), and it is older than
    STALE_TEMPORARY_SECONDS. The source of an item and the ``other_inputs`` (inputs
    that failed before any work) are never removed. Younger ones are kept and counted
    in a log line, because a run writing there right now owns them. An object store
    prefix has none, because its outputs are uploaded without temporaries.
    """
    resolved_folders: dict[Path, Path] = {}
    sources: set[Path] = set()
    for path in [item.source for item in items] + list(other_inputs):
        try:
            sources.add(resolve_file(path, resolved_folders))
        except (OSError, RuntimeError):  # a name too long, or a link loop on 3.11
            continue  # a path that cannot be resolved names no file in these folders
    folders = sorted({i.output.parent for i in items if isinstance(i.output, Path)})
    removed = 0
    kept: list[Path] = []
    now = time.time()
    for folder in folders:
        try:
            with os.scandir(folder) as scan:
                entries = [e for e in scan if is_temporary_name(e.name)]
        except FileNotFoundError:
            continue  # the run creates the folder when it writes the first output
        except OSError as err:
            logger.debug("cannot list %s for stale temporary files: %s", folder, err)
            continue
        for entry in entries:
            path = folder / entry.name
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if resolve_file(path, resolved_folders) in sources:
                    logger.debug("%s is an input of this run, so it is kept", path)
                    continue
                status = entry.stat(follow_symlinks=False)
                if not _may_be_own_temporary(status):
                    continue
                if now - status.st_mtime <= STALE_TEMPORARY_SECONDS:
                    kept.append(path)
                    continue
                path.unlink()
                removed += 1
            except OSError as err:
                logger.warning(
                    "cannot remove the stale temporary file %s: %s", path, err
                )
    if removed:
        logger.info(
            "removed %s left by an interrupted run",
            count_noun(removed, "temporary file"),
        )
    if kept:
        kept_folders = sorted({path.parent for path in kept})
        where = str(kept_folders[0])
        if len(kept_folders) > 1:
            where += f" and {count_noun(len(kept_folders) - 1, 'other folder')}"
        logger.info(
            "kept %s (%s*) in %s: younger than %d minutes, so another edgefx "
            "run may still be writing there; a run started later removes stale ones",
            count_noun(len(kept), "temporary file"),
            TEMP_PREFIX,
            where,
            STALE_TEMPORARY_SECONDS // 60,
        )
    return removed


def run_batch(
    items: Sequence[BatchItem],
    process: Callable[[BatchItem], float],
    overwrite: bool = False,
    reporter: Reporter | None = None,
    unit: str = "MP",
) -> BatchSummary:
    """Process every item and collect one result per file.

    ``process(item)`` reads the source, writes the output atomically and returns the
    amount of work done (megapixels, audio seconds). An EdgefxError, or any other error
    raised while handling one file, marks that file failed and the batch goes on;
    KeyboardInterrupt and SystemExit stop the batch, and atomic writes leave no partial
    output behind.
    """
    reporter = reporter or Reporter()
    summary = BatchSummary()
    started = time.perf_counter()
    finished = FinishedOutputs()
    for item in items:
        if not overwrite and finished(item.output):
            result = FileResult(item.source, item.output, "skipped")
        else:
            result = _process_one(item, process)
        summary.results.append(result)
        reporter.result(result)
    summary.seconds = time.perf_counter() - started

    done_units = sum(r.units for r in summary.results if r.status == "done")
    busy = sum(r.seconds for r in summary.results if r.status == "done")
    if summary.done and busy > 0:
        logger.info("%s", throughput_line(summary.done, done_units, unit, busy))
    return summary


class FinishedOutputs:
    """Tell whether outputs are finished, listing each object store prefix only once.

    Make one per batch. A listing is read the first time an output under its ``--out``
    prefix is checked, and reused for the rest of the batch. Reuse is safe because each
    output is checked once, before the batch writes it.
    """

    def __init__(self) -> None:
        self._listings: dict[str, frozenset[str] | None] = {}

    def __call__(self, path: OutputPath) -> bool:
        if not isinstance(path, ObjectPath):
            return _is_finished_output(path)
        if path.root not in self._listings:
            self._listings[path.root] = finished_keys(ObjectPath(path.root))
        listing = self._listings[path.root]
        if listing is None:
            return is_finished_object(path)
        return path.key in listing


def _is_finished_output(path: OutputPath) -> bool:
    """Tell whether ``path`` is a finished output that a rerun may skip.

    edgefx never leaves an empty file, so an empty file (or a directory) at the output
    path came from elsewhere and is not taken as done. The same holds for objects.
    """
    if isinstance(path, ObjectPath):
        return is_finished_object(path)
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _process_one(item: BatchItem, process: Callable[[BatchItem], float]) -> FileResult:
    started = time.perf_counter()
    try:
        units = process(item)
    except (ModelError, DeviceError):
        raise  # the model or the device is unusable, so every other file would fail too
    except (InputError, OutputError) as err:
        return FileResult(item.source, item.output, "failed", str(err))
    except EdgefxError as err:
        return FileResult(item.source, item.output, "failed", f"{item.source}: {err}")
    except MemoryError:
        return FileResult(
            item.source, item.output, "failed", f"{item.source}: out of memory"
        )
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        logger.debug("unexpected error on %s:\n%s", item.source, traceback.format_exc())
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        return FileResult(
            item.source,
            item.output,
            "failed",
            f"{item.source}: unexpected error: {reason}",
        )
    return FileResult(
        item.source,
        item.output,
        "done",
        seconds=time.perf_counter() - started,
        units=units,
    )


def plan_batch(
    paths: PathsArgument,
    suffixes: Iterable[str],
    batch: BatchOptions,
    suffix_for: Callable[[Path], str],
    kind: str,
) -> tuple[list[BatchItem], list[FileResult]]:
    """Check the output folder, list the inputs and plan one output for each.

    Returns the planned items and a failed result for each named path that is missing,
    and for each input whose output name has the form of a temporary file's.
    Raises UsageError when no input of ``kind`` ("image", "audio") is found, when
    plan_outputs finds a clash, or when an output is due but the output folder is not
    writable, before any file is touched. An object store prefix is checked with
    check_prefix instead, because inputs are local files and cannot be inside it.
    """
    out_dir = batch.out_dir
    if isinstance(out_dir, ObjectPath):
        check_prefix(out_dir)
    else:
        check_out_dir(out_dir)
    left_out: dict[Path, bool] = {}
    inputs, missing = collect_inputs(
        paths,
        suffixes,
        recursive=batch.recursive,
        exclude=None if isinstance(out_dir, ObjectPath) else out_dir,
        left_out=left_out,
    )
    if not inputs:
        reasons = "; ".join(m.error or "" for m in missing)
        raise UsageError(reasons or no_inputs_message(paths, kind, batch.recursive))
    items = plan_outputs(inputs, out_dir, suffix_for)
    if isinstance(out_dir, Path) and left_out:
        files = _files_left_out(left_out, {s.lower() for s in suffixes})
        _check_left_out(items, files, out_dir, batch.overwrite)
    items, rejected = _reject_temporary_names(items)
    missing = [*missing, *rejected]
    if not items:
        raise UsageError("; ".join(m.error or "" for m in missing))
    if isinstance(out_dir, ObjectPath):
        return items, missing
    # A rerun whose outputs all exist writes nothing, so it may run on a read-only copy.
    if batch.overwrite or not all(_is_finished_output(i.output) for i in items):
        check_out_dir_writable(out_dir)
    return items, missing


def _files_left_out(left_out: dict[Path, bool], wanted: set[str]) -> list[Path]:
    """Return the files with an input suffix among ``left_out`` and in its folders.

    ``left_out`` maps each path to whether a folder's subfolders count too, as
    collect_inputs fills it.
    """
    files: set[Path] = set()
    for path, recursive in left_out.items():
        try:
            if path.is_dir() and not path.is_symlink():
                entries, _ = list_folder(path, recursive=recursive)
                files.update(entry for entry in entries if _is_candidate(entry, wanted))
            elif _is_candidate(path, wanted):
                files.add(path)
        except OSError as err:  # the files of an unreadable folder cannot be listed
            logger.debug("cannot list %s: %s", path, err)
    return sorted(files)


# Names of left-out files listed in the log line; the rest are counted.
LEFT_OUT_NAMES_SHOWN = 5


def _check_left_out(
    items: Sequence[BatchItem], files: list[Path], out_dir: Path, overwrite: bool
) -> None:
    """Log the input-tree ``files`` left out under ``out_dir``; stop on a clash.

    Such a file may be an earlier output or a file of the user's, and edgefx cannot
    tell which. So with ``overwrite``, an output at the path of one of them raises
    UsageError before any work. Without it, such an output is skipped as existing.
    """
    if not files:
        return
    shown = ", ".join(map(str, files[:LEFT_OUT_NAMES_SHOWN]))
    if len(files) > LEFT_OUT_NAMES_SHOWN:
        shown += f" and {len(files) - LEFT_OUT_NAMES_SHOWN} more"
    logger.info(
        "left out %s under --out %s, which lies inside the inputs, so that earlier "
        "outputs are not read as inputs: %s",
        count_noun(len(files), "file"),
        out_dir,
        shown,
    )
    if not overwrite:
        return
    folders: dict[Path, Path] = {}
    by_path = {resolve_file(path, folders): path for path in files}
    for item in items:
        assert isinstance(item.output, Path)
        clash = by_path.get(resolve_file(item.output, folders))
        if clash is not None:
            raise UsageError(
                f"{item.source}: with --overwrite, the output would replace {clash}, "
                f"a file inside the inputs that was left out because it is under "
                f"--out {out_dir}; choose an --out directory outside the inputs, or "
                "remove the earlier outputs first"
            )


def _reject_temporary_names(
    items: Sequence[BatchItem],
) -> tuple[list[BatchItem], list[FileResult]]:
    """Split off the items whose output name has the form of a temporary file's.

    A later run into the same folder would remove such an output as the leftover of
    a killed run once it is an hour old, so these items fail instead.
    """
    kept: list[BatchItem] = []
    rejected: list[FileResult] = []
    for item in items:
        if isinstance(item.output, Path) and is_temporary_name(item.output.name):
            reason = (
                f"the output name {item.output.name} has the form of an edgefx "
                "temporary file, which a later run would delete; rename the input"
            )
            rejected.append(_failure(item.source, reason))
        else:
            kept.append(item)
    return kept, rejected


def execute_batch(
    items: Sequence[BatchItem],
    missing: Sequence[FileResult],
    process: Callable[[BatchItem], float],
    batch: BatchOptions,
    reporter: Reporter,
    unit: str = "MP",
) -> BatchSummary:
    """Remove stale temporaries, run ``process`` on every item and report all results.

    The missing inputs are reported first and listed first in the summary.
    """
    remove_stale_temporaries(items, [failure.source for failure in missing])
    reporter.start(len(items) + len(missing))
    for failure in missing:
        reporter.result(failure)
    summary = run_batch(
        items, process, overwrite=batch.overwrite, reporter=reporter, unit=unit
    )
    summary.results[:0] = missing
    return summary
