"""PyTorch definitions of the networks that edgefx trains and exports to ONNX."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection around them."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv1.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv1.bias)  # type: ignore[arg-type]
        # A zero second convolution starts the block as the identity, so a deep stack
        # trains as easily as a shallow one (plain stacks of this depth stall for
        # hundreds of steps without normalization layers).
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class DenoiseNet(nn.Module):
    """Non-blind residual denoiser that works at half resolution.

    The image is pixel-unshuffled by 2, so every convolution runs on a quarter of the
    pixels. The noise level is fed in as an extra constant plane, so one model covers
    every noise level and the caller (or a noise estimator) picks the strength.
    The network predicts the noise and subtracts it from its input.
    """

    def __init__(self, channels: int = 3, features: int = 64, blocks: int = 5) -> None:
        super().__init__()
        self.channels = channels
        self.features = features
        self.blocks = blocks
        packed = channels * 4
        self.head = nn.Conv2d(packed + 1, features, 3, padding=1)
        nn.init.kaiming_normal_(self.head.weight, nonlinearity="relu")
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(blocks)])
        self.tail = nn.Conv2d(features, packed, 3, padding=1)
        # A zero tail starts the model at the identity, with no noise predicted. A
        # random one adds noise at first, which costs hundreds of steps to unlearn.
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)  # type: ignore[arg-type]
        self.relu = nn.ReLU(inplace=True)

    def forward(self, image: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        # image: (N, C, H, W) float32 in [0, 1], H and W even.
        # noise_level: (N, 1, 1, 1) float32, sigma on the 0-1 scale.
        packed = nn.functional.pixel_unshuffle(image, 2)  # (N, 4C, H/2, W/2)
        level_plane = noise_level.expand(-1, -1, packed.shape[2], packed.shape[3])
        features = self.relu(self.head(torch.cat([packed, level_plane], dim=1)))
        noise = self.tail(self.relu(self.body(features)))
        return image - nn.functional.pixel_shuffle(noise, 2)

    def macs_per_pixel(self) -> int:
        """Return the multiply-accumulates per full-resolution pixel."""
        packed = self.channels * 4
        per_half_pixel = 9 * (
            (packed + 1) * self.features
            + 2 * self.blocks * self.features * self.features
            + self.features * packed
        )
        return per_half_pixel // 4


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalization and a skip connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): 6n+2 layers.

    ``width`` 16 and ``blocks`` 3 give ResNet-20 with 0.27 M parameters.
    """

    def __init__(self, classes: int = 10, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.classes = classes
        self.width = width
        self.blocks = blocks
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_channels = width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_channels, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (N, 3, H, W) float32, normalized with the model's mean and std.
        features = self.stages(self.stem(image))
        return self.head(features.mean(dim=(2, 3)))  # (N, classes) logits
