"""Batch outputs in an object store (``s3://bucket/prefix``) through pyarrow.fs.

An ``--out`` value that starts with a URI scheme names a prefix or an object in an
object store, and any other value is a local path. pyarrow.fs.FileSystem.from_uri opens
the store. Only s3:// is accepted, because it is the scheme tested against a server,
and the URI's query parameters configure it (``endpoint_override``, ``region``,
``scheme``). Credentials come from pyarrow's
defaults, for S3 the AWS_* environment variables, then ~/.aws/credentials and
~/.aws/config, then the EC2 instance metadata service.

Object stores have no rename, so the temporary file and rename of local outputs do not
apply. Each output is encoded completely first and then uploaded through one pyarrow
output stream. S3 creates the object only when the last request of that upload (the
PUT, or the CompleteMultipartUpload of a large object) succeeds, so a reader sees the
previous object or the new one, never part of one.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit, urlunsplit

from edgefx.errors import OutputError, UsageError

logger = logging.getLogger(__name__)

URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# pyarrow filesystems whose paths start with a bucket (S3, Google Cloud Storage) or a
# container (Azure), which must exist before objects are written into it.
BUCKET_FILESYSTEMS = frozenset({"s3", "gcs", "abfs"})
# URI schemes that --out accepts: the ones tested against a real server.
SUPPORTED_SCHEMES = frozenset({"s3"})


@dataclass(frozen=True)
class ObjectPath:
    """An object or a prefix of objects in an object store.

    ``root`` is the --out URI as given, including the query parameters that configure
    the filesystem and any credentials in it. ``key`` is the "/"-separated path below
    ``root``, empty for ``root`` itself. ``str()`` shows neither the query nor
    credentials, so it is safe for messages and logs.
    """

    root: str
    key: str = ""

    def __truediv__(self, relative: str | PurePath) -> ObjectPath:
        part = relative.as_posix() if isinstance(relative, PurePath) else relative
        key = f"{self.key}/{part}" if self.key else part
        return ObjectPath(self.root, key.strip("/"))

    def __str__(self) -> str:
        parts = urlsplit(self.root)
        redacted = f"{parts.scheme}://{_host_and_port(parts)}{parts.path}".rstrip("/")
        return f"{redacted}/{self.key}" if self.key else redacted

    @property
    def name(self) -> str:
        """The last component of the path, as PurePath.name returns it."""
        return PurePosixPath(urlsplit(str(self)).path).name

    @property
    def suffix(self) -> str:
        """The extension of the last component, as PurePath.suffix returns it."""
        return PurePosixPath(urlsplit(str(self)).path).suffix


OutputPath = Path | ObjectPath


def _host_and_port(parts: SplitResult) -> str:
    """Return the host and port of a split URI, without any user name or password."""
    return parts.netloc.rpartition("@")[2]


def parse_output(value: str | os.PathLike[str] | ObjectPath) -> OutputPath:
    """Return an --out value as an ObjectPath when it is a URI, else as a Path.

    Raises UsageError for an empty string, which Path would take as the current
    directory, and for any URI scheme but s3://. A ``file://`` URI is rejected as
    well, with the local path to give instead. A Path object stays local whatever its
    text.
    """
    if isinstance(value, (ObjectPath, Path)):
        return value
    text = os.fspath(value)
    if not text:
        raise UsageError("--out is empty; give a path")
    if not URI_SCHEME.match(text):
        return _local_output(Path(text))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    display_uri = f"{parts.scheme}://{_host_and_port(parts)}{parts.path}"
    if scheme == "file":
        raise UsageError(
            f"--out {display_uri}: file:// URIs are not accepted; give the local path "
            f"{unquote(parts.path)}"
        )
    if scheme not in SUPPORTED_SCHEMES:
        # TODO: gs:// and other pyarrow schemes need a bounded retry time first:
        # without credentials, pyarrow's GCS filesystem retried for 15 minutes in a
        # native call that ignored SIGTERM.
        raise UsageError(
            f"--out {display_uri}: unsupported object store scheme "
            f"{parts.scheme}://; use s3:// (S3-compatible servers through "
            "?endpoint_override=HOST:PORT)"
        )
    if not parts.hostname:
        raise UsageError(
            f"--out {display_uri}: missing bucket name; use s3://BUCKET/PREFIX"
        )
    return ObjectPath(text)


def _local_output(path: Path) -> Path:
    """Return ``path``, or raise UsageError when it is too long for the file system.

    Callers check the path next with Path.is_dir or Path.exists, which raise OSError
    for a path that is too long (Python 3.11) instead of returning False.
    """
    try:
        os.lstat(path)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            from edgefx.fsutil import describe_long_path  # fsutil imports this module

            raise UsageError(f"--out {path}: {describe_long_path(path)}") from err
    return path


def _import_pyarrow_fs() -> Any:
    try:
        import pyarrow.fs
    except ImportError as err:
        raise UsageError(
            "--out with an object store URI needs pyarrow; install it with: "
            "pip install pyarrow"
        ) from err
    return pyarrow.fs


def _with_delayed_open(root: str) -> str | None:
    """Return ``root`` with allow_delayed_open=true added for S3, else None.

    With that option, pyarrow uploads an object smaller than its multipart part size
    (10 MiB in pyarrow 26) with one PUT when the stream is closed, instead of three
    requests (create, upload part, complete).
    """
    parts = urlsplit(root)
    if parts.scheme.lower() != "s3" or "allow_delayed_open" in parse_qs(parts.query):
        return None
    option = "allow_delayed_open=true"
    query = f"{parts.query}&{option}" if parts.query else option
    return urlunsplit(parts._replace(query=query))


@functools.lru_cache(maxsize=16)
def _open_root(root: str) -> tuple[Any, str]:
    """Open the filesystem of an --out URI once per process; return it and its path.

    Each Ray actor opens its own, so each node reads its own credentials.
    """
    fs = _import_pyarrow_fs()
    redacted = ObjectPath(root)
    delayed = _with_delayed_open(root)
    try:
        if delayed is not None:
            try:
                filesystem, path = fs.FileSystem.from_uri(delayed)
            except ValueError as err:
                # NOTE: pyarrow 18.1 rejects the option and 26 accepts it. Releases
                # in between are untested; those that reject it take 3 requests.
                if "allow_delayed_open" not in str(err):
                    raise
                filesystem, path = fs.FileSystem.from_uri(root)
        else:
            filesystem, path = fs.FileSystem.from_uri(root)
    except ValueError as err:  # pyarrow.ArrowInvalid: unknown scheme or parameter
        # pyarrow's message may repeat the URI, with credentials from its query.
        reason = str(err).replace(root, str(redacted))
        raise UsageError(f"--out {redacted}: {reason}") from err
    except OSError as err:
        raise UsageError(f"--out {redacted}: {_reason(err)}") from err
    return filesystem, path.rstrip("/")


def _locate(path: ObjectPath) -> tuple[Any, str]:
    filesystem, base = _open_root(path.root)
    if not path.key:
        return filesystem, base
    return filesystem, f"{base}/{path.key}" if base else path.key


def _reason(err: OSError) -> str:
    """Return the first line of a pyarrow error, which names the failed request."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def check_prefix(path: ObjectPath) -> None:
    """Raise UsageError unless outputs can be written under the prefix ``path``.

    A few requests, before any work, check that pyarrow opens the URI, that the store
    responds, that the bucket exists and that ``path`` is not an object. Write
    permission cannot be checked without writing, so a rejected upload fails file by
    file.
    """
    fs = _import_pyarrow_fs()
    if _probe(path).type == fs.FileType.File:
        raise UsageError(f"--out {path} is an object; give a prefix for the outputs")


