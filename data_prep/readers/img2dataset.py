"""Reader: existing img2dataset output in webdataset format (``00000.tar`` + ``_stats.json``/
``.parquet`` beside each), for re-sharding and resizing.

Each sample's ``key.jpg`` (or png/webp), ``key.txt`` and ``key.json`` are grouped by key; the
image is referenced as a byte range inside the tar (nothing is extracted). The per-sample JSON's
``url``, ``key``, ``width``/``height`` and ``original_width``/``original_height`` are kept in
``meta``. Only uncompressed tars are read (img2dataset never compresses them).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator

from data_prep.readers.base import IMAGE_EXTENSIONS, ByteRange, LayoutError, Record
from data_prep.readers.registry import ReaderFormat, register_reader

META_KEYS = ("url", "key", "width", "height", "original_width", "original_height", "status")


class Img2DatasetReader:
    """Samples of every ``*.tar`` in ``root`` (sorted), in tar order."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"img2dataset folder not found: {self.root}")
        self.tars = sorted(self.root.glob("*.tar"))
        if not self.tars:
            raise FileNotFoundError(f"no *.tar shards in {self.root}")

    def _records(self, tar_path: Path) -> Iterator[Record]:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tarfile.open(tar_path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for member in members:
                key, _, ext = member.name.partition(".")
                groups.setdefault(key, {})["." + ext.lower()] = member
            texts = {m.name: tar.extractfile(m).read() for m in members  # type: ignore[union-attr]
                     if m.name.endswith((".txt", ".json"))}
        for key, parts in groups.items():
            source_id = f"{tar_path.name}/{key}"
            image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
            meta: dict = {}
            if ".json" in parts:
                try:
                    sample_meta = json.loads(texts[parts[".json"].name])
                    meta = {k: sample_meta[k] for k in META_KEYS if k in sample_meta}
                except ValueError:
                    meta = {}
            if image is None:
                yield Record(source_id, None, [], meta, error="missing_file")
                continue
            ref = ByteRange(str(tar_path), image.offset_data, image.size)
            if ".txt" not in parts:
                yield Record(source_id, ref, [], meta, error="missing_caption")
                continue
            yield Record(source_id, ref, [texts[parts[".txt"].name]], meta)

    def __iter__(self) -> Iterator[Record]:
        for tar_path in self.tars:
            yield from self._records(tar_path)


def _build(path: Path, options: object) -> Img2DatasetReader:
    if not any(path.glob("*.tar")):
        raise LayoutError("no *.tar shards in it")
    return Img2DatasetReader(path)


register_reader(ReaderFormat(
    "img2dataset", "a directory of img2dataset webdataset shards (00000.tar with key.jpg + key.txt, ...)",
    directory=True, build=_build, claims=lambda path: any(path.glob("*.tar")), priority=20))
