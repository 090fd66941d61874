"""Quantization-aware fine-tuning of the denoiser for ONNX Runtime's int8 format.

Post-training int8 quantization of the denoiser loses about 0.35 dB of PSNR, nearly
all of it from rounding the activations to 8 bits (with 16-bit activations the loss is
0.06 dB). Training with that rounding simulated lets the weights adapt to it.

The simulation follows what ``onnxruntime.quantization.quantize_static`` does to this
network in QDQ format with per-channel weights (the format `edgefx quantize` writes):

- weights: symmetric int8, one scale per output channel;
- activations: asymmetric uint8, one scale and zero point per tensor, with a range
  that always contains zero. They are rounded on the same tensors that ONNX Runtime
  quantizes: the network input, every ReLU output, each block's second convolution
  and sum, and the predicted noise.

Activation ranges are running averages of the batch minimum and maximum. Gradients
pass through the rounding unchanged (the straight-through estimator). The trained
weights are ordinary float32 weights: the float model is exported as usual, and
`edgefx quantize` calibrates its own ranges from training photos.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from edgefx.train.nets import DenoiseNet, ResidualBlock

# Weight of the newest batch in the running activation ranges.
RANGE_MOMENTUM = 0.01


class ActivationFakeQuant(nn.Module):
    """Round a tensor to the uint8 grid of its running range, returning float values."""

    low: torch.Tensor
    high: torch.Tensor
    seen: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low = x.min().clamp(max=0.0)
                high = x.max().clamp(min=0.0)
                if bool(self.seen):
                    self.low.lerp_(low, RANGE_MOMENTUM)
                    self.high.lerp_(high, RANGE_MOMENTUM)
                else:
                    self.low.copy_(low)
                    self.high.copy_(high)
                    self.seen.fill_(True)
        span = (self.high - self.low).clamp(min=1e-8)
        scale = (span / 255.0).reshape(1)
        zero_point = torch.round(-self.low / scale).clamp(0, 255).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Round a convolution weight to symmetric int8, one scale per output channel."""
    absolute_max = weight.detach().abs().amax(dim=(1, 2, 3)).clamp(min=1e-12)
    scale = absolute_max / 127.0
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zero_point, 0, -127, 127
    )


def _conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return functional.conv2d(
        x, fake_quantize_weight(layer.weight), layer.bias, padding=layer.padding
    )


class QuantizationAwareDenoiser(nn.Module):
    """DenoiseNet forward pass with int8 rounding simulated, sharing its weights.

    The weights stay in ``self.model``, so the training checkpoint and the exporter see
    a plain DenoiseNet. ``range_state()`` returns the activation ranges, which the
    checkpoint stores beside the weights.
    """

    def __init__(self, model: DenoiseNet) -> None:
        super().__init__()
        self.model = model
        self.ranges = nn.ModuleDict(
            {name: ActivationFakeQuant() for name in self.range_names(model.blocks)}
        )

    @staticmethod
    def range_names(blocks: int) -> list[str]:
        names = ["input", "head"]
        for index in range(blocks):
            names += [f"block{index}_relu", f"block{index}_conv2"]
            if index < blocks - 1:
                names.append(f"block{index}_sum")
        return names + ["body", "noise"]

    def range_state(self) -> dict[str, torch.Tensor]:
        return self.ranges.state_dict()

    def load_range_state(self, state: dict[str, torch.Tensor]) -> None:
        self.ranges.load_state_dict(state)

    def forward(self, image: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        model = self.model
        q = self.ranges
        packed = functional.pixel_unshuffle(image, 2)
        level_plane = noise_level.expand(-1, -1, packed.shape[2], packed.shape[3])
        x = q["input"](torch.cat([packed, level_plane], dim=1))
        x = q["head"](torch.relu(_conv(model.head, x)))
        for index, module in enumerate(model.body):
            block: ResidualBlock = module  # type: ignore[assignment]
            inner = q[f"block{index}_relu"](torch.relu(_conv(block.conv1, x)))
            x = x + q[f"block{index}_conv2"](_conv(block.conv2, inner))
            if index < model.blocks - 1:
                x = q[f"block{index}_sum"](x)
        x = q["body"](torch.relu(x))
        noise = q["noise"](_conv(model.tail, x))
        return image - functional.pixel_shuffle(noise, 2)
