"""Record ranges: how an ingest splits one input into chunks it can read independently.

A :class:`RecordRange` is ``count`` consecutive records of one input starting at record ``start``
(0-based, in the reader's order). Readers that can seek implement two methods and stream:

- ``ranges(size) -> list[RecordRange]``: the input cut into ranges of ``size`` records (the last
  may be shorter), found cheaply: Parquet from its row-group metadata, CSV and JSON Lines by one
  streaming pass that records the byte offset of every ``size``-th record (a sparse index);
- ``read_range(rng) -> Iterator[Record]``: the records of one range, read from its offset.

The listing readers (folders, image folders, COCO) list once per reader and slice the listing;
img2dataset counts each tar's samples and starts a range at (tar, sample). A reader with neither
method still works: the fallback counts its records and reads a range by skipping to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterator

from data_prep.readers.base import Record


@dataclass(frozen=True)
class RecordRange:
    """Records ``start`` .. ``start + count - 1`` of an input; ``offset`` / ``line``: where the
    first of them is, for readers that seek (CSV/JSONL: byte offset and line number; img2dataset:
    tar index and sample index in that tar)."""

    start: int
    count: int
    offset: int = 0
    line: int = 0


def even_ranges(total: int, size: int) -> list[RecordRange]:
    return [RecordRange(start, min(size, total - start)) for start in range(0, total, size)]


def reader_ranges(reader: Any, size: int) -> list[RecordRange]:
    """``reader.ranges(size)``, or ranges over a count of the reader's records."""
    if hasattr(reader, "ranges"):
        return list(reader.ranges(size))
    return even_ranges(sum(1 for _ in reader), size)


def read_reader_range(reader: Any, rng: RecordRange) -> Iterator[Record]:
    """``reader.read_range(rng)``, or the range's records skipped to in the reader's iteration."""
    if hasattr(reader, "read_range"):
        return iter(reader.read_range(rng))
    return islice(iter(reader), rng.start, rng.start + rng.count)
