"""Image classification with an ONNX model: preprocessing, batching and top-k labels.

A classifier takes one input (N, 3, H, W) float32, RGB, NCHW, scaled to [0, 1] and then
normalized per channel as (x - mean) / std, and returns (N, K) logits. The
preprocessing comes from the model's ``metadata_props``, from a JSON sidecar next to
the model file (``model.onnx`` -> ``model.json``) or from a named preset.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefx.batch import (
    BatchItem,
    BatchSummary,
    InputFile,
    PathsArgument,
    Reporter,
    collect_inputs,
    no_inputs_message,
    resolve_file,
)
from edgefx.errors import InferenceError, ModelError, UsageError
from edgefx.fsutil import TEMP_PREFIX, check_output_file
from edgefx.pipeline import EngineOptions, Stages, execute_task
from edgefx.registry import ModelInfo, parse_json, resolve_model, shipped_models
from edgefx.runtime import RuntimeOptions, create_session
from edgefx.text import count_noun

logger = logging.getLogger(__name__)

RESIZE_POLICIES = ("stretch", "crop")
COLOR_ORDERS = ("RGB", "BGR")
PRESETS = ("imagenet", "unit")
# The ImageNet convention resizes the shorter side to 256 pixels for a 224-pixel crop.
CROP_RATIO = 256 / 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_INPUT_SIDE = 4096
# A reduced JPEG decode must leave at least this many pixels per pixel of the resize
# step on each side. This was measured on the 68 CBSD68 photos, cropped to 480x320,
# saved at JPEG quality 90 and stretched to 8x8 to 40x40. At 4 or more, the prepared
# input differed from a full decode by 0.0011 or less on average and by 0.031 or less
# in any value (0-1 scale). At
# 1.25 to 2.5 it differed by up to 0.011 on average and 0.17 in one value.
DECODE_MARGIN = 4
# Output types accepted as logits. softmax computes in float64 whatever the type.
LOGITS_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
# Metadata value of ``test_time_augmentation`` for a graph that averages the logits
# of each image and its left-right mirror image.
FLIP_AVERAGE_METADATA = "horizontal flip, logits averaged"
# The same for a graph that also shifts each image by one pixel in the four diagonal
# directions (reflection padding) and averages the logits of all 10 views.
SHIFT_FLIP_AVERAGE_METADATA = (
    "horizontal flip and 4 diagonal one-pixel shifts, logits of 10 views averaged"
)


@dataclass(frozen=True)
class ClassifyOptions:
    """Result and batching settings: labels kept per image and images per model call."""

    top_k: int = 5
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise UsageError(f"invalid top-k {self.top_k}; use 1 or more")
        if self.batch_size < 1:
            raise UsageError(f"invalid batch size {self.batch_size}; use 1 or more")


@dataclass(frozen=True)
class Preprocess:
    """Resize, crop and normalization that turn an image into the model's input."""

    size: tuple[int, int]  # model input (height, width) in pixels
    mean: tuple[float, float, float]  # per channel on the 0-1 scale
    std: tuple[float, float, float]
    resize: str  # a value of RESIZE_POLICIES
    color_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ModelError(
                f"invalid resize policy {self.resize!r}; expected one of "
                f"{', '.join(RESIZE_POLICIES)}"
            )
        if self.color_order not in COLOR_ORDERS:
            raise ModelError(
                f"invalid color order {self.color_order!r}; expected one of "
                f"{', '.join(COLOR_ORDERS)}"
            )
        if not all(1 <= side <= MAX_INPUT_SIDE for side in self.size):
            raise ModelError(
                f"invalid input size {list(self.size)}; expected [H, W] from 1 to "
                f"{MAX_INPUT_SIDE}"
            )
        if not all(math.isfinite(value) for value in self.mean):
            raise ModelError(
                f"invalid mean {list(self.mean)}; every value must be a finite number"
            )
        if not all(math.isfinite(value) and value > 0 for value in self.std):
            raise ModelError(
                f"invalid std {list(self.std)}; every value must be a finite number > 0"
            )


@dataclass(frozen=True)
class InputSignature:
    """Name, shape and batch size of a classifier's image input."""

    name: str
    shape: tuple[int | str | None, ...]
    fixed_batch: int | None  # None when the batch dimension is dynamic
    num_classes: int | None  # K of the (N, K) output, or None when it is dynamic


