"""Which reader an input path is for, what each reader expects, and what a path actually holds.

:func:`detect_format` is the one detection rule (``--format auto``): a folder holding ``*.tar``
files is img2dataset output; a folder without any ``.txt`` file whose images all sit in
sub-folders is a class-per-folder tree (``imagefolder``, torchvision ImageFolder's layout);
any other folder is image + same-stem ``.txt`` pairs (``folder``); ``.csv``/``.tsv``/``.parquet``
are tables, ``.jsonl`` is JSON Lines, ``.json`` is COCO captions. A folder that holds even one
``.txt`` caption stays a ``folder`` input, so caption folders read as they always did.

Each reader registers its own part of the rule (``ReaderFormat.claims``, asked in descending
``priority``; ``data_prep.readers.registry``) and its layout in words; :func:`describe_found` says what is at a
path; both go into the errors of a reader that fails and of an ingest that writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.readers.base import IMAGE_EXTENSIONS
from data_prep.readers.registry import READERS


def is_hidden(relative: Path) -> bool:
    """True when a path relative to an input folder passes through a hidden (dot) name."""
    return any(part.startswith(".") for part in relative.parts)


def detect_format(path: str | Path) -> str:
    """The reader name for ``path`` (see the module doc); raises ValueError when unknown."""
    path = Path(path)
    is_dir = path.is_dir()
    for reader_format in sorted(READERS.values(), key=lambda f: -f.priority):
        if reader_format.directory == is_dir and reader_format.claims(path):
            return reader_format.name
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    raise ValueError(f"cannot tell the format of {path}; pass --format, one of {', '.join(READERS)}")


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
        if not item.is_file() or is_hidden(item.relative_to(path)):
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
