"""Which reader an input path is for, what each reader expects, and what a path actually holds.

:func:`detect_format` is the one detection rule (``--format auto``): a folder holding ``*.tar``
files is img2dataset output; a folder without any ``.txt`` file whose images all sit in
sub-folders is a class-per-folder tree (``imagefolder``, torchvision ImageFolder's layout);
any other folder is image + same-stem ``.txt`` pairs (``folder``); ``.csv``/``.tsv``/``.parquet``
are tables, ``.jsonl`` is JSON Lines, ``.json`` is COCO captions. A folder that holds even one
``.txt`` caption stays a ``folder`` input, so caption folders read as they always did.

:data:`LAYOUTS` says in words what each format expects and :func:`describe_found` what is at a
path; both go into the errors of a reader that fails and of an ingest that writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.readers.base import IMAGE_EXTENSIONS

FORMATS: tuple[str, ...] = ("auto", "folder", "imagefolder", "table", "jsonl", "coco", "img2dataset")

LAYOUTS: dict[str, str] = {
    "folder": "a directory of images with same-stem .txt captions (DIR/a.jpg + DIR/a.txt, at any depth)",
    "imagefolder": "a directory of class sub-folders holding images, no captions (DIR/cat/1.jpg, DIR/dog/2.png)",
    "table": "a .csv/.tsv/.parquet file with an image column and a caption column "
             "(--image-column, --caption-column)",
    "jsonl": "a .jsonl file, one JSON object per line with an image field and a caption field",
    "coco": "a COCO captions .json file ({\"images\": [...], \"annotations\": [...]}) with the images under "
            "--image-root (default: the file's folder)",
    "img2dataset": "a directory of img2dataset webdataset shards (00000.tar with key.jpg + key.txt, ...)",
}

# Formats whose input is a directory (the others read one file).
DIRECTORY_FORMATS = frozenset({"folder", "imagefolder", "img2dataset"})


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def class_folders(root: str | Path) -> list[str]:
    """The class names of a class-per-folder tree: the non-hidden sub-folders of ``root`` that
    hold at least one image (at any depth below them), sorted (torchvision's ``find_classes`` order)."""
    root = Path(root)
    names = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p.relative_to(child))
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


def detect_format(path: str | Path) -> str:
    """The reader name for ``path`` (see the module doc); raises ValueError when unknown."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.tar")):
            return "img2dataset"
        return "imagefolder" if is_class_tree(path) else "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".parquet"):
        return "table"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "coco"
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    raise ValueError(f"cannot tell the format of {path}; pass --format, one of {', '.join(FORMATS[1:])}")


def detected_name(path: str | Path) -> str:
    """:func:`detect_format` of ``path`` for a message: the format, or why there is none."""
    try:
        return detect_format(path)
    except FileNotFoundError:
        return "none (the path does not exist)"
    except (ValueError, OSError):
        return f"none (unknown suffix {Path(path).suffix or '(none)'!r})"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def describe_found(path: str | Path) -> str:
    """What is at ``path``, in a few words: for a directory its images (at the top level and in
    sub-folders), ``.txt`` and ``.tar`` files; for a file its size; then the detected format."""
    path = Path(path)
    if not path.exists():
        return f"nothing at {path}"
    if path.is_file():
        return f"a file of {_count(path.stat().st_size, 'byte')} (detected format: {detected_name(path)})"
    top = deep = txt = tar = other = 0
    for item in path.rglob("*"):
        if not item.is_file() or _is_hidden(item.relative_to(path)):
            continue
        suffix = item.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            top, deep = (top + 1, deep) if item.parent == path else (top, deep + 1)
        elif suffix == ".txt":
            txt += 1
        elif suffix == ".tar":
            tar += 1
        else:
            other += 1
    subdirs = sum(1 for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return (f"a directory with {_count(top, 'image')} at the top level and {deep} in "
            f"{_count(subdirs, 'sub-folder')}, {_count(txt, '.txt file')}, {_count(tar, '.tar file')} and "
            f"{_count(other, 'other file')} (detected format: {detected_name(path)})")
