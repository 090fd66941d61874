"""Training recipe for the image denoiser: Gaussian noise on clean photos, resumable.

Run through ``edgefx train denoise --data DIR``. Any folder of clean images works.
Grayscale files become grayscale training samples with the same noise in the three
channels, so one model serves color and grayscale photos.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edgefx.text import key_values
from edgefx.train.checkpoint import load_checkpoint, record_options
from edgefx.train.nets import DenoiseNet
from edgefx.train.precision import use_bfloat16

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class DenoiseTrainOptions:
    data: Path
    work_dir: Path
    steps: int = 6000
    batch_size: int = 32
    patch_size: int = 64
    features: int = 64
    blocks: int = 5
    learning_rate: float = 1e-3
    max_sigma: float = 75.0
    gray_fraction: float = 0.15
    clip_fraction: float = 0.5
    validation_every: int = 250
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 0
    precision: str = "auto"
    init: Path | None = None


@dataclass
class TrainingImage:
    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1], RGB
    is_gray: bool


def list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def load_image(path: Path) -> TrainingImage:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"{path}: not a readable image")
    scale = 65535.0 if raw.dtype == np.uint16 else 255.0
    pixels = raw.astype(np.float32) / scale
    if pixels.ndim == 2:
        return TrainingImage(np.repeat(pixels[:, :, None], 3, axis=2), is_gray=True)
    pixels = pixels[:, :, :3][:, :, ::-1]  # BGR(A) to RGB
    is_gray = bool(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max() < 1e-3)
    return TrainingImage(np.ascontiguousarray(pixels), is_gray=is_gray)


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Hold out every 20th file (at least one) for validation, deterministically."""
    validation = files[::20] if len(files) >= 2 else []
    held = set(validation)
    return [f for f in files if f not in held], validation


class PatchSampler:
    """Draws noisy/clean patch pairs with random crops, flips, rotations and sigma."""

    def __init__(
        self, images: list[TrainingImage], options: DenoiseTrainOptions, seed: int
    ) -> None:
        self.images = [
            im for im in images if min(im.pixels.shape[:2]) >= options.patch_size
        ]
        if not self.images:
            raise ValueError(
                f"no training image is at least {options.patch_size} pixels "
                "on each side"
            )
        self.options = options
        self.rng = np.random.default_rng(seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        opts = self.options
        size = opts.patch_size
        clean = np.empty((opts.batch_size, 3, size, size), np.float32)
        gray = np.zeros(opts.batch_size, bool)
        for i in range(opts.batch_size):
            image = self.images[self.rng.integers(len(self.images))]
            h, w = image.pixels.shape[:2]
            y = self.rng.integers(h - size + 1)
            x = self.rng.integers(w - size + 1)
            patch = image.pixels[y : y + size, x : x + size]
            patch = np.rot90(patch, int(self.rng.integers(4)))
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            gray[i] = image.is_gray or self.rng.random() < opts.gray_fraction
            if gray[i] and not image.is_gray:
                luma = patch @ np.array([0.299, 0.587, 0.114], np.float32)
                patch = np.repeat(luma[:, :, None], 3, axis=2)
            clean[i] = patch.transpose(2, 0, 1)

        sigma = self.rng.uniform(0, opts.max_sigma / 255.0, opts.batch_size)
        sigma = sigma.astype(np.float32)
        noise = self.rng.standard_normal(clean.shape, dtype=np.float32)
        noise[gray] = noise[gray][:, :1]  # one noise plane shared by the three channels
        noisy = clean + noise * sigma[:, None, None, None]
        clip = self.rng.random(opts.batch_size) < opts.clip_fraction
        noisy[clip] = np.round(np.clip(noisy[clip], 0, 1) * 255) / 255
        return (
            torch.from_numpy(noisy),
            torch.from_numpy(sigma.reshape(-1, 1, 1, 1)),
            torch.from_numpy(clean),
        )


def validation_set(
    images: list[TrainingImage], sigma: float, crop: int = 192
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(1234)
    pairs = []
    for image in images:
        h, w = image.pixels.shape[:2]
        size = min(crop, h, w) // 2 * 2
        y, x = (h - size) // 2, (w - size) // 2
        clean = image.pixels[y : y + size, x : x + size].transpose(2, 0, 1)[None]
        noise = rng.standard_normal(clean.shape, dtype=np.float32) * (sigma / 255.0)
        if image.is_gray:
            noise[:] = noise[:, :1]
        pairs.append((torch.from_numpy(clean + noise), torch.from_numpy(clean.copy())))
    return pairs


def validate(
    model: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]], sigma: float
) -> float:
    model.eval()
    level = torch.full((1, 1, 1, 1), sigma / 255.0)
    total = 0.0
    with torch.no_grad():
        for noisy, clean in pairs:
            restored = model(noisy, level).clamp(0, 1)
            mse = torch.mean((restored - clean) ** 2).item()
            total += 10 * math.log10(1.0 / max(mse, 1e-12))
    model.train()
    return total / max(len(pairs), 1)


def learning_rate_at(step: int, options: DenoiseTrainOptions) -> float:
    """Linear warm-up for 2 % of the steps, then cosine decay to 1 % of the peak."""
    warmup = max(1, options.steps // 50)
    if step < warmup:
        return options.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, options.steps - warmup)
    floor = options.learning_rate * 0.01
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return floor + (options.learning_rate - floor) * cosine


