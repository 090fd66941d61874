"""Loading training checkpoints without running code stored in them."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from edgefx.errors import ModelError
from edgefx.fsutil import atomic_write_bytes

logger = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint of tensors, numbers, strings and containers onto the CPU.

    ``torch.load(weights_only=True)`` unpickles only those types, so a file that would
    run code or build other objects when unpickled is rejected before anything runs.
    Raises ModelError, naming the file, for such a file and for one that is not a
    PyTorch checkpoint at all.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelError(
            f"{path}: rejected: the checkpoint contains pickled objects other than "
            "tensors and plain containers, which could run code when loaded; delete "
            "it or use another --work-dir"
        ) from err
    except (OSError, EOFError, RuntimeError, KeyError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(f"{path}: not a PyTorch checkpoint ({detail})") from err
    if not isinstance(state, dict):
        raise ModelError(
            f"{path}: not an edgefx checkpoint: it contains {type(state).__name__}, "
            "not a dictionary"
        )
    return state


# Options that may change on resume without a warning. Threads and the work folder do
# not change what is trained, and the checkpoint overrides the start weights.
_QUIET_OPTIONS = frozenset({"threads", "work_dir", "init"})


def _plain(value: object) -> object:
    """Return a JSON value for ``value``: a path as an absolute path, else its text."""
    if isinstance(value, os.PathLike):
        return os.path.abspath(value)
    return str(value)


def _as_current(old: object, new: object) -> object:
    """Return a saved value in the form the current one has.

    Runs started before paths were stored as absolute paths saved them as typed. Such
    a relative path is read from the current folder when the current value is an
    absolute path, so resuming the same command there is no change.
    """
    if isinstance(old, str) and isinstance(new, str):
        if os.path.isabs(new) and not os.path.isabs(old):
            return os.path.abspath(old)
        return old
    if isinstance(old, list) and isinstance(new, list):
        paths = [n for n in new if isinstance(n, str) and os.path.isabs(n)]
        if paths:
            return [
                os.path.abspath(o) if isinstance(o, str) and not os.path.isabs(o) else o
                for o in old
            ]
    return old


def _describe_change(flag: str, old: object, new: object) -> str:
    """Name one changed option: its flag and both values, or for lists what moved."""
    if isinstance(old, list) and isinstance(new, list):
        added = len(set(map(str, new)) - set(map(str, old)))
        removed = len(set(map(str, old)) - set(map(str, new)))
        return (
            f"{flag} {len(old)} -> {len(new)} entries ({added} added, {removed} "
            "removed)"
        )
    return f"{flag} {old!r} -> {new!r}"


def _field_defaults(options: Any) -> dict[str, Any]:
    """Return the default value of each field of a dataclass instance that has one."""
    defaults = {}
    for field in dataclasses.fields(options):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def record_options(
    work_dir: Path,
    options: Any,
    *,
    resumed: bool,
    flags: dict[str, str] | None = None,
    also_quiet: tuple[str, ...] = (),
) -> None:
    """Write ``options.json`` in ``work_dir``, first warning about changes on resume.

    A run resumed with other data or schedule options goes on with the new ones, which
    is sometimes what the user wants (a longer schedule) and sometimes a typo. Either
    way, the log names each changed option with its old and new value. Paths are
    stored as absolute paths, so that the same folder given another way is no change.
    ``flags`` maps option names to the command-line flags that set them, where the
    two differ. ``options`` is a dataclass instance or a plain dictionary. For a
    dataclass, an option missing from the saved file (added to edgefx after the run
    began) counts as having had its default value.
    """
    path = work_dir / "options.json"
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        defaults = json.loads(json.dumps(_field_defaults(options), default=_plain))
        options = dataclasses.asdict(options)
    current = json.loads(json.dumps(options, default=_plain))
    if resumed and path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning(
                "%s is unreadable (%s), so options changed since the run began cannot "
                "be named; it is rewritten with the current ones",
                path,
                err,
            )
            saved = None
        if isinstance(saved, dict):
            quiet = _QUIET_OPTIONS | set(also_quiet)
            before = {
                key: _as_current(value, current.get(key))
                for key, value in saved.items()
            }
            for key, value in defaults.items():
                before.setdefault(key, value)
            changes = [
                _describe_change(
                    (flags or {}).get(key, "--" + key.replace("_", "-")),
                    before.get(key),
                    current.get(key),
                )
                for key in sorted(set(before) | set(current))
                if key not in quiet and before.get(key) != current.get(key)
            ]
            if changes:
                logger.warning(
                    "%s continues with other options than it ran with before: %s",
                    work_dir,
                    "; ".join(changes),
                )
    atomic_write_bytes(path, (json.dumps(current, indent=2) + "\n").encode())
