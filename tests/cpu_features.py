"""What the test machine's CPU offers, for tests whose int8 results depend on it."""

from __future__ import annotations

from pathlib import Path

import pytest


def cpu_has_vnni() -> bool:
    """Return whether the CPU has an 8-bit dot-product instruction (VNNI).

    Without one, ONNX Runtime's x86 int8 kernels for uint8 activations and int8
    weights add pairs of products in 16 bits with saturation (VPMADDUBSW), so int8
    models lose some accuracy and their outputs differ from exact integer arithmetic.
    Returns True where /proc/cpuinfo cannot be read.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    if not flags:
        return True
    return bool(flags & {"avx512_vnni", "avx_vnni"})


HAS_VNNI = cpu_has_vnni()

needs_vnni = pytest.mark.skipif(
    not HAS_VNNI,
    reason="the CPU has no VNNI, so ONNX Runtime's int8 kernels saturate 16-bit sums "
    "and int8 outputs differ from exact integer arithmetic",
)
