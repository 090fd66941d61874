"""Fine-tune the denoiser on the int8 grid that ONNX Runtime will run it on.

Post-training quantization of the denoiser (equalized, percentile ranges, tail
convolution in float32) loses 0.14 dB of PSNR on CBSD68 at sigma 25, nearly all of it
from rounding the activations to 8 bits. Here the calibrated model's own grid is
simulated in PyTorch:

- activations: each tensor that the int8 model rounds is rounded to that model's uint8
  scale and zero point, read from its QuantizeLinear nodes and kept fixed;
- weights: symmetric int8, one scale per output channel, recomputed from the weights
  at every step, as ONNX Runtime computes them when it quantizes the result.

A short fine-tune with this forward pass lets the weights adapt to the rounding. Its
loss is the mean over patches of the log of the squared error to the clean patch,
which is the mean PSNR up to sign and scale. The result is exported as an
ordinary float32 model and quantized again with the same activation grid
(``TensorQuantOverrides``), so the int8 model rounds exactly what was trained for.
Gradients pass through the rounding unchanged (the straight-through estimator).

The equalized weights are trained through fixed per-element factors applied to the
original ones, so that Adam's steps keep the size they have for the weights as
trained: equalization shrinks some channels' weights by large factors, and a plain
fine-tune of those would move them by far more, relatively, than the others.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from edgefx.train.nets import DenoiseNet, ResidualBlock

logger = logging.getLogger(__name__)

# A tensor name of the exported denoiser and the uint8 (scale, zero point) it is
# rounded to.
Grid = Mapping[str, tuple[float, int]]


def tensor_names(blocks: int) -> list[str]:
    """Names that PyTorch's ONNX exporter gives the denoiser's activation tensors."""
    names = [
        "/Squeeze_output_0",  # the pixel-unshuffled photo
        "/Expand_output_0",  # the noise level plane
        "/Concat_1_output_0",
        "/relu/Relu_output_0",
    ]
    for index in range(blocks):
        names += [
            f"/body/body.{index}/relu/Relu_output_0",
            f"/body/body.{index}/conv2/Conv_output_0",
            f"/body/body.{index}/Add_output_0",
        ]
    return names + [
        "/relu_1/Relu_output_0",
        "/tail/Conv_output_0",
        "/DepthToSpace_output_0",  # the predicted noise
    ]


def read_grid(model: object) -> dict[str, tuple[float, int]]:
    """Return the activation grids of a QDQ model (an ``onnx.ModelProto``)."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    grid = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            scale = float(constants[node.input[1]])
            zero_point = int(constants[node.input[2]])
            grid[node.input[0]] = (scale, zero_point)
    return grid


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Round a convolution weight to symmetric int8, one scale per output channel."""
    absolute_max = weight.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-12)
    scale = absolute_max / 127.0
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zero_point, 0, -127, 127
    )


class GridDenoiser(nn.Module):
    """DenoiseNet's forward pass with an int8 model's rounding, sharing its weights.

    ``grid`` maps the int8 model's activation tensors to their (scale, zero point);
    tensors missing from it stay in float32, as do the weights of convolutions in
    ``float_convolutions`` (parameter prefixes such as ``"tail"``). ``factors``
    multiply the parameters of the same name before use (see the module docstring);
    ``weights()`` returns the parameters with the factors applied.
    """

    def __init__(
        self,
        model: DenoiseNet,
        grid: Grid,
        float_convolutions: tuple[str, ...] = (),
        factors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(grid) - set(tensor_names(model.blocks)))
        if unknown:
            raise ValueError(
                "the int8 model rounds tensors that the simulation does not cover: "
                + ", ".join(unknown)
            )
        self.model = model
        self.grid = dict(grid)
        self.float_convolutions = float_convolutions
        self.factors = dict(factors or {})

    def _round(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if name not in self.grid:
            return x
        scale, zero_point = self.grid[name]
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    def _parameter(self, name: str, value: torch.Tensor) -> torch.Tensor:
        factor = self.factors.get(name)
        return value if factor is None else value * factor

    def _conv(self, layer: nn.Conv2d, prefix: str, x: torch.Tensor) -> torch.Tensor:
        weight = self._parameter(f"{prefix}.weight", layer.weight)
        if prefix not in self.float_convolutions:
            weight = fake_quantize_weight(weight)
        bias = self._parameter(f"{prefix}.bias", layer.bias)  # type: ignore[arg-type]
        return functional.conv2d(x, weight, bias, padding=layer.padding)

    def weights(self) -> dict[str, torch.Tensor]:
        return {
            name: self._parameter(name, value).detach().clone()
            for name, value in self.model.state_dict().items()
        }

    def forward(self, image: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        model = self.model
        q = self._round
        packed = q(functional.pixel_unshuffle(image, 2), "/Squeeze_output_0")
        shape = (-1, -1, packed.shape[2], packed.shape[3])
        plane = q(noise_level.expand(*shape), "/Expand_output_0")
        x = q(torch.cat([packed, plane], dim=1), "/Concat_1_output_0")
        x = q(torch.relu(self._conv(model.head, "head", x)), "/relu/Relu_output_0")
        for index, module in enumerate(model.body):
            block: ResidualBlock = module  # type: ignore[assignment]
            name = f"/body/body.{index}"
            inner = torch.relu(self._conv(block.conv1, f"body.{index}.conv1", x))
            inner = q(inner, f"{name}/relu/Relu_output_0")
            residual = self._conv(block.conv2, f"body.{index}.conv2", inner)
            x = q(
                x + q(residual, f"{name}/conv2/Conv_output_0"), f"{name}/Add_output_0"
            )
        # ONNX Runtime folds the last sum's rounding into the ReLU after it, so the
        # last sum is missing from the grid.
        x = q(torch.relu(x), "/relu_1/Relu_output_0")
        noise = q(self._conv(model.tail, "tail", x), "/tail/Conv_output_0")
        return image - q(functional.pixel_shuffle(noise, 2), "/DepthToSpace_output_0")


def equalization_factors(
    original: DenoiseNet, equalized: DenoiseNet
) -> dict[str, torch.Tensor]:
    """Per-element factors that turn ``original``'s parameters into ``equalized``'s."""
    factors = {}
    after = equalized.state_dict()
    for name, before in original.state_dict().items():
        nonzero = before != 0
        safe = torch.where(nonzero, before, torch.ones_like(before))
        factors[name] = torch.where(nonzero, after[name] / safe, torch.ones_like(safe))
    return factors


def fine_tune(
    original: DenoiseNet,
    equalized: DenoiseNet,
    grid: Grid,
    photos: list[np.ndarray],
    steps: int,
    learning_rate: float = 1e-5,
    float_convolutions: tuple[str, ...] = (),
    batch_size: int = 32,
    patch_size: int = 64,
    seed: int = 0,
) -> DenoiseNet:
    """Fine-tune on ``grid`` and return the equalized network with the new weights.

    ``photos`` are clean (H, W, 3) float32 RGB images in [0, 1]. Patches get noise of
    sigma 0-75 and are clipped and rounded to 8 bits, as photos reach the CLI. The
    learning rate decays to zero over ``steps`` on a cosine.
    """
    from edgefx.train.denoise import DenoiseTrainOptions, PatchSampler, TrainingImage

    torch.manual_seed(seed)
    model = DenoiseNet(original.channels, original.features, original.blocks)
    model.load_state_dict(original.state_dict())
    simulated = GridDenoiser(
        model, grid, float_convolutions, equalization_factors(original, equalized)
    )
    images = [
        TrainingImage(
            photo,
            is_gray=bool(
                np.abs(photo - photo.mean(axis=2, keepdims=True)).max() < 1e-3
            ),
        )
        for photo in photos
    ]
    options = DenoiseTrainOptions(
        data=Path(),
        work_dir=Path(),
        batch_size=batch_size,
        patch_size=patch_size,
        clip_fraction=1.0,
    )
    sampler = PatchSampler(images, options, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    started = time.monotonic()
    total = 0.0
    for step in range(steps):
        rate = learning_rate * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = rate
        noisy, level, clean = sampler.batch()
        # The mean log of each patch's squared error weighs the noise levels as PSNR
        # does. A plain mean squared error is dominated by the noisiest patches,
        # and the int8 loss is largest at low noise.
        error = torch.mean((simulated(noisy, level) - clean) ** 2, dim=(1, 2, 3))
        loss = torch.mean(torch.log(error + 1e-10))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info(
                "fine-tune step %d of %d: mean log squared error %.3f, %.0f s",
                step + 1,
                steps,
                total / ((step % 50) + 1),
                time.monotonic() - started,
            )
            total = 0.0
    result = DenoiseNet(original.channels, original.features, original.blocks)
    result.load_state_dict(simulated.weights())
    return result.eval()
