"""Reader: existing img2dataset output in webdataset format (``00000.tar`` + ``_stats.json``/
``.parquet`` beside each), for re-sharding and resizing.

Each sample's ``key.jpg`` (or png/webp), ``key.txt`` and ``key.json`` are grouped by key; the
image is referenced as a byte range inside the tar (nothing is extracted). The per-sample JSON's
``url``, ``key``, ``width``/``height`` and ``original_width``/``original_height`` are kept in
``meta``. Only uncompressed tars are read (img2dataset never compresses them).

Ranges (``data_prep.readers.ranges``) come from one pass over the tars' member headers (samples
per tar); a range starts at (tar, sample in it), carried as ``RecordRange.offset`` and ``.line``,
so a chunk reads only the tars it spans.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator, List

from data_prep.readers.base import IMAGE_EXTENSIONS, ByteRange, LayoutError, Record
from data_prep.readers.ranges import RecordRange
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

    def _sample_count(self, tar_path: Path) -> int:
        with tarfile.open(tar_path, "r:") as tar:
            return len({m.name.partition(".")[0] for m in tar.getmembers() if m.isfile()})

    def ranges(self, size: int) -> List[RecordRange]:
        """Ranges of ``size`` samples; ``offset`` = index of the tar the range starts in, ``line`` =
        the sample's index inside it."""
        ranges: List[RecordRange] = []
        total = 0
        for t, tar_path in enumerate(self.tars):
            count = self._sample_count(tar_path)
            first = -total % size  # the first sample of this tar that starts a range
            for within in range(first, count, size):
                ranges.append(RecordRange(total + within, 0, t, within))
            total += count
        return [RecordRange(r.start, min(size, total - r.start), r.offset, r.line) for r in ranges]

    def read_range(self, rng: RecordRange) -> Iterator[Record]:
        left, skip = rng.count, rng.line
        for tar_path in self.tars[rng.offset:]:
            for record in self._records(tar_path):
                if skip:
                    skip -= 1
                    continue
                if left == 0:
                    return
                yield record
                left -= 1
            if left == 0:
                return


def _build(path: Path, options: object) -> Img2DatasetReader:
    if not any(path.glob("*.tar")):
        raise LayoutError("no *.tar shards in it")
    return Img2DatasetReader(path)


register_reader(ReaderFormat(
    "img2dataset", "a directory of img2dataset webdataset shards (00000.tar with key.jpg + key.txt, ...)",
    directory=True, build=_build, claims=lambda path: any(path.glob("*.tar")), priority=20))
