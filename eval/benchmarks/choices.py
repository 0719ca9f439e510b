"""Caption choice, the scoring of every published benchmark here (ARO, SugarCrepe, Winoground):
each choice is an image file (optionally cropped to a box) and a few candidate captions, scored
by cosine similarity of image and caption embeddings.

A benchmark's choices form a :class:`ChoiceSet`, an eval dataset of their distinct images, so the
images go through the :class:`~eval.encoding.encoder.Encoder` like any other set: embedding cache
(keyed by the benchmark files and the image files), data-parallel split, each image encoded once
however many choices share it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image

from eval.datasets.base import EvalDataset
from eval.datasets.records import ImageRecord
from eval.encoding.encoder import Encoder

Box = tuple[float, float, float, float]  # x, y, width, height (ARO's bbox_x, bbox_y, bbox_w, bbox_h)


class CaptionChoice(NamedTuple):
    """One image file (optionally cropped to ``box``) and the captions to score against it."""

    key: str
    image_path: Path
    captions: list[str]
    box: Box | None = None


def open_rgb(path: str | os.PathLike[str], box: Box | None = None) -> Image.Image:
    """Decode ``path`` to RGB; with ``box`` crop to (x, y, x + w, y + h) as the ARO repo does."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if box is not None:
        x, y, w, h = box
        rgb = rgb.crop((x, y, x + w, y + h))
    return rgb


class ChoiceSet(EvalDataset):
    """The distinct images (file, crop box) of ``choices``, in first-use order, as an eval dataset.

    ``image_of[j]`` is the image (record index) of ``choices[j]``. Keys are the image paths
    relative to ``root`` (plus the box), so the cache follows a moved folder. ``files`` are the
    benchmark's own files (its JSON): with the images read, they make the content key.
    """

    def __init__(self, name: str, root: str | os.PathLike[str], choices: Sequence[CaptionChoice],
                 files: Sequence[str | os.PathLike[str]]) -> None:
        super().__init__(None)
        self.name = name
        self.root = Path(root)
        self.choices = list(choices)
        self.files = [Path(f) for f in files]
        index: dict[tuple[Path, Box | None], int] = {}
        self.image_of = [index.setdefault((c.image_path, c.box), len(index)) for c in self.choices]
        self.images = list(index)
        keys = [self._key(path, box) for path, box in self.images]
        self.layout = hashlib.blake2b("\n".join(keys).encode(), digest_size=20).hexdigest()  # in options_tag

    def _key(self, path: Path, box: Box | None) -> str:
        rel = Path(os.path.relpath(path, self.root)).as_posix()
        return rel if box is None else f"{rel}@{','.join(repr(float(v)) for v in box)}"

    def content_files(self) -> list[Path]:
        return self.files + sorted({path for path, _ in self.images if path.is_file()})

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for path, box in self.images:
            key = self._key(path, box)
            yield key, (lambda key=key, path=path, box=box: ImageRecord(key, self.image(lambda: open_rgb(path, box))))


def score_choices(encoder: Encoder, choice_set: ChoiceSet, desc: str = "scoring"
                  ) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
    """Cosine score of each choice's image with each of its captions.

    Returns one [K] tensor per choice (None where its image could not be read) and the
    (choice key, reason) of every choice with an unreadable image (logged, never raised).
    """
    encoded = encoder.images(choice_set, desc=desc)
    row_of = {record.index: row for row, record in enumerate(encoded.records)}
    reasons = {skipped.index: skipped.reason for skipped in encoded.skip_reasons}
    readable = [j for j, image in enumerate(choice_set.image_of) if image in row_of]
    texts = [caption for j in readable for caption in choice_set.choices[j].captions]
    text_emb = encoder.texts(texts) if texts else torch.zeros(0, 0)
    scores: list[torch.Tensor | None] = [None] * len(choice_set.choices)
    offset = 0
    for j in readable:
        count = len(choice_set.choices[j].captions)
        scores[j] = text_emb[offset : offset + count] @ encoded.embeddings[row_of[choice_set.image_of[j]]]
        offset += count
    unreadable = [(choice.key, reasons.get(image, "unreadable image"))
                  for choice, image, score in zip(choice_set.choices, choice_set.image_of, scores) if score is None]
    return scores, unreadable

