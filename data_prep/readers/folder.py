"""Reader: a folder tree of images with same-stem ``.txt`` captions (``a/b.jpg`` + ``a/b.txt``).

Files are visited in sorted relative-path order. An image without a caption file yields a
record with error ``missing_caption``; a caption file without an image yields ``missing_file``.
Caption files are returned as raw bytes (decoded and checked downstream); one caption per file,
or one per line with ``multiline=True``.

The sorted listing (paths only) is made once per reader; a range of it (``ranges`` /
``read_range``, ``data_prep.readers.ranges``) reads only its own caption files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from data_prep.readers.base import IMAGE_EXTENSIONS, Record
from data_prep.readers.ranges import RecordRange, even_ranges
from data_prep.readers.registry import ReaderFormat, register_reader


class FolderReader:
    """Image + same-stem ``.txt`` pairs under ``root`` (recursively)."""

    def __init__(self, root: str | Path, *, multiline: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input folder not found: {self.root}")
        self.multiline = multiline
        self._listing: Optional[List[Tuple[Optional[Path], Optional[Path]]]] = None

    def listing(self) -> List[Tuple[Optional[Path], Optional[Path]]]:
        """(image, caption file) of every stem, in sorted stem order; listed once per reader."""
        if self._listing is None:
            images: dict[str, Path] = {}
            captions: dict[str, Path] = {}
            for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
                stem = str(path.relative_to(self.root).with_suffix(""))
                suffix = path.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    images.setdefault(stem, path)
                elif suffix == ".txt":
                    captions[stem] = path
            self._listing = [(images.get(stem), captions.get(stem)) for stem in sorted(set(images) | set(captions))]
        return self._listing

    def _record(self, image: Optional[Path], caption: Optional[Path]) -> Record:
        source_id = str(image.relative_to(self.root)) if image else str(caption.relative_to(self.root))  # type: ignore[union-attr]
        if image is None:
            return Record(source_id, None, [], {}, error="missing_file")
        if caption is None:
            return Record(source_id, str(image), [], {}, error="missing_caption")
        raw = caption.read_bytes()
        texts = [line for line in raw.splitlines() if line.strip()] if self.multiline else [raw]
        return Record(source_id, str(image), texts or [raw], {})

    def __iter__(self) -> Iterator[Record]:
        for image, caption in self.listing():
            yield self._record(image, caption)

    def ranges(self, size: int) -> List[RecordRange]:
        return even_ranges(len(self.listing()), size)

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        for image, caption in self.listing()[rng.start: rng.start + rng.count]:
            yield self._record(image, caption)

register_reader(ReaderFormat(
    "folder", "a directory of images with same-stem .txt captions (DIR/a.jpg + DIR/a.txt, at any depth)",
    directory=True, build=lambda path, options: FolderReader(path), claims=lambda path: True, priority=0))
