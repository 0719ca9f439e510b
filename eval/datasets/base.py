"""The base of every eval reader (:class:`EvalDataset`) and the metadata helpers readers share.

Readers never raise on a bad sample: they yield a :class:`~eval.datasets.records.Skipped` marker
(counted and reported by the task) for an undecodable image, a missing or malformed field, or an
unreadable tar. A missing metadata file or shard is a configuration error and raises at
construction.

Every reader knows the files that define its content (for the embedding cache), numbers its
samples in dataset order (``record.index``), and can be cut into disjoint parts by
``index % parts`` (data-parallel ranks, then DataLoader workers inside a rank) so that gathered
results sorted by index are the single-process results, in the same order.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from eval.datasets.records import Skipped

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], Any]


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode one image file to RGB (raises on a missing or undecodable file)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """Stripped, non-empty lines of a UTF-8 text file (FileNotFoundError names the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing dataset file: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def validated_templates(templates: Sequence[str], source: str) -> list[str]:
    """``templates`` checked: non-empty, ``{c}`` the only placeholder (a warning when absent)."""
    templates = list(templates)
    if not templates:
        raise ValueError(f"{source}: no templates")
    for template in templates:
        try:
            template.format(c="x")
        except (KeyError, IndexError, ValueError) as exn:
            raise ValueError(f"bad template {template!r} in {source}: only the placeholder {{c}} is allowed") from exn
        if "{c}" not in template:
            log.warning("template %r has no {c}: it gives the same prompt for every class", template)
    return templates



class EvalDataset(torch.utils.data.IterableDataset):
    """Base of every eval reader: samples in a fixed order, each parsed into a record or a
    :class:`Skipped` marker, optionally restricted to one part of ``index % parts``.

    Subclasses implement :meth:`samples` (cheap: no image decoding) and :meth:`content_files`.
    ``decode_images = False`` makes records carry ``image=None`` (metadata-only passes, e.g. when
    the image embeddings come from the cache).
    """

    name: str = "dataset"

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__()
        self.transform = transform
        self.decode_images = True
        self.only_keys: set[str] | None = None  # when set, samples with other keys are passed over
        self.part, self.num_parts = 0, 1

    def partition(self, part: int, num_parts: int) -> "EvalDataset":
        """Keep only every ``num_parts``-th sample from the ``part``-th on (counted over the
        samples kept by ``only_keys``, so the parts stay balanced); returns self."""
        if not 0 <= part < num_parts:
            raise ValueError(f"part must be in [0, {num_parts}), got {part}")
        self.part, self.num_parts = part, num_parts
        return self

    @abc.abstractmethod
    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        """(key, parse) per sample in dataset order; ``parse()`` builds the record (it may raise).
        A whole unreadable unit (a tar) may be reported as ``(key, None)`` plus a reason via
        :meth:`unit_errors`."""

    @abc.abstractmethod
    def content_files(self) -> list[Path]:
        """Every file whose bytes define the dataset (shards, metadata, images), for cache keys."""

    def options_tag(self) -> str:
        """What, besides file contents, decides the records: the reader class and its plain
        options (split, column names, ...); part of the metadata cache key."""
        skip = {"transform", "decode_images", "only_keys", "part", "num_parts"}
        plain = {k: v for k, v in sorted(vars(self).items())
                 if not k.startswith("_") and k not in skip and isinstance(v, (str, int, float, bool))}
        return json.dumps([type(self).__name__, plain], sort_keys=True)

    def unit_errors(self) -> list[Skipped]:
        """Errors not tied to one sample (e.g. unreadable tar data) seen since the last call."""
        return []

    def image(self, load: Callable[[], Image.Image]) -> Any:
        """``load()`` transformed, or None when images are not decoded."""
        if not self.decode_images:
            return None
        image = load()
        return self.transform(image) if self.transform is not None else image

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        parts, slot = self.num_parts * workers, self.part * workers + worker
        position = -1
        for index, (key, parse) in enumerate(self.samples()):
            if slot == 0:  # unit errors are reported once, by the first slot
                yield from self.unit_errors()
            if self.only_keys is not None and key not in self.only_keys:
                continue
            position += 1
            if position % parts != slot:
                continue
            try:
                yield parse()._replace(index=index)
            except Exception as exn:  # noqa: BLE001 - a bad sample must never stop an eval
                yield Skipped(key=key, reason=f"{type(exn).__name__}: {exn}", index=index)
        if slot == 0:
            yield from self.unit_errors()
