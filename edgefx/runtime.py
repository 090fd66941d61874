"""The one place that creates ONNX Runtime sessions and chooses execution providers."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefx.errors import DeviceError, ModelError, UsageError
from edgefx.external_data import check_external_data

if TYPE_CHECKING:
    import onnxruntime

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

_PROVIDER_FOR_DEVICE = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# Severity threshold for ONNX Runtime's own log: fatal only. A provider that fails to
# load is reported by edgefx in one line instead of ONNX Runtime's stack of messages.
_ORT_FATAL_ONLY = 4


# ONNX Runtime starts every intra-op thread it is given when the session is made, so a
# typo such as 100000 exhausts the process limit of the whole machine.
MAX_THREADS = 256


@dataclass(frozen=True)
class RuntimeOptions:
    """Session settings: device, CPU threads and graph optimization level."""

    device: str = "auto"
    threads: int = 0  # intra-op threads; 0 lets ONNX Runtime use one per physical core
    optimization: str = "all"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(
                f"invalid device {self.device!r}; choose one of {', '.join(DEVICES)}"
            )
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(
                f"invalid optimization level {self.optimization!r}; "
                f"choose one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if not 0 <= self.threads <= MAX_THREADS:
            raise UsageError(
                f"invalid thread count {self.threads}; use 0 to {MAX_THREADS}"
            )


def _import_onnxruntime() -> onnxruntime:
    import onnxruntime

    onnxruntime.set_default_logger_severity(_ORT_FATAL_ONLY)
    return onnxruntime


def _session_options(options: RuntimeOptions) -> onnxruntime.SessionOptions:
    ort = _import_onnxruntime()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = _ORT_FATAL_ONLY
    session_options.intra_op_num_threads = options.threads
    session_options.inter_op_num_threads = 1
    # Idle worker threads would otherwise spin between runs and starve the decoding,
    # noise estimation and encoding that a batch does between model calls.
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    session_options.graph_optimization_level = levels[options.optimization]
    return session_options


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels when they are installed.

    ``pip install "onnxruntime-gpu[cuda,cudnn]"`` puts those libraries in site-packages,
    where the dynamic loader does not look; onnxruntime.preload_dlls finds them there.
    """
    ort = _import_onnxruntime()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    # preload_dlls prints a line per library it cannot find; those are diagnosed below.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        try:
            preload()
        except Exception as err:  # noqa: BLE001 - a failed preload only loses a hint
            logger.debug("onnxruntime.preload_dlls failed: %s", err)


def diagnose_cuda() -> str:
    """Return why the CUDA execution provider cannot load here, in one sentence."""
    ort = _import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            "this onnxruntime build has no CUDA execution provider; "
            'install it with: pip install "onnxruntime-gpu[cuda,cudnn]"'
        )
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver was found: libcuda.so.1 is missing"
    provider_library = (
        Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    )
    if provider_library.exists():
        try:
            ctypes.CDLL(str(provider_library))
        except OSError as err:
            missing = str(err).split(":")[0]
            return (
                f"a CUDA library is missing ({missing}); install the CUDA and cuDNN "
                "versions this onnxruntime-gpu was built for: "
                'pip install "onnxruntime-gpu[cuda,cudnn]"'
            )
    return "the CUDA execution provider failed to initialize (see the log at --verbose)"


def cuda_usable() -> bool:
    """Return whether CUDA can run here: the provider is built in and a driver loads.

    This is cheaper than starting a session, and it decides which shipped variant runs
    by default. A session that then fails on CUDA still falls back to the CPU.
    """
    ort = _import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    driver = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(driver)
    except OSError:
        return False
    return True


