"""Dataset kinds: a path and its kind (:class:`DatasetSpec`), the kind told from the files, and
the reader of a classification or retrieval set picked from what the path is.

Kinds read here: ``classification``, ``retrieval`` and ``compositional`` (our shards); the
published benchmark formats (ARO, SugarCrepe, Winoground) are told apart by their own task
declarations (:mod:`eval.tasks.compositionality`).

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

from dataclasses import dataclass

from eval.datasets.base import EvalDataset, Transform
from eval.datasets.csv_tables import CsvClassification, CsvRetrieval
from eval.datasets.image_folder import ImageFolderClassification
from eval.datasets.karpathy import KarpathyRetrieval
from eval.datasets.shards import ClassificationShards, CompositionalShards, RetrievalShards

CSV_SUFFIXES: tuple[str, ...] = (".csv", ".tsv")
GENERIC_KINDS: tuple[str, ...] = ("classification", "retrieval", "compositional")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to evaluate on: its ``kind`` (what tasks read it) and its ``path``."""

    kind: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.resolve().name

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


# ---------------------------------------------------------------------- kinds
def _first_sample_fields(shard: Path) -> set[str]:
    import tarfile

    fields: set[str] = set()
    try:
        with tarfile.open(shard) as tar:
            first_key = None
            for member in tar:
                base = Path(member.name).name
                key, _, ext = base.partition(".")
                if first_key is None:
                    first_key = key
                if key != first_key:
                    break
                fields.add(ext)
    except (OSError, tarfile.TarError):
        pass
    return fields


def _folder_kind(path: Path) -> str | None:
    declared = path / "dataset_type.txt"
    if declared.is_file():
        return "retrieval" if declared.read_text().strip().lower() == "retrieval" else "classification"
    if (path / "classnames.txt").is_file() and (path / "test" / "nshards.txt").is_file():
        return "classification"
    if (path / "test" / "0.tar").is_file():
        fields = _first_sample_fields(path / "test" / "0.tar")
        if "cls" in fields:
            return "classification"
        if "json" in fields:
            return "compositional"
        if "txt" in fields:
            return "retrieval"
    if any(child.is_dir() for child in path.iterdir()):
        return "classification"  # image folder: one sub-folder per class
    return None


def detect_kind(path: Path) -> str | None:
    """The generic kind of the dataset at ``path`` from its files, or None when it cannot tell
    (FileNotFoundError when nothing is there)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "retrieval"  # Karpathy-split JSON
        if suffix in CSV_SUFFIXES:
            header = path.open(encoding="utf-8", errors="replace").readline().lower()
            return "classification" if "label" in header else "retrieval"
        return None
    if not path.is_dir():
        raise FileNotFoundError(f"dataset not found: {path}")
    return _folder_kind(path)


def open_reader(spec: DatasetSpec) -> EvalDataset:
    """The reader of a classification, retrieval or compositional spec (images not transformed yet)."""
    if spec.kind == "classification":
        return open_classification(spec.path, None)
    if spec.kind == "retrieval":
        if spec.path.is_file() and spec.path.suffix.lower() == ".json":  # Karpathy JSON: images beside it
            return open_retrieval(spec.path, None, image_root=spec.path.parent)
        return open_retrieval(spec.path, None)
    if spec.kind == "compositional":
        return CompositionalShards(spec.path)
    raise ValueError(f"{spec.kind} datasets are read by their own task")
