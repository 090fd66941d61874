"""Audio reading and writing in blocks: WAV, FLAC, Ogg Vorbis, MP3, AIFF and AU.

libsndfile, through the soundfile package, decodes and encodes the samples. Reading
goes block by block, so memory stays bounded for long recordings. Writing goes to a
temporary file beside the output, which replaces the output only when the whole file
is written. An output in an object store is uploaded from a local temporary file once
the whole file is written.
Facts about libsndfile below were checked with soundfile 0.14.0 and libsndfile 1.2.2.
NOTE: libmpg123, which decodes MP3 inside libsndfile, prints warnings such as
"Warning: Xing stream size off" and decoder errors straight to stderr, in lines that
name no file. This module cannot silence them without redirecting the process's stderr.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import soundfile as sf

from edgefx.errors import InputError, OutputError, UsageError

# fsutil reads the umask once at import, before any worker thread exists, because
# reading it means setting it. The outputs here get the same mode as fsutil's.
from edgefx.fsutil import _UMASK as UMASK
from edgefx.fsutil import TEMP_PREFIX, describe_os_error, interrupts_deferred
from edgefx.objectstore import ObjectPath, upload_file
from edgefx.text import count_noun

logger = logging.getLogger(__name__)

# Format names used by this module, keyed by suffix. Each name, in upper case, is the
# soundfile major format (`wav` is "WAV"). AudioWriter writes a path named .aifc as
# AIFF-C and, unless given another subtype, one named .opus as Ogg Opus.
_FORMAT_NAMES: dict[str, str] = {
    ".wav": "wav",
    ".wave": "wav",
    ".flac": "flac",
    ".ogg": "ogg",
    ".oga": "ogg",
    ".opus": "ogg",
    ".mp3": "mp3",
    ".aif": "aiff",
    ".aiff": "aiff",
    ".aifc": "aiff",
    ".au": "au",
    ".snd": "au",
}

# Format names keyed by the soundfile major format that libsndfile detects in a file.
# WAVE_FORMAT_EXTENSIBLE and RF64 files are WAV files to a user, and are written as WAV.
_FORMAT_NAME_FOR_MAJOR: dict[str, str] = {
    "WAV": "wav",
    "WAVEX": "wav",
    "RF64": "wav",
    "FLAC": "flac",
    "OGG": "ogg",
    "MP3": "mp3",
    "AIFF": "aiff",
    "AU": "au",
}

# Input suffixes. libsndfile detects the format from the file contents, so the suffix
# only selects which files a directory contributes.
AUDIO_SUFFIXES: tuple[str, ...] = tuple(_FORMAT_NAMES)

FORMAT_LABELS: dict[str, str] = {
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "Ogg",
    "mp3": "MP3",
    "aiff": "AIFF",
    "au": "AU",
}

# Labels of the codecs that an Ogg file can contain, keyed by soundfile subtype.
OGG_CODEC_LABELS: dict[str, str] = {"VORBIS": "Vorbis", "OPUS": "Opus"}

# Older libsndfile builds, and builds without LAME, cannot write MP3, so the output
# formats are those that this build lists.
_WRITABLE = {name for name in FORMAT_LABELS if name.upper() in sf.available_formats()}

# Output formats, keyed by suffix and by format name.
FORMAT_FOR_SUFFIX: dict[str, str] = {
    suffix: name for suffix, name in _FORMAT_NAMES.items() if name in _WRITABLE
}
SUFFIX_FOR_FORMAT: dict[str, str] = {
    name: suffix
    for name, suffix in {
        "wav": ".wav",
        "flac": ".flac",
        "ogg": ".ogg",
        "mp3": ".mp3",
        "aiff": ".aiff",
        "au": ".au",
    }.items()
    if name in _WRITABLE
}

# Lossy subtypes, kept only in their own container (OGG or MP3). WAV can also wrap
# MPEG Layer III, but few players read that.
LOSSY_SUBTYPES = frozenset(
    {"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"}
)
OPUS_RATES = frozenset({8000, 12000, 16000, 24000, 48000})

# Limits of the Ogg writer, checked before it opens. The Vorbis and Opus headers store
# the channel count in one byte. Beyond either limit, libsndfile 1.2.2 (as soundfile
# 0.14 bundles it) crashes the process with a segmentation fault on a Vorbis file
# instead of returning an error. The rate limit was measured with that build: 200000 Hz
# writes, 200001 Hz crashes.
OGG_MAX_CHANNELS = 255
VORBIS_MAX_RATE = 200_000

# Subtypes to try, in order, when the output format cannot store the input's subtype:
# the nearest resolution first, so that float becomes 24-bit PCM in FLAC.
SUBTYPE_FALLBACKS: dict[str, tuple[str, ...]] = {
    "PCM_U8": ("PCM_S8", "PCM_16"),
    "PCM_S8": ("PCM_U8", "PCM_16"),
    "PCM_16": ("PCM_24", "FLOAT"),
    "PCM_24": ("PCM_32", "FLOAT", "PCM_16"),
    "PCM_32": ("PCM_24", "FLOAT", "PCM_16"),
    "FLOAT": ("DOUBLE", "PCM_24", "PCM_32", "PCM_16"),
    "DOUBLE": ("FLOAT", "PCM_24", "PCM_32", "PCM_16"),
}

# Bytes per sample of the PCM and float subtypes, for the header size limits below.
SAMPLE_BYTES: dict[str, int] = {
    "PCM_U8": 1,
    "PCM_S8": 1,
    "PCM_16": 2,
    "PCM_24": 3,
    "PCM_32": 4,
    "FLOAT": 4,
    "DOUBLE": 8,
}

# Maximum bytes of sample data per file. WAV (RIFF) and AU headers store the data size
# in 32 unsigned bits. AIFF chunk sizes are 32-bit too, and the limit stays below
# 2 GiB because some readers take them as signed. The 64 KiB margin leaves room for
# the header chunks that libsndfile writes beside the samples.
MAX_DATA_BYTES: dict[str, int] = {
    "WAV": 2**32 - 2**16,
    "AU": 2**32 - 2**16,
    "AIFF": 2**31 - 2**16,
}

# libmpg123 estimates the length of an MP3 without a Xing or Info header from its
# size. A 12 s file without one decoded 589 frames (0.1 %) short of the estimate,
# so a shortfall up to this fraction is taken as the end of the audio, not as
# truncation.
# NOTE: an MP3 truncated by less than this fraction therefore reads without an error.
MP3_LENGTH_TOLERANCE = 0.01

# libsndfile reports this frame count (SF_COUNT_MAX) when the header leaves the length
# unknown, as in a FLAC file written to a pipe. soundfile 0.14 seeks after every read,
# and libsndfile 1.2.2 fails that seek in such a FLAC file, so no sample can be read.
UNKNOWN_FRAMES = 2**63 - 1

# Placeholder values that writers which cannot seek back, such as one writing to a pipe,
# leave in a 32-bit chunk size to mean "length unknown". They are not checked against
# the file size.
# NOTE: libsndfile 1.2.2 reads a WAV whose data size is 0 as containing no samples, so
# such a file fails as "no audio samples" although it has them.
PLACEHOLDER_SIZES_32 = frozenset({0, 0xFFFFFFFF})
PLACEHOLDER_SIZES_64 = frozenset({0, 2**64 - 1})

# In an RF64 or BW64 file (EBU Tech 3306), this 32-bit data chunk size means that the
# 64-bit size in the ds64 chunk applies.
RF64_SIZE_IN_DS64 = 0xFFFFFFFF

# Maximum number of chunk headers read while looking for the sample data chunk. A file
# with more chunks before it is not checked for truncation.
MAX_HEADER_CHUNKS = 1024

# libsndfile open errors whose message misleads for a file that exists and is readable.
# Code 7 ("File does not exist or is not a regular file") is what its MP3 decoder
# returns for random bytes.
GENERIC_OPEN_ERRORS = frozenset({1, 2, 7})


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file, as libsndfile reports them."""

    path: Path
    rate: int  # samples per second per channel
    channels: int
    frames: int  # samples per channel
    format: str  # soundfile major format: "WAV", "FLAC", "OGG", "MP3", ...
    subtype: str  # soundfile subtype: "PCM_16", "FLOAT", "VORBIS", ...
    # Text tags that libsndfile reads (title, artist, comment, copyright, ...), as
    # (name, value) pairs in soundfile's attribute names.
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.rate


