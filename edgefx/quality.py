"""Real inputs for calibration and the quality and speed of a model on test data.

Each task reads its own kind of data. The denoiser gets clean photos, with noise added
from a fixed seed. The classifier gets labelled images, in a folder or zip with one
subfolder per class. The enhancer gets clean speech and noise in the layout of the
shared audio folder, split by edgefx.train.audio_split. ``edgefx quantize`` and
bench/edge_models.py use this module, and it never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgefx.errors import UsageError
from edgefx.fsutil import describe_os_error

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
AUDIO_RATE = 16000
DENOISE_TEST_SIGMA = 25.0  # the CBSD68 benchmark level that the card quotes
ENHANCE_TEST_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)  # as bench/enhance_speech.py
NOISE_SEED = 0
MAX_CALIBRATION_SIGMA = 75.0  # the top of the shipped denoiser's noise range


@dataclass(frozen=True)
class Quality:
    """A model's score on test data: ``metric`` is psnr_db, top1_percent or pesq_wb."""

    metric: str
    value: float
    count: int  # test images, or mixtures for the enhancer
    data: str  # what was measured, in words
    failed: int = 0  # outputs that could not be scored (NaN output, PESQ error)


@dataclass(frozen=True)
class Speed:
    """Median seconds of one unit of work and what that unit is."""

    seconds: float
    unit: str  # e.g. "one 481x321 photo", "a batch of 8 images", "10 s of audio"
    items: int  # items in one unit, for throughput


METRIC_TOLERANCES = {"psnr_db": 0.1, "top1_percent": 0.5, "pesq_wb": 0.05}
METRIC_LABELS = {"psnr_db": "dB PSNR", "top1_percent": "% top-1", "pesq_wb": "PESQ"}


def spread(count: int, limit: int | None) -> list[int]:
    """Pick ``limit`` evenly spaced indices out of ``count`` (all when None)."""
    picked = count if limit is None else max(0, min(limit, count))
    return [i * count // picked for i in range(picked)]


# --------------------------------------------------------------------------------------
# Images


def _decode(data: bytes, name: str) -> np.ndarray:
    import cv2

    # OpenCV prints its own lines about damaged files; the warning below replaces them.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:  # an empty file, or a header above OpenCV's pixel limit
        raise UsageError(f"{name}: cannot decode this image") from err
    if array is None:
        raise UsageError(f"{name}: cannot decode this image")
    return np.ascontiguousarray(array[:, :, ::-1])  # (H, W, 3) RGB uint8


def list_images(source: Path) -> list[tuple[str, str]]:
    """Return (name, class folder) of every image in a folder (recursive) or a zip."""
    if not source.exists():
        raise UsageError(f"{source}: not found")
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            names = [
                PurePosixPath(i.filename)
                for i in archive.infolist()
                if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES)
            ]
        return sorted((n.as_posix(), n.parent.name) for n in names)
    if not source.is_dir():
        raise UsageError(f"{source}: expected a folder of images or a zip file")
    paths = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    return [(str(p), p.parent.name) for p in paths]


def data_files(source: Path) -> list[Path]:
    """Return the files that calibration or scoring may read from ``source``.

    That is ``source`` itself when it is a file (a zip of images), and otherwise every
    image or recording under the folder ``source``, found by suffix as list_images and
    calibration_audio find them.
    """
    from edgefx.train.audio_split import AUDIO_SUFFIXES

    if not source.is_dir():
        return [source]
    suffixes = {*IMAGE_SUFFIXES, *AUDIO_SUFFIXES}
    return [path for path in source.rglob("*") if path.suffix.lower() in suffixes]


