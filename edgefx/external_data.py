"""Checks of an ONNX file's external-data references before a session opens it.

An ONNX tensor may keep its values in another file, named by the ``location`` entry of
its ``external_data`` field and read relative to the model's folder. A model from an
untrusted source could name any file on the machine there (``/etc/shadow``,
``../../secrets``, or a symbolic link to one), so every location must stay inside the
model's folder. ONNX Runtime 1.31 applies the same rule, but older releases do not,
and this check gives one clear message whatever the installed release.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgefx.errors import ModelError

logger = logging.getLogger(__name__)


def check_external_data(model_path: Path) -> list[str]:
    """Return the model's external-data locations, each once, in the order of use.

    Raises ModelError when a tensor's external data lies outside the model's folder.
    Rejected locations: empty ones, absolute paths (POSIX or Windows), paths with a
    ``..`` component, and paths whose real location, after following symbolic links,
    is outside the folder that contains ``model_path``. Only the model's own bytes are
    read: the external files are not opened.
    """
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError and others
        detail = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(
            f"{model_path}: cannot load the model: not a valid ONNX file ({detail})"
        ) from err

    folder = Path(model_path).absolute().parent
    real_folder = folder.resolve()
    locations: list[str] = []
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        reason = _location_problem(location, folder, real_folder)
        if reason is not None:
            raise ModelError(
                f"{model_path}: tensor {tensor.name!r} has its data in "
                f"{location!r}, which {reason}; external data must be a file inside "
                f"the model's folder {folder}"
            )
        logger.debug("%s: tensor %s reads %s", model_path, tensor.name, location)
        if location not in locations:
            locations.append(location)
    return locations


def _location_problem(location: str, folder: Path, real_folder: Path) -> str | None:
    """Return why ``location`` is not allowed, or None when it is inside ``folder``."""
    if not location or "\x00" in location:
        return "is not a valid file name"
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "is an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "goes up out of the folder with '..'"
    target = (folder / location).resolve()
    if not target.is_relative_to(real_folder):
        return f"is a link to {target}, outside the folder"
    return None


def _tensors(graph: Any) -> Iterator[Any]:
    """Yield every TensorProto of a graph: initializers, sparse ones and attributes.

    Subgraphs (the bodies of If, Loop and Scan nodes) are walked too.
    """
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
