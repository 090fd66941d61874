"""Small helpers that word numbers in log lines and messages."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping


def count_noun(count: int, singular: str, plural: str | None = None) -> str:
    """Return "1 file" or "3 files": ``count`` and the noun in the matching number."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count} {noun}"


def format_rate(value: float) -> str:
    """Write ``value`` with about three significant digits and no exponent.

    1210.4 becomes "1210", 2.584 "2.58" and 0.2951 "0.295".
    """
    if value <= 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(value)))
    return f"{value:.{decimals}f}"


def throughput_line(done: int, units: float, unit: str, seconds: float) -> str:
    """Return "throughput: R files/s, U MP/s over N processed files" for a batch."""
    return (
        f"throughput: {format_rate(done / seconds)} files/s, "
        f"{format_rate(units / seconds)} {unit}/s over "
        f"{count_noun(done, 'processed file')}"
    )


def key_values(record: Mapping[str, object], exclude: Collection[str] = ()) -> str:
    """Return ``record`` as "key=value" fields, floats with four significant digits.

    Keys in ``exclude``, such as a step number already in the message, are left out.
    """
    fields = []
    for key, value in record.items():
        if key in exclude:
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        fields.append(f"{key}={text}")
    return " ".join(fields)
