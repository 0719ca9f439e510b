"""Open an eval set from a path, picking the reader from what the path is.

=========================================  =============================  =======================
path                                       classification                 retrieval
=========================================  =============================  =======================
folder with ``<split>/nshards.txt``        ``ClassificationShards``       ``RetrievalShards``
folder of class folders                    ``ImageFolderClassification``  (not supported)
``.csv`` / ``.tsv`` file                   ``CsvClassification``          ``CsvRetrieval``
``.json`` file (Karpathy split)            (not supported)                ``KarpathyRetrieval``
                                                                          (needs ``image_root``)
=========================================  =============================  =======================

``options`` go to the chosen reader's constructor (``split``, ``image_root``, ``image_column``,
``classnames_file``, ...); an option the reader does not take is an error naming the ones it
does. ``split`` selects the shard sub-folder (default "test") and the Karpathy split.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from eval.csv_datasets import CsvClassification, CsvRetrieval
from eval.datasets import ClassificationShards, EvalDataset, RetrievalShards, Transform
from eval.image_folder import ImageFolderClassification
from eval.karpathy import KarpathyRetrieval

CSV_SUFFIXES: tuple[str, ...] = (".csv", ".tsv")

CLASSIFICATION_LAYOUTS = (
    "a CLIP_benchmark webdataset folder (DIR/test/nshards.txt + shards)",
    "an ImageFolder tree (DIR/<class>/<image>)",
    "a .csv/.tsv file (image path + label columns)",
)
RETRIEVAL_LAYOUTS = (
    "a CLIP_benchmark webdataset folder (DIR/test/nshards.txt + shards)",
    "a .csv/.tsv file (image path + caption columns)",
    "a Karpathy split .json file (dataset_coco.json, dataset_flickr30k.json) with image_root",
)


def _unsupported(path: Path, task: str, layouts: tuple[str, ...], why: str) -> ValueError:
    return ValueError(f"{path}: {why}; a {task} set must be one of: " + "; ".join(layouts))


def _build(reader: type[EvalDataset], path: Path, transform: Transform | None, options: dict[str, Any]) -> EvalDataset:
    _check_reader_options(reader, options, skip=2)  # self, path, transform
    return reader(path, transform, **options)  # type: ignore[call-arg]


def _is_shard_folder(path: Path, options: dict[str, Any]) -> bool:
    return (path / str(options.get("split", "test")) / "nshards.txt").is_file()


def _has_subfolders(path: Path) -> bool:
    return any(entry.is_dir() for entry in os.scandir(path))


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"missing eval dataset: {path}")


def open_classification(path: str | os.PathLike[str], transform: Transform | None = None,
                        **options: Any) -> EvalDataset:
    """The classification reader for ``path`` (module table); ``options`` go to its constructor."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        if _is_shard_folder(path, options):
            return _build(ClassificationShards, path, transform, options)
        if _has_subfolders(path):
            return _build(ImageFolderClassification, path, transform, options)
        why = "folder has neither shards nor class folders"
        raise _unsupported(path, "classification", CLASSIFICATION_LAYOUTS, why)
    if path.suffix.lower() in CSV_SUFFIXES:
        return _build(CsvClassification, path, transform, options)
    why = "a Karpathy .json file is a retrieval set" if path.suffix.lower() == ".json" else "unrecognised file type"
    raise _unsupported(path, "classification", CLASSIFICATION_LAYOUTS, why)


def open_retrieval(path: str | os.PathLike[str], transform: Transform | None = None,
                   **options: Any) -> EvalDataset:
    """The retrieval reader for ``path`` (module table); ``options`` go to its constructor."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        if _is_shard_folder(path, options):
            return _build(RetrievalShards, path, transform, options)
        why = "an ImageFolder tree is a classification set" if _has_subfolders(path) else "folder has no shards"
        raise _unsupported(path, "retrieval", RETRIEVAL_LAYOUTS, why)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _build(CsvRetrieval, path, transform, options)
    if suffix == ".json":
        options = dict(options)
        image_root = options.pop("image_root", None)
        if image_root is None:
            raise ValueError(f"{path}: a Karpathy split file needs image_root= (the folder its image paths start in)")
        _check_reader_options(KarpathyRetrieval, options, skip=3)  # self, json_path, image_root, transform
        return KarpathyRetrieval(path, image_root, transform, **options)
    raise _unsupported(path, "retrieval", RETRIEVAL_LAYOUTS, "unrecognised file type")


def _check_reader_options(reader: type[EvalDataset], options: dict[str, Any], skip: int) -> None:
    """An error naming any option that is not one of the reader's parameters after ``skip``."""
    params = list(inspect.signature(reader.__init__).parameters)[skip + 1:]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"{reader.__name__} does not take option(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(params)}")
