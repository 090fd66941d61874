"""Tests for edgefx.batch and edgefx.fsutil: input listing, output planning, batch runs
and atomic writes. They touch only files in tmp_path and need no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefx.batch import (
    BatchItem,
    FileResult,
    InputFile,
    Reporter,
    collect_inputs,
    plan_outputs,
    run_batch,
)
from edgefx.errors import InputError, OutputError, UsageError
from edgefx.fsutil import TEMP_PREFIX, atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def relatives(found: list[InputFile]) -> list[str]:
    return [item.relative.as_posix() for item in found]


def keep_suffix(source: Path) -> str:
    return source.suffix


class RecordingReporter(Reporter):
    def __init__(self) -> None:
        self.results: list[FileResult] = []

    def result(self, result: FileResult) -> None:
        self.results.append(result)


# --------------------------------------------------------------------------------------
# collect_inputs


def test_collect_explicit_file(tmp_path: Path) -> None:
    photo = touch(tmp_path / "a.png")

    found, missing = collect_inputs([str(photo)], IMAGE_SUFFIXES)

    assert [item.path for item in found] == [photo]
    assert relatives(found) == ["a.png"]
    assert missing == []


def test_collect_explicit_file_any_suffix(tmp_path: Path) -> None:
    # An explicit file is taken whatever its suffix, so the reader reports the error.
    notes = touch(tmp_path / "notes.txt")

    found, missing = collect_inputs([str(notes)], IMAGE_SUFFIXES)

    assert [item.path for item in found] == [notes]
    assert missing == []


def test_collect_dir_top_level(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "b.jpg")
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "C.PNG")
    touch(tmp_path / "in" / "readme.txt")
    touch(tmp_path / "in" / "sub" / "deep.png")

    found, missing = collect_inputs([str(tmp_path / "in")], IMAGE_SUFFIXES)

    assert relatives(found) == ["C.PNG", "a.png", "b.jpg"]
    assert missing == []


def test_collect_dir_recursive(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "top.png")
    touch(tmp_path / "in" / "sub" / "dir" / "x.png")
    touch(tmp_path / "in" / "sub" / "y.jpg")

    found, _ = collect_inputs([str(tmp_path / "in")], IMAGE_SUFFIXES, recursive=True)

    assert relatives(found) == ["sub/dir/x.png", "sub/y.jpg", "top.png"]


def test_collect_dir_ignores_temp_and_hidden(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / f"{TEMP_PREFIX}abc.png")
    touch(tmp_path / "in" / ".hidden.png")
    touch(tmp_path / "in" / "sub" / f"{TEMP_PREFIX}def.png")

    found, _ = collect_inputs([str(tmp_path / "in")], IMAGE_SUFFIXES, recursive=True)

    assert relatives(found) == ["a.png"]


def test_collect_glob(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "b.png")
    touch(tmp_path / "in" / "c.jpg")

    found, missing = collect_inputs([str(tmp_path / "in" / "*.png")], IMAGE_SUFFIXES)

    assert relatives(found) == ["a.png", "b.png"]
    assert missing == []


def test_collect_glob_double_star(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "sub" / "dir" / "x.png")

    pattern = str(tmp_path / "in" / "**" / "*.png")
    found, _ = collect_inputs([pattern], IMAGE_SUFFIXES)

    assert relatives(found) == ["a.png", "sub/dir/x.png"]


def test_collect_glob_ignores_temp(tmp_path: Path) -> None:
    touch(tmp_path / "in" / f"{TEMP_PREFIX}abc.png")
    touch(tmp_path / "in" / ".shown.png")

    found, _ = collect_inputs([str(tmp_path / "in" / ".*.png")], IMAGE_SUFFIXES)

    assert relatives(found) == [".shown.png"]


def test_collect_glob_no_match(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.png")

    found, missing = collect_inputs([pattern], IMAGE_SUFFIXES)

    assert found == []
    assert len(missing) == 1
    assert missing[0].status == "failed"
    assert "no file matches" in (missing[0].error or "")


def test_collect_missing_path(tmp_path: Path) -> None:
    photo = touch(tmp_path / "a.png")
    absent = tmp_path / "absent.png"

    found, missing = collect_inputs([str(absent), str(photo)], IMAGE_SUFFIXES)

    assert [item.path for item in found] == [photo]
    assert len(missing) == 1
    assert missing[0].status == "failed"
    assert missing[0].source == absent
    assert missing[0].output is None
    assert missing[0].error == f"{absent}: file not found"


def test_collect_excludes_out_dir(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "out" / "a.png")
    touch(tmp_path / "in" / "out" / "sub" / "b.png")

    found, _ = collect_inputs(
        [str(tmp_path / "in")],
        IMAGE_SUFFIXES,
        recursive=True,
        exclude=tmp_path / "in" / "out",
    )

    assert relatives(found) == ["a.png"]


def test_collect_glob_excludes_out_dir(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "out" / "a.png")

    found, _ = collect_inputs(
        [str(tmp_path / "in" / "**" / "*.png")],
        IMAGE_SUFFIXES,
        exclude=tmp_path / "in" / "out",
    )

    assert relatives(found) == ["a.png"]


def test_collect_out_dir_above_input(tmp_path: Path) -> None:
    touch(tmp_path / "raw" / "a.png")

    found, _ = collect_inputs([str(tmp_path / "raw")], IMAGE_SUFFIXES, exclude=tmp_path)

    assert relatives(found) == ["a.png"]


def test_collect_duplicates_once(tmp_path: Path) -> None:
    photo = touch(tmp_path / "in" / "a.png")

    found, _ = collect_inputs([str(tmp_path / "in"), str(photo)], IMAGE_SUFFIXES)

    assert [item.path for item in found] == [photo]


def test_collect_duplicates_through_linked_folder(tmp_path: Path) -> None:
    photo = touch(tmp_path / "in" / "a.png")
    (tmp_path / "link").symlink_to(tmp_path / "in")

    found, _ = collect_inputs(
        [str(tmp_path / "in"), str(tmp_path / "link")], IMAGE_SUFFIXES
    )

    assert [item.path for item in found] == [photo]


# --------------------------------------------------------------------------------------
# plan_outputs


def test_plan_mirrors_tree(tmp_path: Path) -> None:
    inputs = [
        InputFile(tmp_path / "in" / "top.png", Path("top.png")),
        InputFile(tmp_path / "in" / "sub" / "dir" / "x.jpg", Path("sub/dir/x.jpg")),
    ]

    items = plan_outputs(inputs, tmp_path / "out", keep_suffix)

    assert [item.source for item in items] == [entry.path for entry in inputs]
    assert [item.output for item in items] == [
        tmp_path / "out" / "top.png",
        tmp_path / "out" / "sub" / "dir" / "x.jpg",
    ]


def test_plan_new_suffix(tmp_path: Path) -> None:
    inputs = [InputFile(tmp_path / "in" / "a.jpg", Path("a.jpg"))]

    items = plan_outputs(inputs, tmp_path / "out", lambda source: ".png")

    assert items[0].output == tmp_path / "out" / "a.png"


def test_plan_collision_raises(tmp_path: Path) -> None:
    first = tmp_path / "in" / "a.png"
    second = tmp_path / "in" / "a.jpg"
    inputs = [InputFile(first, Path("a.png")), InputFile(second, Path("a.jpg"))]

    with pytest.raises(UsageError) as caught:
        plan_outputs(inputs, tmp_path / "out", lambda source: ".png")

    message = str(caught.value)
    assert str(first) in message
    assert str(second) in message
    assert not (tmp_path / "out").exists()


def test_plan_collision_two_dirs(tmp_path: Path) -> None:
    inputs = [
        InputFile(tmp_path / "one" / "x.png", Path("x.png")),
        InputFile(tmp_path / "two" / "x.png", Path("x.png")),
    ]

    with pytest.raises(UsageError):
        plan_outputs(inputs, tmp_path / "out", keep_suffix)


def test_plan_replace_input_raises(tmp_path: Path) -> None:
    photo = touch(tmp_path / "in" / "a.png")
    inputs = [
        InputFile(tmp_path / "elsewhere" / "b.png", Path("b.png")),
        InputFile(photo, Path("a.png")),
    ]

    with pytest.raises(UsageError) as caught:
        plan_outputs(inputs, tmp_path / "in", keep_suffix)

    assert str(photo) in str(caught.value)
    assert "replace the input" in str(caught.value)
    assert photo.read_bytes() == b"x"


# --------------------------------------------------------------------------------------
# run_batch


def make_items(tmp_path: Path, names: list[str]) -> list[BatchItem]:
    return [
        BatchItem(tmp_path / "in" / name, tmp_path / "out" / name) for name in names
    ]


def write_output(item: BatchItem) -> float:
    touch(item.output, b"new")
    return 1.5


def test_run_all_done(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png", "b.png"])
    reporter = RecordingReporter()

    summary = run_batch(items, write_output, reporter=reporter)

    assert [result.status for result in summary.results] == ["done", "done"]
    assert [result.units for result in summary.results] == [1.5, 1.5]
    assert summary.done == 2
    assert summary.exit_code == 0
    assert reporter.results == summary.results


def test_run_skips_existing(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png", "b.png"])
    touch(items[0].output, b"old")
    processed: list[BatchItem] = []

    def process(item: BatchItem) -> float:
        processed.append(item)
        return write_output(item)

    summary = run_batch(items, process)

    assert [result.status for result in summary.results] == ["skipped", "done"]
    assert processed == [items[1]]
    assert items[0].output.read_bytes() == b"old"
    assert summary.skipped == 1
    assert summary.exit_code == 0


def test_run_overwrite_existing(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png"])
    touch(items[0].output, b"old")

    summary = run_batch(items, write_output, overwrite=True)

    assert [result.status for result in summary.results] == ["done"]
    assert items[0].output.read_bytes() == b"new"


def test_run_input_error_continues(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png", "bad.png", "c.png"])

    def process(item: BatchItem) -> float:
        if item.source.name == "bad.png":
            raise InputError(item.source, "cannot decode image")
        return write_output(item)

    summary = run_batch(items, process)

    assert [result.status for result in summary.results] == ["done", "failed", "done"]
    assert summary.results[1].error == f"{items[1].source}: cannot decode image"
    assert not items[1].output.exists()
    assert items[2].output.exists()
    assert summary.failed == 1
    assert summary.exit_code == 1


def test_run_unexpected_error_continues(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png", "bad.png", "c.png"])

    def process(item: BatchItem) -> float:
        if item.source.name == "bad.png":
            raise ValueError("broken pixels\nsecond line")
        return write_output(item)

    summary = run_batch(items, process)

    assert [result.status for result in summary.results] == ["done", "failed", "done"]
    error = summary.results[1].error or ""
    assert error.startswith(str(items[1].source))
    assert "ValueError: broken pixels" in error
    assert "\n" not in error
    assert items[2].output.exists()
    assert summary.exit_code == 1


def test_run_keyboard_interrupt_propagates(tmp_path: Path) -> None:
    items = make_items(tmp_path, ["a.png", "b.png", "c.png"])
    processed: list[str] = []

    def process(item: BatchItem) -> float:
        processed.append(item.source.name)
        if item.source.name == "b.png":
            raise KeyboardInterrupt
        return write_output(item)

    with pytest.raises(KeyboardInterrupt):
        run_batch(items, process)

    assert processed == ["a.png", "b.png"]
    assert not items[2].output.exists()


def test_run_empty_exit_0(tmp_path: Path) -> None:
    summary = run_batch([], write_output)

    assert summary.results == []
    assert summary.exit_code == 0


# --------------------------------------------------------------------------------------
# atomic_write_bytes


def leftover_temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


def test_atomic_write_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "out" / "sub" / "a.png"

    atomic_write_bytes(target, b"data")

    assert target.read_bytes() == b"data"
    assert leftover_temporaries(tmp_path) == []


def test_atomic_write_replaces_file(tmp_path: Path) -> None:
    target = touch(tmp_path / "a.png", b"old")

    atomic_write_bytes(target, b"new")

    assert target.read_bytes() == b"new"
    assert leftover_temporaries(tmp_path) == []


def test_atomic_write_failure_no_temp(tmp_path: Path) -> None:
    # The rename onto an existing directory fails after the temporary file is written.
    target = tmp_path / "a.png"
    target.mkdir()

    with pytest.raises(OutputError) as caught:
        atomic_write_bytes(target, b"data")

    assert str(target) in str(caught.value)
    assert leftover_temporaries(tmp_path) == []
    assert target.is_dir()


def test_atomic_write_parent_is_file(tmp_path: Path) -> None:
    touch(tmp_path / "blocker")

    with pytest.raises(OutputError) as caught:
        atomic_write_bytes(tmp_path / "blocker" / "a.png", b"data")

    assert "not a directory" in str(caught.value)
    assert leftover_temporaries(tmp_path) == []


def test_atomic_write_bad_data_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.png"

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]

    assert not target.exists()
    assert leftover_temporaries(tmp_path) == []


# --------------------------------------------------------------------------------------
# Regression cases from hostile-input testing


def test_plan_output_over_other_input(tmp_path: Path) -> None:
    # --out equal to the input folder with --format png: b.png may be the output of
    # an earlier run, or a photo of the user's, so the plan stops before any work.
    folder = tmp_path / "same"
    touch(folder / "b.jpg")
    touch(folder / "b.png", b"original")
    found, _ = collect_inputs([str(folder)], IMAGE_SUFFIXES, exclude=folder)

    with pytest.raises(UsageError) as caught:
        plan_outputs(found, folder, lambda source: ".png")

    message = str(caught.value)
    assert message.startswith(f"{folder / 'b.jpg'}: the output would replace ")
    assert f"the input {folder / 'b.png'};" in message
    assert (folder / "b.png").read_bytes() == b"original"


def test_collect_skips_out_dir_argument(tmp_path: Path) -> None:
    # A shell glob `shell/*` names the output directory shell/clean on a rerun.
    touch(tmp_path / "shell" / "a.png")
    touch(tmp_path / "shell" / "clean" / "a.png")
    out = tmp_path / "shell" / "clean"

    found, missing = collect_inputs(
        [str(tmp_path / "shell" / "a.png"), str(out)], IMAGE_SUFFIXES, exclude=out
    )

    assert [item.path for item in found] == [tmp_path / "shell" / "a.png"]
    assert missing == []


def test_collect_reports_broken_link(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    touch(folder / "good.png")
    (folder / "broken.png").symlink_to(folder / "missing.png")

    found, missing = collect_inputs([str(folder)], IMAGE_SUFFIXES)

    assert relatives(found) == ["good.png"]
    assert len(missing) == 1
    assert "broken.png" in (missing[0].error or "")


def test_collect_reports_fifo(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)

    found, missing = collect_inputs([str(fifo)], IMAGE_SUFFIXES)

    assert found == []
    assert "not a regular file" in (missing[0].error or "")


def test_run_redoes_empty_output(tmp_path: Path) -> None:
    source = touch(tmp_path / "a.png")
    output = touch(tmp_path / "out" / "a.png", b"")
    calls: list[Path] = []

    def process(item: BatchItem) -> float:
        calls.append(item.source)
        return 1.0

    summary = run_batch([BatchItem(source, output)], process)

    assert calls == [source]
    assert summary.done == 1


def test_run_directory_output_fails(tmp_path: Path) -> None:
    source = touch(tmp_path / "a.png")
    output = tmp_path / "out" / "a.png"
    output.mkdir(parents=True)

    def process(item: BatchItem) -> float:
        atomic_write_bytes(item.output, b"data")
        return 1.0

    summary = run_batch([BatchItem(source, output)], process)

    assert summary.failed == 1
    assert summary.skipped == 0


def test_stale_temporary_removed(tmp_path: Path) -> None:
    import os
    import time

    from edgefx.batch import STALE_TEMPORARY_SECONDS, remove_stale_temporaries

    source = touch(tmp_path / "in" / "a.png")
    old = touch(tmp_path / "out" / f"{TEMP_PREFIX}old_1234.png")
    fresh = touch(tmp_path / "out" / f"{TEMP_PREFIX}fresh123.png")
    for path in (old, fresh):
        path.chmod(0o600)  # the mode that tempfile.mkstemp gives
    past = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (past, past))

    removed = remove_stale_temporaries([BatchItem(source, tmp_path / "out" / "a.png")])

    assert removed == 1
    assert not old.exists()
    assert fresh.exists()


def test_run_model_error_stops_batch(tmp_path: Path) -> None:
    from edgefx.errors import ModelError

    items = [
        BatchItem(touch(tmp_path / f"{name}.png"), tmp_path / "out" / f"{name}.png")
        for name in ("a", "b")
    ]

    def process(item: BatchItem) -> float:
        raise ModelError("model.onnx: not a valid ONNX model")

    with pytest.raises(ModelError):
        run_batch(items, process)


def test_run_usage_error_fails_one_file(tmp_path: Path) -> None:
    # An encoder limit (an image too large for JPEG) concerns one file only.
    items = [
        BatchItem(touch(tmp_path / f"{name}.png"), tmp_path / "out" / f"{name}.png")
        for name in ("big", "small")
    ]

    def process(item: BatchItem) -> float:
        if item.source.stem == "big":
            raise UsageError("JPEG cannot store a 70000x10 image")
        return 1.0

    summary = run_batch(items, process)

    assert summary.failed == 1
    assert summary.done == 1


def test_collect_warns_about_linked_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "take1.wav").write_bytes(b"x")
    (tmp_path / "take2.wav").symlink_to(tmp_path / "take1.wav")

    with caplog.at_level("WARNING", logger="edgefx.batch"):
        found, missing = collect_inputs([str(tmp_path)], {".wav"})

    assert [f.path.name for f in found] == ["take1.wav"]
    assert missing == []
    assert "take2.wav is the same file as" in caplog.text
    assert "take1.wav" in caplog.text
