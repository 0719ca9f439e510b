"""Reader: CSV, TSV or Parquet tables with an image column and a caption column.

The image column holds a path (relative to ``image_root``, default the table's folder) or, in
Parquet, the encoded image bytes. Rows keep file order. Text files are read as UTF-8 with
surrogate escapes, so a non-UTF-8 caption reaches the validator and is counted, not raised.
pyarrow is imported only for Parquet (``pip install vlp[parquet]``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

from data_prep.readers.base import Record, missing_reason, resolve_image
from data_prep.readers.registry import ReaderFormat, register_reader


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

    def _rows(self) -> Iterator[dict[str, Any]]:
        if self.parquet:
            try:
                import pyarrow.parquet as pq
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("reading Parquet needs pyarrow: pip install 'vlp[parquet]'") from err
            table = pq.read_table(self.path, columns=[self.image_column, self.caption_column])
            yield from table.to_pylist()
            return
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle, delimiter=self.delimiter)
            missing = {self.image_column, self.caption_column} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{self.path}: no column(s) {sorted(missing)}; columns are {reader.fieldnames}")
            yield from reader

    def _check_columns(self) -> None:
        if self.parquet:
            import pyarrow.parquet as pq

            names = pq.read_schema(self.path).names
            missing = {self.image_column, self.caption_column} - set(names)
            if missing:
                raise ValueError(f"{self.path}: no column(s) {sorted(missing)}; columns are {names}")

    def __iter__(self) -> Iterator[Record]:
        self._check_columns()
        for row_number, row in enumerate(self._rows()):
            image = resolve_image(row.get(self.image_column), self.image_root)
            caption = row.get(self.caption_column)
            source_id = image if isinstance(image, str) else f"{self.path.name}:{row_number}"
            captions = [] if caption is None else [caption]
            yield Record(str(source_id), image, captions, {"row": row_number}, error=missing_reason(image))


register_reader(ReaderFormat(
    "table", "a .csv/.tsv/.parquet file with an image column and a caption column (--image-column, --caption-column)",
    directory=False, claims=lambda path: path.suffix.lower() in (".csv", ".tsv", ".parquet"),
    build=lambda path, options: TableReader(path, image_column=options.image_column,
                                            caption_column=options.caption_column, image_root=options.image_root)))
