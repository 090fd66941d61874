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


class CifarConvNet(nn.Module):
    """Wide, shallow plain network for small images, fast to train on a CPU.

    A 3x3 stem with 24 channels, then three stages of two 3x3 convolutions with a
    2x2 max pooling after the first, batch normalization and GELU, widths ``width``,
    ``4 * width`` and ``4 * width``; the head is a global max pooling and a linear
    layer. Its few wide layers suit the matrix units of current CPUs, so ``width`` 64
    (2 M parameters) trains about as fast per image as ResNet-20 and learns more in
    far fewer epochs, which makes it a teacher for distilling into ResNet-20.
    """

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.classes = classes
        self.width = width
        stem = 24
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.GELU(),
        ]
        in_channels = stem
        for channels in (width, 4 * width, 4 * width):
            layers += [
                nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(channels),
                nn.GELU(),
                nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.GELU(),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (N, 3, H, W) float32, normalized with the model's mean and std.
        features = self.features(image).amax(dim=(2, 3))
        return self.head(features)  # (N, classes) logits


class DenseLayer(nn.Module):
    """A DenseNet-BC layer: a 1x1 bottleneck to 4k channels, then a 3x3 convolution to
    k new channels, which are appended to the layer's input (pre-activation order)."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], dim=1)


class CifarDenseNet(nn.Module):
    """DenseNet-BC for small images (Huang et al. 2017): three dense blocks.

    Each block has ``layers`` DenseLayers, each adding ``growth`` channels, and the
    transitions between blocks halve both the channels (a 1x1 convolution) and the
    resolution (2x2 average pooling). The stem is a 3x3 convolution to twice the
    growth rate. Growth 12 and 8 layers per block (depth 6 * 8 + 4 = 52) give 0.26 M
    parameters: each layer takes every earlier feature map of its block as input, so few
    channels go a long way, at about six times ResNet-20's training step on a CPU.
    """

    def __init__(self, classes: int = 10, growth: int = 12, layers: int = 8) -> None:
        super().__init__()
        self.classes = classes
        channels = 2 * growth
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 3, 1, 1, bias=False)]
        for block in range(3):
            for _ in range(layers):
                modules.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                modules += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                channels //= 2
        modules += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*modules)
        self.head = nn.Linear(channels, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (N, 3, H, W) float32, normalized with the model's mean and std.
        features = self.features(image).mean(dim=(2, 3))
        return self.head(features)  # (N, classes) logits


# Classifier families of edgefx train classify, by their --arch name.
CLASSIFIER_ARCHITECTURES = ("resnet", "convnet", "densenet")
# Families whose config has a "blocks" entry (ResNet: blocks per stage; DenseNet:
# layers per dense block).
ARCHITECTURES_WITH_BLOCKS = ("resnet", "densenet")


def build_classifier(config: dict) -> nn.Module:
    """Return the untrained classifier that a checkpoint's network config describes.

    Checkpoints from before the convnet family have no ``arch`` key: ResNets.
    """
    classes = len(config["classes"])
    arch = config.get("arch", "resnet")
    if arch == "resnet":
        return CifarResNet(classes, config["width"], config["blocks"])
    if arch == "convnet":
        return CifarConvNet(classes, config["width"])
    if arch == "densenet":
        return CifarDenseNet(classes, config["width"], config["blocks"])
    raise ValueError(f"unknown classifier architecture {arch!r}")


class FlipAveraged(nn.Module):
    """Average a classifier's logits over the image and its left-right mirror image.

    Training flips images at random, so both views carry the same label. Averaging
    them took the shipped CIFAR-10 model from 88.17 % to 89.29 % top-1, for twice the
    multiply-accumulates and no extra parameters.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (N, 3, H, W); both views go through one batched call.
        count = image.shape[0]
        both = torch.cat([image, image.flip(3)], dim=0)
        logits = self.classifier(both)
        return (logits[:count] + logits[count:]) / 2


# Offsets (rows, columns) of the shifted views: the image itself and one pixel in each
# diagonal direction.
DIAGONAL_SHIFTS = ((0, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


class ShiftFlipAveraged(nn.Module):
    """Average a classifier's logits over 10 views: 5 positions, each also mirrored.

    Training crops at random offsets after padding, so a view shifted by one pixel is
    as likely as the image itself. The shifted views are cut from the image padded by
    one pixel of reflection. This costs 10 network calls per image and no parameters.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2], image.shape[3]
        padded = nn.functional.pad(image, (1, 1, 1, 1), mode="reflect")
        views = [
            padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            for dy, dx in DIAGONAL_SHIFTS
        ]
        views += [view.flip(3) for view in views]
        logits = self.classifier(torch.cat(views, dim=0))
        return logits.reshape(len(views), -1, logits.shape[1]).mean(dim=0)


def average_views(classifier: nn.Module, augmentation: str | None) -> nn.Module:
    """Wrap ``classifier`` to average the views that ``augmentation`` names.

    ``augmentation`` is a model's ``test_time_augmentation`` metadata value, so the
    wrapper computes what that ONNX graph computes.
    """
    from edgefx.classify import FLIP_AVERAGE_METADATA, SHIFT_FLIP_AVERAGE_METADATA

    if not augmentation:
        return classifier
    if augmentation == SHIFT_FLIP_AVERAGE_METADATA:
        return ShiftFlipAveraged(classifier)
    if augmentation == FLIP_AVERAGE_METADATA:
        return FlipAveraged(classifier)
    raise ValueError(f"unknown test-time augmentation {augmentation!r}")


# Kernel (frames, bins) and frequency dilation of the refinement convolutions.
REFINE_KERNEL = (3, 5)
REFINE_DILATION = 2
# Frames that the deep filter combines: the current one and the one before.
DEEP_FILTER_ORDER = 2


class SpeechEnhancerNet(nn.Module):
    """Causal spectral-gain network for speech enhancement, streamable hop by hop.

    The audio is cut into frames of ``2 * hop`` samples every ``hop`` samples, with a
    square-root Hann window for analysis and synthesis, so that overlap-add rebuilds
    the input exactly when every gain is 1. The network maps the log power spectrum
    of each frame through a linear layer and two GRU layers to one gain in [0, 1] per
    frequency bin. Nothing looks ahead: the output lags the input by one hop.

    With ``refine`` > 0, a small network that works on each bin's neighbourhood
    corrects those gains. The GRUs see each frame only through a 64-value summary, so
    fine structure such as the harmonics of a voice in loud noise is lost. Two
    convolutions over the last frames and nearby bins of the features and the gain
    logits add a correction to each logit. They have ``refine`` channels and weights
    shared by all bins, and the second is dilated in frequency to span harmonic
    spacings. They are causal in time, and the state carries the frames they need.

    With ``deep_filter`` > 0, the lowest ``deep_filter`` bins also go through a deep
    filter (Schroeter et al., DeepFilterNet, 2022): each such bin of the output is a
    complex-weighted sum of that bin in the current frame and the one before, with
    weights that the second GRU predicts per frame and bin. A real gain can only scale
    a bin. The filter can also follow the phase of a voice's harmonic as it turns from
    frame to frame. A noise does not turn that way, so the filter can pick the harmonic
    out of noise in the same bin. It starts as the identity (weight 1 on the current
    frame), so a network initialized from one without it starts with exactly that
    network's output.
    Under an attenuation limit (``min_gain`` > 0), those bins get ``min_gain`` of the
    input mixed back in, as DeepFilterNet does, instead of a floor on their gain.

    ``forward`` takes a block of whole hops and the state left by the previous block,
    and returns the enhanced block and the new state. Feeding a signal hop by hop or
    in one block gives the same output, which is what lets the exported ONNX graph
    run as a stream on an embedded caller.

    The discrete Fourier transform is written as matrix products with fixed cosine and
    sine tables, so the exported graph needs no signal-processing operators and runs on
    every ONNX Runtime build.
    """

    analysis_cos: torch.Tensor
    analysis_sin: torch.Tensor
    synthesis_cos: torch.Tensor
    synthesis_sin: torch.Tensor
    feature_mean: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(
        self,
        hop: int = 160,
        hidden: int = 72,
        embedding: int = 64,
        refine: int = 0,
        deep_filter: int = 0,
    ) -> None:
        super().__init__()
        self.hop = hop
        self.hidden = hidden
        self.embedding = embedding
        self.refine = refine
        self.deep_filter = deep_filter
        window_length = 2 * hop
        self.bins = hop + 1
        samples = torch.arange(window_length, dtype=torch.float64)
        window = torch.sin(torch.pi * (samples + 0.5) / window_length)  # sqrt-Hann
        frequencies = torch.arange(self.bins, dtype=torch.float64)
        angles = 2 * torch.pi * samples[:, None] * frequencies[None, :] / window_length
        # Analysis: windowed frame (.., 2 hop) @ (2 hop, bins) gives the real and
        # imaginary parts of the one-sided spectrum.
        self.register_buffer(
            "analysis_cos", (window[:, None] * torch.cos(angles)).float()
        )
        self.register_buffer(
            "analysis_sin", (-window[:, None] * torch.sin(angles)).float()
        )
        # Synthesis: inverse real DFT with the one-sided bins weighted (DC and Nyquist
        # once, the others twice), then the synthesis window.
        weights = torch.full((self.bins,), 2.0, dtype=torch.float64)
        weights[0] = 1.0
        weights[-1] = 1.0
        inverse_cos = weights[:, None] * torch.cos(angles.T) / window_length
        inverse_sin = -weights[:, None] * torch.sin(angles.T) / window_length
        self.register_buffer("synthesis_cos", (inverse_cos * window[None, :]).float())
        self.register_buffer("synthesis_sin", (inverse_sin * window[None, :]).float())
        # Per-bin normalization of the log power features, set from training data.
        self.register_buffer("feature_mean", torch.zeros(self.bins))
        self.register_buffer("feature_scale", torch.ones(self.bins))
        self.encoder = nn.Linear(self.bins, embedding)
        self.gru1 = nn.GRU(embedding, hidden, batch_first=True)
        self.gru2 = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden + embedding, self.bins)
        nn.init.zeros_(self.decoder.weight)
        # Gains start near 0.9, close to passing the input through.
        nn.init.constant_(self.decoder.bias, 2.2)
        if refine:
            # Local refinement of the gain logits: two causal convolutions over time
            # and frequency, with weights shared by all bins, see the docstring.
            self.refine1 = nn.Conv2d(2, refine, REFINE_KERNEL)
            self.refine2 = nn.Conv2d(
                refine, refine, REFINE_KERNEL, dilation=(1, REFINE_DILATION)
            )
            self.refine_out = nn.Conv2d(refine, 1, 1)
            # Zero at the start, so that a network initialized from one without the
            # refinement starts with exactly its gains.
            for parameter in self.refine_out.parameters():
                nn.init.zeros_(parameter)
        if deep_filter:
            if not 0 < deep_filter <= self.bins:
                raise ValueError(
                    f"deep_filter must be 1 to {self.bins} bins, got {deep_filter}"
                )
            # Per frame: (order, real and imaginary, bins) filter weights.
            self.filter_head = nn.Linear(hidden, DEEP_FILTER_ORDER * 2 * deep_filter)
            nn.init.zeros_(self.filter_head.weight)
            identity = torch.zeros(DEEP_FILTER_ORDER, 2, deep_filter)
            identity[0, 0] = 1.0  # weight 1 + 0i on the current frame
            with torch.no_grad():
                self.filter_head.bias.copy_(identity.flatten())

    @property
    def history_frames(self) -> int:
        """Past frames that each refinement convolution needs (kernel length - 1)."""
        return REFINE_KERNEL[0] - 1

    @property
    def buffer_size(self) -> int:
        """Floats at the start of the state that hold past audio rather than what the
        network has learned of the recording: the analysis and synthesis tails and
        the deep filter's past frame. A caller that primes the state on other audio
        clears these."""
        return 2 * self.hop + self.filter_history_size

    @property
    def filter_history_size(self) -> int:
        """Floats of the deep filter's past frames (real and imaginary parts)."""
        return (DEEP_FILTER_ORDER - 1) * 2 * self.deep_filter

    @property
    def state_size(self) -> int:
        """Floats of state per channel: analysis and synthesis tails, the deep filter's
        past frame, two GRU states, and with the refinement the past frames of both
        convolutions' inputs."""
        size = self.buffer_size + 2 * self.hidden
        if self.refine:
            size += self.history_frames * self.bins * (2 + self.refine)
        return size

    def spectrum(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # frames: (B, T, 2 hop) -> real and imaginary parts, each (B, T, bins)
        return frames @ self.analysis_cos, frames @ self.analysis_sin

    def gains(
        self,
        real: torch.Tensor,
        imag: torch.Tensor,
        h1: torch.Tensor | None = None,
        h2: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return per-bin gains (B, T, bins), the final GRU states (1, B, hidden), the
        refinement history and the second GRU's output (B, T, hidden).

        The refinement history is (B, refinement state floats), empty without the
        refinement.
        """
        power = real * real + imag * imag
        features = (torch.log(power + 1e-10) - self.feature_mean) * self.feature_scale
        embedded = torch.relu(self.encoder(features))
        out1, h1 = self.gru1(embedded, h1)
        out2, h2 = self.gru2(out1, h2)
        logits = self.decoder(torch.cat([out2, embedded], dim=-1))
        if not self.refine:
            return torch.sigmoid(logits), h1, h2, features.new_zeros(0), out2
        batch = features.shape[0]
        if history is None:
            history = features.new_zeros(
                batch, self.state_size - 2 * self.hop - 2 * self.hidden
            )
        past = self.history_frames
        split = past * self.bins * 2
        past1 = history[:, :split].reshape(batch, 2, past, self.bins)
        past2 = history[:, split:].reshape(batch, self.refine, past, self.bins)
        # (B, 2, T, bins): the features and the full-band logits of each frame.
        inputs = torch.stack([features, logits], dim=1)
        padded1 = torch.cat([past1, inputs], dim=2)
        width1 = REFINE_KERNEL[1] // 2
        # Channels-last tensors make CPU convolutions about twice as fast here.
        last = torch.channels_last
        hidden1 = torch.relu(
            self.refine1(
                torch.nn.functional.pad(padded1, (width1, width1)).contiguous(
                    memory_format=last
                )
            )
        )
        padded2 = torch.cat([past2, hidden1], dim=2)
        width2 = REFINE_DILATION * (REFINE_KERNEL[1] // 2)
        hidden2 = torch.relu(
            self.refine2(
                torch.nn.functional.pad(padded2, (width2, width2)).contiguous(
                    memory_format=last
                )
            )
        )
        logits = logits + self.refine_out(hidden2)[:, 0]
        new_history = torch.cat(
            [
                padded1[:, :, -past:].reshape(batch, -1),
                padded2[:, :, -past:].reshape(batch, -1),
            ],
            dim=1,
        )
        return torch.sigmoid(logits), h1, h2, new_history, out2

    def filtered(
        self,
        real: torch.Tensor,
        imag: torch.Tensor,
        out2: torch.Tensor,
        past: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply the deep filter to the lowest bins of the spectrum.

        ``real`` and ``imag`` are (B, T, bins), ``out2`` the second GRU's output and
        ``past`` (B, filter_history_size) the lowest input bins of the frames before the
        block. Returns the filtered real and imaginary parts of those bins, (B, T,
        deep_filter) each, and the new ``past``.
        """
        batch, frames = real.shape[0], real.shape[1]
        count, order = self.deep_filter, DEEP_FILTER_ORDER
        weights = self.filter_head(out2).reshape(batch, frames, order, 2, count)
        earlier = past.reshape(batch, order - 1, 2, count)
        # (B, order - 1 + T, bins) real and imaginary parts, oldest frame first.
        low_real = torch.cat([earlier[:, :, 0], real[:, :, :count]], dim=1)
        low_imag = torch.cat([earlier[:, :, 1], imag[:, :, :count]], dim=1)
        out_real = torch.zeros_like(real[:, :, :count])
        out_imag = torch.zeros_like(out_real)
        for lag in range(order):
            start = order - 1 - lag
            x_real = low_real[:, start : start + frames]
            x_imag = low_imag[:, start : start + frames]
            w_real, w_imag = weights[:, :, lag, 0], weights[:, :, lag, 1]
            out_real = out_real + w_real * x_real - w_imag * x_imag
            out_imag = out_imag + w_real * x_imag + w_imag * x_real
        kept = torch.stack(
            [low_real[:, -(order - 1) :], low_imag[:, -(order - 1) :]], 2
        )
        return out_real, out_imag, kept.reshape(batch, -1)

    def synthesize(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        # (B, T, bins) twice -> windowed time frames (B, T, 2 hop)
        return real @ self.synthesis_cos + imag @ self.synthesis_sin

    def forward(
        self, audio: torch.Tensor, state: torch.Tensor, min_gain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # audio: (B, T * hop) float32 at the model's rate; state: (B, state_size);
        # min_gain: (1,) lower bound of every gain (0 removes as much as it can).
        # Returns the enhanced block (B, T * hop), delayed by one hop, the new state,
        # and the mean gain of the top quarter of the band per hop (B, T), which the
        # runtime applies to content above the model's band.
        hop, hidden = self.hop, self.hidden
        batch = audio.shape[0]
        analysis_tail = state[:, :hop]
        synthesis_tail = state[:, hop : 2 * hop]
        filter_past = state[:, 2 * hop : self.buffer_size]
        recurrent = self.buffer_size
        h1 = state[:, recurrent : recurrent + hidden].unsqueeze(0).contiguous()
        h2 = state[:, recurrent + hidden : recurrent + 2 * hidden]
        h2 = h2.unsqueeze(0).contiguous()
        history = state[:, recurrent + 2 * hidden :]

        chunks = torch.cat([analysis_tail, audio], dim=1).reshape(batch, -1, hop)
        frames = torch.cat([chunks[:, :-1], chunks[:, 1:]], dim=2)  # (B, T, 2 hop)
        real, imag = self.spectrum(frames)
        gains, h1, h2, history, out2 = self.gains(
            real, imag, h1, h2, history if self.refine else None
        )
        raw_gains = gains
        gains = torch.maximum(gains, min_gain)
        out_real, out_imag = real * gains, imag * gains
        if self.deep_filter:
            count = self.deep_filter
            low_real, low_imag, filter_past = self.filtered(
                real, imag, out2, filter_past
            )
            # The attenuation limit mixes min_gain of the input back into the
            # filtered bins. With the identity filter, their gain is then between
            # min_gain and 1, as in the other bins.
            kept = 1.0 - min_gain
            low_gains = raw_gains[:, :, :count] * kept
            low_real = low_real * low_gains + min_gain * real[:, :, :count]
            low_imag = low_imag * low_gains + min_gain * imag[:, :, :count]
            out_real = torch.cat([low_real, out_real[:, :, count:]], dim=2)
            out_imag = torch.cat([low_imag, out_imag[:, :, count:]], dim=2)
        output_frames = self.synthesize(out_real, out_imag)
        first_halves = output_frames[:, :, :hop]
        second_halves = output_frames[:, :, hop:]
        previous = torch.cat(
            [synthesis_tail.unsqueeze(1), second_halves[:, :-1]], dim=1
        )
        enhanced = (first_halves + previous).reshape(batch, -1)
        parts = [chunks[:, -1], second_halves[:, -1]]
        if self.deep_filter:
            parts.append(filter_past)
        parts += [h1.squeeze(0), h2.squeeze(0)]
        if self.refine:
            parts.append(history)
        new_state = torch.cat(parts, dim=1)
        high_gain = gains[:, :, -(self.bins // 4) :].mean(dim=2)
        return enhanced, new_state, high_gain
