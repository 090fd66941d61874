"""Registry of the shipped models: manifest, checksums and the metadata in each file.

Each shipped ONNX file carries its own description in ``metadata_props`` (task, name,
version, input layout and range, training data, license, metrics). The manifest next to
the files records each file's SHA-256, which is checked every time a model is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from edgefx.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
TASKS = ("denoise", "classify", "enhance")


def models_directory() -> Path:
    """Return the shipped models' folder: in the installed wheel, else the checkout.

    The EDGEFX_MODELS_DIR environment variable, when set, names another folder with a
    manifest.json, for a private model set.
    """
    override = os.environ.get("EDGEFX_MODELS_DIR")
    if override:
        folder = Path(override).expanduser()
        if not (folder / MANIFEST_NAME).is_file():
            raise ModelError(f"EDGEFX_MODELS_DIR={override}: no {MANIFEST_NAME} there")
        return folder
    package = Path(__file__).resolve().parent
    for candidate in (package / "_models", package.parent / "models"):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise ModelError(
        "the shipped models are missing: no models/manifest.json next to the edgefx "
        "package; reinstall edgefx"
    )


@dataclass(frozen=True)
class ModelEntry:
    """One manifest row: a shipped model file and its expected checksum."""

    name: str
    task: str
    file: str
    sha256: str
    default: bool = False
    # A variant (int8, fp16) names the model it was made from. ``cpu_default`` marks
    # the variant that runs by default when the model runs on the CPU.
    precision: str = "fp32"
    variant_of: str | None = None
    cpu_default: bool = False


@dataclass
class ModelInfo:
    """A model file resolved for a task, with the metadata stored inside it."""

    name: str
    task: str
    path: Path
    shipped: bool
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def metric(self, key: str) -> str | None:
        metrics = parse_json(self.metadata.get("metrics", "{}"))
        value = metrics.get(key)
        return None if value is None else str(value)


def parse_json(text: str) -> Any:
    """Decode JSON ``text``; raise ValueError when it is invalid or nested too deeply.

    Python's json module raises RecursionError for arrays or objects nested deeper
    than the interpreter's recursion limit allows (sys.getrecursionlimit(), 1000 by
    default). This raises ValueError instead, as for any other invalid JSON.
    """
    try:
        return json.loads(text)
    except RecursionError as err:
        raise ValueError("arrays or objects are nested too deeply to decode") from err


def load_manifest(directory: Path | None = None) -> tuple[ModelEntry, ...]:
    folder = directory or models_directory()
    return _read_manifest(folder / MANIFEST_NAME)


@cache
def _read_manifest(path: Path) -> tuple[ModelEntry, ...]:
    try:
        rows = parse_json(path.read_text(encoding="utf-8"))["models"]
        return tuple(ModelEntry(**row) for row in rows)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{path}: invalid model manifest: {err}") from err


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# FlatBuffers file identifier of ONNX Runtime's ORT format, at bytes 4 to 8 of the
# files that the converter of ONNX Runtime 1.31 writes.
ORT_FILE_IDENTIFIER = b"ORTM"
ORT_HINT = (
    "ORT-format files run only in minimal ONNX Runtime builds; give the .onnx file "
    "it was converted from"
)


def _ort_format_problem(path: Path) -> str | None:
    """Return why ``path`` cannot run as an ONNX model because of the ORT format.

    Returns None for a file that is neither ORT format nor named .ort.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(8)
    except OSError:
        return None  # onnx.load reports the error
    if head[4:8] == ORT_FILE_IDENTIFIER:
        return f"the file is in ORT format, not ONNX. {ORT_HINT}"
    if path.suffix.lower() == ".ort":
        # ONNX Runtime 1.31 loads any file named .ort as ORT format.
        return (
            "ONNX Runtime reads a file named .ort as ORT format; if this is an ONNX "
            "file, rename it to .onnx"
        )
    return None


