"""Ingest readers by name: each reader module registers its format here with what it reads.

A :class:`ReaderFormat` carries the name ``--format`` takes, the layout in words (for errors),
whether its input is a directory, how ``--format auto`` recognises its input (``claims``, asked
in descending ``priority``), and how to build the reader from a path and the shared options.
Adding a reader is one module that calls :func:`register_reader` plus its import in
``data_prep/readers/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

DEFAULT_TEMPLATE = "a photo of a {}."
"""Caption of a class-per-folder image; ``{}`` is the class name."""


@dataclass(frozen=True)
class ReaderOptions:
    """The ingest options readers take (each reader uses the ones it needs)."""

    image_column: str = "image"
    caption_column: str = "caption"
    image_root: str | Path | None = None
    caption_template: str = DEFAULT_TEMPLATE
    class_names: str | Path | None = None
    """imagefolder: a file naming the class folders (``data_prep.readers.imagefolder.read_class_names``)."""


@dataclass(frozen=True)
class ReaderFormat:
    name: str
    layout: str
    """What the format expects, in words: 'a .jsonl file, one JSON object per line ...'."""
    directory: bool
    """True when the input is a directory, False when it is one file."""
    build: Callable[[Path, ReaderOptions], Any]
    """The reader (an iterable of Record) over a path of this format."""
    claims: Callable[[Path], bool]
    """True when ``--format auto`` should read the (existing directory, or any file) path as this format."""
    priority: int = 0
    """Formats are asked in descending priority (a more specific layout before a catch-all)."""


READERS: Dict[str, ReaderFormat] = {}


def register_reader(reader_format: ReaderFormat) -> ReaderFormat:
    if reader_format.name == "auto":
        raise ValueError("'auto' is --format's detection, not a reader name")
    if reader_format.name in READERS and READERS[reader_format.name] is not reader_format:
        raise ValueError(f"ingest reader {reader_format.name!r} is registered twice")
    READERS[reader_format.name] = reader_format
    return reader_format


def reader_names() -> Tuple[str, ...]:
    """What ``--format`` accepts: ``auto`` and every registered reader, in registration order."""
    return ("auto", *READERS)