@dataclass(frozen=True)
class ClassifyRow:
    """Classification of one file: best label, its probability and the top k."""

    file: Path
    label: str
    score: float
    top_k: list[tuple[str, float]]


def _describe_input(node: Any) -> str:
    return f"input {node.name!r} of shape {list(node.shape)} and type {node.type}"


def read_signature(
    info: ModelInfo, inputs: list[Any], outputs: list[Any]
) -> InputSignature:
    """Check that the graph's input and output fit a classifier and describe them."""
    expected = "expected one float input (N, 3, H, W) and an (N, K) logits output"
    if len(inputs) != 1:
        described = "; ".join(_describe_input(node) for node in inputs)
        raise ModelError(
            f"{info.path}: the model has {len(inputs)} inputs ({described}); {expected}"
        )
    image = inputs[0]
    shape = tuple(image.shape)
    problem = None
    if len(shape) != 4:
        problem = f"is {len(shape)}-D"
    elif isinstance(shape[1], int) and shape[1] != 3:
        problem = f"has {count_noun(shape[1], 'channel')}"
    elif image.type != "tensor(float)":
        problem = f"is of type {image.type}"
    if problem is not None:
        raise ModelError(
            f"{info.path}: the model's {_describe_input(image)} {problem}; {expected}"
        )
    if not outputs or len(outputs[0].shape) != 2:
        shapes = ", ".join(f"{node.name}{list(node.shape)}" for node in outputs)
        raise ModelError(f"{info.path}: outputs {shapes or 'none'}; {expected}")
    logits = outputs[0]
    if logits.type not in LOGITS_TYPES:
        raise ModelError(
            f"{info.path}: the model's output {logits.name!r} is of type "
            f"{logits.type}; expected float logits of type tensor(float), "
            "tensor(float16) or tensor(double)"
        )

    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    classes = outputs[0].shape[1]
    if classes == 0:
        raise ModelError(
            f"{info.path}: the model's output {logits.name!r} has 0 classes "
            f"(shape {list(logits.shape)}); {expected} with K of 1 or more"
        )
    return InputSignature(
        name=image.name,
        shape=shape,
        fixed_batch=batch,
        num_classes=classes if isinstance(classes, int) and classes > 0 else None,
    )


def sidecar_path(model_path: Path) -> Path:
    """Return the JSON sidecar path of a model: ``model.onnx`` -> ``model.json``."""
    return model_path.with_suffix(".json")


def read_sidecar(model_path: Path) -> dict[str, Any] | None:
    """Read the model's JSON sidecar, or return None when it has none.

    A sidecar path that exists but is not a readable file (a folder, a broken link, a
    FIFO) raises ModelError, so that it is not mistaken for a missing sidecar.
    """
    path = sidecar_path(model_path)
    if path.is_dir():
        raise ModelError(
            f"{path}: the JSON sidecar is a folder; expected a JSON file with the "
            "model's preprocessing"
        )
    if path.is_symlink() and not path.exists():
        raise ModelError(
            f"{path}: the JSON sidecar is a broken link to {path.readlink()}"
        )
    if path.exists() and not path.is_file():
        raise ModelError(
            f"{path}: the JSON sidecar is not a regular file; expected a JSON file "
            "with the model's preprocessing"
        )
    if not path.is_file():
        return None
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"{path}: invalid JSON sidecar: {err}") from err
    if not isinstance(data, dict):
        raise ModelError(f"{path}: invalid JSON sidecar; expected a JSON object")
    logger.debug("using the preprocessing sidecar %s", path)
    return data


def _json_value(source: str, key: str, value: Any) -> Any:
    """Decode a metadata value, which ONNX stores as a JSON string."""
    if not isinstance(value, str):
        return value  # sidecars store plain JSON values
    try:
        return parse_json(value)
    except ValueError as err:
        reason = "not JSON" if isinstance(err, json.JSONDecodeError) else str(err)
        raise ModelError(
            f"{source}: invalid {key} {_shortened_repr(value)}: {reason}"
        ) from err


# Characters of a metadata value that an error message quotes, at most.
MAX_QUOTED_CHARACTERS = 80


