"""COCO / Flickr30k / Flickr8k retrieval sets from Karpathy's split files.

``dataset_coco.json`` / ``dataset_flickr30k.json`` (cs.stanford.edu/people/karpathy/deepimagesent,
``caption_datasets.zip``)::

    {"dataset": "coco",
     "images": [{"filepath": "val2014",                # COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test",                      # train | restval | val | test
                 "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...],
                                "imgid": 0, "sentid": 770337}, ...],
                 "imgid": 0, "sentids": [...], "cocoid": 391895}, ...]}

One :class:`~eval.datasets.records.RetrievalRecord` per image of the chosen split(s), in file order;
image = ``image_root / filepath / filename`` (``filepath`` absent for Flickr); captions = the
``raw`` strings in order, unchanged: CLIP_benchmark's ``mscoco_captions`` (torchvision
``CocoCaptions``) passes COCO captions through unstripped, and tokenizers normalise whitespace.
Keys are the relative image paths. An entry with a missing / undecodable image, no sentence or a
malformed field is skipped (counted); a missing JSON file or image root, unreadable JSON, or a
split with no image is an error at construction.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from eval.datasets.base import EvalDataset, Transform, load_image
from eval.datasets.records import RetrievalRecord

log = logging.getLogger(__name__)

KARPATHY_SPLITS: tuple[str, ...] = ("train", "restval", "val", "test")


def load_karpathy(json_path: Path) -> list[Any]:
    """The ``images`` list of a Karpathy split file (clear errors for a bad file)."""
    if not json_path.is_file():
        raise FileNotFoundError(f"missing dataset file: {json_path}")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ValueError(f"{json_path} is not valid JSON: {exn}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list (Karpathy split format)")
    return images


def relative_path(entry: dict[str, Any]) -> str:
    """``filepath/filename`` (just ``filename`` when there is no ``filepath``)."""
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise ValueError("missing 'filename'")
    folder = entry.get("filepath")
    if folder is not None and not isinstance(folder, str):
        raise ValueError("'filepath' must be a string")
    return f"{folder}/{filename}" if folder else filename


def raw_captions(entry: dict[str, Any]) -> list[str]:
    """The ``raw`` string of every sentence, in order."""
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise ValueError("no 'sentences'")
    captions = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
    if not all(isinstance(c, str) for c in captions):
        raise ValueError("every sentence needs a string 'raw'")
    return captions  # type: ignore[return-value]


class KarpathyRetrieval(EvalDataset):
    """Retrieval records of one (or several) Karpathy splits (module docstring)."""

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        transform: Transform | None = None,
        split: str | Sequence[str] = "test",
    ) -> None:
        super().__init__(transform)
        self.json_path, self.image_root = Path(json_path), Path(image_root)
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        unknown = [s for s in self.splits if s not in KARPATHY_SPLITS]
        if not self.splits or unknown:
            raise ValueError(f"unknown Karpathy split {unknown or self.splits}; "
                             f"choose from {', '.join(KARPATHY_SPLITS)}")
        images = load_karpathy(self.json_path)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"missing image root: {self.image_root}")
        split_of = [e.get("split") if isinstance(e, dict) else None for e in images]
        self.entries = [e for e, s in zip(images, split_of) if s in self.splits]
        no_split = sum(1 for s in split_of if not isinstance(s, str))
        if no_split:
            log.warning("%s: %d image entries without a 'split' are ignored", self.json_path, no_split)
        if not self.entries:
            present = sorted({s for s in split_of if isinstance(s, str)})
            raise ValueError(f"{self.json_path} has no image in split {'/'.join(self.splits)} "
                             f"(splits present: {present})")

    @property
    def name(self) -> str:  # type: ignore[override]
        """``coco`` for ``dataset_coco.json`` (the file stem without ``dataset_``)."""
        stem = self.json_path.stem
        return stem[len("dataset_"):] if stem.startswith("dataset_") and len(stem) > 8 else stem

    def content_files(self) -> list[Path]:
        files = [self.json_path]
        for entry in self.entries:
            try:
                path = self.image_root / relative_path(entry)
            except ValueError:
                continue
            if path.is_file():
                files.append(path)
        return files

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for number, entry in enumerate(self.entries):
            try:
                key = relative_path(entry)
            except ValueError:
                key = f"{self.json_path.name}:{'/'.join(self.splits)}[{number}]"
            yield key, (lambda entry=entry: self.parse(entry))

    def parse(self, entry: dict[str, Any]) -> RetrievalRecord:
        rel = relative_path(entry)
        captions = raw_captions(entry)
        path = self.image_root / rel
        return RetrievalRecord(rel, self.image(lambda: load_image(path)), captions)
