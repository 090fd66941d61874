"""Pipelined batch execution: decode ahead, run the model in order, encode behind.

A task splits the work on one file into three stages. ``load`` reads and decodes a
file, ``infer`` runs the model on a list of loaded files, and ``save`` encodes and
writes one result. Loads and saves run in a pool of worker threads while the calling
thread runs ONNX Runtime. The number of files loaded ahead and saves queued behind is
bounded, so memory stays flat however long the batch is.

Results are reported in input order. Errors map to per-file results exactly as
``edgefx.batch.run_batch`` maps them: ModelError and DeviceError stop the batch, any
other error fails one file. On Ctrl-C or SIGTERM the queued work is dropped and the
saves already running finish, so every output is either complete or absent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from edgefx.batch import (
    BatchItem,
    BatchOptions,
    BatchSummary,
    FileResult,
    FinishedOutputs,
    Reporter,
    _process_one,
    remove_stale_temporaries,
)
from edgefx.errors import UsageError
from edgefx.text import count_noun, throughput_line

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# Cap on the default worker count, so that a many-core machine does not hold dozens of
# decoded files in memory at once. --jobs sets more.
MAX_DEFAULT_JOBS = 4
# Each local job keeps two files in flight, so a typo such as 100000 would read the
# whole batch into memory at once.
MAX_JOBS = 256
# A worker task loads files one after the other until about this many seconds of
# loading, up to MAX_LOAD_GROUP files, so that files that decode in microseconds
# (32x32 JPEG files) do not pay one thread hand-off each. The size of a group follows
# the mean load time measured so far, so slow files still go one per task.
LOAD_GROUP_SECONDS = 0.002
MAX_LOAD_GROUP = 16

Loaded = TypeVar("Loaded")
Inferred = TypeVar("Inferred")
Block = TypeVar("Block")


@dataclass
class Stages(Generic[Loaded, Inferred]):
    """The three stages of a task, bound to one loaded model.

    ``load`` runs in worker threads, ``infer`` in the calling thread with up to
    ``batch_size`` loaded files at a time and in input order, and ``save`` in worker
    threads, or in the calling thread when ``save_inline`` is set. ``save`` returns
    the work done (megapixels, audio seconds). ``records`` collects what a task
    returns besides files, such as classification rows, keyed by source path.
    """

    load: Callable[[BatchItem], Loaded]
    infer: Callable[[list[Loaded]], list[Inferred]]
    save: Callable[[BatchItem, Inferred], float]
    batch_size: int = 1
    records: dict[Path, Any] = field(default_factory=dict)
    # Set when save only stores a result in memory: handing it to a worker thread
    # would cost more than running it.
    save_inline: bool = False


class Task(Protocol):
    """A picklable description of a command's work; ``open`` loads the model."""

    def open(self) -> Stages[Any, Any]: ...


@dataclass(frozen=True)
class EngineOptions:
    """Engine choice: this process (local) or a Ray cluster (ray).

    ``jobs`` is the number of decode/encode worker threads for the local engine and
    the number of worker actors for the Ray engine; 0 picks a default.
    ``ray_address`` is an existing cluster's address; None starts a local Ray
    instance.
    """

    engine: str = "local"
    jobs: int = 0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise UsageError(
                f"invalid engine {self.engine!r}; choose one of {', '.join(ENGINES)}"
            )
        if not 0 <= self.jobs <= MAX_JOBS:
            raise UsageError(f"invalid job count {self.jobs}; use 0 to {MAX_JOBS}")
        if self.ray_address is not None and self.engine != "ray":
            raise UsageError("--ray-address needs --engine ray")