def check_object(path: ObjectPath) -> None:
    """Raise UsageError unless the object ``path`` can be written, as check_prefix."""
    fs = _import_pyarrow_fs()
    if _probe(path).type == fs.FileType.Directory:
        raise UsageError(f"--out {path} is a prefix with objects in it; give an object")


def _probe(path: ObjectPath) -> Any:
    """Return the pyarrow FileInfo of ``path``, or raise UsageError for no bucket."""
    fs = _import_pyarrow_fs()
    filesystem, location = _locate(path)
    try:
        if filesystem.type_name in BUCKET_FILESYSTEMS:
            bucket = location.split("/", 1)[0]
            if filesystem.get_file_info(bucket).type == fs.FileType.NotFound:
                raise UsageError(f"--out {path}: bucket {bucket!r} not found")
        return filesystem.get_file_info(location)
    except OSError as err:
        raise UsageError(f"--out {path}: {_reason(err)}") from err


def is_finished_object(path: ObjectPath) -> bool:
    """Tell whether ``path`` is a non-empty object, so that a rerun may skip it.

    A failed request counts as not finished, so the file is processed again.
    """
    fs = _import_pyarrow_fs()
    filesystem, location = _locate(path)
    try:
        info = filesystem.get_file_info(location)
    except OSError as err:
        logger.debug("cannot check whether %s exists: %s", path, _reason(err))
        return False
    return bool(info.type == fs.FileType.File and info.size)


def finished_keys(prefix: ObjectPath) -> frozenset[str] | None:
    """Return the keys, relative to ``prefix``, of the non-empty objects below it.

    One listing (a LIST request per 1,000 objects on S3) covers every output of a
    batch, where is_finished_object costs a request or two per output. Returns None when
    the listing fails, so that the caller can fall back to one request per output.
    """
    fs = _import_pyarrow_fs()
    filesystem, location = _locate(prefix)
    selector = fs.FileSelector(location, recursive=True, allow_not_found=True)
    try:
        infos = filesystem.get_file_info(selector)
    except OSError as err:
        logger.debug("cannot list %s: %s", prefix, _reason(err))
        return None
    start = len(location.rstrip("/")) + 1
    return frozenset(
        info.path[start:]
        for info in infos
        if info.type == fs.FileType.File and info.size
    )


def write_object(path: ObjectPath, data: Any) -> None:
    """Upload ``data`` (bytes or a pyarrow Buffer) as the object ``path``.

    Raises OutputError when the upload fails; no object is created then, and an
    existing one is left as it was.
    """
    filesystem, location = _locate(path)
    try:
        stream = filesystem.open_output_stream(location)
        # All the data goes in one write, and the object is created when the stream
        # closes. pyarrow uploads the parts of a large object in the background and
        # keeps the first failure, so close() then fails instead of completing a
        # partial object. That also holds when the stream is only garbage collected,
        # because pyarrow closes (not aborts) a stream in its destructor.
        # NOTE: the parts of a failed multipart upload stay stored, invisible, until a
        # bucket lifecycle rule for incomplete multipart uploads deletes them.
        stream.write(data)
        stream.close()
    except OSError as err:
        raise OutputError(path, f"upload failed: {_reason(err)}") from err


def upload_file(source: Path, path: ObjectPath) -> None:
    """Upload the local file ``source`` as the object ``path``, as write_object does.

    The file is memory-mapped, so it is not read into memory first.
    """
    _import_pyarrow_fs()
    import pyarrow

    try:
        with pyarrow.memory_map(str(source)) as mapped:
            write_object(path, mapped.read_buffer())
    except OSError as err:  # mapping the local file failed
        raise OutputError(path, f"cannot read {source}: {err}") from err
