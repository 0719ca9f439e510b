"""Ingest readers: one module per input format, each an iterable of :class:`Record`.

:func:`open_reader` picks a reader from ``format`` or, with ``"auto"``, from the input (the rule
is :func:`~data_prep.readers.detect.detect_format`): a folder holding ``*.tar`` files is
img2dataset output, a folder of class sub-folders without any ``.txt`` is ``imagefolder``,
another folder is image + ``.txt`` pairs, ``.csv``/``.tsv``/``.parquet`` are tables, ``.jsonl`` is
JSON Lines, ``.json`` is COCO captions. Whatever a reader fails on (a file of another format, a
missing column, a broken tar) is raised as :class:`ReaderError` naming the file, the format
tried, what that format expects, and what the path holds with its detected format.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# each reader module registers its format on import (data_prep.readers.registry), in the order
# --format lists them
from data_prep.readers import folder, imagefolder, table, jsonl, coco, img2dataset  # noqa: F401, E401
from data_prep.readers.base import ByteRange, ImageSource, LayoutError, Reader, ReaderError, Record, read_image_bytes
from data_prep.readers.detect import describe_found, detect_format
from data_prep.readers.ranges import RecordRange, read_reader_range, reader_ranges
from data_prep.readers.registry import DEFAULT_TEMPLATE, READERS, ReaderOptions, reader_names

# What a reader raises on input it cannot parse (JSON/CSV/Arrow errors are ValueErrors, a bad tar
# a TarError, a malformed COCO entry a KeyError or TypeError).
READ_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError, OSError, tarfile.TarError)


def layout_mismatch(path: str | Path, format: str) -> str:
    """``FORMAT expects LAYOUT; found WHAT IS THERE (detected format: X)`` plus a ``--format`` hint
    when the detected format is another one."""
    try:
        detected: str | None = detect_format(path)
    except (ValueError, OSError):
        detected = None
    hint = f"; try --format {detected}" if detected and detected != format else ""
    return f"{format} expects {READERS[format].layout}; found {describe_found(path)}{hint}"


def reader_error(path: str | Path, format: str, cause: BaseException | str) -> ReaderError:
    """A :class:`ReaderError`: ``path`` could not be read as ``format`` because of ``cause``."""
    why = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
    why = why.replace(f"{path}: ", "", 1)  # the path leads the message already
    return ReaderError(f"{path}: cannot read as {format} ({why}); {layout_mismatch(path, format)}")


@dataclass
class OpenedInput:
    """One input path, the format it is read as, and its reader; iterating it yields the
    reader's records and turns a parse failure into a :class:`ReaderError`."""

    path: Path
    format: str
    reader: Reader

    @property
    def classnames(self) -> list[str] | None:
        """The class names of a class-per-folder input (label i = line i), else None."""
        return getattr(self.reader, "classnames", None)

    def __iter__(self) -> Iterator[Record]:
        try:
            yield from self.reader
        except ReaderError:
            raise
        except READ_ERRORS as err:
            raise reader_error(self.path, self.format, err) from err

    def ranges(self, size: int) -> list[RecordRange]:
        """The input cut into ranges of ``size`` records (``data_prep.readers.ranges``)."""
        try:
            return reader_ranges(self.reader, size)
        except ReaderError:
            raise
        except READ_ERRORS as err:
            raise reader_error(self.path, self.format, err) from err

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        """The records of one range, streamed."""
        try:
            yield from read_reader_range(self.reader, rng)
        except ReaderError:
            raise
        except READ_ERRORS as err:
            raise reader_error(self.path, self.format, err) from err


def open_reader(path: str | Path, format: str = "auto", *, image_column: str = "image",
                caption_column: str = "caption", image_root: str | Path | None = None,
                caption_template: str = DEFAULT_TEMPLATE, class_names: str | Path | None = None) -> OpenedInput:
    """A reader over ``path`` (options apply where the format has them)."""
    if format not in reader_names():
        raise ValueError(f"unknown input format {format!r}; choose one of {', '.join(reader_names())}")
    path = Path(path)
    if format == "auto":
        format = detect_format(path)
    elif not path.exists():
        raise FileNotFoundError(f"input not found: {path} (--format {format} expects {READERS[format].layout})")
    reader_format = READERS[format]
    if path.is_dir() != reader_format.directory:
        raise reader_error(path, format, f"it is a {'directory' if path.is_dir() else 'file'}")
    options = ReaderOptions(image_column, caption_column, image_root, caption_template, class_names)
    try:
        reader = reader_format.build(path, options)
    except LayoutError as err:
        raise reader_error(path, format, str(err)) from err
    return OpenedInput(path, format, reader)


__all__ = ["READERS", "ByteRange", "ImageSource", "OpenedInput", "Reader", "ReaderError", "Record", "RecordRange",
           "describe_found", "detect_format", "layout_mismatch", "open_reader", "read_image_bytes", "reader_error",
           "reader_names"]
