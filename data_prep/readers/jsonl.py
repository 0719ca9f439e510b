"""Reader: JSON Lines, one object per line with an image path field and a caption field.

The caption field may be a string or a list of strings (kept together in one sample). Lines
are decoded as UTF-8 with surrogate escapes, so non-UTF-8 text is counted downstream; a line
that is not a JSON object yields a record with error ``bad_row``. Blank lines are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from data_prep.readers.base import Record, missing_reason, resolve_image
from data_prep.readers.registry import ReaderFormat, register_reader


class JsonlReader:
    """Records from a ``.jsonl`` file."""

    def __init__(self, path: str | Path, *, image_column: str = "image", caption_column: str = "caption",
                 image_root: str | Path | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input JSONL not found: {self.path}")
        self.image_column = image_column
        self.caption_column = caption_column
        self.image_root = Path(image_root) if image_root is not None else self.path.parent

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                source_id = f"{self.path.name}:{line_number}"
                try:
                    row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError:
                    yield Record(source_id, None, [], {"line": line_number}, error="bad_row")
                    continue
                image = resolve_image(row.get(self.image_column), self.image_root)
                caption = row.get(self.caption_column)
                captions = list(caption) if isinstance(caption, list) else ([] if caption is None else [caption])
                if isinstance(image, str):
                    source_id = image
                meta = {"line": line_number}
                yield Record(source_id, image, [str(c) for c in captions], meta, error=missing_reason(image))


register_reader(ReaderFormat(
    "jsonl", "a .jsonl file, one JSON object per line with an image field and a caption field",
    directory=False, claims=lambda path: path.suffix.lower() == ".jsonl",
    build=lambda path, options: JsonlReader(path, image_column=options.image_column,
                                            caption_column=options.caption_column, image_root=options.image_root)))
