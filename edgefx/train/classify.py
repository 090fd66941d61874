"""Training recipe for the image classifier: CIFAR-style ResNet or convnet, resumable.

Run through ``edgefx train classify``. The data is a zip file or a folder laid out as
``[SPLIT/]CLASS/IMAGE``: the class is the name of each image's parent folder, so the
CIFAR-10 zips and a user's own folder of labelled images both work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edgefx.classify import FLIP_AVERAGE_METADATA, SHIFT_FLIP_AVERAGE_METADATA
from edgefx.registry import sha256_of
from edgefx.text import key_values
from edgefx.train.checkpoint import load_checkpoint, record_options
from edgefx.train.nets import (
    ARCHITECTURES_WITH_BLOCKS,
    CLASSIFIER_ARCHITECTURES,
    average_views,
    build_classifier,
)
from edgefx.train.precision import use_bfloat16

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class ClassifyTrainOptions:
    data: Path
    work_dir: Path
    test_data: Path | None = None
    epochs: int = 30
    batch_size: int = 128
    size: int = 32
    arch: str = "resnet"
    width: int = 16
    blocks: int = 3
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    cutout: int = 0
    validation_fraction: float = 0.1
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 0
    precision: str = "auto"
    teachers: tuple[Path, ...] = ()
    distill_weight: float = 0.9
    temperature: float = 4.0
    teacher_views: int = 0
    init: Path | None = None


@dataclass
class ImageSet:
    images: np.ndarray  # (N, size, size, 3) uint8, RGB
    labels: np.ndarray  # (N,) int64
    classes: list[str]


def _decode(data: bytes, size: int) -> np.ndarray | None:
    """Decode one image and resize it to (size, size, 3) RGB; None if unreadable."""
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # an empty file, or a header that exceeds OpenCV's pixel limit
        return None
    if pixels is None:
        return None
    if pixels.shape[:2] != (size, size):
        shrink = min(pixels.shape[:2]) > size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        pixels = cv2.resize(pixels, (size, size), interpolation=interpolation)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def load_image_set(
    source: Path, size: int, classes: list[str] | None = None
) -> ImageSet:
    """Read labelled images from a zip or a folder into memory.

    ``classes`` fixes the label order, so that a test set matches the training set. By
    default it is the sorted set of class folder names.
    """
    entries: list[tuple[str, bytes]] = []
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                path = Path(info.filename)
                if not info.is_dir() and path.suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((path.parent.name, archive.read(info)))
    elif source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((path.parent.name, path.read_bytes()))
    else:
        raise ValueError(f"{source}: not a zip file or a folder")
    if not entries:
        raise ValueError(f"{source}: no images found in CLASS/IMAGE layout")

    names = classes or sorted({label for label, _ in entries})
    index = {name: i for i, name in enumerate(names)}
    images, labels = [], []
    skipped = 0
    for label, data in entries:
        pixels = _decode(data, size)
        if pixels is None or label not in index:
            skipped += 1
            continue
        images.append(pixels)
        labels.append(index[label])
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable or unknown-class images", source, skipped
        )
    if len(names) < 2:
        raise ValueError(f"{source}: found {len(names)} class; at least 2 are needed")
    if not images:
        raise ValueError(f"{source}: none of the {len(entries)} images is readable")
    return ImageSet(np.stack(images), np.asarray(labels, np.int64), names)


def split_validation(
    data: ImageSet, fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
    """Hold out ``fraction`` of each class for validation, deterministically."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(data.labels), bool)
    for label in range(len(data.classes)):
        members = np.flatnonzero(data.labels == label)
        count = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        held[rng.choice(members, count, replace=False)] = True
    train = ImageSet(data.images[~held], data.labels[~held], data.classes)
    validation = ImageSet(data.images[held], data.labels[held], data.classes)
    return train, validation


