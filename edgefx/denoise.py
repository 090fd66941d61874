"""Image denoising with an ONNX model, tiled so that memory stays bounded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefx.batch import (
    BatchItem,
    BatchOptions,
    BatchSummary,
    PathsArgument,
    Reporter,
    plan_batch,
)
from edgefx.errors import InferenceError, InputError, ModelError, UsageError
from edgefx.noise import chroma_subsampling_factor, estimate_sigma
from edgefx.pipeline import EngineOptions, Stages, execute_task
from edgefx.registry import ModelInfo, resolve_model
from edgefx.runtime import RuntimeOptions, create_session, describe_run_error

if TYPE_CHECKING:
    from edgefx.imageio import ImageData

logger = logging.getLogger(__name__)

MAX_SIGMA = 75.0
# Each tile is computed with its margin on every side (24 px for denoise-s), so larger
# tiles waste less work: 13 % extra pixels at 768 against 20 % at 512. On a 9.4 MP photo
# the command reached 80 % of the convolution ceiling at 768 and 77 % at 512, and a
# 100 MP photo peaked at 1490 MiB (bench/README.md).
DEFAULT_TILE = 768


@dataclass(frozen=True)
class DenoiseOptions:
    """Per-image settings: strength and tiling."""

    sigma: float | None = None  # noise level on the 0-255 scale; None estimates it
    tile: int = DEFAULT_TILE  # side of the core of each tile, in pixels

    def __post_init__(self) -> None:
        if self.sigma is not None and not 0.0 <= self.sigma <= MAX_SIGMA:
            raise UsageError(
                f"invalid sigma {self.sigma}; use a value from 0 to {MAX_SIGMA:g} "
                "on the 0-255 scale, or leave it out to estimate it"
            )
        if self.tile < 32:
            raise UsageError(f"invalid tile size {self.tile}; use 32 pixels or more")


@dataclass(frozen=True)
class ModelSignature:
    """Input names, channels and tiling needs of a denoiser's ONNX graph."""

    image_input: str
    level_input: str | None  # None for blind models that take the image alone
    channels: int  # 1 or 3
    size_multiple: int  # height and width must be multiples of this
    margin: int  # context in pixels that each tile needs on every side
    input_scale: float  # 1.0 for [0, 1] inputs, 255.0 for [0, 255]


def read_signature(info: ModelInfo, inputs: list[Any]) -> ModelSignature:
    """Check that the graph's inputs fit a denoiser and describe them."""
    levels = [
        i for i in inputs if i.name == "noise_level" or list(i.shape)[1:] == [1, 1, 1]
    ]
    images = [i for i in inputs if len(i.shape) == 4 and i not in levels]
    if len(images) != 1 or len(inputs) > 2:
        shapes = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
        raise ModelError(
            f"{info.path}: inputs {shapes} do not fit a denoiser; expected an image "
            "input (N, C, H, W) and optionally a noise_level input (N, 1, 1, 1)"
        )

    image = images[0]
    channels = image.shape[1] if isinstance(image.shape[1], int) else 3
    if channels not in (1, 3):
        raise ModelError(
            f"{info.path}: image input has {channels} channels; expected 1 or 3"
        )
    if "float" not in image.type:
        raise ModelError(f"{info.path}: image input is {image.type}; expected float")
    height, width = list(image.shape)[2:]
    if isinstance(height, int) or isinstance(width, int):
        # Tiles are --tile plus a margin, and smaller at the image's edges.
        raise ModelError(
            f"{info.path}: the image input has a fixed size "
            f"{height}x{width} (height x width); edgefx denoise feeds tiles of varying "
            "size, so it needs a model exported with dynamic height and width"
        )

    metadata = info.metadata
    value_range = metadata.get("input_range", "0-1")
    if value_range not in ("0-1", "0-255"):
        raise ModelError(f"{info.path}: unsupported input_range {value_range!r}")
    return ModelSignature(
        image_input=image.name,
        level_input=levels[0].name if levels else None,
        channels=channels,
        size_multiple=_metadata_int(info, "size_multiple", 1, minimum=1),
        margin=_metadata_int(info, "tile_margin", 32, minimum=0),
        input_scale=1.0 if value_range == "0-1" else 255.0,
    )


