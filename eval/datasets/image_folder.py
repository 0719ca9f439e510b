"""Zero-shot classification set stored as a torchvision ``ImageFolder`` tree.

Layout::

    ROOT/<class_dir>/**/<image>            images of one class (any depth, like torchvision)
    ROOT/classnames.txt                    optional: one readable name per class, in sorted
                                           folder order (default: folder name, "_" -> " ")
    ROOT/templates.txt or ROOT/zeroshot_classification_templates.txt
                                           optional: one template per line with ``{c}``
                                           (default: ["a photo of a {c}."])

Classes and samples follow ``torchvision.datasets.ImageFolder`` exactly: class folders are every
sub-directory of ROOT sorted by name (class index = position), and each class's files come from
``sorted(os.walk(class_dir, followlinks=True))`` then ``sorted(file names)``, keeping the
extensions of ``torchvision.datasets.folder.IMG_EXTENSIONS`` (case-insensitive). So a model
scores the same samples, in the same order, as CLIP_benchmark's ImageFolder-based sets.
Keys are the POSIX paths relative to ROOT (``"cat/001.png"``).

The default template is CLIP_benchmark's single-template prompt (its ``voc2007`` entry in
``en_zeroshot_classification_templates.json`` and the first of its CIFAR templates).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from eval.datasets.base import EvalDataset, Transform, load_image, read_lines, validated_templates
from eval.datasets.records import ClassificationRecord

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS (kept here so the reader does not need torchvision)
IMAGE_FOLDER_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)
TEMPLATE_FILES: tuple[str, ...] = ("templates.txt", "zeroshot_classification_templates.txt")


def find_templates(folder: Path, templates_file: str | os.PathLike[str] | None) -> tuple[list[str], Path | None]:
    """Templates from ``templates_file`` (must exist), else the first of :data:`TEMPLATE_FILES`
    in ``folder``, else :data:`DEFAULT_TEMPLATES`. Returns (templates, file used or None)."""
    if templates_file is not None:
        path: Path | None = Path(templates_file)
    else:
        path = next((folder / name for name in TEMPLATE_FILES if (folder / name).is_file()), None)
    if path is None:
        return list(DEFAULT_TEMPLATES), None
    return validated_templates(read_lines(path), str(path)), path


def read_classnames(path: Path, expected: int | None = None) -> list[str]:
    """Non-empty stripped lines of ``path``; with ``expected``, exactly that many."""
    names = read_lines(path)
    if not names:
        raise ValueError(f"{path}: no class names")
    if expected is not None and len(names) != expected:
        raise ValueError(f"{path} has {len(names)} class names but there are {expected} class folders")
    return names


def image_folder_samples(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class folder names, [(relative path, class index)]) as torchvision ImageFolder."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        found = 0
        for folder, _, files in sorted(os.walk(class_dir, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_FOLDER_EXTS):
                    samples.append((Path(folder, file).relative_to(root).as_posix(), label))
                    found += 1
        if not found:
            log.warning("class folder %s holds no image (%s)", class_dir, ", ".join(IMAGE_FOLDER_EXTS))
    return classes, samples


class ImageFolderClassification(EvalDataset):
    """Classification records from a torchvision ImageFolder tree (module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        classnames_file: str | os.PathLike[str] | None = None,
        templates_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"missing image folder: {self.root}")
        self.folders, self.items = image_folder_samples(self.root)
        if not self.folders:
            raise ValueError(f"{self.root} has no class sub-folders (expected ROOT/<class>/<image>)")
        names_path = Path(classnames_file) if classnames_file is not None else self.root / "classnames.txt"
        if classnames_file is not None or names_path.is_file():
            self.classnames = read_classnames(names_path, expected=len(self.folders))
            self.classnames_path: Path | None = names_path
        else:
            self.classnames, self.classnames_path = [f.replace("_", " ") for f in self.folders], None
        self.templates, self.templates_path = find_templates(self.root, templates_file)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.root.resolve().name

    def content_files(self) -> list[Path]:
        meta = [p for p in (self.classnames_path, self.templates_path) if p is not None]
        return [self.root / rel for rel, _ in self.items] + meta

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for rel, label in self.items:
            yield rel, (lambda rel=rel, label=label: self.parse(rel, label))

    def parse(self, rel: str, label: int) -> ClassificationRecord:
        path = self.root / rel
        return ClassificationRecord(rel, self.image(lambda: load_image(path)), label)