def read_images(
    source: Path, limit: int | None, skip_unreadable: bool = False
) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yield (name, class folder, (H, W, 3) RGB uint8) for evenly spread images.

    An image that cannot be read raises UsageError, unless ``skip_unreadable``: then
    it is logged as a warning and skipped, and UsageError is raised only when none of
    the chosen images can be read.
    """
    listed = list_images(source)
    if not listed:
        raise UsageError(f"{source}: no image files found")
    chosen = [listed[i] for i in spread(len(listed), limit)]
    # NOTE: a skipped image is not replaced, so fewer than ``limit`` images may come.
    read = 0
    with contextlib.ExitStack() as stack:
        archive = None
        if source.is_file():
            archive = stack.enter_context(zipfile.ZipFile(source))
        for name, label in chosen:
            display_name = f"{source}:{name}" if archive else name
            try:
                data = archive.read(name) if archive else Path(name).read_bytes()
                pixels = _decode(data, display_name)
            except OSError as err:
                if not skip_unreadable:
                    raise UsageError(
                        f"{display_name}: {describe_os_error(err)}"
                    ) from err
                logger.warning("%s: skipped, %s", display_name, describe_os_error(err))
                continue
            except UsageError:
                if not skip_unreadable:
                    raise
                logger.warning("%s: skipped, cannot decode this image", display_name)
                continue
            read += 1
            yield name, label, pixels
    if not read:
        raise UsageError(
            f"{source}: none of the {len(chosen)} chosen images is readable"
        )


def add_noise(clean: np.ndarray, sigma: float, name: str) -> np.ndarray:
    """Add Gaussian noise of ``sigma`` (0-255 scale) and round to uint8.

    The generator is seeded from (seed, file name, sigma), as in
    bench/denoise_cbsd68.py, so an image gets the same noise in both scripts.
    """
    entropy = [NOISE_SEED, zlib.crc32(Path(name).name.encode("utf-8"))]
    rng = np.random.default_rng([*entropy, round(sigma * 1000)])
    noisy = clean.astype(np.float64) + rng.normal(0.0, sigma, clean.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def psnr(clean: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB over all pixels and channels, on the 0-255 scale."""
    error = clean.astype(np.float64) - image.astype(np.float64)
    mse = float(np.mean(error**2))
    return float("inf") if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


# --------------------------------------------------------------------------------------
# Audio


class NonFiniteSamplesError(ValueError):
    """A recording contains NaN or infinite samples, which no model input may hold."""


