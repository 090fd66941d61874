"""Terminal plumbing shared by the commands: logging, progress, summary, error mapping.

Everything here is for the terminal only; the library modules never import it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand

from edgefx.batch import Reporter

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from edgefx.batch import BatchSummary, FileResult

logger = logging.getLogger("edgefx")

ChoiceT = TypeVar("ChoiceT", bound=Enum)


def choice_parser(choices: type[ChoiceT]) -> Callable[[object], ChoiceT]:
    """Return a Typer parser that maps a value to a member of ``choices``.

    Typer 0.29's own choice check words its error as "Value error, 'xml' is not one
    of ..."; this parser lists the choices in plain words instead. Matching ignores
    case.
    """

    def parse(value: object) -> ChoiceT:
        if isinstance(value, choices):
            return value
        text = str(value)
        for member in choices:
            if str(member.value).casefold() == text.casefold():
                return member
        names = ", ".join(str(member.value) for member in choices)
        # Typer puts "Invalid value for '--format': " in front of this message.
        raise typer.BadParameter(f"{text!r} (choose one of {names})")

    return parse


def _range_text(low: float | None, high: float | None) -> str:
    """Return "at least 32", "at most 1" or "from 0 to 75" for a range's bounds."""
    if high is None:
        return f"at least {low:g}"
    if low is None:
        return f"at most {high:g}"
    return f"from {low:g} to {high:g}"


def _out_of_range(value: float, low: float | None, high: float | None) -> bool:
    return (low is not None and value < low) or (high is not None and value > high)


def number(
    low: float | None = None, high: float | None = None
) -> Callable[[object], float]:
    """Return a Typer parser for a finite number from ``low`` to ``high``.

    Typer's own range check lets "nan" through to a comparison that fails with a
    message about the wrong bound, and takes "inf" where no upper bound is set. This
    parser rejects both and names the range in its message.
    """

    def parse(value: object) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise typer.BadParameter(f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise typer.BadParameter(f"{value!r} is not a finite number")
        if _out_of_range(number, low, high):
            raise typer.BadParameter(
                f"{value} is out of range: give a number {_range_text(low, high)}"
            )
        return number

    # Click names the help placeholder after the parser function.
    parse.__name__ = "float"
    return parse


def integer(low: int | None = None, high: int | None = None) -> Callable[[object], int]:
    """Return a Typer parser for an integer from ``low`` to ``high``.

    Typer 0.29 words its own range and type errors as pydantic does ("Input should
    be greater than or equal to 32"). This parser words them as ``number`` does.
    """

    def parse(value: object) -> int:
        if isinstance(value, int):
            result = value
        else:
            try:
                result = int(str(value).strip())
            except ValueError:
                raise typer.BadParameter(f"{value!r} is not an integer") from None
        if _out_of_range(result, low, high):
            raise typer.BadParameter(
                f"{value} is out of range: give an integer {_range_text(low, high)}"
            )
        return result

    parse.__name__ = "int"
    return parse


def integer_option(
    *declarations: str,
    low: int | None = None,
    high: int | None = None,
    **settings: Any,
) -> Any:
    """Return a ``typer.Option`` for an integer from ``low`` to ``high``.

    ``integer`` checks the value. The bounds are also passed to Typer as min and max,
    which only puts the range into the help text, because the parser runs first.
    """
    settings.setdefault("metavar", "<int>")
    return typer.Option(
        *declarations, parser=integer(low, high), min=low, max=high, **settings
    )


def choice_metavar(choices: type[Enum]) -> str:
    """Return the help placeholder for a choice option, such as <cpu|cuda>."""
    return "<" + "|".join(str(member.value) for member in choices) + ">"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


DeviceOption = Annotated[
    Device,
    typer.Option(
        help="Where the model runs: auto uses CUDA when it initializes, else the CPU.",
        parser=choice_parser(Device),
        metavar=choice_metavar(Device),
    ),
]
ThreadsOption = Annotated[
    int,
    integer_option(
        help="CPU threads for ONNX Runtime, 0 to 256; 0 uses one per physical core.",
        low=0,
        high=256,
    ),
]


class Optimization(str, Enum):
    disable = "disable"
    basic = "basic"
    extended = "extended"
    all = "all"


OptimizationOption = Annotated[
    Optimization,
    typer.Option(
        "--graph-optimization",
        help="ONNX Runtime graph optimization level.",
        parser=choice_parser(Optimization),
        metavar=choice_metavar(Optimization),
    ),
]
JobsOption = Annotated[
    int,
    integer_option(
        "--jobs",
        "-j",
        help="Worker threads that decode and encode files while the model runs; "
        "0 uses half the CPU cores, 1 to 4. With --engine ray: worker actors; 0 "
        "starts as many as the cluster's CPUs (or GPUs with --device cuda) allow. "
        "At most 256.",
        low=0,
        high=256,
    ),
]


class Engine(str, Enum):
    local = "local"
    ray = "ray"


EngineOption = Annotated[
    Engine,
    typer.Option(
        help="Where the batch runs: local (this process) or ray (a Ray cluster; "
        'needs pip install "ray[data]>=2.40").',
        parser=choice_parser(Engine),
        metavar=choice_metavar(Engine),
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Address of a running Ray cluster: auto (the cluster of this node) or "
        "HOST:6379 (its head node). "
        "Default: start a local Ray instance.",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Shipped model name (see `edgefx models`) or path to an .onnx file.",
        metavar="<name|path>",
    ),
]
VerboseOption = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="Log debug details, such as the estimated sigma of each photo or the rate "
        "and length of each recording.",
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Log warnings only; the summary still prints."),
]
RecursiveOption = Annotated[
    bool,
    typer.Option("--recursive", "-r", help="Look for inputs in subdirectories too."),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(help="Replace existing outputs instead of skipping them."),
]


