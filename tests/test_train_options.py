"""The options.json of a training run, and the warning when a resumed run changes it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

from edgefx.train.checkpoint import record_options  # noqa: E402


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_same_folder_other_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    record_options(tmp_path, {"speech": [Path("speech")]}, resumed=False)

    with caplog.at_level(logging.WARNING):
        record_options(tmp_path, {"speech": [tmp_path / "speech"]}, resumed=True)

    assert warnings_of(caplog) == []
    saved = json.loads((tmp_path / "options.json").read_text())
    assert saved["speech"] == [str(tmp_path / "speech")]


def test_older_relative_paths_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before paths were stored as absolute paths, options.json kept them as typed.
    monkeypatch.chdir(tmp_path)
    older = {"data": "train.zip", "speech": ["s/a.flac", "s/b.flac"], "steps": 5}
    (tmp_path / "options.json").write_text(json.dumps(older))

    with caplog.at_level(logging.WARNING):
        record_options(
            tmp_path,
            {
                "data": Path("train.zip"),
                "speech": [Path("s/a.flac"), Path("s/c.flac")],
                "steps": 5,
            },
            resumed=True,
        )

    (warning,) = warnings_of(caplog)
    assert warning.endswith("--speech 2 -> 2 entries (1 added, 1 removed)")
    assert "--data" not in warning


@dataclass
class Recipe:
    steps: int
    layers: int = 2
    added_later: int = 0


def test_option_added_later_counts_as_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A run begun before an option existed saved no value for it.
    (tmp_path / "options.json").write_text(json.dumps({"steps": 5, "layers": 2}))

    with caplog.at_level(logging.WARNING):
        record_options(tmp_path, Recipe(steps=5), resumed=True)
    assert warnings_of(caplog) == []

    (tmp_path / "options.json").write_text(json.dumps({"steps": 5, "layers": 2}))
    with caplog.at_level(logging.WARNING):
        record_options(tmp_path, Recipe(steps=5, added_later=3), resumed=True)
    (warning,) = warnings_of(caplog)
    assert warning.endswith("--added-later 0 -> 3")
    saved = json.loads((tmp_path / "options.json").read_text())
    assert saved == {"steps": 5, "layers": 2, "added_later": 3}


def test_changed_file_list_summarized(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = [tmp_path / name for name in ("a.wav", "b.wav")]
    after = [tmp_path / name for name in ("a.wav", "c.wav", "d.wav")]
    record_options(tmp_path, {"noise": before}, resumed=False)

    with caplog.at_level(logging.WARNING):
        record_options(
            tmp_path, {"noise": after}, resumed=True, flags={"noise": "--noise"}
        )

    (warning,) = warnings_of(caplog)
    assert warning.endswith("--noise 2 -> 3 entries (2 added, 1 removed)")
    assert "a.wav" not in warning


def test_unreadable_options_file_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "options.json").write_text("{not json")

    with caplog.at_level(logging.WARNING):
        record_options(tmp_path, {"steps": 6}, resumed=True)

    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"{tmp_path / 'options.json'} is unreadable")
    assert json.loads((tmp_path / "options.json").read_text()) == {"steps": 6}