def _shortened_repr(value: str) -> str:
    """Return ``repr(value)``, cut to MAX_QUOTED_CHARACTERS with "..." at the end."""
    text = repr(value)
    if len(text) <= MAX_QUOTED_CHARACTERS:
        return text
    return text[: MAX_QUOTED_CHARACTERS - 3] + "..."


def _as_written(value: Any) -> str:
    """Return ``value`` as its source spells it: metadata text quoted, else JSON."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def _is_number(value: Any) -> bool:
    """Return whether a decoded JSON value is a number; true and false are not."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float_triple(source: str, key: str, value: Any) -> tuple[float, float, float]:
    decoded = _json_value(source, key, value)
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not all(_is_number(v) for v in decoded)
    ):
        raise ModelError(
            f"{source}: invalid {key} {_as_written(value)}; expected a JSON list of 3 "
            "numbers on the 0-1 scale"
        )
    # Python's json module reads NaN, Infinity and -Infinity. They would make every
    # model input NaN or constant, and the per-file errors would blame the model.
    if not all(math.isfinite(v) for v in decoded):
        raise ModelError(
            f"{source}: invalid {key} {_as_written(value)}; every value must be a "
            "finite number"
        )
    return (float(decoded[0]), float(decoded[1]), float(decoded[2]))


def preprocess_from_mapping(source: str, values: dict[str, Any]) -> Preprocess:
    """Build a Preprocess from metadata or sidecar keys (input_size, mean, std, resize).

    ``mean`` and ``std`` default to no normalization, ``resize`` to stretch and
    ``color_order`` to RGB. Raises ModelError for a missing input_size or an invalid
    value, naming ``source``.
    """
    if "input_size" not in values:
        raise ModelError(f"{source}: input_size is missing; expected [H, W]")
    size = _json_value(source, "input_size", values["input_size"])
    if (
        not isinstance(size, list)
        or len(size) != 2
        # bool is a subclass of int, so true and false need the exact type check.
        or not all(type(side) is int for side in size)
    ):
        raise ModelError(
            f"{source}: invalid input_size {_as_written(values['input_size'])}; "
            "expected [H, W], two integers"
        )
    mean = _float_triple(source, "mean", values.get("mean", "[0, 0, 0]"))
    std = _float_triple(source, "std", values.get("std", "[1, 1, 1]"))
    layout = values.get("input_layout", "NCHW")
    if layout != "NCHW":
        raise ModelError(f"{source}: unsupported input_layout {layout!r}; use NCHW")
    try:
        return Preprocess(
            size=(size[0], size[1]),
            mean=mean,
            std=std,
            resize=str(values.get("resize", "stretch")),
            color_order=str(values.get("color_order", "RGB")),
        )
    except ModelError as err:
        raise ModelError(f"{source}: {err}") from err


def preprocess_from_preset(
    preset: str, signature: InputSignature, source: str
) -> Preprocess:
    """Build the Preprocess of a named preset: imagenet, or unit ([0, 1] input).

    ``unit`` takes its size from the model's fixed input height and width, so a model
    with a dynamic height or width needs metadata or a sidecar instead.
    """
    if preset == "imagenet":
        return Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD, "crop")
    if preset == "unit":
        height, width = signature.shape[2], signature.shape[3]
        if not isinstance(height, int) or not isinstance(width, int):
            raise ModelError(
                f"{source}: --preset unit takes the size from the model's input, but "
                f"input {signature.name!r} has a dynamic height or width "
                f"{list(signature.shape)}; give input_size in a JSON sidecar"
            )
        try:
            return Preprocess(
                (height, width), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "stretch"
            )
        except ModelError as err:
            raise ModelError(f"{source}: --preset unit: {err}") from err
    raise UsageError(f"invalid preset {preset!r}; choose one of {', '.join(PRESETS)}")