class PlainUsageCommand(TyperCommand):
    """A Typer command whose usage line writes arguments as ``PATHS...``.

    Typer 0.29 writes a required argument as ``{PATHS}...``, which reads like a set
    of choices. This class keeps the Unix convention, with brackets only around
    optional arguments.
    """

    # ctx is Typer's vendored click Context, which Typer does not export.
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or (param.name or "").upper()
            if param.nargs != 1:
                name += "..."
            pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Write the Arguments and Options sections; arguments without a type.

        Typer 0.29 lists a variadic argument as ``PATHS <list[str]>``, a Python type
        that means nothing to a user, so it is written as ``PATHS...`` instead.
        """
        arguments = []
        options = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                if param.nargs != 1:
                    name += "..."
                arguments.append((name, record[1]))
            elif param.param_type_name == "option":
                options.append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


_console: Console | None = None


def stderr_console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True, highlight=False)
    return _console


class _ConsoleHandler(logging.Handler):
    """Writes log records through the rich console, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prefix = (
                ""
                if record.levelno == logging.INFO
                else f"{record.levelname.lower()}: "
            )
            lines = self.format(record).split("\n")
            stderr_console().print(
                prefix + "\n".join(printable(line) for line in lines),
                markup=False,
                soft_wrap=True,
                highlight=False,
            )
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int) -> None:
    """Send edgefx's log records to stderr: -q shows warnings, -v debug records."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("edgefx")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def printable(text: str) -> str:
    """Return ``text`` with control characters written as escapes, such as \\x1b.

    File names may contain ESC, newlines or undecodable bytes. Printed raw, they could
    move the cursor, clear the terminal or split one message into several lines.
    """
    return "".join(
        character if character.isprintable() else repr(character)[1:-1]
        for character in text
    )


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup code runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


RESUME_HINT = (
    "finished outputs are kept; run the same command again to process the remaining "
    "files"
)
# For commands that write one file atomically at the end.
NOTHING_WRITTEN_HINT = "nothing was written; run the same command again"
# For training, which saves a checkpoint as it goes.
CHECKPOINT_HINT = (
    "checkpoints saved so far stay in the work directory; run the same command again "
    "to resume"
)


# Set once a command has printed why it stopped, so that edgefx.launch does not print
# a second line for the same interrupt.
_stop_reported = threading.Event()


def stop_reported() -> bool:
    """Return whether a command has printed an "interrupted" or "terminated" line."""
    return _stop_reported.is_set()


def _import_holding_interrupts(modules: tuple[str, ...]) -> None:
    """Import ``modules`` with Ctrl-C and SIGTERM held back until they are loaded.

    A KeyboardInterrupt raised inside the import of torch or of numpy from C++ can be
    lost, so that the command runs on, or leave numpy half imported, so that it fails
    later with an AttributeError. Held back, the signal arrives once the imports are
    done, as an ordinary interrupt. A module that is not installed is skipped here and
    reported by the code that needs it.
    """
    import importlib

    from edgefx.fsutil import interrupts_deferred

    with interrupts_deferred():
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


@contextlib.contextmanager
def handle_errors(
    stop_hint: str = RESUME_HINT, imports: tuple[str, ...] = ("numpy", "onnxruntime")
) -> Iterator[None]:
    """Turn edgefx errors into one line on stderr and the exit status they carry.

    SIGTERM (from kill, timeout, a service manager) is turned into an exception like
    Ctrl-C, so that an output being written is removed instead of left half-written.
    ``stop_hint`` follows "interrupted: " or "terminated: " and says what was kept.
    ``imports`` are the heavy modules that the command needs, imported first with
    interrupts held back (see _import_holding_interrupts).
    """
    from edgefx.errors import EdgefxError

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _import_holding_interrupts(imports)
        yield
    except EdgefxError as err:
        stderr_console().print(
            f"error: {printable(str(err))}", markup=False, soft_wrap=True
        )
        raise typer.Exit(err.exit_code) from err
    except KeyboardInterrupt as err:
        _exit_on_next_signal(130)
        _stop_reported.set()
        stderr_console().print(
            f"interrupted: {stop_hint}", markup=False, soft_wrap=True
        )
        raise typer.Exit(130) from err
    except Terminated as err:
        _exit_on_next_signal(143)
        _stop_reported.set()
        stderr_console().print(f"terminated: {stop_hint}", markup=False, soft_wrap=True)
        raise typer.Exit(143) from err
    finally:
        if not _stop_reported.is_set():
            signal.signal(signal.SIGTERM, previous)


def _exit_on_next_signal(status: int) -> None:
    """Make a further Ctrl-C or SIGTERM end the process at once with ``status``.

    By the time a stop is reported, the batch has removed its temporary files. What is
    left is the interpreter's shutdown, which joins threads and closes generators. A
    second KeyboardInterrupt there would print an "Exception ignored" traceback, or
    end the process by the signal instead of with the stop's exit status.
    """

    def exit_now(signum: int, frame: object) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(status)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, exit_now)
        signal.signal(signal.SIGTERM, exit_now)


class ProgressReporter(Reporter):
    """Draw a progress bar with files per second; print each failure as one line."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.started = time.perf_counter()
        self.counts = {"done": 0, "skipped": 0, "failed": 0}

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        if exc_type is not None and issubclass(
            exc_type, KeyboardInterrupt | Terminated
        ):
            # The summary line is not reached, so print what the stopped run finished.
            counts = self.counts
            skipped = counts["skipped"]
            skipped_text = f"{skipped} skipped (output exists), " if skipped else ""
            stderr_console().print(
                f"before the stop: {counts['done']} done, {skipped_text}"
                f"{counts['failed']} failed",
                markup=False,
            )

    def start(self, total: int) -> None:
        if not stderr_console().is_terminal:
            return  # no bar in logs and pipes; failures are printed in result()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(self.verb),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=True,
        )
        self.task = self.progress.add_task(self.verb, total=total, rate="")
        self.progress.start()
        self.started = time.perf_counter()

    def result(self, result: FileResult) -> None:
        if result.status in self.counts:
            self.counts[result.status] += 1
        if self.progress is None or self.task is None:
            if result.status == "failed":
                stderr_console().print(
                    f"failed: {printable(result.error or '')}",
                    markup=False,
                    soft_wrap=True,
                )
            return
        if result.status == "failed":
            self.progress.console.print(
                f"failed: {printable(result.error or '')}",
                markup=False,
                soft_wrap=True,
            )
        self.progress.advance(self.task)
        elapsed = time.perf_counter() - self.started
        completed = self.progress.tasks[0].completed
        self.progress.update(
            self.task, rate=f"{completed / max(elapsed, 1e-9):.2f} files/s"
        )


def print_summary(summary: BatchSummary, writes_outputs: bool = True) -> None:
    """Print the one-line batch summary; commands without per-file outputs skip none."""
    skipped = f"{summary.skipped} skipped (output exists), " if writes_outputs else ""
    stderr_console().print(
        f"{summary.done} done, {skipped}{summary.failed} failed in "
        f"{summary.seconds:.2f} s",
        markup=False,
    )