def available_cores() -> int:
    """Return the CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_jobs(cores: int | None = None) -> int:
    """Return the default worker-thread count: half the cores, from 1 to 4.

    ONNX Runtime's intra-op threads (one per physical core by default) take the cores
    while the model runs. The workers decode and encode while the model thread
    prepares and finishes its calls, so half the cores keeps both busy without
    oversubscribing them.
    """
    # NOTE: classify of 32x32 JPEG files once ran at 0.70 to 0.83 of the serial speed
    # with these workers, because each file cost two thread hand-offs. With load
    # groups and inline saves, 2,000 such files ran as fast with 1 or 2 workers as
    # with every file loaded in the calling thread, 2 % or less apart. That was
    # measured with a patched engine on the 2-core development machine beside two
    # training jobs. A machine with idle cores was not measured.
    cores = cores or available_cores()
    return max(1, min(MAX_DEFAULT_JOBS, cores // 2))


def execute_task(
    items: Sequence[BatchItem],
    missing: Sequence[FileResult],
    task: Task,
    reporter: Reporter,
    engine: EngineOptions | None = None,
    batch: BatchOptions | None = None,
    unit: str = "MP",
    stages: Stages[Any, Any] | None = None,
) -> tuple[BatchSummary, dict[Path, Any]]:
    """Run ``task`` on every item on the chosen engine and report all results.

    ``batch`` is None for commands that write no per-file output (classify), which
    then never skip an item. ``stages`` are already-opened stages to use instead of
    opening the task when the first file needs work. Returns the summary, with the
    missing inputs first, and the task's records.
    """
    engine = engine or EngineOptions()
    if batch is not None:
        remove_stale_temporaries(items, [failure.source for failure in missing])
    reporter.start(len(items) + len(missing))
    for failure in missing:
        reporter.result(failure)

    overwrite = True if batch is None else batch.overwrite
    if engine.engine == "ray":
        from edgefx.ray_engine import run_on_ray

        summary, records = run_on_ray(items, task, engine, overwrite, reporter, unit)
    else:
        opened: list[Stages[Any, Any]] = [stages] if stages is not None else []

        def open_stages() -> Stages[Any, Any]:
            if not opened:
                opened.append(task.open())
            return opened[0]

        jobs = engine.jobs or default_jobs()
        summary = run_pipeline(items, open_stages, jobs, overwrite, reporter, unit)
        records = opened[0].records if opened else {}
    summary.results[:0] = missing
    return summary, records


@dataclass
class _Pending:
    index: int
    item: BatchItem
    # Result of one file's stage, or of a load group: a list with one entry per file.
    future: Future[Any]
    seconds: float = 0.0  # time this file spent in the stages so far
    slot: int = 0  # position of this file's entry in the load group's list


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def _guard(item: BatchItem, step: Callable[[], Any]) -> tuple[FileResult, Any]:
    """Run one stage of one file; map its error to a failed result as run_batch does.

    ModelError and DeviceError are raised again, because every other file would fail
    on them too.
    """
    values: list[Any] = []

    def process(_: BatchItem) -> float:
        values.append(step())
        return 0.0

    result = _process_one(item, process)
    return result, values[0] if values else None


def _load_group(
    load: Callable[[BatchItem], Any], items: list[BatchItem]
) -> list[tuple[tuple[FileResult, Any], float]]:
    """Load each item in turn; each gets its own result, value and seconds."""
    return [_timed(_guard, item, _bind(load, item)) for item in items]


class _LoadTimer:
    """Mean load time per file so far, which sizes the next load group."""

    def __init__(self) -> None:
        self.files = 0
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        self.files += 1
        self.seconds += seconds

    def group_size(self) -> int:
        if self.files == 0 or self.seconds <= 0:
            return 1
        mean = self.seconds / self.files
        return max(1, min(MAX_LOAD_GROUP, int(LOAD_GROUP_SECONDS / mean)))


def run_pipeline(
    items: Sequence[BatchItem],
    open_stages: Callable[[], Stages[Any, Any]],
    jobs: int,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    unit: str = "MP",
) -> BatchSummary:
    """Process every item through the stages with ``jobs`` worker threads.

    ``open_stages`` is called when the first file needs work, so a rerun that only
    skips finished outputs does not load the model. An item whose output exists is
    skipped unless ``overwrite``. Each worker task loads a group of files whose size
    follows the mean load time (LOAD_GROUP_SECONDS), one file until it is measured.
    """
    reporter = reporter or Reporter()
    summary = BatchSummary()
    started = time.perf_counter()
    results: dict[int, FileResult] = {}
    reported = 0

    def report_ready() -> None:
        nonlocal reported
        while reported in results:
            result = results.pop(reported)
            summary.results.append(result)
            reporter.result(result)
            reported += 1

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="edgefx")
    loads: deque[_Pending] = deque()
    saves: deque[_Pending] = deque()
    todo = iter(enumerate(items))
    finished = FinishedOutputs()
    stages: Stages[Any, Any] | None = None
    timer = _LoadTimer()

    def next_group(size: int) -> list[tuple[int, BatchItem]]:
        """Take up to ``size`` items that need work, recording skipped ones."""
        nonlocal stages
        group: list[tuple[int, BatchItem]] = []
        while len(group) < size:
            entry = next(todo, None)
            if entry is None:
                break
            index, item = entry
            if not overwrite and finished(item.output):
                results[index] = FileResult(item.source, item.output, "skipped")
                continue
            if stages is None:
                stages = open_stages()
            group.append(entry)
        return group

    def finish_save(pending: _Pending) -> None:
        outcome, seconds = pending.future.result()
        if outcome.status == "done":
            outcome.seconds = pending.seconds + seconds
        results[pending.index] = outcome

    def save_now(pending: _Pending, value: Any, share: float) -> None:
        assert stages is not None
        save = stages.save
        item = pending.item
        (outcome, units), seconds = _timed(_guard, item, lambda: save(item, value))
        if outcome.status == "done":
            outcome.units = units
            outcome.seconds = share + seconds
        results[pending.index] = outcome

    def submit_save(pending: _Pending, value: Any, share: float) -> None:
        assert stages is not None
        if stages.save_inline:
            save_now(pending, value, share)
            return
        save = stages.save
        item = pending.item

        def run() -> tuple[FileResult, float]:
            (outcome, units), seconds = _timed(_guard, item, lambda: save(item, value))
            if outcome.status == "done":
                outcome.units = units
            return outcome, seconds

        saves.append(_Pending(pending.index, item, pool.submit(run), share))
        # Saves left behind are bounded, so encoded outputs never pile up in memory.
        while saves and (saves[0].future.done() or len(saves) > 2 * jobs):
            finish_save(saves.popleft())

    try:
        while True:
            # Keep the load queue full: the next batch plus a few groups per worker.
            while True:
                size = timer.group_size()
                if stages is not None and (
                    len(loads) >= stages.batch_size + 2 * jobs * size
                ):
                    break
                group = next_group(size)
                if not group:
                    break
                assert stages is not None
                batch_items = [item for _, item in group]
                future = pool.submit(_load_group, stages.load, batch_items)
                for slot, (index, item) in enumerate(group):
                    loads.append(_Pending(index, item, future, slot=slot))
            if not loads:
                break
            assert stages is not None

            batch: list[_Pending] = []
            values: list[Any] = []
            while loads and len(batch) < stages.batch_size:
                pending = loads.popleft()
                (outcome, value), seconds = pending.future.result()[pending.slot]
                timer.add(seconds)
                if outcome.status != "done":
                    results[pending.index] = outcome
                    continue
                pending.seconds = seconds
                batch.append(pending)
                values.append(value)
            if batch:
                _infer_batch(stages, batch, values, results, submit_save)
            report_ready()

        while saves:
            finish_save(saves.popleft())
        report_ready()
    except BaseException:
        # On an error or an interrupt, queued loads and saves are dropped; running
        # saves finish, so their outputs are complete, and their temporaries are gone.
        pool.shutdown(wait=True, cancel_futures=True)
        # Those saves wrote their outputs, so they count in the summary, and so do the
        # results that were waiting for an earlier file to be reported.
        for pending in saves:
            if not pending.future.cancelled() and pending.future.exception() is None:
                finish_save(pending)
        for index in sorted(results):
            result = results.pop(index)
            summary.results.append(result)
            reporter.result(result)
        raise
    pool.shutdown(wait=True)

    summary.seconds = time.perf_counter() - started
    _log_throughput(summary, jobs, unit)
    return summary


def _bind(load: Callable[[BatchItem], Any], item: BatchItem) -> Callable[[], Any]:
    return lambda: load(item)


def _infer_batch(
    stages: Stages[Any, Any],
    batch: list[_Pending],
    values: list[Any],
    results: dict[int, FileResult],
    submit_save: Callable[[_Pending, Any, float], None],
) -> None:
    """Run the model on one batch of loaded files and queue their saves.

    An error that is not fatal fails every file of the batch, each with its own
    path in the message, because one model call cannot tell which input caused it.
    """
    started = time.perf_counter()
    try:
        inferred = stages.infer(values)
    except Exception as err:  # noqa: BLE001 - mapped per file below, as run_batch does
        for pending in batch:
            results[pending.index] = _guard(pending.item, partial(_reraise, err))[0]
        return
    seconds = time.perf_counter() - started
    share = seconds / len(batch)
    for pending, value in zip(batch, inferred, strict=True):
        submit_save(pending, value, pending.seconds + share)


def _reraise(err: Exception) -> None:
    raise err


def _log_throughput(summary: BatchSummary, jobs: int, unit: str) -> None:
    if not summary.done or summary.seconds <= 0:
        return
    done_units = sum(r.units for r in summary.results if r.status == "done")
    # A batch of fewer files than --jobs cannot keep every worker busy, so the line
    # names no more workers than files.
    processed = sum(1 for r in summary.results if r.status != "skipped")
    logger.info(
        "%s (%s)",
        throughput_line(summary.done, done_units, unit, summary.seconds),
        count_noun(min(jobs, processed), "worker"),
    )


_END = object()


def read_ahead(blocks: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Yield the items of ``blocks``, produced up to ``depth`` ahead in a thread.

    Decoding the next audio block then overlaps with the model's work on this one.
    An error raised by ``blocks`` is raised again here, at the item where it
    happened. Closing the generator early stops the thread.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for block in blocks:
                if not offer(block):
                    return
            offer(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            offer(err)

    thread = threading.Thread(target=produce, name="edgefx-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            block = buffer.get()
            if block is _END:
                return
            if isinstance(block, BaseException):
                raise block
            yield block
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def write_behind(
    consume: Callable[[Block], None], depth: int = 2
) -> Iterator[Callable[[Block], None]]:
    """Yield a function that queues blocks for ``consume``, which runs in a thread.

    Encoding and writing the previous audio block then overlap with the model's work
    on the next one. At most ``depth`` blocks wait. An error raised by ``consume`` is
    raised again by the next call of the yielded function or on leaving the block.
    Leaving normally waits until every queued block is consumed. Leaving on an
    exception drops the queued blocks and waits only for the one being consumed, so
    the caller can then discard its output.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    errors: list[BaseException] = []
    stop = threading.Event()

    def drain() -> None:
        while True:
            block = buffer.get()
            if block is _END or stop.is_set():
                return
            try:
                consume(block)
            except BaseException as err:  # noqa: BLE001 - handed to the producer
                errors.append(err)
                stop.set()
                return

    thread = threading.Thread(target=drain, name="edgefx-write-behind", daemon=True)
    thread.start()

    def put(block: Block) -> None:
        while not errors:
            try:
                buffer.put(block, timeout=0.1)
                return
            except queue.Full:
                continue
        raise errors[0]

    def finish() -> None:
        while thread.is_alive():
            try:
                buffer.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        thread.join()

    try:
        yield put
    except BaseException:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                buffer.get_nowait()
        finish()
        raise
    finish()
    if errors:
        raise errors[0]
