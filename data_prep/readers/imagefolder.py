"""Reader: a class-per-folder image tree without captions (``root/cat/1.jpg``, ``root/dog/2.png``),
the layout of torchvision's ``ImageFolder`` and of Hugging Face's ``imagefolder``.

Classes are the non-hidden sub-folders of ``root`` that hold at least one image, sorted by name
(:attr:`ImageFolderReader.classnames`); a class's index is its position in that list, as in
``ImageFolder``. Images below a class folder (at any depth) are visited in sorted path order.
Each record's caption is ``template`` with ``{}`` replaced by the class name, underscores read as
spaces (``golden_retriever`` -> ``a photo of a golden retriever.``); its meta holds ``label`` (the
index) and ``classname`` (the folder name). An image directly in ``root`` has no class and is
yielded with error ``missing_caption``.

An ImageNet-style tree names its folders by WordNet id (``train/n01440764/*.JPEG``): ``class_names``
maps folder names to the names captions and ``classnames.txt`` use (:func:`read_class_names`:
ImageNet's ``LOC_synset_mapping.txt`` lines ``n01440764 tench, Tinca tinca`` (the first name is
used), ``FOLDER<TAB>NAME`` lines, a JSON object {folder: name}, or Keras'
``imagenet_class_index.json`` {"0": [wnid, name]}). Labels stay the sorted folder order.

The listing (paths and labels) is made once per reader; ``ranges`` / ``read_range`` cut it into
ranges (``data_prep.readers.ranges``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from data_prep.readers.base import IMAGE_EXTENSIONS, LABEL_KEY, Record
from data_prep.readers.detect import is_hidden
from data_prep.readers.ranges import RecordRange, even_ranges
from data_prep.readers.registry import DEFAULT_TEMPLATE, ReaderFormat, register_reader


def check_template(template: str) -> str:
    """``template`` when it holds exactly one ``{}`` placeholder, else ValueError."""
    if template.count("{}") != 1:
        raise ValueError(f"--caption-template must hold one '{{}}' for the class name, got {template!r}")
    return template


def class_caption(template: str, classname: str) -> str:
    """The caption of an image of class ``classname`` (underscores read as spaces)."""
    return template.replace("{}", classname.replace("_", " "))


def read_class_names(path: str | Path) -> dict[str, str]:
    """{folder name: class name} from a mapping file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-names file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        if all(isinstance(v, list) and len(v) == 2 for v in raw.values()):  # {"0": ["n01440764", "tench"]}
            return {str(v[0]): str(v[1]) for v in raw.values()}
        return {str(k): str(v) for k, v in raw.items()}
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        folder, _, rest = line.strip().partition("\t" if "\t" in line else " ")
        if not rest.strip():
            raise ValueError(f"{path}:{number}: expected 'FOLDER NAME', got {line!r}")
        names[folder.strip()] = rest.split(",")[0].strip()
    return names


def class_folders(root: str | Path) -> list[str]:
    """The class names of a class-per-folder tree: the non-hidden sub-folders of ``root`` that
    hold at least one image (at any depth below them), sorted (torchvision's ``find_classes`` order)."""
    root = Path(root)
    names = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not is_hidden(p.relative_to(child))
               for p in child.rglob("*")):
            names.append(child.name)
    return names


def is_class_tree(root: str | Path) -> bool:
    """True when ``root`` has no ``.txt`` file anywhere, no image at its top level, and at least
    one sub-folder holding images: the layout :class:`~data_prep.readers.imagefolder.ImageFolderReader` reads."""
    root = Path(root)
    for path in root.rglob("*"):
        if path.suffix.lower() == ".txt" and path.is_file():
            return False
        if path.parent == root and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            return False
    return bool(class_folders(root))


class ImageFolderReader:
    """Images of class sub-folders of ``root`` as records captioned from ``template``."""

    def __init__(self, root: str | Path, *, template: str = DEFAULT_TEMPLATE,
                 class_names: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder not found: {self.root}")
        self.template = check_template(template)
        self.folders: list[str] = class_folders(self.root)
        mapping = read_class_names(class_names) if class_names else {}
        unnamed = [f for f in self.folders if mapping and f not in mapping]
        if unnamed:
            raise ValueError(f"--class-names {class_names} has no name for the class folder(s) "
                             f"{unnamed[:5]}{' ...' if len(unnamed) > 5 else ''}")
        self.classnames: list[str] = [mapping.get(f, f) for f in self.folders]
        self._listing: Optional[List[Tuple[Path, Optional[int]]]] = None

    def listing(self) -> List[Tuple[Path, Optional[int]]]:
        """(image path, label or None for an image directly in root) in record order; listed once."""
        if self._listing is None:
            top = sorted(p for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            listing: List[Tuple[Path, Optional[int]]] = [(path, None) for path in top]
            for label, folder_name in enumerate(self.folders):
                folder = self.root / folder_name
                listing.extend((p, label) for p in sorted(
                    p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts)))
            self._listing = listing
        return self._listing

    def _record(self, path: Path, label: Optional[int]) -> Record:
        if label is None:
            return Record(path.name, str(path), [], {}, error="missing_caption")
        folder_name, name = self.folders[label], self.classnames[label]
        meta = {LABEL_KEY: label, "classname": name, **({"folder": folder_name} if folder_name != name else {})}
        return Record(str(path.relative_to(self.root)), str(path), [class_caption(self.template, name)], meta)

    def __iter__(self) -> Iterator[Record]:
        for path, label in self.listing():
            yield self._record(path, label)

    def ranges(self, size: int) -> List[RecordRange]:
        return even_ranges(len(self.listing()), size)

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        for path, label in self.listing()[rng.start: rng.start + rng.count]:
            yield self._record(path, label)

register_reader(ReaderFormat(
    "imagefolder", "a directory of class sub-folders holding images, no captions (DIR/cat/1.jpg, DIR/dog/2.png)",
    directory=True, build=lambda path, options: ImageFolderReader(path, template=options.caption_template,
                                                                  class_names=options.class_names),
    claims=is_class_tree, priority=10))