def read_labels_file(path: Path) -> list[str]:
    """Read class labels, one per line; blank lines may only end the file.

    The file is UTF-8, and a byte order mark at its start is dropped. A blank line
    between labels raises UsageError, because the line number is the class index:
    dropping it would shift every later label by one class.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise UsageError(f"--labels {path}: file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--labels {path}: cannot read the file: {err}") from err
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise UsageError(f"--labels {path}: the file has no labels")
    if "" in labels:
        line = labels.index("") + 1
        raise UsageError(
            f"--labels {path}: line {line} is blank; give one label per line, in the "
            "model's class order"
        )
    return labels


def _labels_from_value(source: str, value: Any) -> list[str]:
    decoded = _json_value(source, "labels", value)
    if not isinstance(decoded, list) or not all(isinstance(v, str) for v in decoded):
        raise ModelError(f"{source}: invalid labels; expected a JSON list of strings")
    return list(decoded)


def _labels_given(count: int) -> str:
    """Return "1 label was given" or "3 labels were given"."""
    return f"{count_noun(count, 'label')} {'was' if count == 1 else 'were'} given"


def _check_size_fits(
    info: ModelInfo, signature: InputSignature, size: tuple[int, int]
) -> None:
    for axis, side in zip((2, 3), size, strict=True):
        declared = signature.shape[axis]
        if isinstance(declared, int) and declared > 0 and declared != side:
            raise ModelError(
                f"{info.path}: the preprocessing size {list(size)} does not fit the "
                f"model's input {signature.name!r} of shape {list(signature.shape)}"
            )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return row-wise softmax probabilities of (N, K) logits, in float64.

    A row with an infinite logit comes out NaN without a numpy warning, because
    check_finite_scores reports it with the file's name.
    """
    with np.errstate(invalid="ignore"):
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        exponentials = np.exp(shifted)
        return exponentials / exponentials.sum(axis=1, keepdims=True)


