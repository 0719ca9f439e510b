"""Reader: a COCO-captions annotation file (``captions_train2017.json``) plus an image root.

All captions of one image stay together in one sample, in annotation order; images keep the
order of the file's ``images`` list. Images without any caption are yielded with error
``missing_caption``; files absent from the image root with ``missing_file``. The annotation file is parsed once per
reader; ``ranges`` / ``read_range`` cut its image list (``data_prep.readers.ranges``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from data_prep.readers.base import Record, missing_reason
from data_prep.readers.ranges import RecordRange, even_ranges
from data_prep.readers.registry import ReaderFormat, register_reader


class CocoReader:
    """COCO ``{"images": [...], "annotations": [{"image_id", "caption"}]}`` as records."""

    def __init__(self, annotations: str | Path, image_root: str | Path | None = None) -> None:
        self.annotations = Path(annotations)
        if not self.annotations.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotations}")
        self.image_root = Path(image_root) if image_root is not None else self.annotations.parent
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"COCO image root not found: {self.image_root}")
        self._listing: Optional[List[Tuple[str, object, List[str]]]] = None

    def listing(self) -> List[Tuple[str, object, List[str]]]:
        """(file name, image id, captions) of every image, in the file's order; parsed once."""
        if self._listing is None:
            data = json.loads(self.annotations.read_bytes().decode("utf-8", errors="surrogateescape"))
            if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
                raise ValueError(f"{self.annotations} is not a COCO captions file (needs 'images' and 'annotations')")
            captions: dict[object, list[str]] = defaultdict(list)
            for ann in data["annotations"]:
                captions[ann["image_id"]].append(ann.get("caption", ""))
            self._listing = [(image["file_name"], image["id"], list(captions.get(image["id"], [])))
                             for image in data["images"]]
        return self._listing

    def _record(self, file_name: str, image_id: object, texts: List[str]) -> Record:
        path = str(self.image_root / file_name)
        error = missing_reason(path) or (None if texts else "missing_caption")
        return Record(file_name, path, list(texts), {"coco_id": image_id}, error=error)

    def __iter__(self) -> Iterator[Record]:
        for entry in self.listing():
            yield self._record(*entry)

    def ranges(self, size: int) -> List[RecordRange]:
        return even_ranges(len(self.listing()), size)

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        for entry in self.listing()[rng.start: rng.start + rng.count]:
            yield self._record(*entry)

register_reader(ReaderFormat(
    "coco", "a COCO captions .json file ({\"images\": [...], \"annotations\": [...]}) with the images under "
            "--image-root (default: the file's folder)",
    directory=False, claims=lambda path: path.suffix.lower() == ".json",
    build=lambda path, options: CocoReader(path, options.image_root)))