def read_metadata(path: Path) -> dict[str, str]:
    """Read ``metadata_props`` from an ONNX file; external weight files are not read."""
    import onnx

    problem = _ort_format_problem(path)
    if problem is not None:
        raise ModelError(f"{path}: {problem}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError and others
        raise ModelError(f"{path}: not a valid ONNX model ({err})") from err
    return {prop.key: prop.value for prop in model.metadata_props}


def shipped_models(task: str | None = None) -> list[ModelEntry]:
    entries = load_manifest()
    return [e for e in entries if task is None or e.task == task]


def verify_checksum(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        remedy = (
            "rebuild its manifest with tools/update_manifest.py --dir if you changed "
            "the file on purpose"
            if os.environ.get("EDGEFX_MODELS_DIR")
            else "reinstall edgefx to restore it"
        )
        raise ModelError(
            f"{path}: model file is damaged (SHA-256 {actual[:12]}..., expected "
            f"{expected[:12]}...); {remedy}"
        )


def _with_article(word: str) -> str:
    """Return ``word`` after "a", or after "an" when it starts with a vowel letter.

    The choice follows the spelling, not the sound, which is right for every name in
    TASKS.
    """
    article = "an" if word[:1].lower() in "aeiou" else "a"
    return f"{article} {word}"


def _runs_on_cpu(device: str) -> bool:
    """Return whether a session for ``device`` will run on the CPU."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    from edgefx.runtime import cuda_usable

    return not cuda_usable()


def resolve_model(
    name_or_path: str | None, task: str, device: str = "auto"
) -> ModelInfo:
    """Find the model to run for ``task``: a shipped name, a path, or the default.

    Without a name, a model that runs on the CPU (``device`` cpu, or auto without a
    usable CUDA) is the task's ``cpu_default`` variant where the manifest names one,
    and the task's default otherwise. A shipped model's checksum is verified. A path to
    another ONNX file is accepted as it is, and the task module checks that its inputs
    fit.
    """
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}")

    if name_or_path and (name_or_path.endswith(".onnx") or "/" in name_or_path):
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            raise ModelError(f"{path}: is a directory; expected an .onnx model file")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        metadata = read_metadata(path)
        declared = metadata.get("task")
        if declared and declared != task:
            message = (
                f"{path}: this is {_with_article(declared)} model, "
                f"not {_with_article(task)} model"
            )
            if declared in TASKS:
                message += f"; use it with `edgefx {declared}`"
            raise ModelError(message)
        logger.debug("using model file %s", path)
        return ModelInfo(
            name=metadata.get("name", path.stem),
            task=task,
            path=path,
            shipped=False,
            metadata=metadata,
        )

    candidates = shipped_models(task)
    if name_or_path:
        matches = [e for e in candidates if e.name == name_or_path]
        if not matches:
            _reject_other_model_file(name_or_path)
            names = ", ".join(e.name for e in candidates) or "none"
            raise UsageError(
                f"no shipped {task} model is named {name_or_path!r}; "
                f"available: {names} "
                "(or give a path to an .onnx file)"
            )
        entry = matches[0]
    else:
        defaults = [e for e in candidates if e.default] or candidates
        cpu_defaults = [e for e in candidates if e.cpu_default]
        if cpu_defaults and _runs_on_cpu(device):
            defaults = cpu_defaults
        if not defaults:
            raise ModelError(f"no {task} model is shipped with this edgefx build")
        entry = defaults[0]

    path = models_directory() / entry.file
    if not path.is_file():
        raise ModelError(f"{path}: shipped model file is missing; reinstall edgefx")
    verify_checksum(path, entry.sha256)
    return ModelInfo(
        name=entry.name,
        task=entry.task,
        path=path,
        shipped=True,
        metadata=read_metadata(path),
    )


def _reject_other_model_file(name: str) -> None:
    """Raise UsageError when ``name`` is an existing file that is not .onnx."""
    path = Path(name).expanduser()
    if not path.is_file():
        return
    problem = _ort_format_problem(path)
    if problem is not None:
        raise UsageError(f"{path}: {problem}")
    raise UsageError(f"{path}: the file exists, but edgefx runs .onnx model files only")


def resolve_any_model(name_or_path: str) -> ModelInfo:
    """Find a shipped model by name, or open a model file, whatever its task.

    The task comes from the manifest for a shipped name and from the file's metadata
    for a path.
    """
    if name_or_path.endswith(".onnx") or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        task = read_metadata(path).get("task")
        if task not in TASKS:
            raise ModelError(
                f"{path}: the model's metadata names no edgefx task (task={task!r}); "
                f"expected one of {', '.join(TASKS)}"
            )
        return resolve_model(name_or_path, task)
    for entry in load_manifest():
        if entry.name == name_or_path:
            return resolve_model(entry.name, entry.task)
    _reject_other_model_file(name_or_path)
    names = ", ".join(e.name for e in load_manifest())
    raise UsageError(
        f"no shipped model is named {name_or_path!r}; available: {names} "
        "(or give a path to an .onnx file)"
    )


@dataclass(frozen=True)
class ModelSummary:
    """One row of ``edgefx models``."""

    name: str
    task: str
    default: bool
    size_bytes: int
    parameters: int
    key_metric: str
    precision: str = "fp32"
    cpu_default: bool = False
    variant_of: str | None = None
    # Where the model runs when no --model is given: "yes" (everywhere), "CPU",
    # "CUDA" (its task has a CPU variant) or "" (only when named).
    default_on: str = ""


def model_summaries(task: str | None = None) -> list[ModelSummary]:
    """Describe every shipped model (of ``task``, when given) from its own metadata."""
    if task is not None and task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    folder = models_directory()
    entries = shipped_models(task)
    # A task whose CPU default is another variant runs its default on CUDA only.
    split_tasks = {e.task for e in entries if e.cpu_default and not e.default}
    rows = []
    for entry in entries:
        path = folder / entry.file
        metadata = read_metadata(path) if path.is_file() else {}
        if entry.default:
            default_on = "CUDA" if entry.task in split_tasks else "yes"
        else:
            default_on = "CPU" if entry.cpu_default else ""
        rows.append(
            ModelSummary(
                name=entry.name,
                task=entry.task,
                default=entry.default,
                size_bytes=path.stat().st_size if path.is_file() else 0,
                parameters=int(metadata.get("parameters", "0")),
                key_metric=metadata.get(
                    "key_metric", "missing file" if not metadata else ""
                ),
                precision=entry.precision,
                cpu_default=entry.cpu_default,
                variant_of=entry.variant_of,
                default_on=default_on,
            )
        )
    return rows
