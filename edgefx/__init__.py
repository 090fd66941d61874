"""ONNX edge inference for media: photo denoising, classification, speech enhancement.

Importing edgefx loads neither onnxruntime nor torch; each function imports what it
needs when it is first called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "denoise_image"]

if TYPE_CHECKING:
    from edgefx.denoise import denoise_image


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    if name == "denoise_image":
        from edgefx.denoise import denoise_image

        return denoise_image
    raise AttributeError(f"module 'edgefx' has no attribute {name!r}")