def create_session(
    model_path: Path, options: RuntimeOptions, precision: str | None = None
) -> onnxruntime.InferenceSession:
    """Create an inference session for ``model_path`` on the device that options select.

    ``auto`` tries CUDA (when the installed onnxruntime has it) and falls back to the
    CPU, logging which one runs. An explicit ``cuda`` or ``tensorrt`` that cannot start
    raises DeviceError with the reason instead of silently running on the CPU.
    ``precision`` is the model's precision metadata ("fp16" for ``edgefx export
    --fp16`` files).
    """
    # A model's external-data entries may name any file; those outside its folder are
    # rejected before ONNX Runtime opens anything.
    check_external_data(model_path)
    ort = _import_onnxruntime()
    available = ort.get_available_providers()
    session_options = _session_options(options)

    if options.device == "cpu":
        wanted = ["CPUExecutionProvider"]
    elif options.device == "auto":
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
        wanted.append("CPUExecutionProvider")
    else:
        provider = _PROVIDER_FOR_DEVICE[options.device]
        if provider not in available:
            raise DeviceError(
                f"--device {options.device}: this onnxruntime build has no {provider}; "
                f"available: {', '.join(available)}"
            )
        wanted = [provider, "CPUExecutionProvider"]
        if options.device == "tensorrt":
            wanted.insert(1, "CUDAExecutionProvider")

    if "CUDAExecutionProvider" in wanted:
        _preload_cuda_libraries()

    # When a provider fails, onnxruntime's Python wrapper prints an "EP Error" banner
    # to stdout and retries with the other providers. The banner goes to the debug log.
    # ONNX Runtime 1.31.1 crashes with a segmentation fault while it optimizes some
    # float16 graphs for the CPU, such as an enhancer with a deep filter. Without its
    # fusion of transposes into MatMul they load and run.
    disabled = ["MatmulTransposeFusion"] if precision == "fp16" else None
    banner = io.StringIO()
    try:
        with contextlib.redirect_stdout(banner):
            session = ort.InferenceSession(
                str(model_path),
                sess_options=session_options,
                providers=wanted,
                disabled_optimizers=disabled,
            )
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ModelError(f"{model_path}: cannot load the model: {message}") from err

    if banner.getvalue().strip():
        logger.debug("onnxruntime: %s", banner.getvalue().strip())
    running = session.get_providers()[0]
    if options.device in ("cuda", "tensorrt") and running == "CPUExecutionProvider":
        raise DeviceError(
            f"--device {options.device} cannot start: {diagnose_cuda()}. "
            "To run on the CPU instead, use --device cpu"
        )
    threads = (
        f"threads: {options.threads}" if options.threads else "default thread count"
    )
    # Commands such as quantize open several sessions (calibration, scoring, timing,
    # temporary files); the user sees the device and model line once per setting.
    announcement = (running, threads, options.device == "auto" and wanted[0] != running)
    level = logging.DEBUG if announcement in _ANNOUNCED else logging.INFO
    _ANNOUNCED.add(announcement)
    if options.device == "auto" and wanted[0] != running:
        logger.log(
            level, "CUDA is not usable, so the CPU runs the model: %s", diagnose_cuda()
        )
    logger.log(level, "model %s on %s, %s", model_path, running, threads)
    return session


# (provider, thread setting, CUDA fallback) combinations already logged at INFO.
_ANNOUNCED: set[tuple[str, str, bool]] = set()


def describe_run_error(err: Exception) -> str:
    """Return onnxruntime's error message as one line, without its code prefix.

    A message such as "Got invalid dimensions for input: x" names the bad axes and
    their expected sizes only on its next lines, so the lines are joined.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = " ".join(lines) or repr(err)
    # "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got ..." -> "Got ..."
    if message.startswith("[ONNXRuntimeError]"):
        message = message.split(" : ", 3)[-1]
    return message


def provider_name(session: onnxruntime.InferenceSession) -> str:
    """Return the short device name (cpu, cuda, tensorrt) a session runs on."""
    running = session.get_providers()[0]
    for device, provider in _PROVIDER_FOR_DEVICE.items():
        if provider == running:
            return device
    return running