def _metadata_int(info: ModelInfo, key: str, default: int, minimum: int) -> int:
    text = info.metadata.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum or value > 4096:
        raise ModelError(
            f"{info.path}: invalid metadata {key}={text!r}; expected an integer "
            f"from {minimum} to 4096"
        )
    return value


def _reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices start..stop-1 into an axis of ``length``, mirrored past its end."""
    indices = np.arange(start, stop)
    indices = np.where(indices >= length, 2 * length - 2 - indices, indices)
    return np.clip(indices, 0, length - 1)


def _tile_spans(
    length: int, core: int, margin: int
) -> Iterator[tuple[int, int, int, int]]:
    """Yield (window start, window stop, core start, core stop) along one axis."""
    for core_start in range(0, length, core):
        core_stop = min(core_start + core, length)
        yield (
            max(0, core_start - margin),
            min(length, core_stop + margin),
            core_start,
            core_stop,
        )


class Denoiser:
    """An ONNX denoiser session with the tiling and noise-level logic around it."""

    def __init__(
        self, model: str | None = None, runtime: RuntimeOptions | None = None
    ) -> None:
        runtime = runtime or RuntimeOptions()
        self.info = resolve_model(model, "denoise", runtime.device)
        self.session = create_session(
            self.info.path,
            runtime or RuntimeOptions(),
            self.info.metadata.get("precision"),
        )
        self.signature = read_signature(self.info, self.session.get_inputs())

    def denoise(
        self,
        pixels: np.ndarray,
        options: DenoiseOptions | None = None,
        chroma_subsampling: tuple[int, int] = (1, 1),
    ) -> tuple[np.ndarray, float]:
        """Denoise an image and return it with the noise level that was used.

        ``pixels``: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, uint8, uint16 or
        float32 in [0, 1]; alpha is kept as it is. The result has the same shape and
        dtype. The noise level is on the 0-255 scale for every dtype; at 0 the image
        comes back unchanged. ``chroma_subsampling``: for pixels decoded from a JPEG
        file, its ``ImageData.chroma_subsampling``; the blind estimate of a color
        image is raised for a JPEG that stores chroma at reduced resolution (see
        ``edgefx.noise.CHROMA_SUBSAMPLING_FACTORS``).
        """
        options = options or DenoiseOptions()
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            # RGBA: the color is denoised and the alpha channel is kept as it is.
            color, used = self.denoise(pixels[:, :, :3], options, chroma_subsampling)
            return np.concatenate([color, pixels[:, :, 3:]], axis=2), used
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            gray, used = self.denoise(pixels[:, :, 0], options)
            return gray[:, :, None], used
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
            raise UsageError(
                "expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, "
                f"got shape {pixels.shape}"
            )
        if pixels.dtype not in (np.uint8, np.uint16, np.float32):
            raise UsageError(f"unsupported pixel dtype {pixels.dtype}")

        sigma = options.sigma
        if sigma is None:
            sigma = estimate_sigma(pixels)
            if pixels.ndim == 3:
                sigma *= chroma_subsampling_factor(chroma_subsampling)
            sigma = min(sigma, MAX_SIGMA)
        if sigma == 0:
            # The network still changes a photo at sigma 0: 0.6 % of the pixels of a
            # clean 256x256 crop by up to 5 levels, a 1-pixel photo by up to 27.
            return pixels.copy(), 0.0

        planes = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if self.signature.channels == 1 and planes.shape[2] == 3:
            # A grayscale model processes each color channel as its own image.
            channels = [
                self._run_tiled(planes[:, :, c : c + 1], sigma, options.tile)
                for c in range(3)
            ]
            result = np.concatenate(channels, axis=2)
        else:
            result = self._run_tiled(planes, sigma, options.tile)
        return (result[:, :, 0] if pixels.ndim == 2 else result), sigma

    def _run_tiled(self, planes: np.ndarray, sigma: float, tile: int) -> np.ndarray:
        # planes: (H, W, C) with C of 1 or 3, any of the accepted dtypes.
        multiple = self.signature.size_multiple
        margin = -(-self.signature.margin // multiple) * multiple
        core = max(multiple, tile // multiple * multiple)
        height, width = planes.shape[:2]
        padded_height = -(-height // multiple) * multiple
        padded_width = -(-width // multiple) * multiple

        output = np.empty_like(planes)
        for y0, y1, core_y0, core_y1 in _tile_spans(padded_height, core, margin):
            rows = _reflect_indices(y0, y1, height) if y1 > height else None
            for x0, x1, core_x0, core_x1 in _tile_spans(padded_width, core, margin):
                columns = _reflect_indices(x0, x1, width) if x1 > width else None
                if rows is None and columns is None:
                    window = planes[y0:y1, x0:x1]  # a view: no copy of the tile
                else:
                    row_index = np.arange(y0, y1) if rows is None else rows
                    column_index = np.arange(x0, x1) if columns is None else columns
                    window = planes[row_index[:, None], column_index[None, :]]
                restored = self._run_window(window, sigma)
                keep_y1 = min(core_y1, height)
                keep_x1 = min(core_x1, width)
                _store_core(
                    restored[
                        :, core_y0 - y0 : keep_y1 - y0, core_x0 - x0 : keep_x1 - x0
                    ],
                    output[core_y0:keep_y1, core_x0:keep_x1],
                    self.signature.input_scale,
                )
        return output

    def _run_window(self, window: np.ndarray, sigma: float) -> np.ndarray:
        """Run the model on one (h, w, C) window and return its (C', h, w) output.

        The output is float32 on the model's value scale (``input_scale``), with the
        model's channel count C'. Each conversion is one pass per channel straight
        into the planar buffer that ONNX Runtime reads.
        """
        scale = _dtype_scale(window.dtype)
        model_channels = self.signature.channels
        height, width, channels = window.shape
        batch = np.empty((1, model_channels, height, width), np.float32)
        factor = np.float32(self.signature.input_scale / scale)
        for c in range(model_channels):
            # A gray window repeats its one plane for a color model.
            source = window[:, :, c if channels > 1 else 0]
            np.multiply(source, factor, out=batch[0, c])
        feeds = {self.signature.image_input: batch}
        if self.signature.level_input:
            level = np.full((1, 1, 1, 1), sigma / 255.0, np.float32)
            feeds[self.signature.level_input] = level * self.signature.input_scale

        try:
            (restored,) = self.session.run(None, feeds)[:1]
        except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument
            raise InferenceError(
                f"the model failed on a tile of shape {list(batch.shape)}: "
                f"{describe_run_error(err)}"
            ) from err
        # Another image size may work, so a size change or NaN fails only this file.
        if restored.shape != batch.shape:
            raise InferenceError(
                f"the model's output shape {list(restored.shape)} differs from the "
                f"input shape {list(batch.shape)}; a denoiser must keep the size. If "
                "the model needs sizes that are a multiple of some number, state it "
                "as size_multiple in the model's metadata"
            )
        if not np.isfinite(restored).all():
            raise InferenceError("the model output contains NaN or infinite values")
        result: np.ndarray = restored[0]
        return result


def _dtype_scale(dtype: np.dtype) -> float:
    """Return the value that means full white in an image of this dtype."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


def _store_core(restored: np.ndarray, target: np.ndarray, input_scale: float) -> None:
    """Write a model output (C', h, w) into the (h, w, C) image region ``target``.

    Values are clipped to the valid range and, for integer images, rounded to the
    nearest level. A color output for a gray target is averaged over its channels.
    """
    scale = _dtype_scale(target.dtype)
    factor = np.float32(scale / input_scale)
    planes = restored
    if target.shape[2] == 1 and restored.shape[0] == 3:
        planes = restored.mean(axis=0, keepdims=True)
    buffer = np.empty(planes.shape[1:], np.float32)
    for c in range(target.shape[2]):
        np.multiply(planes[c], factor, out=buffer)
        np.clip(buffer, 0.0, scale, out=buffer)
        if scale != 1.0:
            np.rint(buffer, out=buffer)
        target[:, :, c] = buffer


@dataclass(frozen=True)
class _Unchanged:
    """Size of an image that denoising left as it was: its file is copied as it is."""

    height: int
    width: int


@dataclass(frozen=True)
class DenoiseTask:
    """Settings that a worker needs to denoise files, picklable for Ray actors."""

    options: DenoiseOptions
    runtime: RuntimeOptions
    model: str | None = None
    output_format: str | None = None
    quality: int | None = None

    def open(self) -> Stages[tuple[Path, ImageData, str], ImageData | _Unchanged]:
        """Load the model and return the read, denoise and write stages."""
        from edgefx import imageio
        from edgefx.fsutil import atomic_write_bytes

        denoiser = Denoiser(self.model, self.runtime)

        def target_format(item: BatchItem) -> str:
            return self.output_format or imageio.FORMATS[item.output.suffix.lower()]

        def load(item: BatchItem) -> tuple[Path, ImageData, str]:
            image = imageio.read_image(item.source)
            target = target_format(item)
            if image.alpha is not None and target == "jpeg":
                raise InputError(
                    item.source, "JPEG cannot store an alpha channel; use --format png"
                )
            return item.source, image, target

        def infer(
            loaded: list[tuple[Path, ImageData, str]],
        ) -> list[ImageData | _Unchanged]:
            results: list[ImageData | _Unchanged] = []
            for source, image, target in loaded:
                restored, sigma = denoiser.denoise(
                    image.pixels, self.options, image.chroma_subsampling
                )
                logger.debug("%s: noise sigma %.1f", source, sigma)
                if sigma == 0:
                    reason = (
                        "--sigma 0" if self.options.sigma == 0 else "no noise found"
                    )
                    if image.format == target:
                        # Encoding the same pixels again would cost a JPEG or WebP
                        # file another round of lossy compression.
                        logger.info("%s: %s, copied unchanged", source, reason)
                        results.append(_Unchanged(image.height, image.width))
                        continue
                    logger.info("%s: %s, converted without denoising", source, reason)
                results.append(
                    imageio.ImageData(
                        restored,
                        image.alpha,
                        image.format,
                        icc_profile=image.icc_profile,
                        exif=image.exif,
                    )
                )
            return results

        def save(item: BatchItem, result: ImageData | _Unchanged) -> float:
            if isinstance(result, _Unchanged):
                atomic_write_bytes(item.output, item.source.read_bytes())
            else:
                imageio.write_image(
                    item.output,
                    result,
                    format=target_format(item),
                    quality=self.quality,
                )
            return result.height * result.width / 1e6

        return Stages(load, infer, save)


def denoise_files(
    paths: PathsArgument,
    batch: BatchOptions,
    options: DenoiseOptions | None = None,
    runtime: RuntimeOptions | None = None,
    model: str | None = None,
    output_format: str | None = None,
    quality: int | None = None,
    reporter: Reporter | None = None,
    engine: EngineOptions | None = None,
) -> BatchSummary:
    """Denoise image files into ``batch.out_dir`` and return the per-file results.

    Outputs keep the input's format, bit depth, size and alpha unless ``output_format``
    names another format. Usage errors (an output that would replace its input, two
    inputs with one output name, no input at all) are raised before any file is touched.
    ``engine`` chooses the local pipeline (the default) or a Ray cluster.
    """
    from edgefx import imageio

    reporter = reporter or Reporter()
    if output_format is not None and output_format not in imageio.SUFFIX_FOR_FORMAT:
        raise UsageError(
            f"invalid format {output_format!r}; choose one of "
            f"{', '.join(imageio.SUFFIX_FOR_FORMAT)}"
        )

    def suffix_for(source: Path) -> str:
        if output_format is not None:
            return imageio.SUFFIX_FOR_FORMAT[output_format]
        return source.suffix

    items, missing = plan_batch(paths, imageio.FORMATS, batch, suffix_for, "image")
    # The model is found and its checksum verified now, so a wrong --model is a usage
    # error before any work. The session starts with the first file that needs work,
    # so a rerun that only skips finished outputs does not load the model.
    resolve_model(model, "denoise")
    task = DenoiseTask(
        options or DenoiseOptions(),
        runtime or RuntimeOptions(),
        model,
        output_format,
        quality,
    )
    summary, _ = execute_task(items, missing, task, reporter, engine, batch)
    return summary


_default_denoisers: dict[tuple[str | None, str], Denoiser] = {}


def denoise_image(
    pixels: np.ndarray,
    sigma: float | None = None,
    model: str | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Denoise one image array and return the result with the same shape and dtype.

    ``pixels``: (H, W) grayscale, (H, W, 3) RGB or (H, W, 4) RGBA, uint8, uint16 or
    float32 in [0, 1].
    ``sigma`` is the noise level on the 0-255 scale (0-75); None estimates it. The
    session is created on the first call and reused.
    """
    key = (model, device)
    if key not in _default_denoisers:
        _default_denoisers[key] = Denoiser(model, RuntimeOptions(device=device))
    restored, _ = _default_denoisers[key].denoise(pixels, DenoiseOptions(sigma=sigma))
    return restored