def read_mono(path: Path) -> np.ndarray:
    """Read a recording as float32 mono at 16 kHz.

    Raises NonFiniteSamplesError when a sample is NaN or infinite, which a float WAV
    or FLAC file can store. One such sample would make the calibration ranges, and so
    the int8 scales, NaN.
    """
    import soundfile
    import soxr

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    finite = np.isfinite(samples).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise NonFiniteSamplesError(
            f"contains NaN or infinite samples at second {first / max(rate, 1):.3f}"
        )
    mono = samples.mean(axis=1)
    if rate != AUDIO_RATE:
        mono = soxr.resample(mono, rate, AUDIO_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix ``noise`` (looped) into ``clean`` at ``snr_db``, peak at most 0.95."""
    noise = np.resize(noise, clean.shape).astype(np.float64)
    clean64 = clean.astype(np.float64)
    noise_power = max(float(np.mean(noise**2)), 1e-12)
    gain = math.sqrt(float(np.mean(clean64**2)) / (noise_power * 10 ** (snr_db / 10)))
    mixture = clean64 + gain * noise
    peak = float(np.max(np.abs(mixture))) or 1.0
    return (mixture * min(1.0, 0.95 / peak)).astype(np.float32)


def _audio_split_lists(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    from edgefx.train import audio_split

    if split == "train":
        return audio_split.train_speech(root), audio_split.train_noise(root)
    return audio_split.test_speech(root), audio_split.test_noise(root)


def calibration_audio(root: Path, clips: int, seconds: float) -> list[np.ndarray]:
    """Return ``clips`` noisy 16 kHz clips for calibration, from training data only.

    Under a ``shared/data/audio`` layout, training speech is mixed with training noise
    at -5 to 20 dB SNR. Any other folder's recordings are taken as they are, as the
    noisy input that the model will meet.
    """
    if not root.is_dir():
        raise UsageError(f"{root}: expected a folder of recordings")
    speech, noise = _audio_split_lists(root, "train")
    rng = np.random.default_rng(NOISE_SEED)
    length = int(seconds * AUDIO_RATE)
    result = []
    if speech and noise:
        for index in spread(len(speech), clips):
            clean = _read_or_skip(speech[index])
            noisy = _read_or_skip(noise[int(rng.integers(len(noise)))])
            if clean is not None and noisy is not None:
                snr = float(rng.uniform(-5.0, 20.0))
                result.append(mix(clean[:length], noisy, snr))
    else:
        from edgefx.train.audio_split import AUDIO_SUFFIXES

        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise UsageError(f"{root}: no recordings found")
        for index in spread(len(files), clips):
            clip = _read_or_skip(files[index])
            if clip is not None:
                result.append(clip[:length])
    if not result:
        raise UsageError(f"{root}: none of the chosen recordings is readable")
    return result


def _read_or_skip(path: Path) -> np.ndarray | None:
    """Read a calibration recording, or log a warning and return None if it fails."""
    try:
        return read_mono(path)
    except NonFiniteSamplesError as err:
        logger.warning("%s: skipped, the recording %s", path, err)
        return None
    except (OSError, RuntimeError, ValueError) as err:
        # soundfile raises LibsndfileError (a RuntimeError) for damaged files.
        logger.warning("%s: skipped, cannot read this recording: %s", path, err)
        return None


def _read_test_recording(path: Path) -> np.ndarray:
    """Read a held-out recording; raise UsageError when it has NaN or inf samples."""
    try:
        return read_mono(path)
    except NonFiniteSamplesError as err:
        raise UsageError(f"{path}: {err}; remove it from the test data") from err


def held_out_mixtures(
    root: Path, limit: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return (clean, noisy) pairs of held-out speech and noise at ENHANCE_TEST_SNRS.

    Each utterance's noise is chosen from a generator seeded by its relative path.
    """
    speech, noise = _audio_split_lists(root, "test")
    if not speech or not noise:
        raise UsageError(
            f"{root}: no held-out speech and noise found; give the speech and noise "
            "corpus folder that `edgefx train enhance --data` takes"
        )
    noises: dict[Path, np.ndarray] = {}
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for index in spread(len(speech), limit):
        name = speech[index].relative_to(root).as_posix()
        rng = np.random.default_rng([NOISE_SEED, zlib.crc32(name.encode("utf-8"))])
        noise_path = noise[int(rng.integers(len(noise)))]
        if noise_path not in noises:
            noises[noise_path] = _read_test_recording(noise_path)
        clean = _read_test_recording(speech[index])
        pairs.extend(
            (clean, mix(clean, noises[noise_path], s)) for s in ENHANCE_TEST_SNRS
        )
    return pairs


# --------------------------------------------------------------------------------------
# Quality and speed of one model file


def measure_quality(
    model: Path, task: str, test_data: Path, limit: int | None, threads: int = 0
) -> Quality:
    """Score ``model`` on ``test_data`` with the task's metric, on the CPU."""
    from edgefx.runtime import RuntimeOptions

    runtime = RuntimeOptions(device="cpu", threads=threads)
    if task == "denoise":
        from edgefx.denoise import DenoiseOptions, Denoiser

        denoiser = Denoiser(str(model), runtime)
        options = DenoiseOptions(sigma=DENOISE_TEST_SIGMA)
        scores = []
        for name, _, clean in read_images(test_data, limit):
            noisy = add_noise(clean, DENOISE_TEST_SIGMA, name)
            restored, _ = denoiser.denoise(noisy, options)
            scores.append(psnr(clean, restored))
        return Quality(
            "psnr_db",
            float(np.mean(scores)),
            len(scores),
            f"{test_data.name}, sigma {DENOISE_TEST_SIGMA:g}, sigma given",
        )
    if task == "classify":
        from edgefx.classify import Classifier, ClassifyOptions

        classifier = Classifier(str(model), runtime)
        items = list(read_images(test_data, limit))
        results = classifier.classify(
            [pixels for _, _, pixels in items], ClassifyOptions(top_k=1, batch_size=64)
        )
        right = sum(
            top[0][0] == label
            for (_, label, _), top in zip(items, results, strict=True)
        )
        return Quality(
            "top1_percent", 100.0 * right / len(items), len(items), test_data.name
        )
    if task == "enhance":
        pesq = _import_pesq()
        from edgefx.enhance import Enhancer

        enhancer = Enhancer(str(model), runtime)
        scores = []
        failures: list[str] = []
        for clean, noisy in held_out_mixtures(test_data, limit):
            enhanced = enhancer.enhance(noisy, AUDIO_RATE)
            if not np.isfinite(enhanced).all():
                # A broken model (an int8 range gone wrong) counts as failed on this
                # mixture instead of stopping the measurement.
                failures.append("the output contains NaN or infinity")
                continue
            try:
                scores.append(float(pesq.pesq(AUDIO_RATE, clean, enhanced, "wb")))
            except pesq.PesqError as err:
                logger.debug("PESQ skipped a mixture: %s", err)
            except ValueError as err:
                # pesq 0.0.4 raises "cannot convert float NaN to integer" on some
                # outputs of the broken int8 enhancer; the cause is not known.
                failures.append(f"PESQ failed: {err}")
        if failures:
            logger.warning(
                "%s: %d of %d mixtures could not be scored (first: %s)",
                model,
                len(failures),
                len(failures) + len(scores),
                failures[0],
            )
        if not scores:
            raise UsageError(f"{test_data}: PESQ could not score any test mixture")
        snrs = ", ".join(f"{s:g}" for s in ENHANCE_TEST_SNRS)
        return Quality(
            "pesq_wb",
            float(np.mean(scores)),
            len(scores),
            f"held-out speech and noise at {snrs} dB SNR",
            len(failures),
        )
    raise UsageError(f"unknown task {task!r}")


def check_metric_packages(task: str) -> None:
    """Import the optional packages that ``measure_quality`` needs for ``task``.

    Raises UsageError with an install hint when one is missing, so that a command
    can check this before it starts any work.
    """
    if task == "enhance":
        _import_pesq()


def _import_pesq() -> Any:
    try:
        import pesq
    except ImportError as err:
        raise UsageError(
            'PESQ for the enhancer needs the pesq package: pip install "pesq>=0.0.4", '
            'or pip install ".[edge]" in the edgefx checkout'
        ) from err
    return pesq


def speed_workload(
    model: Path, task: str, sample: Path | None, threads: int = 0
) -> tuple[Callable[[], object], str, int]:
    """Return a function that runs one unit of ``task`` work on ``model``, on the CPU.

    The unit is the first photo of ``sample`` denoised at sigma 25, a batch of 8
    classifier inputs (the CLI's default batch size), or 10 s of audio.
    """
    from edgefx.runtime import RuntimeOptions

    runtime = RuntimeOptions(device="cpu", threads=threads)
    rng = np.random.default_rng(NOISE_SEED)
    if task == "denoise":
        from edgefx.denoise import DenoiseOptions, Denoiser

        denoiser = Denoiser(str(model), runtime)
        if sample is not None:
            name, _, clean = next(read_images(sample, 1))
        else:
            name, clean = "random", rng.integers(0, 256, (321, 481, 3), np.uint8)
        noisy = add_noise(clean, DENOISE_TEST_SIGMA, name)
        options = DenoiseOptions(sigma=DENOISE_TEST_SIGMA)
        unit = f"one {clean.shape[1]}x{clean.shape[0]} photo"
        return (lambda: denoiser.denoise(noisy, options)), unit, 1
    if task == "classify":
        from edgefx.classify import Classifier, prepare_image

        classifier = Classifier(str(model), runtime)
        if sample is not None:
            images = [pixels for _, _, pixels in read_images(sample, 8)]
        else:
            images = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(8)]
        batch = np.stack([prepare_image(i, classifier.preprocess) for i in images])
        return (lambda: classifier.run_prepared(batch)), "a batch of 8 images", 8
    if task == "enhance":
        from edgefx.enhance import Enhancer

        enhancer = Enhancer(str(model), runtime)
        audio = (0.1 * rng.standard_normal(10 * AUDIO_RATE)).astype(np.float32)
        return (lambda: enhancer.enhance(audio, AUDIO_RATE)), "10 s of audio", 1
    raise UsageError(f"unknown task {task!r}")


def compare_speed(
    workloads: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Time each workload ``repeats`` times, interleaved, and return the medians.

    Interleaving spreads the load of other processes over all of them alike.
    """
    for run in workloads.values():
        run()  # warm-up: first-call allocations and thread start
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, run in workloads.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}
