"""The pipelined local engine: order, bounded memory, error mapping, --jobs results."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from edgefx import pipeline
from edgefx.batch import BatchItem, Reporter
from edgefx.errors import InputError, ModelError, UsageError
from edgefx.imageio import read_image
from edgefx.pipeline import (
    EngineOptions,
    Stages,
    default_jobs,
    read_ahead,
    run_pipeline,
    write_behind,
)


def make_items(tmp_path: Path, count: int) -> list[BatchItem]:
    items = []
    for index in range(count):
        source = tmp_path / f"in{index:02d}.txt"
        source.write_text(str(index), encoding="utf-8")
        items.append(BatchItem(source, tmp_path / "out" / f"in{index:02d}.txt"))
    return items


class Tracker:
    """Stages over text files that count how many files are in flight at once."""

    def __init__(self, delays: dict[int, float] | None = None) -> None:
        self.delays = delays or {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.infer_calls: list[list[int]] = []

    def load(self, item: BatchItem) -> int:
        value = int(item.source.read_text(encoding="utf-8"))
        if value == 3:
            raise InputError(item.source, "cannot decode")
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delays.get(value, 0.0))
        return value

    def infer(self, values: list[int]) -> list[int]:
        self.infer_calls.append(list(values))
        return [value * 10 for value in values]

    def save(self, item: BatchItem, value: int) -> float:
        time.sleep(self.delays.get(value // 10, 0.0))
        item.output.parent.mkdir(exist_ok=True)
        item.output.write_text(str(value), encoding="utf-8")
        with self.lock:
            self.in_flight -= 1
        return 1.0

    def stages(self, batch_size: int = 1) -> Stages[int, int]:
        return Stages(self.load, self.infer, self.save, batch_size)


class Recorder(Reporter):
    def __init__(self) -> None:
        self.names: list[str] = []

    def result(self, result) -> None:
        self.names.append(result.source.name)


def test_results_in_input_order(tmp_path: Path) -> None:
    items = make_items(tmp_path, 8)
    # Early files are slow, so later ones finish first in the worker threads.
    tracker = Tracker({0: 0.3, 1: 0.2, 2: 0.1})
    reporter = Recorder()
    summary = run_pipeline(items, tracker.stages, jobs=3, reporter=reporter)
    assert [r.source for r in summary.results] == [i.source for i in items]
    assert reporter.names == [i.source.name for i in items]
    assert summary.done == 7
    assert summary.failed == 1
    assert items[5].output.read_text(encoding="utf-8") == "50"


def test_failed_load_message(tmp_path: Path) -> None:
    items = make_items(tmp_path, 5)
    summary = run_pipeline(items, Tracker().stages, jobs=2)
    failed = [r for r in summary.results if r.status == "failed"]
    assert len(failed) == 1
    assert failed[0].error == f"{items[3].source}: cannot decode"
    assert not items[3].output.exists()


def test_in_flight_files_bounded(tmp_path: Path) -> None:
    items = make_items(tmp_path, 40)
    tracker = Tracker({value: 0.01 for value in range(40)})
    summary = run_pipeline(items, lambda: tracker.stages(batch_size=4), jobs=2)
    assert summary.done == 39
    # Loads ahead (batch + 2 per worker), one batch in the model, saves behind (2
    # per worker), plus the save that submit_save waits for.
    assert tracker.max_in_flight <= 4 + 2 * 2 + 4 + 2 * 2 + 1


def test_batches_fill_past_failures(tmp_path: Path) -> None:
    items = make_items(tmp_path, 9)
    tracker = Tracker()
    run_pipeline(items, lambda: tracker.stages(batch_size=4), jobs=2)
    assert tracker.infer_calls == [[0, 1, 2, 4], [5, 6, 7, 8]]


def test_model_error_stops_batch(tmp_path: Path) -> None:
    items = make_items(tmp_path, 6)
    tracker = Tracker()

    def infer(values: list[int]) -> list[int]:
        if 4 in values:
            raise ModelError("model.onnx: output shape [1] differs")
        return tracker.infer(values)

    def stages() -> Stages[int, int]:
        return Stages(tracker.load, infer, tracker.save)

    with pytest.raises(ModelError):
        run_pipeline(items, stages, jobs=2)
    assert not items[4].output.exists()


def test_other_infer_error_fails_file(tmp_path: Path) -> None:
    items = make_items(tmp_path, 4)
    tracker = Tracker()

    def infer(values: list[int]) -> list[int]:
        if 2 in values:
            raise ValueError("bad shape")
        return tracker.infer(values)

    summary = run_pipeline(
        items, lambda: Stages(tracker.load, infer, tracker.save), jobs=2
    )
    errors = [r.error for r in summary.results if r.status == "failed"]
    assert errors == [
        f"{items[2].source}: unexpected error: ValueError: bad shape",
        f"{items[3].source}: cannot decode",
    ]


def test_infer_error_fails_batch(tmp_path: Path) -> None:
    items = make_items(tmp_path, 6)
    tracker = Tracker()

    def infer(values: list[int]) -> list[int]:
        if 2 in values:
            raise ValueError("bad shape")
        return tracker.infer(values)

    stages = Stages(tracker.load, infer, tracker.save, batch_size=2)
    summary = run_pipeline(items, lambda: stages, jobs=2)
    errors = [r.error for r in summary.results if r.status == "failed"]
    # Files 2 and 4 share a model call, because file 3 fails to load.
    assert errors == [
        f"{items[2].source}: unexpected error: ValueError: bad shape",
        f"{items[3].source}: cannot decode",
        f"{items[4].source}: unexpected error: ValueError: bad shape",
    ]
    assert summary.done == 3


def test_all_skipped_never_opens(tmp_path: Path) -> None:
    items = make_items(tmp_path, 3)
    for item in items:
        item.output.parent.mkdir(exist_ok=True)
        item.output.write_text("done", encoding="utf-8")

    def open_fails() -> Stages[int, int]:
        raise AssertionError("the stages were opened although every output exists")

    summary = run_pipeline(items, open_fails, jobs=2)
    assert summary.skipped == 3


def test_load_group_follows_load_time() -> None:
    timer = pipeline._LoadTimer()
    assert timer.group_size() == 1  # nothing measured yet
    for _ in range(10):
        timer.add(0.00006)  # a 32x32 JPEG file
    assert timer.group_size() == pipeline.MAX_LOAD_GROUP
    slow = pipeline._LoadTimer()
    slow.add(0.0008)
    assert slow.group_size() == 2
    slow.add(0.05)  # a photo
    assert slow.group_size() == 1


def test_grouped_loads_keep_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = make_items(tmp_path, 60)
    tracker = Tracker()
    tasks: list[int] = []
    load_group = pipeline._load_group

    def counted(load, group):  # the engine's own function, with a call count
        tasks.append(len(group))
        return load_group(load, group)

    monkeypatch.setattr(pipeline, "_load_group", counted)
    reporter = Recorder()
    summary = run_pipeline(
        items, lambda: tracker.stages(batch_size=8), jobs=2, reporter=reporter
    )
    # Loads that take microseconds share worker tasks once their time is measured.
    assert sum(tasks) == len(items)
    assert max(tasks) > 1
    assert reporter.names == [i.source.name for i in items]
    assert summary.done == 59
    failed = [r for r in summary.results if r.status == "failed"]
    assert [r.error for r in failed] == [f"{items[3].source}: cannot decode"]
    assert items[59].output.read_text(encoding="utf-8") == "590"


def test_inline_save_runs_in_caller(tmp_path: Path) -> None:
    items = make_items(tmp_path, 6)
    tracker = Tracker()
    threads: set[str] = set()

    def save(item: BatchItem, value: int) -> float:
        threads.add(threading.current_thread().name)
        return tracker.save(item, value)

    stages = Stages(tracker.load, tracker.infer, save, batch_size=2, save_inline=True)
    summary = run_pipeline(items, lambda: stages, jobs=2)
    assert threads == {threading.current_thread().name}
    assert summary.done == 5
    done = [r for r in summary.results if r.status == "done"]
    assert all(r.units == 1.0 for r in done)
    assert items[5].output.read_text(encoding="utf-8") == "50"


def test_read_ahead_keeps_order() -> None:
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))


def test_read_ahead_raises_at_item() -> None:
    def blocks():
        yield 1
        yield 2
        raise InputError("a.wav", "truncated at 2.0 s")

    received = []
    with pytest.raises(InputError, match="truncated"):
        for block in read_ahead(blocks()):
            received.append(block)
    assert received == [1, 2]


def test_read_ahead_stops_producer() -> None:
    produced = []

    def blocks():
        for index in range(1000):
            produced.append(index)
            yield index

    reader = read_ahead(blocks(), depth=2)
    assert next(reader) == 0
    reader.close()
    time.sleep(0.3)
    assert len(produced) < 10


def test_write_behind_keeps_order() -> None:
    written: list[int] = []
    with write_behind(written.append, depth=2) as write:
        for index in range(50):
            write(index)
    assert written == list(range(50))


def test_write_behind_raises_error() -> None:
    written: list[int] = []

    def consume(block: int) -> None:
        if block == 3:
            raise OSError(28, "No space left on device")
        written.append(block)

    with pytest.raises(OSError, match="No space"), write_behind(consume) as write:
        for index in range(20):
            write(index)
    assert written == [0, 1, 2]


def test_write_behind_drops_on_error() -> None:
    written: list[int] = []

    def consume(block: int) -> None:
        time.sleep(0.05)
        written.append(block)

    with pytest.raises(KeyboardInterrupt), write_behind(consume, depth=4) as write:
        for index in range(5):
            write(index)
        raise KeyboardInterrupt
    # The block being written when the interrupt came is finished, queued ones are not.
    assert 1 <= len(written) < 5
    assert written == list(range(len(written)))


def test_default_jobs_per_cores() -> None:
    assert default_jobs(1) == 1
    assert default_jobs(2) == 1
    assert default_jobs(8) == 4
    assert default_jobs(64) == 4


def test_ray_address_needs_ray() -> None:
    with pytest.raises(UsageError, match="--engine ray"):
        EngineOptions("local", ray_address="auto")


def test_cli_jobs_same_outputs(run_cli, samples_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(samples_dir / "noisy", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    runs = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"out{jobs}"
        runs[jobs] = run_cli("denoise", folder, "--out", out, "--jobs", jobs)
    assert runs["1"].returncode == 1, runs["1"].stderr
    assert runs["3"].returncode == 1, runs["3"].stderr
    failed = [
        [line for line in run.stderr.splitlines() if line.startswith("failed:")]
        for run in runs.values()
    ]
    assert len(failed[0]) == 1
    assert failed[1] == failed[0]
    names = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert len(names) == 6
    for name in names:
        one = (tmp_path / "out1" / name).read_bytes()
        assert (tmp_path / "out3" / name).read_bytes() == one, name


def test_cli_classify_rows_in_order(run_cli, samples_dir: Path) -> None:
    noisy = samples_dir / "noisy"
    names = ["coffee.png", "astronaut.png", "missing.png", "camera.png", "coffee.jpg"]
    args = [noisy / name for name in names]
    runs = [
        run_cli("classify", *args, "--format", "csv", "--batch-size", "2", "-j", jobs)
        for jobs in ("1", "3")
    ]
    assert runs[0].returncode == 1, runs[0].stderr
    assert runs[1].stdout == runs[0].stdout
    files = [line.split(",")[0] for line in runs[1].stdout.splitlines()[1:]]
    expected = [str(noisy / name) for name in names if name != "missing.png"]
    assert files == expected


def test_sigint_leaves_no_partial(samples_dir: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from edgefx.fsutil import TEMP_PREFIX

    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(12):
        shutil.copy(
            samples_dir / "noisy" / "astronaut.png", folder / f"{index:02d}.png"
        )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "edgefx", "denoise", str(folder)]
    command += ["--out", str(out), "--jobs", "3"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(out.glob("*.png")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(out.rglob(f"{TEMP_PREFIX}*")) == []
    finished = list(out.glob("*.png"))
    assert 0 < len(finished) < 12
    # Saves that were running at the signal finish and count as done.
    counted = re.search(r"before the stop: (\d+) done, 0 failed", stderr)
    assert counted is not None, stderr
    assert int(counted.group(1)) == len(finished)
    for path in finished:  # each finished output decodes in full
        assert read_image(path).pixels.shape == (384, 384, 3), path