# --------------------------------------------------------------------------------------
# Reading


def probe(path: Path | str) -> AudioInfo:
    """Read the header of an audio file.

    Raises InputError for a missing, unreadable or empty file, for contents that
    libsndfile cannot decode, for a file that contains no samples, and for a WAV or
    AIFF file whose data chunk runs past the end of the file.
    """
    path = Path(path)
    with _open_for_reading(path) as audio:
        return AudioInfo(
            path=path,
            rate=audio.samplerate,
            channels=audio.channels,
            frames=audio.frames,
            format=audio.format,
            subtype=audio.subtype,
            tags=_read_tags(audio),
        )


def _read_tags(audio: sf.SoundFile) -> tuple[tuple[str, str], ...]:
    """Read the text tags of an open file as (name, value) pairs, without empty ones.

    SoundFile.copy_metadata decodes every value as UTF-8 and puts U+FFFD in place of
    other bytes. But WAV INFO chunks and ID3v1 tags often contain Windows-1252 text,
    such as a copyright sign stored as the byte 0xA9, so a value that is not valid
    UTF-8 is decoded as Windows-1252 here. libsndfile reports each unset ID3v1 field
    of an MP3 file as an empty string, which is left out.
    """
    tags = []
    for name, string_id in sf._str_types.items():
        # NOTE: soundfile 0.14 has no public call that returns a tag's bytes, so this
        # uses its private cffi handles, as SoundFile.copy_metadata does.
        pointer = sf._snd.sf_get_string(audio._file, string_id)
        if not pointer:
            continue
        raw = sf._ffi.string(pointer)
        if raw:
            tags.append((name, _decode_tag(raw)))
    return tuple(tags)


