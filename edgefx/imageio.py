"""Image reading and writing: PNG, JPEG, WebP, TIFF and BMP, 8-bit and 16-bit.

OpenCV decodes and encodes the pixels. Pillow parses only the file header, which
gives the size for the pixel limit, the EXIF orientation, the EXIF tags and the ICC
profile. The writer inserts the EXIF tags and the ICC profile into the JPEG and PNG
files that OpenCV encodes. The exception is 8-bit
TIFF with alpha, which Pillow also decodes because OpenCV drops a gray image's alpha
and premultiplies an RGB image's colors.
Facts about OpenCV and Pillow below were checked with opencv-python-headless 5.1.0
and Pillow 13.0.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from edgefx.errors import EdgefxError, InputError, OutputError, UsageError
from edgefx.fsutil import atomic_write_bytes, describe_os_error
from edgefx.objectstore import ObjectPath, parse_output

# OpenCV logs decoder warnings and errors straight to stderr, in lines that name no
# file. Every decode failure here becomes an InputError with the path instead.
# libpng prints its own "libpng error: ..." lines, which OpenCV does not route through
# its log level. So a PNG file is checked here first (_check_png_chunks): truncation,
# damaged critical chunks, and an image data stream that zlib cannot inflate, that
# ends early or that has an invalid row filter type.
# TODO: some files that decode still get a library line on stderr that names no file.
# These are a PNG with more image data than its size needs ("Too much image data") or
# with a damaged ancillary chunk (bKGD, iCCP, ...), and a JPEG with missing data
# ("Corrupt JPEG data"). A PNG rejected for a missing PLTE or an unknown critical
# chunk gets a libpng line before its error.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

logger = logging.getLogger(__name__)

FORMATS: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
}
SUFFIX_FOR_FORMAT: dict[str, str] = {
    "png": ".png",
    "jpeg": ".jpg",
    "webp": ".webp",
    "tiff": ".tif",
    "bmp": ".bmp",
}
FORMAT_LABELS: dict[str, str] = {
    "png": "PNG",
    "jpeg": "JPEG",
    "webp": "WebP",
    "tiff": "TIFF",
    "bmp": "BMP",
}

DEFAULT_JPEG_QUALITY = 95
DEFAULT_WEBP_QUALITY = 95

# Formats that store only 8-bit samples, so 16-bit images are converted before encoding.
EIGHT_BIT_FORMATS = frozenset({"jpeg", "webp", "bmp"})

# Largest width or height that the encoders in OpenCV 5.1 accept (libjpeg's
# JPEG_MAX_DIMENSION and libwebp's WEBP_MAX_DIMENSION), checked by encoding 1-pixel-high
# images one pixel wider.
MAX_DIMENSION = {"jpeg": 65500, "webp": 16383}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# PNG color type 4 is gray+alpha. OpenCV expands it to BGRA and Pillow reports the
# 16-bit variant as mode RGBA, so the IHDR byte is the only reliable source.
PNG_COLOR_TYPE_OFFSET = 25
PNG_GRAY_ALPHA = 4

# Each IDAT chunk of a PNG written here contains at most this many bytes of zlib stream.
PNG_IDAT_CHUNK_BYTES = 1 << 20

# TIFF tag numbers, from the TIFF 6.0 specification.
TIFF_IMAGE_WIDTH = 256
TIFF_IMAGE_LENGTH = 257
TIFF_BITS_PER_SAMPLE = 258
TIFF_PHOTOMETRIC = 262
TIFF_ORIENTATION = 274
TIFF_SAMPLES_PER_PIXEL = 277
TIFF_EXTRA_SAMPLES = 338
TIFF_SAMPLE_FORMAT = 339
TIFF_PHOTOMETRIC_GRAY = (0, 1)  # WhiteIsZero, BlackIsZero
TIFF_PHOTOMETRIC_RGB = 2
TIFF_PHOTOMETRIC_CMYK = 5  # Separated
TIFF_UNASSOCIATED_ALPHA = 2  # ExtraSamples value for straight (not premultiplied) alpha
TIFF_SAMPLE_FORMAT_NAMES = {1: "uint", 2: "int", 3: "float", 4: "undefined"}

EXIF_ORIENTATION = 0x0112
EXIF_HEADER = b"Exif\x00\x00"
TIFF_ICC_PROFILE = (
    34675  # InterColorProfile tag, from the TIFF/EP and ICC specifications
)

# JPEG markers and limits. A segment's 2-byte length counts itself, so a segment carries
# at most 65,533 bytes of data. An ICC_PROFILE APP2 segment spends 14 of them on its
# identifier, sequence number and chunk count (ICC.1 specification, annex B.4).
JPEG_SOI = b"\xff\xd8"
JPEG_APP0 = 0xE0
JPEG_APP1 = 0xE1
JPEG_APP2 = 0xE2
JPEG_MAX_SEGMENT_DATA = 65533
JPEG_ICC_IDENTIFIER = b"ICC_PROFILE\x00"
JPEG_ICC_CHUNK_BYTES = JPEG_MAX_SEGMENT_DATA - len(JPEG_ICC_IDENTIFIER) - 2
JPEG_ICC_MAX_CHUNKS = 255

# Profile name of the iCCP chunks written here. PNG requires 1 to 79 Latin-1 characters.
PNG_ICC_PROFILE_NAME = b"ICC profile"

# Exceptions that Pillow raises on a damaged or unsupported header. Pillow's own
# Image.open loop catches SyntaxError, IndexError, TypeError and struct.error, and the
# others come from short reads and invalid field values.
PILLOW_HEADER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    IndexError,
    TypeError,
    KeyError,
    EOFError,
    struct.error,
)


class EncodeError(EdgefxError):
    """An encoder failed on an image that passed the format checks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImageData:
    """Decoded image: gray or RGB samples, optional alpha and the source format."""

    pixels: np.ndarray  # (H, W) gray or (H, W, 3) RGB, dtype uint8 or uint16
    alpha: np.ndarray | None  # (H, W), same dtype as pixels, or None
    format: str  # format name it was read from, a value of FORMATS
    icc_profile: bytes | None = None  # ICC color profile, as embedded in the file
    # EXIF block as Image.Exif.tobytes returns it (starting with b"Exif\0\0"), with no
    # orientation tag, because read_image has already rotated the pixels.
    exif: bytes | None = None
    # 2, 4 or 8 when read_image decoded a JPEG at that fraction of its stored width and
    # height (its min_size argument), else 1.
    reduction: int = 1
    # Luma samples per chroma sample across and down in a color JPEG: (2, 2) for 4:2:0
    # and (2, 1) for 4:2:2. It is (1, 1) for full-resolution chroma and other formats.
    chroma_subsampling: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {self.pixels.dtype}")
        is_rgb = self.pixels.ndim == 3 and self.pixels.shape[2] == 3
        if self.pixels.ndim != 2 and not is_rgb:
            raise ValueError(
                f"pixels must have shape (H, W) or (H, W, 3), got {self.pixels.shape}"
            )
        if self.alpha is None:
            return
        if self.alpha.shape != self.pixels.shape[:2]:
            raise ValueError(
                f"alpha must have shape {self.pixels.shape[:2]}, got {self.alpha.shape}"
            )
        if self.alpha.dtype != self.pixels.dtype:
            raise ValueError(
                f"alpha must have dtype {self.pixels.dtype}, got {self.alpha.dtype}"
            )

    @property
    def bit_depth(self) -> int:
        """Bits per sample: 8 or 16."""
        return 8 if self.pixels.dtype == np.uint8 else 16

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.pixels.shape[1])

    @property
    def is_gray(self) -> bool:
        """Whether the pixels are one gray channel rather than RGB."""
        return self.pixels.ndim == 2


