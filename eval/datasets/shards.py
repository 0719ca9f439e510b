"""Readers for eval datasets stored as WebDataset shards.

CLIP_benchmark layout (``clip_benchmark/datasets/builder.py``, ``build_wds_dataset``)::

    DIR/classnames.txt                          one class per line (stripped, blank lines dropped)
    DIR/zeroshot_classification_templates.txt   one template per line with ``{c}``
    DIR/dataset_type.txt                        optional; "retrieval" or (default) "classification"
    DIR/test/nshards.txt                        mandatory; shards are DIR/test/{0..n-1}.tar
    samples: key.{webp|png|jpg|jpeg} (first present, in that order, decoded to RGB)
             + key.cls (class index as text) or key.txt (captions, ``str.splitlines``)

Our compositional set: DIR/test/nshards.txt, DIR/test/N.tar, samples key.jpg + key.json =
``{"caption": str, "negatives": [str], "negative_types": [str]}``.
"""

from __future__ import annotations

import abc
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import webdataset as wds
from PIL import Image

from eval.datasets.base import EvalDataset, Transform, read_lines, validated_templates
from eval.datasets.records import ClassificationRecord, CompositionalRecord, RetrievalRecord, Skipped

IMAGE_EXTS: tuple[str, ...] = ("webp", "png", "jpg", "jpeg")


def shard_urls(root: str | os.PathLike[str], split: str = "test") -> list[str]:
    """Paths of ``root/split/{0..n-1}.tar`` from ``nshards.txt``; every shard must exist."""
    split_dir = Path(root) / split
    nshards_file = split_dir / "nshards.txt"
    if not nshards_file.is_file():
        raise FileNotFoundError(f"missing {nshards_file} (CLIP_benchmark webdataset layout needs it)")
    text = nshards_file.read_text().strip()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{nshards_file} must hold one integer, got {text!r}") from None
    urls = [str(split_dir / f"{i}.tar") for i in range(n)]
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{nshards_file} says {n} shards but {missing[0]} is missing")
    return urls


def dataset_type(root: str | os.PathLike[str]) -> str:
    """``dataset_type.txt`` contents, lower-cased; "classification" when the file is absent."""
    path = Path(root) / "dataset_type.txt"
    return path.read_text().strip().lower() if path.is_file() else "classification"


def _no_node_split(urls: Any) -> Any:
    """Every rank reads every shard (eval runs whole datasets; picklable for workers)."""
    return urls


def decode_image(sample: dict[str, Any]) -> Image.Image:
    """First image field present (webp, png, jpg, jpeg) decoded to an RGB PIL image."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            with io.BytesIO(sample[ext]) as stream:
                image = Image.open(stream)
                image.load()
                return image.convert("RGB")
    raise KeyError(f"no image field (one of {', '.join(IMAGE_EXTS)})")


def _text(sample: dict[str, Any], field: str) -> str:
    if field not in sample:
        raise KeyError(f"missing field .{field}")
    value = sample[field]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)



class ShardReader(EvalDataset):
    """Samples of ``root/split`` shards in order (CLIP_benchmark webdataset layout)."""

    # every metadata file a CLIP_benchmark folder may hold, whatever the task: readers of
    # different tasks over the same folder then share one content key (and cached embeddings)
    metadata_files: tuple[str, ...] = ("classnames.txt", "zeroshot_classification_templates.txt",
                                       "dataset_type.txt")

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None, split: str = "test"):
        super().__init__(transform)
        self.root = Path(root)
        self.split = split
        self.urls = shard_urls(self.root, split)
        self._errors: list[Skipped] = []

    @property
    def name(self) -> str:  # type: ignore[override]
        """Dataset name: the directory's base name."""
        return self.root.resolve().name

    def content_files(self) -> list[Path]:
        extra = [self.root / f for f in self.metadata_files if (self.root / f).is_file()]
        return [Path(u) for u in self.urls] + extra

    @abc.abstractmethod
    def parse(self, sample: dict[str, Any]) -> Any:
        """Turn one raw sample (field -> bytes) into a record; raise on anything malformed."""

    def unit_errors(self) -> list[Skipped]:
        errors, self._errors = self._errors, []
        return errors

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        def on_error(exn: Exception) -> bool:
            self._errors.append(Skipped(key="<shard>", reason=f"unreadable tar data: {exn!r}"))
            return True  # keep going with the next shard

        raw = wds.WebDataset(
            self.urls,
            handler=on_error,
            shardshuffle=False,
            nodesplitter=_no_node_split,
            workersplitter=_no_node_split,  # EvalDataset splits samples by index instead
            empty_check=False,
        )
        for sample in raw:
            yield str(sample.get("__key__", "?")), (lambda sample=sample: self.parse(sample))

    def shard_image(self, sample: dict[str, Any]) -> Any:
        return self.image(lambda: decode_image(sample))


class ClassificationShards(ShardReader):
    """CLIP_benchmark zero-shot classification set: image + ``.cls`` label, class names, templates."""

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None, split: str = "test"):
        kind = dataset_type(root)
        if kind != "classification":
            raise ValueError(f"{root} is a {kind!r} dataset (dataset_type.txt), not classification")
        super().__init__(root, transform, split)
        self.classnames = read_lines(self.root / "classnames.txt")
        templates_file = self.root / "zeroshot_classification_templates.txt"
        self.templates = read_lines(templates_file)
        if not self.classnames or not self.templates:
            raise ValueError(f"{root}: classnames.txt and zeroshot_classification_templates.txt must be non-empty")
        self.templates = validated_templates(self.templates, str(templates_file))

    def parse(self, sample: dict[str, Any]) -> ClassificationRecord:
        label = int(_text(sample, "cls").strip())
        if not 0 <= label < len(self.classnames):
            raise ValueError(f"class index {label} outside [0, {len(self.classnames)})")
        return ClassificationRecord(str(sample["__key__"]), self.shard_image(sample), label)


class RetrievalShards(ShardReader):
    """CLIP_benchmark retrieval set: image + ``.txt`` with one caption per line."""

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None, split: str = "test"):
        declared = Path(root) / "dataset_type.txt"
        if declared.is_file() and dataset_type(root) != "retrieval":
            raise ValueError(f"{root} is a {dataset_type(root)!r} dataset ({declared}), not retrieval")
        super().__init__(root, transform, split)

    def parse(self, sample: dict[str, Any]) -> RetrievalRecord:
        captions = _text(sample, "txt").splitlines()  # CLIP_benchmark: str.splitlines, no filtering
        if not captions:
            raise ValueError("empty caption file")
        return RetrievalRecord(str(sample["__key__"]), self.shard_image(sample), captions)


def _str_list(meta: dict[str, Any], field: str) -> list[str]:
    value = meta.get(field)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"json field {field!r} must be a list of strings")
    return value


class CompositionalShards(ShardReader):
    """Our compositional set: image + ``.json`` with a caption and typed negative captions."""

    def parse(self, sample: dict[str, Any]) -> CompositionalRecord:
        meta = json.loads(_text(sample, "json"))
        if not isinstance(meta, dict) or not isinstance(meta.get("caption"), str):
            raise ValueError("json must be an object with a string 'caption'")
        negatives = _str_list(meta, "negatives")
        types = _str_list(meta, "negative_types")
        if not negatives or len(negatives) != len(types):
            raise ValueError(f"need >= 1 negative and one type per negative, got {len(negatives)} and {len(types)}")
        return CompositionalRecord(str(sample["__key__"]), self.shard_image(sample), meta["caption"], negatives, types)
