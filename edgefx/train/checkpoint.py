"""Loading training checkpoints without running code stored in them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from edgefx.errors import ModelError


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
