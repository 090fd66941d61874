"""Exceptions raised by the library; the CLI maps them to messages and exit statuses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefx.objectstore import ObjectPath


class EdgefxError(Exception):
    """Base class of every error that edgefx raises on purpose."""

    exit_code = 1


class UsageError(EdgefxError):
    """Invalid options or option combinations, found before any work starts."""

    exit_code = 2


class DeviceError(EdgefxError):
    """A requested execution provider (CUDA, TensorRT) cannot start on this machine."""

    exit_code = 2


class ModelError(EdgefxError):
    """A model file is missing, damaged, or does not fit the task."""

    exit_code = 2


class InferenceError(EdgefxError):
    """The model failed on one input or returned NaN or infinite values.

    A batch reports the file and goes on, because another input may run: a model can
    accept some image sizes and reject others.
    """


class InputError(EdgefxError):
    """One input file cannot be processed; a batch reports it and goes on."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class OutputError(EdgefxError):
    """An output cannot be written (read-only directory, full disk, failed upload)."""

    def __init__(self, path: Path | str | ObjectPath, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path) if isinstance(path, str) else path
        self.reason = reason
