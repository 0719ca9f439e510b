"""The one interface every ingest reader implements: an iterable of :class:`Record`.

A reader only *finds* samples: it yields where the image is (bytes, a path, or a byte range
inside a file such as a tar member) and the raw captions; decoding, validation, resizing and
writing happen later in :mod:`data_prep.ingest`. Captions may be ``str`` or raw ``bytes``;
undecodable text (bytes that are not UTF-8, or ``str`` holding surrogate escapes) is detected
and counted downstream, never here. A reader that already knows a record is bad (a missing
image, an unparsable row) yields it with ``error`` set to a skip reason so it is counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Union

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Meta key of a record's integer class label (class-per-folder input); ingest writes it as ``cls``.
LABEL_KEY = "label"


class ReaderError(ValueError):
    """An input a reader cannot read; the message names the file, the format tried and the
    format detected from the path."""


class LayoutError(ReaderError):
    """Raised by a reader's build step: the input lacks the layout of the format (the message
    says what is missing); ``open_reader`` adds the path, the format and what the path holds."""


@dataclass(frozen=True)
class ByteRange:
    """``size`` bytes at ``offset`` in ``path`` (e.g. a member's data inside an uncompressed tar)."""

    path: str
    offset: int
    size: int


ImageSource = Union[bytes, str, ByteRange, None]


@dataclass
class Record:
    """One candidate sample: ``source_id`` (unique within the input, e.g. a relative path),
    ``image`` (bytes, a file path, a :class:`ByteRange`, or None when missing), ``captions``
    (several for COCO; str or raw bytes), reader ``meta`` (JSON-serialisable), and ``error``:
    a skip reason the reader already found (e.g. ``missing_file``), else None."""

    source_id: str
    image: ImageSource
    captions: list[Union[str, bytes]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Reader(Protocol):
    """Anything iterable over :class:`Record` in a deterministic order."""

    def __iter__(self) -> Iterator[Record]: ...


def resolve_image(value: Any, root: Path) -> ImageSource:
    """A table/JSON image field as an ImageSource: bytes pass through, paths are resolved
    against ``root`` (absolute paths stay), empty values become None."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    text = str(value).strip()
    if not text:
        return None
    return str(root / text) if not os.path.isabs(text) else text


def missing_reason(image: ImageSource) -> str | None:
    """``missing_file`` when ``image`` is None or a path that does not exist, else None."""
    if image is None:
        return "missing_file"
    if isinstance(image, str) and not os.path.isfile(image):
        return "missing_file"
    return None


def read_image_bytes(image: ImageSource) -> bytes:
    """The encoded image bytes of an ImageSource (raises OSError when it cannot be read)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str):
        with open(image, "rb") as handle:
            return handle.read()
    if isinstance(image, ByteRange):
        with open(image.path, "rb") as handle:
            handle.seek(image.offset)
            data = handle.read(image.size)
        if len(data) != image.size:
            raise OSError(f"{image.path}: short read at offset {image.offset}")
        return data
    raise FileNotFoundError("no image")


def describe(image: ImageSource, source_id: str) -> str:
    """A human name for a record's image, used in ``--strict`` errors."""
    if isinstance(image, str):
        return image
    if isinstance(image, ByteRange):
        return f"{image.path}@{image.offset}"
    return source_id