def _as_rgb_float(pixels: np.ndarray) -> np.ndarray:
    """Convert an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image to float32 RGB."""
    from edgefx.imageio import to_float

    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]  # alpha does not take part in classification
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise UsageError(
            "expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, "
            f"got shape {pixels.shape}"
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise UsageError(f"the image is empty: shape {pixels.shape}")
    if pixels.dtype == np.float32:
        values = pixels
    elif pixels.dtype in (np.uint8, np.uint16):
        values = to_float(pixels)
    else:
        raise UsageError(f"unsupported pixel dtype {pixels.dtype}")
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    return np.ascontiguousarray(values, dtype=np.float32)


def _resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if (values.shape[0], values.shape[1]) == (height, width):
        return values
    shrinking = height <= values.shape[0] and width <= values.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized: np.ndarray = cv2.resize(
        values, (width, height), interpolation=interpolation
    )
    return resized


def prepare_image(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Turn one image into a (3, H, W) float32 model input.

    ``stretch`` resizes the whole image to the input size. ``crop`` resizes the shorter
    side to round(side * 256 / 224), where side is the larger of the input height and
    width, and then takes the center H x W, as ImageNet evaluation does. Shrinking uses
    cv2.INTER_AREA and enlarging cv2.INTER_LINEAR. classify_files may decode a large
    JPEG at 1/2, 1/4 or 1/8 scale first (see decode_min_size), so that this resize
    starts from fewer pixels; the input then differs slightly from one made from a
    full decode.
    """
    return normalize_batch(
        resize_for_model(pixels, preprocess)[np.newaxis], preprocess
    )[0]


def decode_min_size(preprocess: Preprocess) -> tuple[int, int]:
    """Return the smallest decoded (height, width) that classify_files accepts.

    classify_files passes it to read_image as ``min_size``, so a large JPEG is decoded
    at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, which averages blocks of pixels).
    The reduced image keeps at least DECODE_MARGIN times the size of the resize step
    on each side. That size is the input size for ``stretch``. For ``crop`` it is the
    shorter side of the resize before the crop, on both sides, because the orientation
    and aspect ratio are not known before the header is read.
    """
    if preprocess.resize == "stretch":
        height, width = preprocess.size
    else:
        height = width = round(max(preprocess.size) * CROP_RATIO)
    return (DECODE_MARGIN * height, DECODE_MARGIN * width)


def resize_for_model(pixels: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Resize or crop one image to an (H, W, 3) float32 array on the 0-1 scale.

    The channels are in the model's color order. normalize_batch then applies the
    mean and std. prepare_image documents the resize policies.
    """
    values = _as_rgb_float(pixels)
    height, width = preprocess.size
    if preprocess.resize == "stretch":
        values = _resize(values, height, width)
    else:
        short_side = round(max(height, width) * CROP_RATIO)
        source_height, source_width = values.shape[:2]
        scale = short_side / min(source_height, source_width)
        scaled_height = max(height, round(source_height * scale))
        scaled_width = max(width, round(source_width * scale))
        values = _resize(values, scaled_height, scaled_width)
        top = int(round((scaled_height - height) / 2))
        left = int(round((scaled_width - width) / 2))
        values = values[top : top + height, left : left + width]
    if preprocess.color_order == "BGR":
        values = values[:, :, ::-1]
    return values


def normalize_batch(values: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Turn (N, H, W, 3) resized images into an (N, 3, H, W) normalized model input.

    Each channel becomes (x - mean) / std in float32.
    """
    count, height, width, _ = values.shape
    mean = np.asarray(preprocess.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocess.std, np.float32).reshape(1, 3, 1, 1)
    # Transposing before the arithmetic gives numpy long inner loops over the pixels
    # instead of loops of 3 channels, which took most of the time on 32x32 images.
    normalized = np.empty((count, 3, height, width), np.float32)
    np.subtract(values.transpose(0, 3, 1, 2), mean, out=normalized)
    normalized /= std
    return normalized


class Classifier:
    """An ONNX classifier session with its preprocessing and labels."""

    def __init__(
        self,
        model: str | None = None,
        runtime: RuntimeOptions | None = None,
        labels_path: Path | None = None,
        preset: str | None = None,
    ) -> None:
        if preset is not None and preset not in PRESETS:
            raise UsageError(
                f"invalid preset {preset!r}; choose one of {', '.join(PRESETS)}"
            )
        if model is None and not shipped_models("classify"):
            raise ModelError(
                "no classify model is shipped with this edgefx build; give --model PATH"
            )
        file_labels = read_labels_file(labels_path) if labels_path else None
        runtime = runtime or RuntimeOptions()
        self.info = resolve_model(model, "classify", runtime.device)
        self.session = create_session(
            self.info.path,
            runtime or RuntimeOptions(),
            self.info.metadata.get("precision"),
        )
        self.signature = read_signature(
            self.info, self.session.get_inputs(), self.session.get_outputs()
        )
        sidecar = None if self.info.shipped else read_sidecar(self.info.path)
        self.preprocess = self._choose_preprocess(preset, sidecar)
        _check_size_fits(self.info, self.signature, self.preprocess.size)
        self.labels = self._choose_labels(file_labels, sidecar)
        logger.debug(
            "preprocessing %s, %d labels", self.preprocess, len(self.labels or [])
        )

    def _choose_preprocess(
        self, preset: str | None, sidecar: dict[str, Any] | None
    ) -> Preprocess:
        if preset is not None:
            return preprocess_from_preset(preset, self.signature, str(self.info.path))
        if sidecar is not None:
            source = str(sidecar_path(self.info.path))
            return preprocess_from_mapping(source, sidecar)
        if "input_size" in self.info.metadata:
            metadata: dict[str, Any] = dict(self.info.metadata)
            return preprocess_from_mapping(f"{self.info.path} metadata", metadata)
        raise ModelError(
            f"{self.info.path}: the model states no preprocessing (no input_size in "
            f"its metadata and no {sidecar_path(self.info.path).name} next to it); "
            "give --preset imagenet or --preset unit"
        )

    def _choose_labels(
        self, file_labels: list[str] | None, sidecar: dict[str, Any] | None
    ) -> list[str] | None:
        labels = file_labels
        if labels is None and sidecar is not None and "labels" in sidecar:
            source = str(sidecar_path(self.info.path))
            labels = _labels_from_value(source, sidecar["labels"])
        if labels is None and "labels" in self.info.metadata:
            source = f"{self.info.path} metadata"
            labels = _labels_from_value(source, self.info.metadata["labels"])
        classes = self.signature.num_classes
        if labels is not None and classes is not None and len(labels) != classes:
            raise ModelError(
                f"{self.info.path}: the model has "
                f"{count_noun(classes, 'class', 'classes')} but "
                f"{_labels_given(len(labels))}"
            )
        if labels is None:
            logger.warning(
                "%s: no labels in the model, a sidecar or --labels; classes are "
                "named by their index",
                self.info.path,
            )
        return labels

    def _label(self, index: int) -> str:
        if self.labels is None:
            return str(index)
        return self.labels[index]

    def run_prepared(self, batch: np.ndarray) -> np.ndarray:
        """Run (N, 3, H, W) model inputs and return (N, K) probabilities.

        A model with a fixed batch size gets chunks of exactly that size. The last
        chunk is padded with zeros, and the outputs of the padding are dropped.
        """
        step = self.signature.fixed_batch or len(batch)
        results = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            count = len(chunk)
            if count < step:
                padding = np.zeros((step - count, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, padding])
            try:
                (logits,) = self.session.run(None, {self.signature.name: chunk})[:1]
            except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument
                message = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ModelError(
                    f"{self.info.path}: the model failed on an input of shape "
                    f"{list(chunk.shape)}: {message or repr(err)}"
                ) from err
            logits = np.asarray(logits)
            if logits.ndim != 2 or logits.shape[0] != len(chunk) or not logits.shape[1]:
                raise ModelError(
                    f"{self.info.path}: output shape {list(logits.shape)} for an input "
                    f"batch of {len(chunk)}; expected ({len(chunk)}, K) logits with K "
                    "of 1 or more"
                )
            if self.labels is not None and logits.shape[1] != len(self.labels):
                returned = count_noun(logits.shape[1], "class", "classes")
                raise ModelError(
                    f"{self.info.path}: the model returned {returned} but "
                    f"{_labels_given(len(self.labels))}"
                )
            results.append(softmax(logits)[:count])
        return np.concatenate(results)

    def top_labels(
        self, probabilities: np.ndarray, top_k: int
    ) -> list[list[tuple[str, float]]]:
        """Return the ``top_k`` (label, probability) pairs of each row, best first."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        # tolist converts all rows at once, which is faster than a float() per value.
        scores = np.take_along_axis(probabilities, order, axis=1).tolist()
        label = self._label
        return [
            [(label(i), score) for i, score in zip(indices, row, strict=True)]
            for indices, row in zip(order.tolist(), scores, strict=True)
        ]

    def classify(
        self, images: list[np.ndarray], options: ClassifyOptions | None = None
    ) -> list[list[tuple[str, float]]]:
        """Classify images and return each one's top-k (label, probability) pairs.

        ``images``: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA (alpha is ignored),
        uint8, uint16 or float32 in [0, 1]. Up to ``options.batch_size`` images go into
        one ONNX Runtime call.
        """
        options = options or ClassifyOptions()
        results: list[list[tuple[str, float]]] = []
        for start in range(0, len(images), options.batch_size):
            chunk = images[start : start + options.batch_size]
            resized = [resize_for_model(image, self.preprocess) for image in chunk]
            batch = normalize_batch(np.stack(resized), self.preprocess)
            results.extend(self.top_labels(self.run_prepared(batch), options.top_k))
        for top in results:
            check_finite_scores(top)
        return results


# Characters that format_top_k_csv percent-encodes in labels: the two separators and
# the escape character itself.
_CSV_LABEL_ESCAPES = {"%": "%25", ";": "%3B", ":": "%3A"}


def format_top_k_csv(top: Sequence[tuple[str, float]]) -> str:
    """Write (label, probability) pairs as the CSV top_k field "cat:0.91;dog:0.08".

    Pairs are separated by ";" and each label from its score by ":". In labels, "%",
    ";" and ":" are written as "%25", "%3B" and "%3A", as in URL percent-encoding, so
    a reader splits the field on ";", each pair on ":", and percent-decodes the label
    (``urllib.parse.unquote`` in Python). Other labels are written unchanged.
    """
    pairs = []
    for label, score in top:
        escaped = "".join(_CSV_LABEL_ESCAPES.get(char, char) for char in label)
        pairs.append(f"{escaped}:{score:.6f}")
    return ";".join(pairs)


def check_finite_scores(top: list[tuple[str, float]]) -> None:
    """Raise InferenceError when a score is NaN, as softmax makes NaN or inf logits."""
    if not all(math.isfinite(score) for _, score in top):
        raise InferenceError("the model output contains NaN or infinite values")


@dataclass(frozen=True)
class ClassifyTask:
    """Settings that a worker needs to classify files, picklable for Ray actors."""

    options: ClassifyOptions
    runtime: RuntimeOptions
    model: str | None = None
    labels_path: Path | None = None
    preset: str | None = None

    def open(self) -> Stages[tuple[np.ndarray, float], tuple[list[Any], float]]:
        """Load the model and return the read, classify and record stages.

        A JPEG larger than the model needs is decoded at reduced scale, as
        decode_min_size describes.
        """
        classifier = Classifier(
            self.model, self.runtime, labels_path=self.labels_path, preset=self.preset
        )
        return self.stages(classifier)

    def stages(
        self, classifier: Classifier
    ) -> Stages[tuple[np.ndarray, float], tuple[list[Any], float]]:
        """Return the stages around an already-loaded classifier."""
        from edgefx import imageio

        records: dict[Path, Any] = {}
        preprocess = classifier.preprocess
        min_size = decode_min_size(preprocess)

        def load(item: BatchItem) -> tuple[np.ndarray, float]:
            # (H, W, 3) resized image, and the file's megapixels, which for a reduced
            # JPEG decode are estimated from the decoded size.
            image = imageio.read_image(item.source, min_size=min_size)
            resized = resize_for_model(image.pixels, preprocess)
            pixels = image.height * image.width * image.reduction**2
            return resized, pixels / 1e6

        def infer(
            loaded: list[tuple[np.ndarray, float]],
        ) -> list[tuple[list[Any], float]]:
            resized = np.stack([values for values, _ in loaded])
            probabilities = classifier.run_prepared(
                normalize_batch(resized, preprocess)
            )
            tops = classifier.top_labels(probabilities, self.options.top_k)
            return [(top, units) for top, (_, units) in zip(tops, loaded, strict=True)]

        def save(item: BatchItem, result: tuple[list[Any], float]) -> float:
            top, units = result
            # Checked per file, because one model call covers a batch of files.
            check_finite_scores(top)
            records[item.source] = ClassifyRow(item.source, top[0][0], top[0][1], top)
            return units

        return Stages(
            load, infer, save, self.options.batch_size, records, save_inline=True
        )


def check_results_path(path: Path, inputs: Sequence[InputFile]) -> None:
    """Raise UsageError when writing results to ``path`` would fail or replace an input.

    The results file is written only after every image is classified, so these checks
    run first, before any image is read.
    """
    target = path.resolve()
    folders: dict[Path, Path] = {}
    for entry in inputs:
        if resolve_file(entry.path, folders) == target:
            raise UsageError(
                f"--out {path}: the output would replace the input {entry.path}; "
                "choose another --out file"
            )
    # atomic_write_bytes writes a temporary file with a random 8-character part first.
    check_output_file(path, temporary_names=(f"{TEMP_PREFIX}xxxxxxxx{path.suffix}",))


def classify_files(
    paths: PathsArgument,
    recursive: bool = False,
    options: ClassifyOptions | None = None,
    runtime: RuntimeOptions | None = None,
    model: str | None = None,
    labels_path: Path | None = None,
    preset: str | None = None,
    reporter: Reporter | None = None,
    engine: EngineOptions | None = None,
    results_path: Path | None = None,
) -> tuple[BatchSummary, list[ClassifyRow]]:
    """Classify image files and return the per-file results and one row per good file.

    A file that cannot be read is one failed result and the batch goes on; a ModelError
    or DeviceError stops it. Rows follow the order of the inputs. The model runs once
    per ``options.batch_size`` decoded images. ``results_path``, the file the caller
    will write the rows to, is checked before any work: UsageError when it is one of
    the inputs or when its folder refuses new files.
    """
    from edgefx import imageio

    options = options or ClassifyOptions()
    reporter = reporter or Reporter()
    engine = engine or EngineOptions()
    inputs, missing = collect_inputs(paths, imageio.FORMATS, recursive=recursive)
    if not inputs:
        reasons = "; ".join(m.error or "" for m in missing)
        raise UsageError(reasons or no_inputs_message(paths, "image", recursive))
    if results_path is not None:
        check_results_path(results_path, inputs)

    task = ClassifyTask(
        options, runtime or RuntimeOptions(), model, labels_path, preset
    )
    # The local engine loads the model now, so that a bad model, labels file or
    # preset is an error before any file is read. Ray workers load their own.
    stages = task.open() if engine.engine == "local" else None
    # The output of an item is its source, because classification writes no file.
    items = [BatchItem(entry.path, entry.path) for entry in inputs]
    summary, records = execute_task(
        items, missing, task, reporter, engine, stages=stages
    )
    ordered = [records[entry.path] for entry in inputs if entry.path in records]
    return summary, ordered
