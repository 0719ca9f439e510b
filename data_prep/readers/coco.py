"""Reader: a COCO-captions annotation file (``captions_train2017.json``) plus an image root.

All captions of one image stay together in one sample, in annotation order; images keep the
order of the file's ``images`` list. Images without any caption are yielded with error
``missing_caption``; files absent from the image root with ``missing_file``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from data_prep.readers.base import Record, missing_reason
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

    def __iter__(self) -> Iterator[Record]:
        data = json.loads(self.annotations.read_bytes().decode("utf-8", errors="surrogateescape"))
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise ValueError(f"{self.annotations} is not a COCO captions file (needs 'images' and 'annotations')")
        captions: dict[object, list[str]] = defaultdict(list)
        for ann in data["annotations"]:
            captions[ann["image_id"]].append(ann.get("caption", ""))
        for image in data["images"]:
            path = str(self.image_root / image["file_name"])
            texts = captions.get(image["id"], [])
            error = missing_reason(path) or (None if texts else "missing_caption")
            yield Record(image["file_name"], path, list(texts), {"coco_id": image["id"]}, error=error)


register_reader(ReaderFormat(
    "coco", "a COCO captions .json file ({\"images\": [...], \"annotations\": [...]}) with the images under "
            "--image-root (default: the file's folder)",
    directory=False, claims=lambda path: path.suffix.lower() == ".json",
    build=lambda path, options: CocoReader(path, options.image_root)))