def train(options: DenoiseTrainOptions) -> Path:
    """Train (or resume) a denoiser and return the path of its best checkpoint."""
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    files = list_images(options.data)
    if not files:
        raise ValueError(f"{options.data}: no image files found")
    options.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = options.work_dir / "checkpoint.pt"
    log_path = options.work_dir / "log.jsonl"
    train_files, validation_files = split_files(files)
    logger.info(
        "training on %d images, validating on %d",
        len(train_files),
        len(validation_files),
    )
    train_images = [load_image(p) for p in train_files]
    validation_images = [load_image(p) for p in validation_files]
    validation_pairs = validation_set(validation_images, sigma=25.0)

    model = DenoiseNet(3, options.features, options.blocks)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    step = 0
    best_psnr = -1.0
    config: dict[str, object] = {
        "channels": 3,
        "features": options.features,
        "blocks": options.blocks,
    }
    resumed = checkpoint_path.exists()
    if resumed:
        state = load_checkpoint(checkpoint_path)
        if state.get("config") != config:
            raise ValueError(
                f"{checkpoint_path} was trained with {state.get('config')}, not "
                f"{config}; use another --work-dir or the same network options"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        best_psnr = float(state["best_psnr"])
        logger.info("resumed from %s at step %d", checkpoint_path, step)
    elif options.init is not None:
        start = load_denoiser_weights(options.init)
        if (start.channels, start.features, start.blocks) != (
            3,
            options.features,
            options.blocks,
        ):
            raise ValueError(
                f"{options.init} has {start.features} features and {start.blocks} "
                "blocks; train with the same --features and --blocks"
            )
        model.load_state_dict(start.state_dict())
        logger.info("starting from the weights of %s", options.init)
    bfloat16 = use_bfloat16(options.precision)
    # Channels-last tensors let oneDNN pick its fast convolution kernels on the CPU.
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    logger.info("forward pass in %s", "bfloat16 autocast" if bfloat16 else "float32")

    # A different seed per resume point keeps resumed runs from replaying the same
    # patches.
    sampler = PatchSampler(train_images, options, seed=options.seed * 100003 + step)
    record_options(options.work_dir, options, resumed=resumed)

    def save(path: Path) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_psnr": best_psnr,
            "config": config,
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)

    started = time.monotonic()
    running_loss = 0.0
    steps_since_record = 0
    while step < options.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, options)
        noisy, level, clean = sampler.batch()
        noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            restored = model(noisy, level)
        loss = torch.mean((restored.float() - clean) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        running_loss += loss.item()
        steps_since_record += 1

        if step % options.validation_every == 0 or step == options.steps:
            psnr = validate(model, validation_pairs, sigma=25.0)
            record = {
                "step": step,
                "loss": running_loss / steps_since_record,
                "val_psnr_sigma25": round(psnr, 3),
                "lr": learning_rate_at(step, options),
                "seconds": round(time.monotonic() - started, 1),
            }
            running_loss = 0.0
            steps_since_record = 0
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
            logger.info("step %d: %s", step, key_values(record, exclude=("step",)))
            if psnr > best_psnr:
                best_psnr = psnr
                save(options.work_dir / "best.pt")
        if step % options.checkpoint_every == 0 or step == options.steps:
            save(checkpoint_path)
    return options.work_dir / "best.pt"


def load_denoiser_weights(path: Path) -> DenoiseNet:
    """Build the network from a training checkpoint or from an exported ONNX file.

    The exporter keeps PyTorch's parameter names for the ONNX initializers, so the
    shipped model can be fine-tuned without its training checkpoint.
    """
    from edgefx.train.export import load_denoiser_checkpoint

    if path.suffix.lower() != ".onnx":
        return load_denoiser_checkpoint(path)
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    metadata = {p.key: p.value for p in proto.metadata_props}
    if metadata.get("task") != "denoise":
        raise ValueError(f"{path}: not an edgefx denoiser (task metadata)")
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
        for t in proto.graph.initializer
    }
    # The exporter stores initializers with equal values (the zero biases of a barely
    # trained model, say) once and names the copies through Identity nodes.
    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    if "head.weight" not in weights or "tail.weight" not in weights:
        raise ValueError(f"{path}: not laid out like an edgefx denoiser")
    features, inputs = weights["head.weight"].shape[:2]
    blocks = len({name.split(".")[1] for name in weights if name.startswith("body.")})
    model = DenoiseNet((inputs - 1) // 4, features, blocks)
    model.load_state_dict(weights)
    return model.eval()


def export_best(
    checkpoint: Path,
    out_path: Path,
    options: DenoiseTrainOptions,
    name: str | None = None,
    extra_metadata: dict[str, str] | None = None,
    data_description: str | None = None,
) -> Path:
    """Export a training checkpoint to ONNX with the metadata the runtime reads.

    ``data_description`` names the training data in the metadata; by default the
    folder name is recorded, never the full local path.
    """
    from edgefx.train.export import (
        denoiser_metadata,
        export_denoiser,
        load_denoiser_checkpoint,
    )

    model = load_denoiser_checkpoint(checkpoint)
    state = load_checkpoint(checkpoint)
    training = {
        "data": data_description or options.data.name,
        "steps": int(state["step"]),
        "batch_size": options.batch_size,
        "patch_size": options.patch_size,
        "noise": f"additive white Gaussian, sigma uniform in 0-{options.max_sigma:g}",
        "validation_psnr_sigma25": round(float(state["best_psnr"]), 3),
    }
    if options.init is not None:
        training["initialized_from"] = options.init.name
    metadata = denoiser_metadata(model, name or out_path.stem, "1", training)
    metadata.update(extra_metadata or {})
    export_denoiser(model, out_path, metadata)
    return out_path
