"""Eval sets described by a CSV / TSV file of image paths plus a label or caption column.

* :class:`CsvClassification`: one sample per row; the label cell is a class index ("3") or a
  class name listed in the class names. Class names: ``classnames_file``, else
  ``classnames.txt`` beside the CSV, else (only when no label is an integer) the distinct label
  names sorted, as torchvision sorts class folders. Templates as in ``eval.datasets.image_folder``
  (``templates_file``, else ``templates.txt`` / ``zeroshot_classification_templates.txt``
  beside the CSV, else "a photo of a {c}.").
* :class:`CsvRetrieval`: rows naming the same image form one sample whose captions are those
  rows' captions in row order (images in first-seen order); with ``caption_separator`` one cell
  may also hold several captions. Captions are stripped and empty ones dropped.

The delimiter follows the extension (``.tsv``: tab, otherwise comma) unless given. Relative image
paths resolve against ``image_root`` (default: the CSV's folder). Keys are the image cells as
written. A row with an empty path, a bad label, no caption, or a missing / undecodable image
becomes a :class:`~eval.datasets.records.Skipped` marker; a missing CSV, image root or column is an
error at construction.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from eval.datasets.base import EvalDataset, Transform, load_image
from eval.datasets.image_folder import find_templates, read_classnames
from eval.datasets.records import ClassificationRecord, RetrievalRecord


def sniff_delimiter(path: Path) -> str:
    """Tab for ``.tsv`` files, comma otherwise."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read_table(path: Path, columns: tuple[str, ...], delimiter: str | None) -> list[dict[str, str]]:
    """Rows of a CSV/TSV with a header; every name in ``columns`` must be a header field."""
    if not path.is_file():
        raise FileNotFoundError(f"missing dataset file: {path}")
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream, delimiter=delimiter or sniff_delimiter(path))
        fields = reader.fieldnames or []
        missing = [c for c in columns if c not in fields]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r}; the header has {fields}")
        return [{k: (v if isinstance(v, str) else "") for k, v in row.items() if k is not None} for row in reader]


class CsvReader(EvalDataset):
    """Shared part: the table, its image root and path resolution."""

    def __init__(self, csv_path: str | os.PathLike[str], transform: Transform | None,
                 image_root: str | os.PathLike[str] | None, image_column: str,
                 columns: tuple[str, ...], delimiter: str | None) -> None:
        super().__init__(transform)
        self.csv_path = Path(csv_path)
        self.image_column = image_column
        self.rows = read_table(self.csv_path, (image_column, *columns), delimiter)
        self.image_root = Path(image_root) if image_root is not None else self.csv_path.parent
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"missing image root: {self.image_root}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.csv_path.stem

    def image_path(self, cell: str) -> Path:
        return self.image_root / cell  # an absolute cell stays absolute

    def image_files(self, cells: list[str]) -> list[Path]:
        """The distinct existing image files named by ``cells`` (missing ones are skipped at read
        time; the CSV bytes already pin which files it names)."""
        seen: dict[Path, None] = {}
        for cell in cells:
            if cell.strip():
                path = self.image_path(cell.strip())
                if path.is_file():
                    seen.setdefault(path)
        return list(seen)

    def load(self, cell: str) -> Any:
        path = self.image_path(cell)
        return self.image(lambda: load_image(path))


def _row_cell(row: dict[str, str], column: str) -> str:
    return row.get(column, "").strip()


