"""Export of trained networks to ONNX, with an output parity check against PyTorch."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch

from edgefx.train.checkpoint import load_checkpoint
from edgefx.train.nets import DenoiseNet, FlipAveraged, SpeechEnhancerNet

logger = logging.getLogger(__name__)

OPSET = 17
# onnx 1.17+ writes IR version 11 or newer by default, which ONNX Runtime releases up to
# at least 1.31 reject ("Unsupported model IR version"); IR 8 is what opset 17 needs.
IR_VERSION = 8

# Largest absolute difference accepted between torch and ONNX Runtime outputs, on the
# [0, 1] pixel scale: a tenth of one 8-bit level.
DENOISE_PARITY_TOLERANCE = 0.1 / 255


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the UserWarnings that torch.onnx.export prints about its own internals.

    Each export is checked against PyTorch afterwards, so warnings such as the one
    about GRUs and batch sizes only alarm the user.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


def finish_onnx_file(path: Path, metadata: dict[str, str]) -> None:
    """Set the IR version and ``metadata`` of an exported file, check it, save it."""
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def load_denoiser_checkpoint(path: Path) -> DenoiseNet:
    """Build a DenoiseNet from a training checkpoint (loaded without pickle code)."""
    state = load_checkpoint(path)
    config = state["config"]
    model = DenoiseNet(config["channels"], config["features"], config["blocks"])
    model.load_state_dict(state["model"])
    return model.eval()


def export_denoiser(
    model: DenoiseNet, out_path: Path, metadata: dict[str, str]
) -> float:
    """Write ``model`` as ONNX with ``metadata`` and return the max parity error.

    Raises RuntimeError when ONNX Runtime's output differs from torch's by more than
    DENOISE_PARITY_TOLERANCE on a random 96x128 input.
    """
    model = model.eval()
    image = torch.rand(1, model.channels, 64, 64)
    level = torch.full((1, 1, 1, 1), 25 / 255)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_suffix(".tmp.onnx")
    with _quiet_export():
        torch.onnx.export(
            model,
            (image, level),
            str(temporary),
            input_names=["image", "noise_level"],
            output_names=["denoised"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "noise_level": {0: "batch"},
                "denoised": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=OPSET,
            # NOTE: torch 2.13 deprecates this TorchScript exporter. The dynamo exporter
            # also gives a matching graph for this network, but at opset 18 and IR 10,
            # which older ONNX Runtime builds on edge devices cannot load.
            dynamo=False,
        )
    finish_onnx_file(temporary, metadata)

    error = denoiser_parity_error(model, temporary)
    if error > DENOISE_PARITY_TOLERANCE:
        temporary.unlink()
        raise RuntimeError(
            f"ONNX export differs from torch by {error:.2e}, above the tolerance "
            f"{DENOISE_PARITY_TOLERANCE:.2e}"
        )
    temporary.replace(out_path)
    logger.info("ONNX matches torch: max difference %.2e", error)
    return error


def denoiser_parity_error(model: DenoiseNet, onnx_path: Path) -> float:
    """Return the max absolute difference between torch and ONNX Runtime outputs."""
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, model.channels, 96, 128, generator=generator)
    level = torch.tensor([15.0, 50.0]).reshape(2, 1, 1, 1) / 255
    with torch.no_grad():
        expected = model(image, level).numpy()
    session = onnxruntime.InferenceSession(
        str(onnx_path), providers=["CPUExecutionProvider"]
    )
    (actual,) = session.run(
        None, {"image": image.numpy(), "noise_level": level.numpy()}
    )
    return float(np.max(np.abs(actual - expected)))


def denoiser_metadata(
    model: DenoiseNet, name: str, version: str, training: dict[str, object]
) -> dict[str, str]:
    """Return the metadata_props that the runtime reads from a denoiser."""
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "task": "denoise",
        "name": name,
        "version": version,
        "input_layout": "NCHW",
        "input_range": "0-1",
        "color_order": "RGB",
        "channels": str(model.channels),
        "noise_level_input": "noise_level: (N, 1, 1, 1), sigma / 255",
        "noise_level_range": "0-75",
        "size_multiple": "2",
        # Context each tile needs: 2 pixels per 3x3 convolution at half resolution.
        # Tiles start at even pixels, so this covers the receptive field exactly.
        "tile_margin": str(2 * (2 * model.blocks + 2)),
        "parameters": str(parameters),
        "macs_per_pixel": str(model.macs_per_pixel()),
        "training": json.dumps(training, sort_keys=True),
    }


# Largest difference accepted between torch and ONNX Runtime logits, relative to the
# largest logit where that is above 1: float32 rounding grows with the values.
CLASSIFY_PARITY_TOLERANCE = 1e-4


def export_classifier(
    model: torch.nn.Module,
    out_path: Path,
    metadata: dict[str, str],
    size: int,
    flip_average: bool = False,
) -> float:
    """Write a classifier as ONNX with ``metadata`` and return the max parity error.

    With ``flip_average``, the graph averages the logits of each image and of its
    mirror image (``FlipAveraged``). Raises ModelError when the network's logits are
    not finite (training diverged), and RuntimeError when ONNX Runtime's logits differ
    from torch's by more than CLASSIFY_PARITY_TOLERANCE (relative above 1) on random
    inputs.
    """
    import onnxruntime

    from edgefx.errors import ModelError

    if flip_average:
        model = FlipAveraged(model)
    model = model.eval()
    example = torch.randn(1, 3, size, size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_suffix(".tmp.onnx")
    with _quiet_export():
        torch.onnx.export(
            model,
            (example,),
            str(temporary),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # see export_denoiser
        )
    finish_onnx_file(temporary, metadata)

    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(
        str(temporary), providers=["CPUExecutionProvider"]
    )
    (actual,) = session.run(None, {"image": images.numpy()})
    if not np.isfinite(expected).all():
        temporary.unlink()
        raise ModelError(
            f"{out_path}: not exported, because the trained network's logits are not "
            "finite: training diverged; train longer (--epochs), which lengthens the "
            "warm-up, or with a lower --learning-rate"
        )
    error = float(np.max(np.abs(actual - expected)))
    tolerance = CLASSIFY_PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
    if error > tolerance:
        temporary.unlink()
        raise RuntimeError(
            f"ONNX export differs from torch by {error:.2e}, above the tolerance "
            f"{tolerance:.2e}"
        )
    temporary.replace(out_path)
    logger.info("ONNX matches torch: max logit difference %.2e", error)
    return error


# Largest absolute difference accepted between torch and ONNX Runtime audio, and
# between the ONNX graph fed hop by hop and in one block, on the [-1, 1] scale: about
# a third of one 16-bit step.
ENHANCE_PARITY_TOLERANCE = 1e-5


def export_enhancer(
    model: SpeechEnhancerNet, out_path: Path, metadata: dict[str, str]
) -> float:
    """Write a speech enhancer in its streaming form and return the max parity error.

    The graph takes ``audio`` (B, T * hop), ``state`` (B, state_size) and ``min_gain``
    (1,), and returns ``enhanced``, ``state_out`` and ``high_gain``; T is free, so one
    graph serves one-hop streaming and block processing. Raises RuntimeError when
    ONNX Runtime differs from torch, or hop-by-hop from one block, by more than
    ENHANCE_PARITY_TOLERANCE.
    """
    import onnxruntime

    model = model.eval()
    hop, state_size = int(model.hop), int(model.state_size)
    example = (torch.zeros(1, 4 * hop), torch.zeros(1, state_size), torch.zeros(1))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_suffix(".tmp.onnx")
    with _quiet_export():
        torch.onnx.export(
            model,
            example,
            str(temporary),
            input_names=["audio", "state", "min_gain"],
            output_names=["enhanced", "state_out", "high_gain"],
            dynamic_axes={
                "audio": {0: "batch", 1: "samples"},
                "state": {0: "batch"},
                "enhanced": {0: "batch", 1: "samples"},
                "state_out": {0: "batch"},
                "high_gain": {0: "batch", 1: "hops"},
            },
            opset_version=OPSET,
            dynamo=False,  # see export_denoiser
        )
    finish_onnx_file(temporary, metadata)

    generator = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 40 * hop, generator=generator)
    state = torch.zeros(2, state_size)
    floor = torch.zeros(1)
    with torch.no_grad():
        expected = model(audio, state, floor)[0].numpy()
    session = onnxruntime.InferenceSession(
        str(temporary), providers=["CPUExecutionProvider"]
    )
    feeds = {"audio": audio.numpy(), "state": state.numpy(), "min_gain": floor.numpy()}
    block = session.run(None, feeds)[0]
    pieces, running = [], state.numpy()
    for start in range(0, audio.shape[1], hop):
        piece, running, _ = session.run(
            None,
            {
                "audio": audio.numpy()[:, start : start + hop],
                "state": running,
                "min_gain": floor.numpy(),
            },
        )
        pieces.append(piece)
    streamed = np.concatenate(pieces, axis=1)
    error = max(
        float(np.max(np.abs(block - expected))),
        float(np.max(np.abs(streamed - block))),
    )
    if error > ENHANCE_PARITY_TOLERANCE:
        temporary.unlink()
        raise RuntimeError(
            f"ONNX export differs from torch or from streaming by {error:.2e}, above "
            f"the tolerance {ENHANCE_PARITY_TOLERANCE:.2e}"
        )
    temporary.replace(out_path)
    logger.info("ONNX matches torch: max difference %.2e", error)
    return error
