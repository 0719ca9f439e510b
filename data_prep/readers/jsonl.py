"""Reader: JSON Lines, one object per line with an image path field and a caption field.

The caption field may be a string or a list of strings (kept together in one sample). Lines
are decoded as UTF-8 with surrogate escapes, so non-UTF-8 text is counted downstream; a line
that is not a JSON object yields a record with error ``bad_row``. Blank lines are ignored. Lines
are streamed; ranges seek to byte offsets found in one pass (``data_prep.readers.text_offsets``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

from data_prep.readers.base import Record, missing_reason, resolve_image
from data_prep.readers.ranges import RecordRange
from data_prep.readers.registry import ReaderFormat, register_reader
from data_prep.readers.text_offsets import jsonl_lines, jsonl_ranges


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

    def _record(self, line_number: int, raw: bytes) -> Record:
        source_id = f"{self.path.name}:{line_number}"
        try:
            row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            return Record(source_id, None, [], {"line": line_number}, error="bad_row")
        image = resolve_image(row.get(self.image_column), self.image_root)
        caption = row.get(self.caption_column)
        captions = list(caption) if isinstance(caption, list) else ([] if caption is None else [caption])
        if isinstance(image, str):
            source_id = image
        return Record(source_id, image, [str(c) for c in captions], {"line": line_number}, error=missing_reason(image))

    def __iter__(self) -> Iterator[Record]:
        for _, line_number, raw in jsonl_lines(self.path):
            yield self._record(line_number, raw)

    def ranges(self, size: int) -> List[RecordRange]:
        return jsonl_ranges(self.path, size)

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        for i, (_, line_number, raw) in enumerate(jsonl_lines(self.path, rng.offset, rng.line)):
            if i >= rng.count:
                return
            yield self._record(line_number, raw)


register_reader(ReaderFormat(
    "jsonl", "a .jsonl file, one JSON object per line with an image field and a caption field",
    directory=False, claims=lambda path: path.suffix.lower() == ".jsonl",
    build=lambda path, options: JsonlReader(path, image_column=options.image_column,
                                            caption_column=options.caption_column, image_root=options.image_root)))
