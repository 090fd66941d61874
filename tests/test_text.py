"""Tests for edgefx.text, the wording of counts and rates in log lines."""

from __future__ import annotations

import pytest

from edgefx.text import count_noun, format_rate, key_values, throughput_line


@pytest.mark.parametrize(
    ("count", "expected"), [(0, "0 files"), (1, "1 file"), (2, "2 files")]
)
def test_count_noun_number(count: int, expected: str) -> None:
    assert count_noun(count, "file") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1210.4, "1210"), (2.584, "2.58"), (0.2951, "0.295"), (45.67, "45.7")],
)
def test_format_rate_no_exponent(value: float, expected: str) -> None:
    assert format_rate(value) == expected


def test_throughput_line_one_file() -> None:
    line = throughput_line(1, 0.5, "MP", 0.25)

    assert line == "throughput: 4.00 files/s, 2.00 MP/s over 1 processed file"


def test_key_values_fields() -> None:
    record = {"step": 20, "loss": 0.0123456, "lr": 0.001, "seconds": 12.0}

    text = key_values(record, exclude=("step",))

    assert text == "loss=0.01235 lr=0.001 seconds=12"