@dataclass(frozen=True)
class _Header:
    """Header fields that read_image uses before and after decoding the pixels."""

    format: str
    width: int
    height: int
    # EXIF orientation that read_image applies after decoding, 1 when the decoder has
    # applied it or the file has none.
    orientation: int = 1
    # PNG gray+alpha, which OpenCV returns as BGRA with equal color channels.
    gray_alpha: bool = False
    # CMYK TIFF with no extra samples, which OpenCV returns as BGRA with alpha 255.
    opaque_cmyk: bool = False
    icc_profile: bytes | None = None
    # EXIF block without the orientation tag, as ImageData.exif stores it.
    exif: bytes | None = None
    # 8-bit TIFF that OpenCV decodes wrongly, so Pillow decodes it: gray+alpha, whose
    # alpha OpenCV drops, and RGBA with unassociated alpha, whose colors OpenCV
    # premultiplies by the alpha.
    decode_with_pillow: bool = False
    # Components of a JPEG frame: 1 gray, 3 color, 4 CMYK. 0 for other formats.
    components: int = 0
    # How many luma samples a color JPEG stores per chroma sample, across and down.
    chroma_subsampling: tuple[int, int] = (1, 1)


# --------------------------------------------------------------------------------------
# Reading


def read_image(
    path: Path,
    max_pixels: int = 250_000_000,
    min_size: tuple[int, int] | None = None,
) -> ImageData:
    """Decode an image file into RGB or gray pixels and a separate alpha plane.

    The EXIF orientation is applied to the pixels. The ICC profile (JPEG, PNG, WebP and
    TIFF) and the other EXIF tags (JPEG, WebP and PNG) are returned in ``icc_profile``
    and ``exif``. Palette images come out as RGB and CMYK images as RGB. Raises
    InputError with a one-line reason for a missing, unreadable, empty, damaged or
    unsupported file, and for an image whose header declares more than ``max_pixels``
    pixels.

    ``min_size`` is the (height, width) that the caller needs after the orientation is
    applied, for callers that shrink the image anyway. A JPEG is then decoded at 1/2,
    1/4 or 1/8 of its width and height through libjpeg's DCT scaling: the largest
    factor that divides the stored width and height and leaves both sides at least
    ``min_size``. ``reduction`` records it. Each reduced pixel is then close to the
    mean of a full block of factor x factor pixels, and such a decode costs a fraction
    of a full one. Other formats always decode at full size.

    NOTE: OpenCV also rejects images above its own limit of 2**30 pixels (the
    OPENCV_IO_MAX_IMAGE_PIXELS environment variable changes it), so a larger
    ``max_pixels`` does not raise that limit.
    """
    path = Path(path)
    suffix_format = FORMATS.get(path.suffix.lower())
    if suffix_format is None:
        supported = ", ".join(sorted(FORMATS))
        suffix = path.suffix or "(no suffix)"
        raise InputError(path, f"unsupported format {suffix}; supported: {supported}")

    alpha: np.ndarray | None
    reduction = 1
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise InputError(path, "empty file")
            prefix = handle.read(HEADER_PREFIX_BYTES)
            header = _read_header(path, handle, suffix_format, prefix)
            _check_pixel_limit(path, header, max_pixels)
            if header.decode_with_pillow:
                handle.seek(0)
                pixels, alpha = _decode_with_pillow(path, handle, header)
            else:
                if len(prefix) < HEADER_PREFIX_BYTES:
                    # A short read means end of file, so the prefix is the whole file.
                    data = np.frombuffer(prefix, dtype=np.uint8)
                else:
                    handle.seek(0)
                    data = np.fromfile(handle, dtype=np.uint8)
                flags = cv2.IMREAD_UNCHANGED
                if min_size is not None and header.format == "jpeg":
                    reduction = _jpeg_reduction(header, min_size)
                    flags = _jpeg_reduced_flags(header, reduction)
                decoded = _decode_with_opencv(path, data, header.format, flags)
                pixels, alpha = _split_channels(path, decoded, header)
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except IsADirectoryError as err:
        raise InputError(path, "is a directory, not a file") from err
    except PermissionError as err:
        # Windows raises PermissionError, not IsADirectoryError, for a directory.
        if path.is_dir():
            raise InputError(path, "is a directory, not a file") from err
        raise InputError(path, "permission denied") from err
    except OSError as err:
        raise InputError(path, describe_os_error(err)) from err

    if header.orientation != 1:
        transform = ORIENTATION_TRANSFORMS[header.orientation]
        pixels = np.ascontiguousarray(transform(pixels))
        if alpha is not None:
            alpha = np.ascontiguousarray(transform(alpha))

    image = ImageData(
        pixels=pixels,
        alpha=alpha,
        format=header.format,
        icc_profile=_matching_icc_profile(path, header.icc_profile, pixels.ndim == 2),
        exif=header.exif,
        reduction=reduction,
        chroma_subsampling=header.chroma_subsampling,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "read %s: %s %dx%d, %d-bit, %s%s%s",
            path,
            FORMAT_LABELS[image.format],
            image.width,
            image.height,
            image.bit_depth,
            "gray" if image.is_gray else "RGB",
            "+alpha" if alpha is not None else "",
            f", decoded at 1/{reduction} scale" if reduction > 1 else "",
        )
    return image