def channel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Return per-channel mean and standard deviation on the 0-1 scale."""
    sample = images[:: max(1, len(images) // 10000)].astype(np.float64) / 255
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def to_tensor(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    # images: (N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalized.
    array = images.astype(np.float32) / 255
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(array.transpose(0, 3, 1, 2).copy())


# Columns of a view array: crop offset (y, x) in the padded image, mirrored or not,
# and the cutout centre (y, x), -1 without cutout.
VIEW_FIELDS = ("crop_y", "crop_x", "flip", "cutout_y", "cutout_x")


def draw_views(
    rng: np.random.Generator, count: int, height: int, width: int, cutout: int = 0
) -> np.ndarray:
    """Draw the random crop, flip and cutout of ``count`` images: (count, 5) int16.

    The draws come in the order ``augment`` has always made them, so runs resumed
    across versions see the same images.
    """
    ys = rng.integers(0, 9, size=(count,))
    xs = rng.integers(0, 9, size=(count,))
    flips = np.asarray([rng.random() < 0.5 for _ in range(count)], np.int64)
    if cutout > 0:
        centres_y = rng.integers(0, height, size=(count,))
        centres_x = rng.integers(0, width, size=(count,))
    else:
        centres_y = centres_x = np.full(count, -1)
    return np.stack([ys, xs, flips, centres_y, centres_x], axis=1).astype(np.int16)


def apply_views(
    images: np.ndarray,
    views: np.ndarray,
    cutout: int = 0,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Crop, mirror and paint each image as its row of ``views`` (see draw_views)."""
    count, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    out = np.empty_like(images)
    color = np.zeros(3, np.uint8) if fill is None else fill
    for i in range(count):
        y, x, flip, centre_y, centre_x = (int(v) for v in views[i])
        crop = padded[i, y : y + height, x : x + width]
        out[i] = crop[:, ::-1] if flip else crop
        if cutout > 0 and centre_y >= 0:
            top = centre_y - cutout // 2
            left = centre_x - cutout // 2
            rows = slice(max(0, top), max(0, top + cutout))
            columns = slice(max(0, left), max(0, left + cutout))
            out[i, rows, columns] = color
    return out


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    cutout: int = 0,
    fill: np.ndarray | None = None,
) -> np.ndarray:
    """Random crop after 4 pixels of reflection padding, and horizontal flips.

    ``cutout`` > 0 also paints a square of that side, centred at a random pixel and
    clipped at the borders, with the ``fill`` color (DeVries and Taylor 2017), so the
    network cannot rely on any one part of the object.
    """
    count, height, width, _ = images.shape
    views = draw_views(rng, count, height, width, cutout)
    return apply_views(images, views, cutout, fill)


