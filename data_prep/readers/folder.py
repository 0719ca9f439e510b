"""Reader: a folder tree of images with same-stem ``.txt`` captions (``a/b.jpg`` + ``a/b.txt``).

Files are visited in sorted relative-path order. An image without a caption file yields a
record with error ``missing_caption``; a caption file without an image yields ``missing_file``.
Caption files are returned as raw bytes (decoded and checked downstream); one caption per file,
or one per line with ``multiline=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data_prep.readers.base import IMAGE_EXTENSIONS, Record
from data_prep.readers.registry import ReaderFormat, register_reader


class FolderReader:
    """Image + same-stem ``.txt`` pairs under ``root`` (recursively)."""

    def __init__(self, root: str | Path, *, multiline: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder not found: {self.root}")
        self.multiline = multiline

    def __iter__(self) -> Iterator[Record]:
        images: dict[str, Path] = {}
        captions: dict[str, Path] = {}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            stem = str(path.relative_to(self.root).with_suffix(""))
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.setdefault(stem, path)
            elif suffix == ".txt":
                captions[stem] = path
        for stem in sorted(set(images) | set(captions)):
            image, caption = images.get(stem), captions.get(stem)
            source_id = str(image.relative_to(self.root)) if image else str(caption.relative_to(self.root))
            if image is None:
                yield Record(source_id, None, [], {}, error="missing_file")
                continue
            if caption is None:
                yield Record(source_id, str(image), [], {}, error="missing_caption")
                continue
            raw = caption.read_bytes()
            texts = [line for line in raw.splitlines() if line.strip()] if self.multiline else [raw]
            yield Record(source_id, str(image), texts or [raw], {})


register_reader(ReaderFormat(
    "folder", "a directory of images with same-stem .txt captions (DIR/a.jpg + DIR/a.txt, at any depth)",
    directory=True, build=lambda path, options: FolderReader(path), claims=lambda path: True, priority=0))
