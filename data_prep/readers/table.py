"""Reader: CSV, TSV or Parquet tables with an image column and a caption column.

The image column holds a path (relative to ``image_root``, default the table's folder) or, in
Parquet, the encoded image bytes. Rows keep file order. Text files are read as UTF-8 with
surrogate escapes, so a non-UTF-8 caption reaches the validator and is counted, not raised.
pyarrow is imported only for Parquet (``pip install vlp[parquet]``).

Streaming: Parquet is read in record batches of its row groups (only the two columns), CSV record
by record, so memory does not grow with the table. Ranges (``data_prep.readers.ranges``) come
from Parquet's row-group metadata and, for CSV, from one pass recording every ``size``-th
record's byte offset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List, Optional

from data_prep.readers.base import Record, missing_reason, resolve_image
from data_prep.readers.ranges import RecordRange, even_ranges
from data_prep.readers.registry import ReaderFormat, register_reader
from data_prep.readers.text_offsets import csv_ranges, csv_rows

BATCH_ROWS = 8192
"""Rows per Parquet record batch (what is converted to Python objects at a time)."""


class TableReader:
    """Rows of a ``.csv``, ``.tsv`` or ``.parquet`` file as records (one caption per row)."""

    def __init__(self, path: str | Path, *, image_column: str = "image", caption_column: str = "caption",
                 image_root: str | Path | None = None, delimiter: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input table not found: {self.path}")
        self.image_column = image_column
        self.caption_column = caption_column
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        suffix = self.path.suffix.lower()
        self.delimiter = delimiter or ("\t" if suffix == ".tsv" else ",")
        self.parquet = suffix == ".parquet"

    def _parquet_file(self) -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("reading Parquet needs pyarrow: pip install 'vlp[parquet]'") from err
        return pq.ParquetFile(self.path)

    def _parquet_rows(self, start: int = 0, count: Optional[int] = None) -> Iterator[dict[str, Any]]:
        """Rows ``start`` .. ``start + count - 1``, batch by batch from the row groups holding them."""
        pf = self._parquet_file()
        end = pf.metadata.num_rows if count is None else start + count
        groups: List[int] = []
        row, first_row = 0, 0
        for g in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if first_row < end and first_row + rows > start:
                if not groups:
                    row = first_row  # the first row the batches below hold
                groups.append(g)
            first_row += rows
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups,
                                     columns=[self.image_column, self.caption_column]):
            if row + batch.num_rows <= start:
                row += batch.num_rows
                continue
            lo, hi = max(0, start - row), min(batch.num_rows, end - row)
            yield from batch.slice(lo, hi - lo).to_pylist()
            row += batch.num_rows
            if row >= end:
                return

    def _csv_header(self) -> List[str]:
        for _, fields in csv_rows(self.path, self.delimiter):
            return fields
        return []

    def _csv_dicts(self, header: List[str], offset: Optional[int] = None) -> Iterator[dict[str, Any]]:
        rows = csv_rows(self.path, self.delimiter, offset)
        if offset is None:
            next(rows, None)  # the header
        for _, fields in rows:
            yield {name: (fields[i] if i < len(fields) else None) for i, name in enumerate(header)}

    def _check_columns(self) -> List[str]:
        names = self._parquet_file().schema_arrow.names if self.parquet else self._csv_header()
        missing = {self.image_column, self.caption_column} - set(names)
        if missing:
            raise ValueError(f"{self.path}: no column(s) {sorted(missing)}; columns are {names}")
        return names

    def _record(self, row_number: int, row: dict[str, Any]) -> Record:
        image = resolve_image(row.get(self.image_column), self.image_root)
        caption = row.get(self.caption_column)
        source_id = image if isinstance(image, str) else f"{self.path.name}:{row_number}"
        captions = [] if caption is None else [caption]
        return Record(str(source_id), image, captions, {"row": row_number}, error=missing_reason(image))

    def __iter__(self) -> Iterator[Record]:
        header = self._check_columns()
        rows = self._parquet_rows() if self.parquet else self._csv_dicts(header)
        for row_number, row in enumerate(rows):
            yield self._record(row_number, row)

    def ranges(self, size: int) -> List[RecordRange]:
        self._check_columns()
        if self.parquet:
            return even_ranges(self._parquet_file().metadata.num_rows, size)
        return csv_ranges(self.path, self.delimiter, size)[1]

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        header = self._check_columns()
        rows = (self._parquet_rows(rng.start, rng.count) if self.parquet
                else self._csv_dicts(header, rng.offset))
        for i, row in enumerate(rows):
            if i >= rng.count:
                return
            yield self._record(rng.start + i, row)


register_reader(ReaderFormat(
    "table", "a .csv/.tsv/.parquet file with an image column and a caption column (--image-column, --caption-column)",
    directory=False, claims=lambda path: path.suffix.lower() in (".csv", ".tsv", ".parquet"),
    build=lambda path, options: TableReader(path, image_column=options.image_column,
                                            caption_column=options.caption_column, image_root=options.image_root)))