def teacher_bank(
    teachers: list[nn.Module],
    options: ClassifyTrainOptions,
    train_set: ImageSet,
    mean: list[float],
    std: list[float],
    fill: np.ndarray,
    bfloat16: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Return views (N, V, 5) and the teachers' mean logits on them (N, V, classes).

    Running a large teacher on every training batch can cost as much as the
    student's whole training step. With ``--teacher-views V`` they run once
    on V augmented views of each training image instead, and the student trains on
    those views. The bank is kept in ``teacher-bank.npz`` in the work folder, saved
    after each view, so an interrupted run goes on where it stopped. It is rebuilt
    when the teachers' files, the data, the seed or the cutout differ, and extended
    when more views are asked for.
    """
    count = len(train_set.labels)
    key = json.dumps(
        {
            "teachers": [sha256_of(path) for path in options.teachers],
            "labels": hashlib.sha256(train_set.labels.tobytes()).hexdigest(),
            "images": hashlib.sha256(train_set.images.tobytes()).hexdigest(),
            "seed": options.seed,
            "cutout": options.cutout,
        },
        sort_keys=True,
    )
    path = options.work_dir / "teacher-bank.npz"
    views = np.zeros((count, 0, len(VIEW_FIELDS)), np.int16)
    logits = np.zeros((count, 0, len(train_set.classes)), np.float16)
    if path.exists():
        try:
            with np.load(path) as saved:
                if str(saved["key"]) == key:
                    views, logits = saved["views"], saved["logits"]
                else:
                    logger.warning(
                        "%s was made with other teachers, data, --seed or --cutout, "
                        "so it is rebuilt",
                        path,
                    )
        except (OSError, ValueError, KeyError) as err:
            logger.warning("%s is unreadable (%s), so it is rebuilt", path, err)
    requested = options.teacher_views
    if views.shape[1] >= requested:
        logger.info("teacher logits of %d views per image from %s", requested, path)
        return views[:, :requested], logits[:, :requested]
    height, width = train_set.images.shape[1:3]
    started = time.monotonic()
    for view in range(views.shape[1], requested):
        rng = np.random.default_rng([options.seed, 104729, view])
        drawn = draw_views(rng, count, height, width, options.cutout)
        result = np.empty((count, len(train_set.classes)), np.float16)
        for first in range(0, count, 256):
            chunk = slice(first, first + 256)
            images = apply_views(
                train_set.images[chunk], drawn[chunk], options.cutout, fill
            )
            batch = to_tensor(images, mean, std).contiguous(
                memory_format=torch.channels_last
            )
            with (
                torch.no_grad(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16),
            ):
                mean_logits = torch.stack([t(batch).float() for t in teachers]).mean(0)
            result[chunk] = mean_logits.numpy()
        views = np.concatenate([views, drawn[:, None]], axis=1)
        logits = np.concatenate([logits, result[:, None]], axis=1)
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(temporary, key=np.asarray(key), views=views, logits=logits)
        temporary.replace(path)
        logger.info(
            "teacher logits: view %d of %d done (%.0f s)",
            view + 1,
            requested,
            time.monotonic() - started,
        )
    return views, logits


def learning_rate_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 15 % of steps, then linear decay to zero."""
    warmup = max(1, int(total * 0.15))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def evaluate(
    model: nn.Module, data: ImageSet, mean: list[float], std: list[float]
) -> float:
    """Return top-1 accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data.labels), 500):
            batch = to_tensor(data.images[start : start + 500], mean, std)
            predicted = model(batch.contiguous(memory_format=torch.channels_last))
            labels = torch.from_numpy(data.labels[start : start + 500])
            correct += int((predicted.argmax(dim=1) == labels).sum())
    model.train()
    return 100.0 * correct / max(1, len(data.labels))


def load_teachers(paths: tuple[Path, ...], config: dict) -> list[nn.Module]:
    """Load teacher checkpoints, which must share the student's classes and input."""
    teachers = []
    for path in paths:
        if path.suffix.lower() == ".onnx":
            raise ValueError(
                f"--teacher {path}: an ONNX file; give the best.pt training checkpoint "
                "of an edgefx train classify run"
            )
        state = load_checkpoint(path)
        theirs = state.get("config")
        arch = theirs.get("arch", "resnet") if isinstance(theirs, dict) else None
        with_blocks = arch in ARCHITECTURES_WITH_BLOCKS
        needed = {"classes", "width"} | ({"blocks"} if with_blocks else set())
        if (
            not isinstance(theirs, dict)
            or not needed <= theirs.keys()
            or "model" not in state
        ):
            raise ValueError(
                f"teacher {path}: not an edgefx classify training checkpoint. Give "
                "the best.pt of an edgefx train classify run."
            )
        if arch not in CLASSIFIER_ARCHITECTURES:
            raise ValueError(
                f"teacher {path}: unknown network architecture {arch!r}; this edgefx "
                "trains " + " and ".join(CLASSIFIER_ARCHITECTURES)
            )
        try:
            teacher = classifier_from_checkpoint(state)
        except RuntimeError as err:  # load_state_dict: the weights fit no such network
            raise ValueError(
                f"teacher {path}: its weights do not match the network its config "
                f"describes ({str(err).splitlines()[0]})"
            ) from err
        # The channel statistics come from the training split, which --seed picks.
        split = "(another --data or --seed, which picks the validation split)"
        descriptions = {
            "classes": "classes",
            "size": "input size",
            "mean": f"channel means {split}",
            "std": f"channel deviations {split}",
        }
        for key, description in descriptions.items():
            if theirs.get(key) != config[key]:
                raise ValueError(
                    f"teacher {path} has other {description}: {theirs.get(key)!r}, "
                    f"the student's are {config[key]!r}; train the student with the "
                    "teacher's --data, --seed and --size"
                )
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        teachers.append(teacher.to(memory_format=torch.channels_last))  # type: ignore[call-overload]
    return teachers


# Option names of the network config keys, for messages.
CONFIG_OPTIONS = {
    "classes": "classes (--data)",
    "width": "--width",
    "blocks": "--blocks",
    "arch": "--arch",
    "size": "--size",
    "mean": "channel statistics (--data or --seed)",
    "std": "channel statistics (--data or --seed)",
}


def _config_difference(saved: object, config: dict) -> str:
    """Name the options in which a saved network config differs from ``config``."""
    if not isinstance(saved, dict):
        return "data or network options"
    keys = sorted(set(saved) | set(config))
    changed = [key for key in keys if saved.get(key) != config.get(key)]
    names = dict.fromkeys(CONFIG_OPTIONS.get(key, key) for key in changed)
    return ", ".join(names) or "data or network options"


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. (2015): KL divergence of softened distributions, times T^2."""
    log_student = torch.log_softmax(student.float() / temperature, dim=1)
    log_teacher = torch.log_softmax(teacher.float() / temperature, dim=1)
    divergence = torch.nn.functional.kl_div(
        log_student, log_teacher, log_target=True, reduction="batchmean"
    )
    return divergence * temperature**2


def train(options: ClassifyTrainOptions) -> Path:
    """Train (or resume) a classifier and return the path of its best checkpoint."""
    if options.arch not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(
            f"unknown --arch {options.arch!r}; choose "
            + " or ".join(CLASSIFIER_ARCHITECTURES)
        )
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    data = load_image_set(options.data, options.size)
    train_set, validation_set = split_validation(
        data, options.validation_fraction, options.seed
    )
    mean, std = channel_statistics(train_set.images)
    logger.info(
        "%d training and %d validation images, %d classes",
        len(train_set.labels),
        len(validation_set.labels),
        len(data.classes),
    )
    options.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = options.work_dir / "checkpoint.pt"
    log_path = options.work_dir / "log.jsonl"

    config: dict = {"classes": data.classes, "width": options.width}
    if options.arch in ARCHITECTURES_WITH_BLOCKS:
        config["blocks"] = options.blocks
    if options.arch != "resnet":
        # ResNets are kept without an arch key, so runs started before the other
        # families still resume.
        config["arch"] = options.arch
    config.update({"size": options.size, "mean": mean, "std": std})
    model = build_classifier(config)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=options.learning_rate,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(train_set.labels) / options.batch_size)
    total_steps = options.epochs * steps_per_epoch
    step = 0
    best_accuracy = -1.0
    # Not part of the config, which must match on resume: a run may change teachers.
    teacher_names = [str(path) for path in options.teachers]
    distillation = {
        "teachers": teacher_names,
        "weight": options.distill_weight,
        "temperature": options.temperature,
    }
    resumed = checkpoint_path.exists()
    if resumed:
        state = load_checkpoint(checkpoint_path)
        if state.get("config") != config:
            raise ValueError(
                f"{checkpoint_path} was trained with other "
                f"{_config_difference(state.get('config'), config)}; use another "
                "--work-dir or the same options"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        best_accuracy = float(state["best_accuracy"])
        logger.info("resumed from %s at step %d", checkpoint_path, step)
        saved = state.get("distillation")
        if saved is not None and saved != distillation:
            logger.warning(
                "%s was trained with --teacher %s and now continues with %s",
                checkpoint_path,
                ", ".join(saved["teachers"]) or "none",
                ", ".join(teacher_names) or "none",
            )
    elif options.init is not None:
        if options.init.suffix.lower() == ".onnx":
            raise ValueError(
                f"--init {options.init}: an ONNX file; give the best.pt training "
                "checkpoint of an edgefx train classify run"
            )
        start = load_checkpoint(options.init)
        if start.get("config") != config:
            raise ValueError(
                f"--init {options.init} was trained with other "
                f"{_config_difference(start.get('config'), config)}; start from a "
                "checkpoint of the same network, data and --seed"
            )
        model.load_state_dict(start["model"])
        logger.info("starting from the weights of %s", options.init)
    teachers = load_teachers(options.teachers, config)
    if teachers:
        logger.info(
            "distilling from %d teacher(s): weight %g, temperature %g",
            len(teachers),
            options.distill_weight,
            options.temperature,
        )
    bfloat16 = use_bfloat16(options.precision)
    loss_function = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    # Cutout paints the mean color, which the normalization maps to zero.
    fill_color = np.asarray([round(255 * m) for m in mean], np.uint8)
    bank: tuple[np.ndarray, np.ndarray] | None = None
    if teachers and options.teacher_views > 0:
        bank = teacher_bank(
            teachers, options, train_set, mean, std, fill_color, bfloat16
        )
    record_options(
        options.work_dir,
        options,
        resumed=resumed,
        flags={"teachers": "--teacher"},
        also_quiet=("teachers",),  # a changed teacher is warned about above
    )

    def save(path: Path) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_accuracy": best_accuracy,
            "config": config,
            "distillation": distillation,
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)

    logger.info("forward pass in %s", "bfloat16 autocast" if bfloat16 else "float32")
    started = time.monotonic()
    while step < total_steps:
        epoch = step // steps_per_epoch
        # Each epoch has its own fixed order, so a resumed run continues the same one.
        order = np.random.default_rng(options.seed * 1000 + epoch).permutation(
            len(train_set.labels)
        )
        rng = np.random.default_rng(options.seed * 7919 + step)
        running_loss = 0.0
        steps_in_epoch = 0
        for position in range(step % steps_per_epoch, steps_per_epoch):
            indices = order[
                position * options.batch_size : (position + 1) * options.batch_size
            ]
            stored: torch.Tensor | None = None
            if bank is not None:
                # Each image takes its stored views in turn, one per epoch.
                choice = (epoch + indices) % bank[0].shape[1]
                images = apply_views(
                    train_set.images[indices],
                    bank[0][indices, choice],
                    options.cutout,
                    fill_color,
                )
                stored = torch.from_numpy(bank[1][indices, choice].astype(np.float32))
            else:
                images = augment(
                    train_set.images[indices], rng, options.cutout, fill_color
                )
            batch = to_tensor(images, mean, std).contiguous(
                memory_format=torch.channels_last
            )
            labels = torch.from_numpy(train_set.labels[indices])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, options.learning_rate)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                logits = model(batch)
                loss = loss_function(logits, labels)
                if teachers:
                    if stored is None:
                        with torch.no_grad():
                            target = torch.stack([t(batch).float() for t in teachers])
                        stored = target.mean(dim=0)
                    soft = distillation_loss(logits, stored, options.temperature)
                    weight = options.distill_weight
                    loss = (1 - weight) * loss + weight * soft
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running_loss += loss.item()
            steps_in_epoch += 1
            if step % options.checkpoint_every == 0:
                save(checkpoint_path)

        accuracy = evaluate(model, validation_set, mean, std)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "loss": running_loss / max(1, steps_in_epoch),
            "validation_accuracy": round(accuracy, 2),
            "seconds": round(time.monotonic() - started, 1),
        }
        with log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")
        logger.info("epoch %d: %s", epoch + 1, key_values(record, exclude=("epoch",)))
        if accuracy > best_accuracy:
            best_accuracy = accuracy
            save(options.work_dir / "best.pt")
        save(checkpoint_path)
    return options.work_dir / "best.pt"


def load_classifier_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """Build the network from a checkpoint (loaded without pickle code)."""
    state = load_checkpoint(path)
    return classifier_from_checkpoint(state), state


def classifier_from_checkpoint(state: dict) -> nn.Module:
    """Build the network, in eval mode, from a loaded checkpoint."""
    model = build_classifier(state["config"])
    model.load_state_dict(state["model"])
    return model.eval()


def export_best(
    checkpoint: Path,
    out_path: Path,
    name: str | None = None,
    data_description: str | None = None,
    extra_metadata: dict[str, str] | None = None,
    flip_average: bool = True,
    shift_average: bool = False,
) -> Path:
    """Export a classifier checkpoint to ONNX with its labels and preprocessing.

    ``flip_average`` builds the mirror-image averaging into the graph (see
    ``FlipAveraged``) and records it in the metadata as ``test_time_augmentation``.
    ``shift_average`` adds four shifted positions to it (``ShiftFlipAveraged``).
    """
    from edgefx.train.export import export_classifier

    model, state = load_classifier_checkpoint(checkpoint)
    config = state["config"]
    parameters = sum(p.numel() for p in model.parameters())
    metadata = {
        "task": "classify",
        "name": name or out_path.stem,
        "version": "1",
        "labels": json.dumps(config["classes"]),
        "input_size": json.dumps([config["size"], config["size"]]),
        "input_layout": "NCHW",
        "color_order": "RGB",
        "mean": json.dumps(config["mean"]),
        "std": json.dumps(config["std"]),
        "resize": "stretch",
        "parameters": str(parameters),
        "training": json.dumps(
            {
                "data": data_description or "user data",
                "steps": int(state["step"]),
                "validation_accuracy": round(float(state["best_accuracy"]), 2),
            },
            sort_keys=True,
        ),
    }
    augmentation = _augmentation(flip_average, shift_average)
    if augmentation:
        metadata["test_time_augmentation"] = augmentation
    metadata.update(extra_metadata or {})
    # The wrapper goes in as the model, so export_classifier adds no flip of its own.
    network = average_views(model, augmentation)
    export_classifier(network, out_path, metadata, config["size"])
    return out_path


def _augmentation(flip_average: bool, shift_average: bool) -> str | None:
    """Return the test_time_augmentation metadata value for these export options."""
    if shift_average:
        if not flip_average:
            raise ValueError("shifted views are averaged together with mirror images")
        return SHIFT_FLIP_AVERAGE_METADATA
    return FLIP_AVERAGE_METADATA if flip_average else None


def evaluate_checkpoint(
    checkpoint: Path,
    test_data: Path,
    flip_average: bool = False,
    shift_average: bool = False,
) -> float:
    """Return the top-1 accuracy in percent of a checkpoint on a labelled test set.

    ``flip_average`` and ``shift_average`` score the network the way an export with
    the same flags runs it.
    """
    model, state = load_classifier_checkpoint(checkpoint)
    config = state["config"]
    data = load_image_set(test_data, config["size"], classes=config["classes"])
    network = average_views(model, _augmentation(flip_average, shift_average))
    return evaluate(network, data, config["mean"], config["std"])