def _decode_tag(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        # Five bytes have no Windows-1252 character, and ISO 8859-1 decodes them all.
        return raw.decode("latin-1")


def read_blocks(path: Path | str, block_frames: int) -> Iterator[np.ndarray]:
    """Yield the samples of an audio file as float32 arrays of shape (n, channels).

    Every block has ``block_frames`` frames except the last, and the file is read one
    block at a time. Samples are in [-1, 1] for integer formats, and float formats are
    passed through as stored. Raises InputError on the same files as ``probe``, and
    when the file turns out truncated or damaged while reading or contains NaN or
    infinite samples. The blocks before the damage have been yielded by then.
    """
    if block_frames < 1:
        raise ValueError(f"block_frames must be at least 1, got {block_frames}")
    path = Path(path)
    with _open_for_reading(path) as audio:
        yield from _decode_blocks(path, audio, block_frames)


def _decode_blocks(
    path: Path, audio: sf.SoundFile, block_frames: int
) -> Iterator[np.ndarray]:
    declared = audio.frames
    rate = audio.samplerate
    position = 0
    while position < declared:
        requested = min(block_frames, declared - position)
        try:
            block = audio.read(requested, dtype="float32", always_2d=True)
        except sf.LibsndfileError as err:
            reached = _find_decoded_end(path, position, requested)
            raise InputError(
                path,
                f"cannot decode the audio after second {reached / rate:.3f}: "
                f"the file is truncated or damaged ({_libsndfile_detail(err)})",
            ) from err
        if len(block):
            _check_finite(path, block, position, rate)
            position += len(block)
            yield block
        if len(block) < requested:
            break
    if position < declared:
        _check_shortfall(path, audio.format, position, declared, rate)


def _find_decoded_end(path: Path, start: int, frames: int) -> int:
    """Find the frame where decoding fails in a read of ``frames`` from ``start``.

    The failed read returns no count, because soundfile 0.14 raises from the seek that
    it makes after each read, and libsndfile 1.2.2 fails that seek at the end of the
    decodable part of a truncated FLAC file. So the frames from ``start`` are read
    again with a new handle, in steps that shrink 16-fold after each failure, down to
    one frame. The result can be one frame short of the frames that were decoded.
    """
    reached = start
    limit = start + frames  # the failure lies before this frame
    step = frames
    while step > 1:
        step = max(1, step // 16)
        try:
            with _sound_file(path) as audio:
                try:
                    audio.seek(reached)
                    while reached + step <= limit:
                        count = len(audio.read(step, dtype="float32"))
                        reached += count
                        if count < step:
                            return reached
                except sf.LibsndfileError:
                    limit = reached + step
        except (sf.LibsndfileError, OSError):
            return reached
    return reached


# libsndfile gets a descriptor that Python opened, never a path. soundfile 0.14 encodes
# a path as strict UTF-8, which fails for a name that is not valid UTF-8. libsndfile
# 1.2.2 rejects a path of 1024 bytes or more ("Supplied filename too long").
# Without a path, libsndfile cannot guess headerless audio from a suffix such as .au,
# so it detects formats from the contents alone.
# The open does not block, so that a FIFO without a writer cannot hang it, and the
# file type is checked before anything reads from the descriptor.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | _NONBLOCK


def _open_descriptor(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading; return the descriptor and the file's status.

    The descriptor is in blocking mode when it names a regular file. Raises OSError.
    """
    descriptor = os.open(path, _READ_FLAGS)
    try:
        status = os.fstat(descriptor)
        if _NONBLOCK and stat.S_ISREG(status.st_mode):
            os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor, status


@contextlib.contextmanager
def _sound_file(path: Path) -> Iterator[sf.SoundFile]:
    """Open the regular file ``path`` with libsndfile, without the reader's checks.

    Raises OSError when the file cannot be opened or is not a regular file, and
    sf.LibsndfileError when libsndfile cannot decode it.
    """
    descriptor, status = _open_descriptor(path)
    try:
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with sf.SoundFile(descriptor, closefd=False) as audio:
            yield audio
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _open_for_reading(path: Path) -> Iterator[sf.SoundFile]:
    """Open ``path`` with libsndfile after checking that it is a readable audio file.

    Raises InputError for the files that ``probe`` rejects.
    """
    try:
        descriptor, status = _open_descriptor(path)
    except FileNotFoundError as err:
        raise InputError(path, "file not found") from err
    except OSError as err:
        raise InputError(path, describe_os_error(err)) from err
    try:
        _check_readable(path, descriptor, status)
        audio = _open_audio(path, descriptor)
        with audio:
            yield audio
    finally:
        os.close(descriptor)


def _check_readable(path: Path, descriptor: int, status: os.stat_result) -> None:
    """Raise InputError unless ``descriptor`` is a non-empty, readable regular file."""
    if not stat.S_ISREG(status.st_mode):
        raise InputError(path, "not a regular file")
    if status.st_size == 0:
        raise InputError(path, "empty file (0 bytes)")
    # libsndfile reports a file that it cannot read as "System error", so reading one
    # byte first gives the operating system's reason.
    try:
        os.pread(descriptor, 1, 0)
    except OSError as err:
        raise InputError(path, describe_os_error(err)) from err


def _open_audio(path: Path, descriptor: int) -> sf.SoundFile:
    """Open the checked file ``descriptor`` with libsndfile and check its header."""
    try:
        audio = sf.SoundFile(descriptor, closefd=False)
    except sf.LibsndfileError as err:
        logger.debug("%s: libsndfile cannot open the file: %s", path, err)
        label = _label_for_suffix(path)
        reason = f"cannot decode audio: not a valid {label} file, or truncated"
        if err.code not in GENERIC_OPEN_ERRORS:
            reason += f" ({_libsndfile_detail(err)})"
        raise InputError(path, reason) from err
    try:
        _check_header(path, audio)
    except BaseException:
        audio.close()
        raise
    return audio


def _check_header(path: Path, audio: sf.SoundFile) -> None:
    """Raise InputError for an open file that the reader cannot decode whole."""
    _check_data_chunk(path, audio)
    if audio.frames <= 0:
        raise InputError(path, "no audio samples")
    if audio.frames == UNKNOWN_FRAMES:
        raise InputError(
            path,
            "the header does not state the length, as in a file written to a pipe, "
            "which edgefx cannot read; re-encode it to a regular file",
        )
    if audio.samplerate <= 0 or audio.channels <= 0:
        raise InputError(
            path,
            f"invalid header: {audio.samplerate} Hz, "
            f"{count_noun(audio.channels, 'channel')}",
        )


@dataclass(frozen=True)
class _DataChunk:
    """Sizes of the sample data chunk of a WAV or AIFF file, in bytes."""

    declared: int  # the data size that the header declares
    contained: int  # bytes from the first sample to the end of the file
    byte_rate: int | None  # bytes per second from the WAV fmt chunk, if known


def _check_data_chunk(path: Path, audio: sf.SoundFile) -> None:
    """Raise InputError when the header declares more sample data than the file has.

    libsndfile 1.2.2 takes the length of a WAV or AIFF file from the file size when the
    data chunk runs past the end, so it reads a truncated file as a shorter one.
    Only the chunk headers are read, and placeholder sizes are not checked.
    """
    try:
        with path.open("rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            chunk = _read_data_chunk(handle, file_size)
    except OSError as err:
        raise InputError(path, describe_os_error(err)) from err
    if chunk is None or chunk.declared <= chunk.contained:
        return
    byte_rate = chunk.byte_rate or _pcm_byte_rate(audio)
    if byte_rate:
        declared = f"{chunk.declared / byte_rate:.3f}"
        contained = f"{chunk.contained / byte_rate:.3f}"
        if declared != contained:
            raise InputError(
                path,
                f"truncated: the header declares {declared} s of audio, but the file "
                f"contains {contained} s",
            )
    raise InputError(
        path,
        f"truncated: the header declares {chunk.declared} bytes of audio data, but "
        f"the file contains {chunk.contained} bytes",
    )


def _pcm_byte_rate(audio: sf.SoundFile) -> int | None:
    """Return the bytes per second of a PCM or float subtype, else None."""
    sample_bytes = SAMPLE_BYTES.get(audio.subtype)
    if sample_bytes is None:
        return None
    return sample_bytes * audio.channels * audio.samplerate


def _read_data_chunk(handle: BinaryIO, file_size: int) -> _DataChunk | None:
    """Read the sizes of the sample data chunk of a WAV or AIFF file.

    WAV covers the RIFF, RIFX (big-endian), RF64 and BW64 containers, and AIFF covers
    AIFF and AIFC. Returns None for other formats, for a placeholder size, and when the
    data chunk is not among the first MAX_HEADER_CHUNKS chunks.
    """
    header = handle.read(12)
    if len(header) < 12:
        return None
    container, form = header[:4], header[8:12]
    if form == b"WAVE" and container in (b"RIFF", b"RF64", b"BW64"):
        return _read_wave_data_chunk(
            handle, file_size, "<", has_ds64=container != b"RIFF"
        )
    if form == b"WAVE" and container == b"RIFX":
        return _read_wave_data_chunk(handle, file_size, ">", has_ds64=False)
    if container == b"FORM" and form in (b"AIFF", b"AIFC"):
        return _read_aiff_data_chunk(handle, file_size)
    return None


def _read_wave_data_chunk(
    handle: BinaryIO, file_size: int, endian: str, has_ds64: bool
) -> _DataChunk | None:
    ds64_data_size: int | None = None
    byte_rate: int | None = None
    for chunk_id, size, body in _chunk_headers(handle, endian):
        if chunk_id == b"ds64" and has_ds64:
            # The RIFF size and the data size, 64-bit little-endian in every RF64 file.
            fields = handle.read(16)
            if len(fields) == 16:
                ds64_data_size = struct.unpack("<QQ", fields)[1]
        elif chunk_id == b"fmt ":
            # Format tag, channels, sample rate and bytes per second.
            fields = handle.read(12)
            if len(fields) == 12:
                byte_rate = struct.unpack(endian + "HHII", fields)[3] or None
        elif chunk_id == b"data":
            if has_ds64 and size == RF64_SIZE_IN_DS64:
                if ds64_data_size is None or ds64_data_size in PLACEHOLDER_SIZES_64:
                    return None
                declared = ds64_data_size
            elif size in PLACEHOLDER_SIZES_32:
                return None
            else:
                declared = size
            return _DataChunk(declared, file_size - body, byte_rate)
    return None


def _read_aiff_data_chunk(handle: BinaryIO, file_size: int) -> _DataChunk | None:
    for chunk_id, size, body in _chunk_headers(handle, ">"):
        if chunk_id != b"SSND":
            continue
        # The SSND body starts with a 32-bit offset to the first sample and a 32-bit
        # block size, which the chunk size includes.
        if size in PLACEHOLDER_SIZES_32 or size < 8:
            return None
        fields = handle.read(4)
        if len(fields) < 4:
            return None
        (sample_offset,) = struct.unpack(">I", fields)
        first_sample = body + 8 + sample_offset
        return _DataChunk(
            size - 8 - sample_offset, max(0, file_size - first_sample), None
        )
    return None


def _chunk_headers(handle: BinaryIO, endian: str) -> Iterator[tuple[bytes, int, int]]:
    """Yield the id, size and body offset of each chunk after the 12-byte file header.

    ``handle`` is left at the start of the body, so the caller can read it before
    asking for the next chunk. Chunks are padded to an even size.
    """
    offset = 12
    for _ in range(MAX_HEADER_CHUNKS):
        handle.seek(offset)
        header = handle.read(8)
        if len(header) < 8:
            return
        chunk_id, size = struct.unpack(endian + "4sI", header)
        yield chunk_id, size, offset + 8
        offset += 8 + size + (size & 1)


def _label_for_suffix(path: Path) -> str:
    """Return the format label that the suffix of ``path`` suggests, or "audio"."""
    return FORMAT_LABELS.get(_FORMAT_NAMES.get(path.suffix.lower(), ""), "audio")


def _check_finite(path: Path, block: np.ndarray, start: int, rate: int) -> None:
    """Raise InputError when ``block``, starting at frame ``start``, has NaN or inf."""
    finite = np.isfinite(block).all(axis=1)
    if finite.all():
        return
    first = start + int(np.argmin(finite))
    raise InputError(
        path, f"contains NaN or infinite samples at second {first / rate:.3f}"
    )


def _check_shortfall(
    path: Path, major_format: str, position: int, declared: int, rate: int
) -> None:
    """Raise InputError when the audio ended before the length in the header."""
    if major_format == "MP3" and declared - position <= declared * MP3_LENGTH_TOLERANCE:
        logger.debug(
            "%s: the MP3 decoded %d frames short of the estimated %d",
            path,
            declared - position,
            declared,
        )
        return
    raise InputError(
        path,
        f"the audio ends at second {position / rate:.3f} of the "
        f"{declared / rate:.3f} that the header declares: the file is truncated",
    )


def _libsndfile_detail(err: sf.LibsndfileError) -> str:
    """Return libsndfile's message for ``err`` as a phrase, without the final period."""
    detail = err.error_string.strip().removeprefix("Error : ").strip()
    return detail.rstrip(".") or f"libsndfile error {err.code}"


# --------------------------------------------------------------------------------------
# Output formats


def major_format(format: str) -> str:
    """Return the soundfile major format for a format name ("wav") or major ("WAV").

    Raises UsageError for a format that is not an output format here.
    """
    name = format.lower()
    if name not in SUFFIX_FOR_FORMAT:
        supported = ", ".join(SUFFIX_FOR_FORMAT)
        raise UsageError(f"unsupported audio format {format!r}; use one of {supported}")
    return name.upper()


@functools.cache
def opus_writable() -> bool:
    """Return whether this libsndfile writes Ogg Opus that it reads back whole.

    libsndfile lists Opus only when it was built with libopus, and the check writes
    20 ms of silence to memory and reads it back, so that a build that lists Opus but
    fails to write it is not trusted.
    """
    if "OPUS" not in sf.available_subtypes("OGG"):
        return False
    rate = 48000
    samples = np.zeros((rate // 50, 1), np.float32)
    buffer = io.BytesIO()
    try:
        with sf.SoundFile(buffer, "w", rate, 1, format="OGG", subtype="OPUS") as audio:
            audio.write(samples)
        buffer.seek(0)
        with sf.SoundFile(buffer) as audio:
            decoded = audio.read(dtype="float32")
    except (sf.LibsndfileError, RuntimeError) as err:
        logger.debug("libsndfile lists Opus but cannot write it: %s", err)
        return False
    return len(decoded) == len(samples)


@dataclass(frozen=True)
class _Detected:
    """The format that libsndfile detects in a file, as soundfile names it."""

    format: str
    subtype: str
    samplerate: int


def output_suffix(path: Path) -> str:
    """Return the output suffix that keeps the format of the audio file ``path``.

    libsndfile detects the format from the contents. The input's suffix is kept when
    it names that format, and for .opus when the file contains Opus that this
    libsndfile can write. Otherwise the suffix becomes the standard one of the
    detected format, or .wav where edgefx cannot write that format, and one warning
    names both formats. A file that libsndfile cannot open keeps a known suffix and
    gets .wav otherwise, because reading it fails later with the reason.
    """
    suffix = path.suffix.lower()
    unreadable_suffix = path.suffix if suffix in FORMAT_FOR_SUFFIX else ".wav"
    try:
        with _sound_file(path) as audio:
            info = _Detected(audio.format, audio.subtype, audio.samplerate)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return unreadable_suffix
    name = _FORMAT_NAME_FOR_MAJOR.get(info.format)
    if name is None or name not in SUFFIX_FOR_FORMAT:
        logger.warning(
            "%s: the file contains %s audio, which edgefx cannot write, so the output "
            "is WAV (.wav)",
            path,
            FORMAT_LABELS.get(name or "", info.format),
        )
        return ".wav"
    if info.subtype == "OPUS" and ogg_subtype("OPUS", info.samplerate) != "OPUS":
        reason = (
            f"Opus does not support {info.samplerate} Hz"
            if opus_writable()
            else "this libsndfile cannot write Opus"
        )
        vorbis_suffix = path.suffix if suffix in (".ogg", ".oga") else ".ogg"
        logger.warning(
            "%s: %s, so the output is Ogg Vorbis (%s)", path, reason, vorbis_suffix
        )
        return vorbis_suffix
    if suffix == ".opus" and info.subtype != "OPUS":
        codec = OGG_CODEC_LABELS.get(info.subtype, info.subtype)
        logger.warning(
            "%s: the file contains Ogg %s audio, not the Opus that the suffix .opus "
            "names, so the output is Ogg %s (.ogg)",
            path,
            codec,
            codec,
        )
        return ".ogg"
    if _FORMAT_NAMES.get(suffix) == name:
        return path.suffix
    label = FORMAT_LABELS[name]
    standard = SUFFIX_FOR_FORMAT[name]
    named = f"the suffix {path.suffix!r}" if path.suffix else "no suffix"
    logger.warning(
        "%s: the file contains %s audio but has %s, so the output is %s (%s)",
        path,
        label,
        named,
        label,
        standard,
    )
    return standard


def ogg_subtype(subtype: str, rate: int) -> str:
    """Return the Ogg codec that an output of a ``subtype`` input at ``rate`` Hz gets.

    Opus stays Opus where ``opus_writable`` and Opus supports the rate. Every other
    input becomes Vorbis.
    """
    if subtype == "OPUS" and rate in OPUS_RATES and opus_writable():
        return "OPUS"
    return "VORBIS"


def output_subtype(input_info: AudioInfo, out_format: str, suffix: str = "") -> str:
    """Return the subtype that keeps the input's sample format in ``out_format``.

    The input's subtype is kept when the output format can store it. Otherwise the
    nearest one it can store is chosen: float into FLAC becomes PCM_24, and decoded
    lossy audio (Vorbis, Opus, MP3) becomes PCM_16 in PCM formats. OGG output is
    Vorbis, except that Opus stays Opus at the rates Opus supports where
    ``opus_writable``, and MP3 output is MPEG Layer III. ``suffix`` is the output's
    suffix: for .aifc, 8-bit signed PCM becomes 8-bit unsigned, because libsndfile
    writes signed 8-bit only as plain AIFF, not as AIFF-C.
    """
    major = major_format(out_format)
    subtype = input_info.subtype
    if major == "OGG":
        return ogg_subtype(subtype, input_info.rate)
    if major == "MP3":
        return "MPEG_LAYER_III"
    if major == "AIFF" and suffix.lower() == ".aifc" and subtype == "PCM_S8":
        return "PCM_U8"  # the same 8-bit grid, offset by 128
    if subtype in LOSSY_SUBTYPES:
        candidates: tuple[str, ...] = ("PCM_16",)
    else:
        candidates = (subtype, *SUBTYPE_FALLBACKS.get(subtype, ("PCM_16",)))
    for candidate in candidates:
        if sf.check_format(major, candidate):
            return candidate
    return str(sf.default_subtype(major))


# --------------------------------------------------------------------------------------
# Writing


# ID3v2.4 text frames for the tags of an MP3 file, keyed by soundfile tag name. These
# are the frames that libsndfile 1.2.2 maps back to its tags when it reads an MP3 file.
# The comment goes into a COMM frame, and libsndfile reads no frame as a license.
ID3_TEXT_FRAMES: dict[str, bytes] = {
    "title": b"TIT2",
    "artist": b"TPE1",
    "album": b"TALB",
    "date": b"TDRC",
    "tracknumber": b"TRCK",
    "genre": b"TCON",
    "copyright": b"TCOP",
    "software": b"TSSE",
}
MP3_TAGS = frozenset({*ID3_TEXT_FRAMES, "comment"})

# ID3v2 sizes are synchsafe integers: 28 bits in four bytes whose top bits are zero.
MAX_ID3_SIZE = 2**28 - 1

# Text tags that each format stores, for the formats that do not store all ten. FLAC
# and Ogg files from libsndfile 1.2.2 store all ten, and AU files none (libsndfile
# raises an error for each). libsndfile drops the others without an error, except in
# MP3 files, whose tag edgefx writes itself.
STORED_TAGS: dict[str, frozenset[str]] = {
    "MP3": MP3_TAGS,
    "WAV": frozenset(
        {
            "title",
            "copyright",
            "software",
            "artist",
            "comment",
            "date",
            "album",
            "tracknumber",
            "genre",
        }
    ),
    "AIFF": frozenset({"title", "copyright", "software", "artist", "comment"}),
}

# Maximum bytes of one tag value that libsndfile 1.2.2 reads back from a WAV or AIFF
# file that it wrote, measured by writing one tag of growing length with soundfile.
# It skips a longer WAV tag together with every tag after it, and cannot open an AIFF
# file with a longer one. A WAV tag of about 50 KiB can also overflow libsndfile's
# 100 KiB header buffer, and then it writes a header without the data chunk.
MAX_TAG_BYTES: dict[str, int] = {"WAV": 2045, "AIFF": 8189}

# Integer PCM subtypes: bits per sample, and the array dtype handed to soundfile. From
# int16 and int32 arrays libsndfile 1.2.2 converts to these subtypes by a bit shift
# alone, so samples already on the subtype's grid are stored exactly. From float it
# rounds down to the grid in WAV, AIFF and AU files (a mean error of half a step).
PCM_GRIDS: dict[str, tuple[int, type[np.signedinteger]]] = {
    "PCM_U8": (8, np.int16),
    "PCM_S8": (8, np.int16),
    "PCM_16": (16, np.int16),
    "PCM_24": (24, np.int32),
    "PCM_32": (32, np.int32),
}

# PCM subtypes that libsndfile 1.2.2 writes as AIFF-C when asked for big-endian
# samples (compression types "twos", "in24" and "in32"), and as plain AIFF otherwise.
# It writes PCM_U8, FLOAT, DOUBLE, ULAW and ALAW as AIFF-C always, and PCM_S8 never.
AIFC_BIG_ENDIAN_SUBTYPES = frozenset({"PCM_16", "PCM_24", "PCM_32"})


def quantize(samples: np.ndarray, subtype: str) -> np.ndarray:
    """Round float samples in [-1, 1] to the nearest step of an integer subtype.

    Returns an int16 or int32 array for a subtype in PCM_GRIDS, with full scale at
    2**(bits - 1) steps and +1.0 clipped to the largest step, which is how libsndfile
    scales these subtypes when it reads them as float. Other subtypes get ``samples``
    unchanged.
    """
    grid = PCM_GRIDS.get(subtype)
    if grid is None:
        return samples
    bits, dtype = grid
    full_scale = 2.0 ** (bits - 1)
    steps = np.rint(samples.astype(np.float64) * full_scale)
    np.clip(steps, -full_scale, full_scale - 1, out=steps)
    shift = 8 * np.dtype(dtype).itemsize - bits
    return (steps * 2.0**shift).astype(dtype)


# Start of the reason when a system call fails to write the output, so that the
# failure line distinguishes it from a failure to read the input.
CANNOT_WRITE = "cannot write the output"

# libsndfile's error code for a failed system call (SF_ERR_SYSTEM).
SYSTEM_ERROR = 2


def _cannot_write(err: OSError) -> str:
    """Return the reason for an output that a system call failed to write."""
    return f"{CANNOT_WRITE}: {describe_os_error(err)}"


def _write_all(descriptor: int, data: bytes) -> None:
    """Write all of ``data`` to ``descriptor``, which os.write may do in parts."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def _synchsafe(size: int) -> bytes:
    """Encode ``size`` (at most MAX_ID3_SIZE) as an ID3v2 synchsafe integer."""
    return bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))


class AudioWriter:
    """Context manager that writes an audio file atomically, block by block.

    The blocks go to a temporary file in the output's directory, named with
    fsutil.TEMP_PREFIX, which replaces ``path`` when the ``with`` block ends without an
    exception. For an ObjectPath, the temporary file is in the system's temporary
    directory and is uploaded as the object, then removed. On any exception,
    KeyboardInterrupt included, the temporary file is removed and ``path`` is left as
    it was. ``format`` is a format name ("wav") or a
    soundfile major format ("WAV") and defaults to the one of the path's suffix.
    ``subtype`` defaults to OPUS for a path named .opus, and otherwise to soundfile's
    default for the format (PCM_16 for WAV).

    ``tags`` are text tags to write, as AudioInfo.tags lists them. A tag that the
    format cannot store, or that is longer than MAX_TAG_BYTES, is left out with a
    warning. An MP3 file gets an ID3v2.4 tag in UTF-8 with exactly the given tags, and
    no tag when none is given. Integer PCM subtypes are rounded to the nearest step.
    A path ending in .aifc gets AIFF-C, except for PCM_S8, which libsndfile writes
    only as plain AIFF.

    Raises UsageError for an unknown format or a subtype that the format cannot store,
    ValueError for an unknown tag name, and OutputError when the file cannot be
    written.
    """

    def __init__(
        self,
        path: Path | str | ObjectPath,
        rate: int,
        channels: int,
        format: str | None = None,
        subtype: str | None = None,
        tags: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.path = path if isinstance(path, ObjectPath) else Path(path)
        if format is None:
            suffix_format = FORMAT_FOR_SUFFIX.get(self.path.suffix.lower())
            if suffix_format is None:
                supported = ", ".join(FORMAT_FOR_SUFFIX)
                raise UsageError(
                    f"{self.path}: unknown audio suffix {self.path.suffix!r}; "
                    f"use one of {supported} or give the format"
                )
            format = suffix_format
        self.format = major_format(format)
        if (
            subtype is None
            and self.format == "OGG"
            and self.path.suffix.lower() == ".opus"
        ):
            subtype = "OPUS"
        self.subtype = (subtype or str(sf.default_subtype(self.format))).upper()
        if not sf.check_format(self.format, self.subtype):
            raise UsageError(f"{self.format} cannot store the subtype {self.subtype}")
        if rate < 1:
            raise ValueError(f"rate must be at least 1 Hz, got {rate}")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        unknown = [name for name, _ in tags if name not in sf._str_types]
        if unknown:
            known = ", ".join(sf._str_types)
            raise ValueError(f"unknown tag names {unknown}; use {known}")
        self.rate = rate
        self.channels = channels
        self.tags = tags
        self.endian = self._choose_endian()
        self.frames = 0  # frames written so far
        self._entered = False
        self._descriptor = -1
        self._temporary: Path | None = None
        self._file: sf.SoundFile | None = None

    def _choose_endian(self) -> str:
        """Return the soundfile endian setting: BIG where AIFF-C needs it, else FILE."""
        if self.format != "AIFF" or self.path.suffix.lower() != ".aifc":
            return "FILE"
        if self.subtype in AIFC_BIG_ENDIAN_SUBTYPES:
            return "BIG"
        if self.subtype == "PCM_S8":
            logger.warning(
                "%s: libsndfile writes 8-bit signed PCM only as plain AIFF, so the "
                "file is AIFF, not AIFF-C; write PCM_U8 for AIFF-C",
                self.path,
            )
        return "FILE"

    def __enter__(self) -> AudioWriter:
        if self._entered:
            raise RuntimeError("an AudioWriter can be entered only once")
        self._entered = True
        problem = self._codec_limit_problem()
        if problem is not None:
            raise OutputError(
                self.path,
                f"cannot write {self.format} {self.subtype} at {self.rate} Hz "
                f"with {count_noun(self.channels, 'channel')}: {problem}",
            )
        try:
            if isinstance(self.path, ObjectPath):
                # NOTE: a killed run leaves this file in the temporary directory,
                # where remove_stale_temporaries does not look.
                folder = None
            else:
                folder = self.path.parent
                folder.mkdir(parents=True, exist_ok=True)
            with interrupts_deferred():
                self._descriptor, name = tempfile.mkstemp(
                    prefix=TEMP_PREFIX, suffix=self.path.suffix, dir=folder
                )
                self._temporary = Path(name)
        except OSError as err:
            raise OutputError(self.path, _cannot_write(err)) from err
        except BaseException:
            # A signal held back above is raised as the block ends, before any
            # __exit__ could run, so the temporary file is removed here.
            self._discard()
            raise
        try:
            if self.format == "MP3":
                # libsndfile takes the descriptor's offset as the start of the file
                # it writes, so the MP3 stream follows the tag.
                _write_all(self._descriptor, self._id3_tag())
        except OSError as err:
            self._discard()
            raise OutputError(self.path, _cannot_write(err)) from err
        except BaseException:
            self._discard()
            raise
        try:
            self._file = sf.SoundFile(
                self._descriptor,
                "w",
                samplerate=self.rate,
                channels=self.channels,
                format=self.format,
                subtype=self.subtype,
                endian=self.endian,
                closefd=False,
            )
        except sf.LibsndfileError as err:
            # libsndfile writes the header as it opens the file, and reports a failed
            # write(2) there only as "System error".
            reason = self._retry_end_of_file() if err.code == SYSTEM_ERROR else None
            self._discard()
            if reason is None:
                reason = (
                    f"cannot write {self.format} {self.subtype} at {self.rate} Hz "
                    f"with {count_noun(self.channels, 'channel')}: "
                    f"{_libsndfile_detail(err)}"
                )
            raise OutputError(self.path, reason) from err
        except BaseException:
            self._discard()
            raise
        try:
            if self.format != "MP3":
                self._write_tags(self._file)
        except BaseException:
            self._discard()
            raise
        return self

    def _codec_limit_problem(self) -> str | None:
        """Return why libsndfile would crash writing this file, or None.

        Checked before any file is created, because the crash ends the whole process
        and no exception handler runs.
        """
        if self.format != "OGG":
            return None
        if self.channels > OGG_MAX_CHANNELS:
            return f"Ogg files store at most {OGG_MAX_CHANNELS} channels; write WAV"
        if self.subtype == "VORBIS" and self.rate > VORBIS_MAX_RATE:
            return (
                f"libsndfile writes Ogg Vorbis at up to {VORBIS_MAX_RATE} Hz; "
                "write WAV or FLAC"
            )
        return None

    def _id3_tag(self) -> bytes:
        """Build an ID3v2.4 tag, in UTF-8, of the tags; return b"" when none is kept.

        libsndfile 1.2.2 writes MP3 tags through LAME, always with an ID3v1 tag at
        the end, whose unset fixed fields read back as empty album, date and comment
        tags. So libsndfile gets no tags, and this tag contains exactly the given ones.
        """
        frames: list[bytes] = []
        size = 0
        for name, value in self.tags:
            if not value:
                continue  # an empty value is not written
            text = value.encode("utf-8", errors="replace")
            frame_id = ID3_TEXT_FRAMES.get(name)
            if frame_id is not None:
                body = b"\x03" + text  # text encoding 3 is UTF-8
            elif name == "comment":
                # UTF-8, the ISO 639-2 language "und" (undetermined) and an empty
                # description ending in NUL come before the text.
                frame_id = b"COMM"
                body = b"\x03und\x00" + text
            else:
                stored = ", ".join(sorted(MP3_TAGS))
                self._warn_tag_not_kept(name, f"MP3 files store only {stored}")
                continue
            # A frame is its id, its body size, two flag bytes and the body.
            if size + 10 + len(body) > MAX_ID3_SIZE:
                self._warn_tag_not_kept(
                    name, f"an ID3v2 tag holds at most {MAX_ID3_SIZE} bytes"
                )
                continue
            frame = frame_id + _synchsafe(len(body)) + b"\x00\x00" + body
            frames.append(frame)
            size += len(frame)
        if not frames:
            return b""
        # "ID3", version 2.4.0, no flags, and the size of the frames.
        return b"ID3\x04\x00\x00" + _synchsafe(size) + b"".join(frames)

    def _write_tags(self, file: sf.SoundFile) -> None:
        # Called right after the file is opened, so every tag is set before the first
        # sample is written.
        stored_names = STORED_TAGS.get(self.format)
        limit = MAX_TAG_BYTES.get(self.format)
        for name, value in self.tags:
            if stored_names is not None and name not in stored_names:
                stored = ", ".join(sorted(stored_names))
                self._warn_tag_not_kept(
                    name, f"{self.format} files from libsndfile store only {stored}"
                )
                continue
            data = value.encode("utf-8", errors="replace")
            if limit is not None and len(data) > limit:
                self._warn_tag_not_kept(
                    name,
                    f"its {len(data)} bytes exceed the {limit} bytes that libsndfile "
                    f"reads back from a {self.format} tag",
                )
                continue
            # NOTE: soundfile 0.14 encodes a tag given as text in UTF-8, so the bytes
            # go to libsndfile through soundfile's private cffi handles.
            error = sf._snd.sf_set_string(file._file, sf._str_types[name], data)
            if error:
                detail = _libsndfile_detail(sf.LibsndfileError(error))
                self._warn_tag_not_kept(
                    name, f"{self.format} cannot store it ({detail})"
                )

    def _warn_tag_not_kept(self, name: str, reason: str) -> None:
        logger.warning("%s: the %s tag was not kept: %s", self.path, name, reason)

    def write(self, block: np.ndarray) -> None:
        """Write float samples of shape (n, channels), clipped to [-1, 1].

        A mono writer also takes shape (n,). Raises ValueError for another shape, for
        NaN samples and for a dtype that is not floating point, and OutputError when the
        file cannot be written.
        """
        if self._file is None:
            raise RuntimeError("AudioWriter.write must be called inside its with block")
        samples = self._validated(block)
        if not len(samples):
            return
        self._check_size_limit(len(samples))
        # libsndfile stores values above full scale unchanged in FLOAT and DOUBLE
        # files, and Vorbis and MP3 encode them too. Clipping here gives every format
        # the same full scale.
        clipped = np.clip(samples, -1.0, 1.0)
        try:
            self._file.write(quantize(clipped, self.subtype))
        except sf.LibsndfileError as err:
            raise OutputError(self.path, self._write_failure(err)) from err
        self.frames += len(clipped)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._commit()
        except BaseException:
            self._discard()
            raise

    def _validated(self, block: np.ndarray) -> np.ndarray:
        samples = np.asarray(block)
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(
                f"expected float samples in [-1, 1], got dtype {samples.dtype}"
            )
        if samples.ndim == 1 and self.channels == 1:
            samples = samples[:, np.newaxis]
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(
                f"expected a block of shape (n, {self.channels}), got {samples.shape}"
            )
        if np.isnan(samples).any():
            raise ValueError("the block contains NaN samples")
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _check_size_limit(self, new_frames: int) -> None:
        limit = MAX_DATA_BYTES.get(self.format)
        sample_bytes = SAMPLE_BYTES.get(self.subtype)
        if limit is None or sample_bytes is None:
            return
        data_bytes = (self.frames + new_frames) * self.channels * sample_bytes
        if data_bytes > limit:
            raise OutputError(
                self.path,
                f"{self.format} files store at most {limit} bytes of samples; "
                "use FLAC for longer audio",
            )

    def _write_failure(self, err: sf.LibsndfileError) -> str:
        """Return the reason why libsndfile failed to write, from the system if it can.

        libsndfile reports a failed write(2) only as "System error", so one byte is
        written at the end of the temporary file to get the errno again.
        """
        reason = self._retry_end_of_file()
        return reason or f"{CANNOT_WRITE}: {_libsndfile_detail(err)}"

    def _retry_end_of_file(self) -> str | None:
        """Write one byte past the end of the temporary file and truncate it again.

        Returns the reason when that write fails, such as "cannot write the output: no
        space left on the device", and None when it succeeds. The file offset that
        libsndfile writes at is restored afterwards.
        """
        try:
            offset = os.lseek(self._descriptor, 0, os.SEEK_CUR)
            size = os.fstat(self._descriptor).st_size
        except OSError as err:
            return _cannot_write(err)
        try:
            os.lseek(self._descriptor, size, os.SEEK_SET)
            os.write(self._descriptor, b"\0")
            os.ftruncate(self._descriptor, size)
        except OSError as err:
            return _cannot_write(err)
        finally:
            with contextlib.suppress(OSError):
                os.lseek(self._descriptor, offset, os.SEEK_SET)
        return None

    def _commit(self) -> None:
        assert self._file is not None and self._temporary is not None
        if self.frames == 0:
            raise OutputError(
                self.path, "no audio samples were written, so no output is created"
            )
        file, self._file = self._file, None
        try:
            file.close()
        except sf.LibsndfileError as err:
            raise OutputError(self.path, self._write_failure(err)) from err
        # libsndfile 1.2.2 returns success from sf_close even when the final write of
        # buffered FLAC, Vorbis or MP3 data fails, so the end of the file is tested
        # again.
        # NOTE: an output that fills the disk to the last byte therefore fails as full.
        reason = self._retry_end_of_file()
        if reason is not None:
            raise OutputError(self.path, reason)
        try:
            os.fsync(self._descriptor)
            os.close(self._descriptor)
            self._descriptor = -1
        except OSError as err:
            raise OutputError(self.path, _cannot_write(err)) from err
        self._check_frames_written()
        if isinstance(self.path, ObjectPath):
            # The file is uploaded only once it is complete and checked. When the
            # upload fails, __exit__ removes the temporary file.
            upload_file(self._temporary, self.path)
            self._discard()
            return
        try:
            os.chmod(self._temporary, 0o666 & ~UMASK)
            os.replace(self._temporary, self.path)
        except OSError as err:
            raise OutputError(self.path, _cannot_write(err)) from err
        self._temporary = None

    def _check_frames_written(self) -> None:
        """Raise OutputError unless the closed temporary file has every frame."""
        assert self._temporary is not None
        try:
            with _sound_file(self._temporary) as audio:
                frames = audio.frames
        except sf.LibsndfileError as err:
            raise OutputError(
                self.path,
                f"the written file cannot be read back: {_libsndfile_detail(err)}",
            ) from err
        except OSError as err:
            reason = describe_os_error(err)
            raise OutputError(
                self.path, f"the written file cannot be read back: {reason}"
            ) from err
        if frames != self.frames:
            raise OutputError(
                self.path,
                f"the written file is incomplete: it reads back with {frames} of "
                f"{self.frames} frames",
            )

    def _discard(self) -> None:
        """Close and remove the temporary file, ignoring errors."""
        with interrupts_deferred():
            self._discard_now()

    def _discard_now(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        if self._descriptor >= 0:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = -1
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                self._temporary.unlink()
            self._temporary = None