class CsvClassification(CsvReader):
    """One classification record per CSV row (module docstring)."""

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        transform: Transform | None = None,
        image_root: str | os.PathLike[str] | None = None,
        image_column: str = "filepath",
        label_column: str = "label",
        classnames_file: str | os.PathLike[str] | None = None,
        templates_file: str | os.PathLike[str] | None = None,
        delimiter: str | None = None,
    ) -> None:
        super().__init__(csv_path, transform, image_root, image_column, (label_column,), delimiter)
        self.label_column = label_column
        folder = self.csv_path.parent
        names_path = Path(classnames_file) if classnames_file is not None else folder / "classnames.txt"
        labels = [_row_cell(row, label_column) for row in self.rows]
        if classnames_file is not None or names_path.is_file():
            self.classnames = read_classnames(names_path)
            self.classnames_path: Path | None = names_path
        elif labels and not any(_is_index(label) for label in labels):
            self.classnames = sorted({label for label in labels if label})
            self.classnames_path = None
        else:
            raise FileNotFoundError(f"missing class names: {names_path} (needed for integer labels in {self.csv_path})")
        self.class_index = {name: i for i, name in enumerate(self.classnames)}
        self.templates, self.templates_path = find_templates(folder, templates_file)

    def content_files(self) -> list[Path]:
        meta = [p for p in (self.classnames_path, self.templates_path) if p is not None]
        return [self.csv_path, *self.image_files([row[self.image_column] for row in self.rows]), *meta]

    def label(self, cell: str) -> int:
        if _is_index(cell):
            index = int(cell)
            if not 0 <= index < len(self.classnames):
                raise ValueError(f"class index {index} outside [0, {len(self.classnames)})")
            return index
        if cell not in self.class_index:
            raise ValueError(f"label {cell!r} is neither a class index nor a class name")
        return self.class_index[cell]

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for number, row in enumerate(self.rows, start=2):  # line 1 is the header
            key = _row_cell(row, self.image_column) or f"{self.csv_path.name}:{number}"
            yield key, (lambda row=row, number=number: self.parse(row, number))

    def parse(self, row: dict[str, str], number: int) -> ClassificationRecord:
        cell = _row_cell(row, self.image_column)
        if not cell:
            raise ValueError(f"row {number}: empty {self.image_column!r}")
        label = self.label(_row_cell(row, self.label_column))
        return ClassificationRecord(cell, self.load(cell), label)


def _is_index(cell: str) -> bool:
    text = cell.strip()
    return text.lstrip("+-").isdigit()


def split_captions(cell: str, separator: str | None) -> list[str]:
    """Stripped non-empty captions of one cell (split on ``separator`` when given)."""
    parts = cell.split(separator) if separator else [cell]
    return [p.strip() for p in parts if p.strip()]


class CsvRetrieval(CsvReader):
    """Retrieval records: rows grouped by image path, captions in row order (module docstring)."""

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        transform: Transform | None = None,
        image_root: str | os.PathLike[str] | None = None,
        image_column: str = "filepath",
        caption_column: str = "caption",
        caption_separator: str | None = None,
        delimiter: str | None = None,
    ) -> None:
        super().__init__(csv_path, transform, image_root, image_column, (caption_column,), delimiter)
        self.caption_column = caption_column
        self.caption_separator = caption_separator
        # (key, image cell, captions) per image in first-seen order; a row without a path is its
        # own sample (skipped when read, with its row number as key)
        self.groups: list[tuple[str, str, list[str]]] = []
        position: dict[str, int] = {}
        for number, row in enumerate(self.rows, start=2):
            cell = _row_cell(row, image_column)
            captions = split_captions(row.get(caption_column, ""), caption_separator)
            if not cell:
                self.groups.append((f"{self.csv_path.name}:{number}", "", captions))
            elif cell in position:
                self.groups[position[cell]][2].extend(captions)
            else:
                position[cell] = len(self.groups)
                self.groups.append((cell, cell, captions))

    def content_files(self) -> list[Path]:
        return [self.csv_path, *self.image_files([row[self.image_column] for row in self.rows])]

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for key, cell, captions in self.groups:
            yield key, (lambda key=key, cell=cell, captions=captions: self.parse(key, cell, captions))

    def parse(self, key: str, cell: str, captions: list[str]) -> RetrievalRecord:
        if not cell:
            raise ValueError(f"{key}: empty {self.image_column!r}")
        if not captions:
            raise ValueError(f"no caption in column {self.caption_column!r}")
        return RetrievalRecord(key, self.load(cell), list(captions))
