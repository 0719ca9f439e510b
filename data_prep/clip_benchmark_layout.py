"""Writer of CLIP_benchmark's webdataset evaluation layout.

Facts this matches (LAION-AI/CLIP_benchmark, ``clip_benchmark/datasets/builder.py``
``build_wds_dataset`` and ``clip_benchmark/webdataset_builder.py`` ``convert_dataset``)::

    root/
        <split>/nshards.txt      integer shard count (the converter writes it with a newline)
        <split>/0.tar ...        shards named "{0..nshards-1}.tar"
        classnames.txt           one class name per line, line i = label i (classification)
        zeroshot_classification_templates.txt   one template per line, "{c}" marks the class
        dataset_type.txt         "retrieval" for retrieval sets; when absent the loader
                                 assumes "classification" (any other value but "multilabel"
                                 is read as classification too)

Samples are keyed ``s%07d``; the image is one of the extensions the loader decodes
(``webp``, ``png``, ``jpg``, ``jpeg``); classification labels are ``cls`` (integer text),
retrieval captions are ``txt`` holding several captions, split by the loader with
``str.splitlines``. Every file here is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from data_prep.shard_writer import ShardWriter, write_text_atomic

SHARD_PATTERN = "%d.tar"
NSHARDS_NAME = "nshards.txt"
CLASSNAMES_NAME = "classnames.txt"
TEMPLATES_NAME = "zeroshot_classification_templates.txt"
DATASET_TYPE_NAME = "dataset_type.txt"
IMAGE_EXTENSIONS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")


def sample_key(index: int) -> str:
    """CLIP_benchmark's sample key for the ``index``-th sample."""
    return "s%07d" % index


def write_split(
    root: str | os.PathLike[str],
    samples: Iterable[Mapping[str, Any]],
    *,
    split: str = "test",
    max_count: int = 10_000,
) -> dict[str, int]:
    """Write ``samples`` as ``root/split/{0..n-1}.tar`` plus ``nshards.txt``.

    Returns {shard name: sample count}. ``nshards.txt`` is written after the last shard,
    so its presence means the split is complete.
    """
    split_dir = Path(root) / split
    with ShardWriter(split_dir, SHARD_PATTERN, max_count, sizes_name=None) as writer:
        writer.write_all(samples)
    if not writer.sizes:
        raise ValueError(f"no samples written to {split_dir}")
    write_text_atomic(split_dir / NSHARDS_NAME, f"{len(writer.sizes)}\n")
    return dict(writer.sizes)


def _lines(items: Sequence[str], what: str) -> str:
    for item in items:
        if not item.strip() or "\n" in item:
            raise ValueError(f"{what} entries must be non-empty single lines, got {item!r}")
    return "".join(f"{item}\n" for item in items)


def write_classification_meta(
    root: str | os.PathLike[str],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    write_type: bool = True,
) -> None:
    """Write ``classnames.txt``, the templates file and (optionally) ``dataset_type.txt``."""
    for template in templates:
        if "{c}" not in template:
            raise ValueError(f"zero-shot template {template!r} lacks the {{c}} placeholder")
    root = Path(root)
    write_text_atomic(root / CLASSNAMES_NAME, _lines(classnames, "class name"))
    write_text_atomic(root / TEMPLATES_NAME, _lines(templates, "template"))
    if write_type:
        write_text_atomic(root / DATASET_TYPE_NAME, "classification\n")


def write_retrieval_meta(root: str | os.PathLike[str]) -> None:
    """Mark ``root`` as a retrieval set (``dataset_type.txt`` = ``retrieval``)."""
    write_text_atomic(Path(root) / DATASET_TYPE_NAME, "retrieval\n")


def classification_sample(index: int, image: bytes, label: int, ext: str = "jpg") -> dict[str, Any]:
    """One classification sample: encoded image plus integer label as ``cls`` text."""
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"image extension {ext!r} is not one CLIP_benchmark decodes: {IMAGE_EXTENSIONS}")
    return {"__key__": sample_key(index), ext: image, "cls": str(int(label))}


def retrieval_sample(index: int, image: bytes, captions: Sequence[str], ext: str = "jpg") -> dict[str, Any]:
    """One retrieval sample: encoded image plus its captions, one per line, in ``txt``."""
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"image extension {ext!r} is not one CLIP_benchmark decodes: {IMAGE_EXTENSIONS}")
    if not captions:
        raise ValueError("a retrieval sample needs at least one caption")
    return {"__key__": sample_key(index), ext: image, "txt": _lines(captions, "caption").rstrip("\n")}


def read_nshards(root: str | os.PathLike[str], split: str = "test") -> int:
    """Shard count of a split, as CLIP_benchmark reads it."""
    return int((Path(root) / split / NSHARDS_NAME).read_text().strip())


def shard_paths(root: str | os.PathLike[str], split: str = "test") -> list[Path]:
    """Paths of a split's shards in index order."""
    split_dir = Path(root) / split
    return [split_dir / (SHARD_PATTERN % i) for i in range(read_nshards(root, split))]


__all__ = [
    "CLASSNAMES_NAME",
    "DATASET_TYPE_NAME",
    "IMAGE_EXTENSIONS",
    "NSHARDS_NAME",
    "SHARD_PATTERN",
    "TEMPLATES_NAME",
    "classification_sample",
    "read_nshards",
    "retrieval_sample",
    "sample_key",
    "shard_paths",
    "write_classification_meta",
    "write_retrieval_meta",
    "write_split",
]