# The first read of a file. It holds the header of almost every file (a JPEG's EXIF
# block may be larger), and all of a small file, which then needs no second read.
HEADER_PREFIX_BYTES = 1 << 16

# libjpeg's DCT scaling factors that OpenCV's IMREAD_REDUCED_* flags select, largest
# first, with the flag for color and for gray output.
JPEG_REDUCTIONS = (
    (8, cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
)


def _jpeg_reduction(header: _Header, min_size: tuple[int, int]) -> int:
    """Return the largest JPEG scale denominator that keeps the image >= min_size.

    The factor must divide both stored sides. libjpeg rounds a scaled side up, so
    otherwise the last row or column would average fewer pixels than the others, and
    a later resize would shift the image by up to one reduced pixel. EXIF
    orientations 5 to 8 swap the width and height.
    """
    height, width = header.height, header.width
    if header.orientation >= 5:
        height, width = width, height
    min_height, min_width = min_size
    for factor, _, _ in JPEG_REDUCTIONS:
        if height % factor or width % factor:
            continue
        if height >= factor * min_height and width >= factor * min_width:
            return factor
    return 1


def _jpeg_reduced_flags(header: _Header, reduction: int) -> int:
    """Return the imdecode flags for a JPEG decode at 1/``reduction`` scale.

    The reduced flags convert to color or gray, unlike IMREAD_UNCHANGED, so a gray
    JPEG takes the gray flag. OpenCV's own EXIF rotation is turned off, because
    read_image applies the orientation from the header.
    """
    for factor, color, gray in JPEG_REDUCTIONS:
        if factor == reduction:
            flag = gray if header.components == 1 else color
            return flag | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.IMREAD_UNCHANGED


# Bytes 16 to 20 of an ICC profile header name the color space of the pixel data it
# describes, such as b"RGB ", b"GRAY", b"CMYK" or b"Lab ".
ICC_COLOR_SPACE = slice(16, 20)


def _matching_icc_profile(
    path: Path, profile: bytes | None, gray: bool
) -> bytes | None:
    """Return ``profile`` when it describes the decoded pixels' color space, else None.

    CMYK images are decoded to RGB, and their CMYK profile would mislabel the output's
    colors. A profile that does not match is dropped with a warning naming the file.
    """
    if profile is None:
        return None
    expected = b"GRAY" if gray else b"RGB "
    found = profile[ICC_COLOR_SPACE]
    if found == expected:
        return profile
    name = found.decode("ascii", "replace").strip() or "unknown"
    logger.warning(
        "%s: the embedded ICC profile is for %s data but the image is decoded as %s, "
        "so the output has no ICC profile",
        path,
        name,
        "gray" if gray else "RGB",
    )
    return None


def _sniff_format(prefix: bytes) -> str | None:
    """Return the format name that the file signature shows, or None."""
    if prefix.startswith(PNG_SIGNATURE):
        return "png"
    if prefix.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "webp"
    if prefix[:4] in TIFF_SIGNATURES:
        return "tiff"
    if prefix.startswith(b"BM"):
        return "bmp"
    return None


def _read_header(
    path: Path, handle: IO[bytes], suffix_format: str, prefix: bytes
) -> _Header:
    """Parse the header, without decoding pixels; ``prefix`` is the file's start.

    The format comes from the file signature, so a JPEG named .png is read as JPEG.
    A JPEG with no APP1 or APP2 segment (so no EXIF, XMP or ICC profile) is parsed by
    _scan_jpeg_header, because Pillow's parser costs more than decoding a 32x32 JPEG.
    Everything else is parsed by Pillow. Pillow's plugin classes are constructed
    directly instead of through Image.open, because Image.open applies Pillow's
    decompression bomb limit (with the default Image.MAX_IMAGE_PIXELS, above about 179
    million pixels it raises DecompressionBombError), which would override
    ``max_pixels``.
    """
    file_format = _sniff_format(prefix[:32])
    if file_format is None:
        label = FORMAT_LABELS[suffix_format]
        raise InputError(path, f"cannot decode image: not a valid {label} file")
    if file_format != suffix_format:
        logger.debug("%s: the file contents are %s", path, FORMAT_LABELS[file_format])
    if file_format == "jpeg":
        scanned = _scan_jpeg_header(prefix)
        if scanned is not None:
            return scanned
    handle.seek(0)

    # Pillow reports damaged tags through warnings.warn, so they are logged instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if file_format == "tiff":
                header = _read_tiff_header(path, handle)
            else:
                header = _read_pillow_header(path, handle, file_format, prefix)
        except Image.DecompressionBombError as err:
            # NOTE: WebPImageFile applies Pillow's limit while parsing the header, so
            # WebP images above it are rejected even when max_pixels allows them.
            raise InputError(
                path,
                f"image is above Pillow's limit of {_pillow_error_limit()} pixels "
                f"for {FORMAT_LABELS[file_format]} headers",
            ) from err
        except PILLOW_HEADER_ERRORS as err:
            label = FORMAT_LABELS[file_format]
            logger.debug("%s: Pillow cannot parse the header: %s", path, err)
            raise InputError(
                path, f"cannot decode image: not a valid {label} file, or truncated"
            ) from err
    for warning in caught:
        logger.debug("%s: Pillow warning: %s", path, warning.message)
    return header


PILLOW_HEADER_PARSERS: dict[str, Callable[[IO[bytes]], ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}


def _read_pillow_header(
    path: Path, handle: IO[bytes], file_format: str, prefix: bytes
) -> _Header:
    parsed = PILLOW_HEADER_PARSERS[file_format](handle)
    width, height = parsed.size
    if getattr(parsed, "n_frames", 1) > 1:
        label = FORMAT_LABELS[file_format]
        raise InputError(
            path, f"animated {label} is not supported; only still images are"
        )

    orientation, exif = 1, None
    # PngImageFile.getexif decodes the whole image when the eXIf chunk comes after the
    # image data, so only an eXIf chunk found while parsing the header is used.
    # NOTE: an eXIf chunk after IDAT is ignored, so its orientation is not applied and
    # its tags are not returned.
    if file_format in ("jpeg", "webp") or "exif" in parsed.info:
        orientation, exif = _read_exif(path, parsed)

    gray_alpha = (
        file_format == "png" and prefix[PNG_COLOR_TYPE_OFFSET] == PNG_GRAY_ALPHA
    )
    return _Header(
        format=file_format,
        width=width,
        height=height,
        orientation=orientation,
        gray_alpha=gray_alpha,
        icc_profile=_bytes_or_none(parsed.info.get("icc_profile")),
        exif=exif,
        components=int(getattr(parsed, "layers", 0)) if file_format == "jpeg" else 0,
        chroma_subsampling=_chroma_subsampling(
            [(h, v) for _, h, v, _ in getattr(parsed, "layer", [])]
        ),
    )


def _chroma_subsampling(factors: list[tuple[int, int]]) -> tuple[int, int]:
    """Return luma samples per chroma sample, from a JPEG frame's sampling factors.

    ``factors``: (horizontal, vertical) per component, luma first. The result is
    (1, 1) unless there are three components and both chroma ones have equal factors
    that divide the luma ones.
    """
    if len(factors) != 3 or factors[1] != factors[2]:
        return (1, 1)
    (luma_h, luma_v), (chroma_h, chroma_v) = factors[0], factors[1]
    if not chroma_h or not chroma_v or luma_h % chroma_h or luma_v % chroma_v:
        return (1, 1)
    return (luma_h // chroma_h, luma_v // chroma_v)


# JPEG marker codes (ITU-T T.81, table B.1) that _scan_jpeg_header reads or skips:
# start of frame for baseline, extended and progressive Huffman coding, and segments
# that do not change the header fields (DHT, DQT, DRI, COM, APP0 and APP3 to APP15).
JPEG_SOF_HUFFMAN = frozenset({0xC0, 0xC1, 0xC2})
JPEG_SKIPPED_SEGMENTS = frozenset({0xC4, 0xDB, 0xDD, 0xFE, 0xE0, *range(0xE3, 0xF0)})
JPEG_SOS = 0xDA


def _scan_jpeg_header(data: bytes) -> _Header | None:
    """Read a JPEG's size from its frame header, when nothing else is needed from it.

    Returns None, so that Pillow parses the header instead, for anything else. That
    covers APP1 segments (EXIF or XMP, which may hold the orientation) and APP2
    segments (ICC profile). It also covers frames other than 8-bit baseline, extended
    or progressive Huffman, a second frame header, a width or height of 0, other
    markers, bytes between segments and a header that does not end within ``data``.
    """
    position = 2  # after the SOI marker
    frame: bytes | None = None
    end = len(data)
    while True:
        if position + 4 > end or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker (T.81, B.1.1.2)
            position += 1
            continue
        if marker == JPEG_SOS:
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment_end = position + 2 + length
        if length < 2 or segment_end > end:
            return None
        if marker in JPEG_SOF_HUFFMAN:
            if frame is not None:
                return None
            frame = data[position + 4 : segment_end]
        elif marker not in JPEG_SKIPPED_SEGMENTS:
            return None
        position = segment_end
    # A frame header starts with the sample precision, the height, the width and the
    # number of components (T.81, B.2.2).
    if frame is None or len(frame) < 6 or frame[0] != 8:
        return None
    height = int.from_bytes(frame[1:3], "big")
    width = int.from_bytes(frame[3:5], "big")
    components = frame[5]
    if height == 0 or width == 0 or components not in (1, 3, 4):
        return None
    # Each component: an identifier, its sampling factors (4 bits each) and its
    # quantization table (T.81, B.2.2).
    factors = [(byte >> 4, byte & 0x0F) for byte in frame[7 : 6 + 3 * components : 3]]
    return _Header(
        format="jpeg",
        width=width,
        height=height,
        components=components,
        chroma_subsampling=_chroma_subsampling(factors),
    )


def _read_exif(path: Path, parsed: ImageFile.ImageFile) -> tuple[int, bytes | None]:
    """Return the EXIF orientation and the EXIF block without the orientation tag.

    A damaged EXIF block is logged at debug level and dropped, so that it never fails
    the read. The orientation stays 1 when the tags cannot be parsed at all.
    """
    try:
        exif = parsed.getexif()
    except PILLOW_HEADER_ERRORS as err:
        logger.debug("%s: dropping damaged EXIF data: %s", path, err)
        return 1, None
    orientation = _valid_orientation(path, exif.get(EXIF_ORIENTATION))
    exif.pop(EXIF_ORIENTATION, None)
    if not exif:
        return orientation, None
    try:
        return orientation, exif.tobytes()
    except PILLOW_HEADER_ERRORS as err:
        logger.debug("%s: dropping damaged EXIF data: %s", path, err)
        return orientation, None


def _bytes_or_none(value: object) -> bytes | None:
    if isinstance(value, bytes) and value:
        return value
    return None


def _read_tiff_header(path: Path, handle: IO[bytes]) -> _Header:
    """Parse the first TIFF image file directory (IFD) with Pillow.

    The IFD is read directly because TiffImageFile rejects layouts that OpenCV decodes
    or that deserve a precise message, such as float samples (SyntaxError "unknown
    pixel mode").
    """
    file_header = handle.read(8)
    if file_header[2:3] == b"+":  # BigTIFF has a 16-byte file header.
        file_header += handle.read(8)
    tags = TiffImagePlugin.ImageFileDirectory_v2(file_header)
    handle.seek(tags.next)
    tags.load(handle)

    width = int(tags[TIFF_IMAGE_WIDTH])
    height = int(tags[TIFF_IMAGE_LENGTH])
    samples = int(tags.get(TIFF_SAMPLES_PER_PIXEL, 1))
    photometric = tags.get(TIFF_PHOTOMETRIC)
    bits = _as_tuple(tags.get(TIFF_BITS_PER_SAMPLE, 1))
    sample_formats = _as_tuple(tags.get(TIFF_SAMPLE_FORMAT, 1))
    extra_samples = _as_tuple(tags.get(TIFF_EXTRA_SAMPLES, ()))

    for sample_format in sample_formats:
        if sample_format != 1:
            name = TIFF_SAMPLE_FORMAT_NAMES.get(int(sample_format), "unknown")
            raise InputError(path, f"unsupported sample format {name}{max(bits)}")
    if tags.next != 0:
        logger.warning(
            "%s: TIFF has more than one page, and only the first is read", path
        )

    gray_alpha = photometric in TIFF_PHOTOMETRIC_GRAY and samples == 2
    if gray_alpha and max(bits) > 8:
        # OpenCV 5.1 decodes this layout as 8-bit gray with wrong values, and Pillow
        # cannot open it at all.
        raise InputError(
            path,
            "16-bit gray+alpha TIFF is not supported; convert it to PNG or RGBA TIFF",
        )
    # NOTE: associated (premultiplied) alpha, ExtraSamples 1, is returned as stored,
    # so its colors stay premultiplied.
    rgb_unassociated_alpha = (
        photometric == TIFF_PHOTOMETRIC_RGB
        and samples == 4
        and max(bits) == 8
        and TIFF_UNASSOCIATED_ALPHA in extra_samples
    )
    # The header keeps orientation 1 because both TIFF decoders apply the Orientation
    # tag: OpenCV 5.1 does so even with IMREAD_UNCHANGED, and so does
    # _decode_with_pillow.
    # NOTE: this was checked only with OpenCV 5.1. An OpenCV that ignores the tag for
    # TIFF would leave those images unrotated.
    return _Header(
        format="tiff",
        width=width,
        height=height,
        opaque_cmyk=photometric == TIFF_PHOTOMETRIC_CMYK and samples == 4,
        decode_with_pillow=gray_alpha or rgb_unassociated_alpha,
        icc_profile=_bytes_or_none(tags.get(TIFF_ICC_PROFILE)),
    )


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return tuple(int(item) for item in value)
    return (int(value),)


def _valid_orientation(path: Path, value: object) -> int:
    """Return the EXIF orientation 1 to 8, or 1 for a missing or invalid tag."""
    if value is None:
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    logger.warning("%s: ignoring invalid EXIF orientation %r", path, value)
    return 1


def _check_pixel_limit(path: Path, header: _Header, max_pixels: int) -> None:
    if header.width * header.height > max_pixels:
        raise InputError(
            path,
            f"image is {header.width}x{header.height} pixels, "
            f"above the limit of {max_pixels} pixels",
        )


def _check_png_chunks(path: Path, data: np.ndarray) -> None:
    """Raise InputError for a PNG file cut short or with damaged critical data.

    Walks the chunks from the signature to IEND. Each chunk is a 4-byte length, a
    4-byte type, the data and a CRC-32 of type and data (PNG specification, section
    5.3). A CRC error is fatal only in a critical chunk (type starting with an
    upper-case letter), as in libpng's default setting. Ancillary chunks are not
    checked. The IDAT chunks' zlib stream is inflated piece by piece, without keeping
    the pixels, to check its integrity, its length and each row's filter type.
    """
    view = np.ascontiguousarray(data, np.uint8).data.cast("B")  # the bytes, no copy
    if bytes(view[: len(PNG_SIGNATURE)]) != PNG_SIGNATURE:
        raise InputError(path, "cannot decode image: not a valid PNG file")
    position = len(PNG_SIGNATURE)
    image_data: _PngImageData | None = None
    while True:
        if position + 8 > len(view):
            raise InputError(path, "truncated PNG file: it ends before the IEND chunk")
        length = int.from_bytes(view[position : position + 4], "big")
        kind = bytes(view[position + 4 : position + 8])
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(view):
            raise InputError(
                path,
                f"truncated PNG file: it ends inside chunk {_chunk_name(kind)}",
            )
        if kind[:1].isupper():
            stored = int.from_bytes(view[end - 4 : end], "big")
            if zlib.crc32(view[position + 4 : end - 4]) != stored:
                raise InputError(
                    path,
                    f"damaged PNG file: CRC error in chunk {_chunk_name(kind)}",
                )
        if kind == b"IHDR":
            if image_data is not None:
                raise InputError(path, "damaged PNG file: more than one IHDR chunk")
            image_data = _PngImageData(path, bytes(view[position + 8 : end - 4]))
        elif kind == b"IDAT":
            if image_data is None:
                raise InputError(path, "damaged PNG file: IDAT chunk before IHDR")
            image_data.feed(view[position + 8 : end - 4])
        elif kind == b"IEND":
            if image_data is not None:
                image_data.finish()
            return
        position = end


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else repr(kind)


# Samples per pixel of each PNG color type, and the bit depths it allows (PNG
# specification, section 11.2.2).
PNG_COLOR_TYPES: dict[int, tuple[int, tuple[int, ...]]] = {
    0: (1, (1, 2, 4, 8, 16)),  # gray
    2: (3, (8, 16)),  # RGB
    3: (1, (1, 2, 4, 8)),  # palette
    4: (2, (8, 16)),  # gray and alpha
    6: (4, (8, 16)),  # RGB and alpha
}
# Adam7 passes: first column, first row, column step, row step (section 8.2).
ADAM7_PASSES = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
PNG_MAX_FILTER_TYPE = 4  # None, Sub, Up, Average, Paeth (section 9.2)
PNG_INFLATE_PIECE_BYTES = 1 << 20


class _PngImageData:
    """Inflate a PNG's image data piece by piece and check what libpng would reject.

    The inflated stream is a series of rows, each a filter-type byte and the row's
    bytes. An interlaced image stores the seven Adam7 sub-images one after another.
    Only the filter-type bytes are read, so memory stays at one piece.
    """

    def __init__(self, path: Path, ihdr: bytes) -> None:
        self.path = path
        if len(ihdr) != 13:
            raise InputError(path, "damaged PNG file: invalid IHDR chunk length")
        width, height, depth, color, compression, filtering, interlace = struct.unpack(
            ">IIBBBBB", ihdr
        )
        samples, depths = PNG_COLOR_TYPES.get(color, (0, ()))
        if (
            not 0 < width <= 0x7FFFFFFF
            or not 0 < height <= 0x7FFFFFFF
            or depth not in depths
            or compression != 0
            or filtering != 0
            or interlace > 1
        ):
            raise InputError(path, "damaged PNG file: invalid IHDR chunk")

        bits = samples * depth
        passes = ADAM7_PASSES if interlace else ((0, 0, 1, 1),)
        # (offset of the first row, bytes per row with its filter byte, rows)
        self.runs: list[tuple[int, int, int]] = []
        offset = 0
        for x0, y0, dx, dy in passes:
            columns = (width - x0 + dx - 1) // dx if width > x0 else 0
            rows = (height - y0 + dy - 1) // dy if height > y0 else 0
            if columns and rows:  # a pass without pixels has no rows at all
                stride = 1 + (columns * bits + 7) // 8
                self.runs.append((offset, stride, rows))
                offset += stride * rows

        self.expected = offset
        self.inflated = 0
        self.inflater = zlib.decompressobj()

    def feed(self, data: memoryview) -> None:
        pending: bytes | memoryview = data
        while pending and not self.inflater.eof:
            try:
                piece = self.inflater.decompress(pending, PNG_INFLATE_PIECE_BYTES)
            except zlib.error as err:
                # "Error -3 while decompressing data: incorrect header check"
                reason = str(err).rpartition(": ")[2]
                raise InputError(
                    self.path, f"damaged PNG file: invalid image data (zlib: {reason})"
                ) from None
            self._check_filters(piece)
            self.inflated += len(piece)
            pending = self.inflater.unconsumed_tail

    def finish(self) -> None:
        if self.inflated < self.expected:
            raise InputError(
                self.path,
                "damaged PNG file: the image data ends before the last row",
            )
        if not self.inflater.eof:
            raise InputError(
                self.path, "damaged PNG file: the compressed image data is incomplete"
            )

    def _check_filters(self, piece: bytes) -> None:
        start, stop = self.inflated, self.inflated + len(piece)
        values = np.frombuffer(piece, np.uint8)
        for first, stride, rows in self.runs:
            last = first + stride * rows
            if last <= start or first >= stop:
                continue
            low = first + max(0, -(-(start - first) // stride)) * stride
            high = min(stop, last)
            if low >= high:
                continue
            found = values[low - start : high - start : stride]
            bad = found > PNG_MAX_FILTER_TYPE
            if bad.any():
                raise InputError(
                    self.path,
                    "damaged PNG file: invalid row filter type "
                    f"{int(found[bad][0])} in the image data",
                )


def _decode_with_opencv(
    path: Path, data: np.ndarray, file_format: str, flags: int = cv2.IMREAD_UNCHANGED
) -> np.ndarray:
    # Python reads the file and OpenCV decodes it from memory. OpenCV never opens the
    # path itself, which keeps non-ASCII paths working on every platform.
    if file_format == "png":
        _check_png_chunks(path, data)
    try:
        decoded = cv2.imdecode(data, flags)
    except cv2.error as err:
        logger.debug("%s: OpenCV cannot decode the image: %s", path, err)
        decoded = None
    if decoded is None:
        label = FORMAT_LABELS[file_format]
        raise InputError(
            path, f"cannot decode image: not a valid {label} file, or truncated"
        )
    if decoded.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"unsupported sample format {decoded.dtype.name}")
    return decoded


def _decode_with_pillow(
    path: Path, handle: IO[bytes], header: _Header
) -> tuple[np.ndarray, np.ndarray]:
    """Decode an 8-bit gray+alpha or RGBA TIFF with Pillow into pixels and alpha."""
    with warnings.catch_warnings():
        # read_image has checked max_pixels, so Pillow's lower warning limit must not
        # print a DecompressionBombWarning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            parsed = TiffImagePlugin.TiffImageFile(handle)
            parsed.load()
            samples = np.asarray(parsed)
        except Image.DecompressionBombError as err:
            raise InputError(
                path,
                f"image is {header.width}x{header.height} pixels, above Pillow's "
                f"limit of {_pillow_error_limit()} pixels for TIFF with alpha",
            ) from err
        except PILLOW_HEADER_ERRORS as err:
            logger.debug("%s: Pillow cannot decode the image: %s", path, err)
            raise InputError(
                path, "cannot decode image: not a valid TIFF file, or truncated"
            ) from err
    if parsed.mode not in ("LA", "RGBA"):
        raise InputError(path, f"unsupported TIFF layout: Pillow mode {parsed.mode}")

    # Pillow 13 applies the Orientation tag on load and then deletes it from tag_v2.
    # Older Pillow releases keep the tag and leave the pixels as stored.
    leftover = _valid_orientation(path, parsed.tag_v2.get(TIFF_ORIENTATION))
    samples = ORIENTATION_TRANSFORMS[leftover](samples)
    pixels = samples[:, :, 0] if parsed.mode == "LA" else samples[:, :, :3]
    return np.ascontiguousarray(pixels), np.ascontiguousarray(samples[:, :, -1])


def _pillow_error_limit() -> int:
    """Return the pixel count above which Pillow raises DecompressionBombError."""
    return 2 * (Image.MAX_IMAGE_PIXELS or 0)


def _split_channels(
    path: Path, decoded: np.ndarray, header: _Header
) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert OpenCV's gray, BGR or BGRA array into RGB or gray pixels and alpha."""
    if decoded.ndim == 2:
        return decoded, None
    channels = decoded.shape[2]
    if channels == 1:
        return np.ascontiguousarray(decoded[:, :, 0]), None
    if channels == 2:
        gray = np.ascontiguousarray(decoded[:, :, 0])
        return gray, np.ascontiguousarray(decoded[:, :, 1])
    if channels == 3:
        # In place: a second copy of a 100-megapixel photo would cost 286 MiB.
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=decoded), None
    if channels == 4:
        if header.opaque_cmyk:
            return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB), None
        alpha = np.ascontiguousarray(decoded[:, :, 3])
        if header.gray_alpha:
            return np.ascontiguousarray(decoded[:, :, 0]), alpha
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB), alpha
    raise InputError(path, f"unsupported channel count {channels}")


# Transform for each EXIF orientation that makes the stored pixels display upright.
# Each function works on (H, W) and (H, W, C) arrays.
ORIENTATION_TRANSFORMS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda array: array,
    2: lambda array: array[:, ::-1],  # mirror left to right
    3: lambda array: array[::-1, ::-1],  # rotate 180 degrees
    4: lambda array: array[::-1],  # mirror top to bottom
    5: lambda array: array.swapaxes(0, 1),  # transpose
    6: lambda array: np.rot90(array, -1),  # rotate 90 degrees clockwise
    7: lambda array: array[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda array: np.rot90(array, 1),  # rotate 90 degrees counterclockwise
}


# --------------------------------------------------------------------------------------
# Writing


def write_image(
    path: Path | ObjectPath,
    image: ImageData,
    format: str | None = None,
    quality: int | None = None,
) -> None:
    """Encode ``image`` and write it to ``path`` atomically.

    ``path`` is a file or an object in an object store, which gets the encoded bytes
    in one upload. The format comes from the suffix of ``path`` when ``format`` is
    None. Raises UsageError for an unknown format or one that cannot store the image
    (see encode_image), and OutputError when encoding or writing fails.
    """
    path = parse_output(path)
    if format is None:
        inferred = FORMATS.get(path.suffix.lower())
        if inferred is None:
            supported = ", ".join(sorted(FORMATS))
            raise UsageError(
                f"cannot infer the image format of {path} from its suffix; "
                f"use one of {supported}"
            )
        format = inferred
    try:
        data = encode_image(image, format, quality, name=str(path))
    except EncodeError as err:
        raise OutputError(path, err.reason) from err
    atomic_write_bytes(path, data)


def encode_image(
    image: ImageData,
    format: str,
    quality: int | None = None,
    name: str | None = None,
) -> bytes:
    """Encode ``image`` as file contents in ``format``, a format name from FORMATS.

    ``quality`` (1 to 100) applies to JPEG and WebP and is ignored otherwise. JPEG and
    WebP default to 95. WebP quality 100 selects lossless WebP, which keeps every sample
    except the colors of fully transparent pixels: libwebp may replace them, and OpenCV
    5.1 has no option to keep them. JPEG, WebP and BMP
    store 8-bit samples, so 16-bit images are rounded to 8 bits with a logged warning.
    Gray+alpha stays gray+alpha in PNG and 8-bit TIFF, but WebP, BMP and 16-bit TIFF
    store it as RGBA. WebP has no gray mode, so gray images read back from WebP as RGB.
    BMP keeps alpha as 32-bit BGRA. JPEG and PNG keep the image's ICC profile and
    EXIF block. ``name``, the output file, starts the warning when given.

    Raises UsageError for an unknown format, an invalid quality, alpha in JPEG, and a
    size above the JPEG or WebP maximum; EncodeError when the encoder fails.
    """
    if format not in SUFFIX_FOR_FORMAT:
        supported = ", ".join(SUFFIX_FOR_FORMAT)
        raise UsageError(f"unsupported image format {format!r}; use one of {supported}")
    if quality is not None and not 1 <= quality <= 100:
        raise UsageError(f"quality must be between 1 and 100, got {quality}")
    label = FORMAT_LABELS[format]
    if format == "jpeg" and image.alpha is not None:
        raise UsageError("JPEG cannot store an alpha channel; use --format png")
    max_dimension = MAX_DIMENSION.get(format)
    if max_dimension is not None and max(image.width, image.height) > max_dimension:
        raise UsageError(
            f"{label} cannot store a {image.width}x{image.height} image, because width "
            f"and height must be at most {max_dimension}; use --format png"
        )

    pixels, alpha = image.pixels, image.alpha
    if format in EIGHT_BIT_FORMATS and image.bit_depth == 16:
        logger.warning(
            "%s%s stores only 8-bit samples, so the 16-bit image is converted",
            f"{name}: " if name else "",
            label,
        )
        pixels = _to_8bit(pixels)
        alpha = None if alpha is None else _to_8bit(alpha)

    if format == "png" and pixels.ndim == 2 and alpha is not None:
        data = _encode_png_gray_alpha(pixels, alpha)
    elif format == "tiff" and pixels.dtype == np.uint8 and alpha is not None:
        data = _encode_tiff_alpha_with_pillow(pixels, alpha)
    else:
        if pixels.ndim == 2 and alpha is not None:
            logger.info("%s stores this gray+alpha image as RGBA", label)
        # NOTE: OpenCV 5.1 writes RGBA TIFF, which reaches this line only at 16 bits,
        # without the ExtraSamples tag, so other readers may not treat the fourth
        # channel as alpha. read_image reads it back unchanged.
        data = _encode_with_opencv(format, _to_opencv_layout(pixels, alpha), quality)

    if format == "jpeg":
        return _insert_jpeg_metadata(data, image.icc_profile, image.exif)
    if format == "png":
        return _insert_png_metadata(data, image.icc_profile, image.exif)
    # NOTE: WebP, TIFF and BMP outputs are written without the ICC profile and EXIF.
    return data


def _to_8bit(samples: np.ndarray) -> np.ndarray:
    """Round 16-bit samples to the nearest 8-bit value, ties up (65535 maps to 255)."""
    widened = samples.astype(np.uint32)
    return ((widened + 128) // 257).astype(np.uint8)


def _to_opencv_layout(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Return gray, BGR or BGRA samples in the channel order that OpenCV encodes."""
    if alpha is None:
        if pixels.ndim == 2:
            return pixels
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    code = cv2.COLOR_GRAY2BGRA if pixels.ndim == 2 else cv2.COLOR_RGB2BGRA
    bgra = cv2.cvtColor(pixels, code)
    bgra[:, :, 3] = alpha
    return bgra


def _encode_with_opencv(format: str, array: np.ndarray, quality: int | None) -> bytes:
    params: list[int] = []
    if format == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality or DEFAULT_JPEG_QUALITY]
    elif format == "webp":
        webp_quality = quality or DEFAULT_WEBP_QUALITY
        # OpenCV selects lossless WebP for a quality above 100.
        params = [
            cv2.IMWRITE_WEBP_QUALITY,
            101 if webp_quality == 100 else webp_quality,
        ]

    label = FORMAT_LABELS[format]
    try:
        ok, buffer = cv2.imencode(SUFFIX_FOR_FORMAT[format], array, params)
    except cv2.error as err:
        detail = str(err).strip().splitlines()[-1]
        raise EncodeError(f"cannot encode the image as {label}: {detail}") from err
    if not ok:
        raise EncodeError(f"cannot encode the image as {label}")
    return buffer.tobytes()


def _encode_png_gray_alpha(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """Encode a gray+alpha PNG (color type 4), which OpenCV's imencode cannot write."""
    height, width = gray.shape
    bit_depth = 8 if gray.dtype == np.uint8 else 16
    samples = np.stack([gray, alpha], axis=-1)
    if bit_depth == 16:
        samples = samples.astype(">u2")  # PNG stores 16-bit samples big-endian
    rows = np.ascontiguousarray(samples).reshape(height, -1).view(np.uint8)

    # Filter type 2 ("Up") stores each byte minus the byte above it, modulo 256.
    above = np.zeros_like(rows)
    above[1:] = rows[:-1]
    filtered = rows - above
    filter_bytes = np.full((height, 1), 2, dtype=np.uint8)
    compressed = zlib.compress(np.hstack([filter_bytes, filtered]).tobytes(), 6)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, PNG_GRAY_ALPHA, 0, 0, 0)
    parts = [PNG_SIGNATURE, _png_chunk(b"IHDR", ihdr)]
    for start in range(0, len(compressed), PNG_IDAT_CHUNK_BYTES):
        parts.append(
            _png_chunk(b"IDAT", compressed[start : start + PNG_IDAT_CHUNK_BYTES])
        )
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def _insert_jpeg_metadata(
    data: bytes, icc_profile: bytes | None, exif: bytes | None
) -> bytes:
    """Insert an APP1 EXIF segment and APP2 ICC_PROFILE segments into a JPEG file.

    The segments follow the SOI marker and the JFIF APP0 segment that OpenCV writes
    first, because JFIF requires APP0 right after SOI. An EXIF block or an ICC profile
    too large for JPEG segments is dropped with a debug log.
    """
    segments: list[bytes] = []
    if exif:
        payload = exif if exif.startswith(EXIF_HEADER) else EXIF_HEADER + exif
        if len(payload) > JPEG_MAX_SEGMENT_DATA:
            logger.debug(
                "dropping the EXIF block: %d bytes is above the JPEG maximum of %d",
                len(payload),
                JPEG_MAX_SEGMENT_DATA,
            )
        else:
            segments.append(_jpeg_segment(JPEG_APP1, payload))
    if icc_profile:
        segments.extend(_jpeg_icc_segments(icc_profile))
    if not segments:
        return data
    if not data.startswith(JPEG_SOI):
        raise EncodeError("cannot add metadata: the JPEG encoder output has no SOI")

    insert_at = len(JPEG_SOI)
    if data[insert_at : insert_at + 2] == bytes([0xFF, JPEG_APP0]):
        (app0_length,) = struct.unpack(">H", data[insert_at + 2 : insert_at + 4])
        insert_at += 2 + app0_length
    return data[:insert_at] + b"".join(segments) + data[insert_at:]


def _jpeg_icc_segments(icc_profile: bytes) -> list[bytes]:
    """Split an ICC profile into APP2 segments with 1-based sequence numbers."""
    chunks = [
        icc_profile[start : start + JPEG_ICC_CHUNK_BYTES]
        for start in range(0, len(icc_profile), JPEG_ICC_CHUNK_BYTES)
    ]
    if len(chunks) > JPEG_ICC_MAX_CHUNKS:
        logger.debug(
            "dropping the ICC profile: %d bytes needs more than %d JPEG segments",
            len(icc_profile),
            JPEG_ICC_MAX_CHUNKS,
        )
        return []
    return [
        _jpeg_segment(
            JPEG_APP2, JPEG_ICC_IDENTIFIER + bytes([number, len(chunks)]) + chunk
        )
        for number, chunk in enumerate(chunks, start=1)
    ]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _insert_png_metadata(
    data: bytes, icc_profile: bytes | None, exif: bytes | None
) -> bytes:
    """Insert iCCP and eXIf chunks right after the IHDR chunk of a PNG file."""
    chunks: list[bytes] = []
    if icc_profile:
        # Compression method 0 (zlib) is the only one that PNG defines.
        iccp = PNG_ICC_PROFILE_NAME + b"\x00\x00" + zlib.compress(icc_profile)
        chunks.append(_png_chunk(b"iCCP", iccp))
    if exif:
        # The eXIf chunk contains the TIFF-structured data without the APP1 identifier.
        tiff_data = exif.removeprefix(EXIF_HEADER)
        chunks.append(_png_chunk(b"eXIf", tiff_data))
    if not chunks:
        return data
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise EncodeError("cannot add metadata: the PNG encoder output has no IHDR")

    (ihdr_length,) = struct.unpack(">I", data[8:12])
    insert_at = len(PNG_SIGNATURE) + 12 + ihdr_length  # length, type, data and CRC
    return data[:insert_at] + b"".join(chunks) + data[insert_at:]


def _png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + data)
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def _encode_tiff_alpha_with_pillow(pixels: np.ndarray, alpha: np.ndarray) -> bytes:
    """Encode an 8-bit gray+alpha or RGBA TIFF with Pillow.

    OpenCV cannot write gray+alpha TIFF, and it writes RGBA TIFF without the
    ExtraSamples tag that marks the fourth channel as alpha.
    """
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.dstack([pixels, alpha])).save(
            buffer, format="TIFF", compression="tiff_lzw"
        )
    except (OSError, ValueError) as err:
        raise EncodeError(f"cannot encode the image as TIFF: {err}") from err
    return buffer.getvalue()


# --------------------------------------------------------------------------------------
# Sample conversion


def to_float(pixels: np.ndarray) -> np.ndarray:
    """Scale uint8 or uint16 samples to float32 in [0, 1], keeping the shape."""
    if pixels.dtype == np.uint8:
        scale = 255.0
    elif pixels.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"expected uint8 or uint16 samples, got {pixels.dtype}")
    return pixels.astype(np.float32) / np.float32(scale)


def from_float(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Scale floats in [0, 1] to uint8 (bit_depth 8) or uint16 (bit_depth 16).

    Values are clipped to [0, 1], scaled and rounded to the nearest integer, with ties
    to even as in np.rint. NaN becomes 0.
    """
    if bit_depth == 8:
        dtype: type[np.unsignedinteger] = np.uint8
        scale = 255.0
    elif bit_depth == 16:
        dtype = np.uint16
        scale = 65535.0
    else:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    clean = np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0)
    scaled = np.clip(clean, 0.0, 1.0) * scale
    return np.rint(scaled).astype(dtype)
