"""Byte offsets of records in line-based text files (CSV, JSON Lines), for seeking readers.

Both files are read in binary and decoded per line as UTF-8 with surrogate escapes (a non-UTF-8
caption reaches the validator and is counted). :func:`csv_rows` tracks the byte position of
every record boundary, so a CSV record that spans lines (a quoted newline) is one record.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Iterator, List, Optional, Tuple

from data_prep.readers.ranges import RecordRange


def _lines(handle: IO[bytes], position: List[int]) -> Iterator[str]:
    for raw in handle:
        position[0] += len(raw)
        yield raw.decode("utf-8", errors="surrogateescape")


def csv_rows(path: Path, delimiter: str, offset: Optional[int] = None,
             header: Optional[List[str]] = None) -> Iterator[Tuple[int, List[str]]]:
    """(byte offset where the record starts, fields) of each non-empty record, from the file's
    start (the header is the first record yielded) or from ``offset`` (a record start)."""
    with open(path, "rb") as handle:
        position = [0]
        if offset:
            handle.seek(offset)
            position[0] = offset
        reader = csv.reader(_lines(handle, position), delimiter=delimiter)
        start = position[0]
        for fields in reader:
            if fields:  # csv.DictReader skips blank rows too
                yield start, fields
            start = position[0]


def csv_ranges(path: Path, delimiter: str, size: int) -> Tuple[List[str], List[RecordRange]]:
    """(header fields, ranges of ``size`` data records) in one streaming pass."""
    header: List[str] = []
    ranges: List[RecordRange] = []
    count = 0
    for offset, fields in csv_rows(path, delimiter):
        if not header and count == 0 and not ranges:
            header = fields
            continue
        if count % size == 0:
            ranges.append(RecordRange(count, 0, offset, count))
        count += 1
    return header, [RecordRange(r.start, min(size, count - r.start), r.offset, r.line) for r in ranges]


def jsonl_lines(path: Path, offset: int = 0, line: int = 1) -> Iterator[Tuple[int, int, bytes]]:
    """(byte offset, line number, raw line) of each non-blank line from ``offset`` (line ``line``)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        position = offset
        for number, raw in enumerate(handle, start=line):
            if raw.strip():
                yield position, number, raw
            position += len(raw)


def jsonl_ranges(path: Path, size: int) -> List[RecordRange]:
    """Ranges of ``size`` records (non-blank lines) in one streaming pass."""
    ranges: List[RecordRange] = []
    count = 0
    for offset, number, _ in jsonl_lines(path):
        if count % size == 0:
            ranges.append(RecordRange(count, 0, offset, number))
        count += 1
    return [RecordRange(r.start, min(size, count - r.start), r.offset, r.line) for r in ranges]
