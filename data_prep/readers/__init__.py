"""Ingest readers: one module per input format, each an iterable of :class:`Record`.

:func:`open_reader` picks a reader from ``format`` or, with ``"auto"``, from the input: a folder
holding ``*.tar`` files is img2dataset output, another folder is image + ``.txt`` pairs,
``.csv``/``.tsv``/``.parquet`` are tables, ``.jsonl`` is JSON Lines, ``.json`` is COCO captions.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.readers.base import ByteRange, ImageSource, Reader, Record, read_image_bytes

FORMATS: tuple[str, ...] = ("auto", "folder", "table", "jsonl", "coco", "img2dataset")


def detect_format(path: str | Path) -> str:
    """The reader name for ``path`` (see the module doc); raises ValueError when unknown."""
    path = Path(path)
    if path.is_dir():
        return "img2dataset" if any(path.glob("*.tar")) else "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        return "table"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "coco"
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    raise ValueError(f"cannot tell the format of {path}; pass --format, one of {', '.join(FORMATS[1:])}")


def open_reader(path: str | Path, format: str = "auto", *, image_column: str = "image",
                caption_column: str = "caption", image_root: str | Path | None = None) -> Reader:
    """A reader over ``path`` (options apply where the format has them)."""
    if format not in FORMATS:
        raise ValueError(f"unknown input format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(path)
    if format == "folder":
        from data_prep.readers.folder import FolderReader

        return FolderReader(path)
    if format == "table":
        from data_prep.readers.table import TableReader

        return TableReader(path, image_column=image_column, caption_column=caption_column, image_root=image_root)
    if format == "jsonl":
        from data_prep.readers.jsonl import JsonlReader

        return JsonlReader(path, image_column=image_column, caption_column=caption_column, image_root=image_root)
    if format == "coco":
        from data_prep.readers.coco import CocoReader

        return CocoReader(path, image_root)
    from data_prep.readers.img2dataset import Img2DatasetReader

    return Img2DatasetReader(path)


__all__ = ["FORMATS", "ByteRange", "ImageSource", "Reader", "Record", "detect_format", "open_reader",
           "read_image_bytes"]
