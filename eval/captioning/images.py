"""Readers of images to caption (``python -m eval caption --images``): a folder of image files
(recursively) or webdataset shards, each image an :class:`~eval.datasets.records.ImageRecord`.

=============================================  ==========================================
``--images``                                   read as
=============================================  ==========================================
folder with ``test/nshards.txt``               CLIP_benchmark shards (``eval/datasets``)
folder holding ``*.tar``                       those shards, sorted
``dir/shard-{0000..0009}.tar`` / a ``.tar``    those shards (``vlp.data.shards``)
any other folder                               its image files, recursively, sorted; keys
                                               are paths relative to it (``a/b.jpg``)
=============================================  ==========================================

A shard sample's image is its first webp / png / jpg / jpeg field; a sample without one, or an
image that does not decode, is a counted skip, as everywhere in eval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from eval.datasets.base import EvalDataset, Transform, load_image
from eval.datasets.image_folder import IMAGE_FOLDER_EXTS
from eval.datasets.records import ImageRecord
from eval.datasets.shards import ShardReader, shard_urls


class ImageFiles(EvalDataset):
    """Every image file under ``root`` (extensions of :data:`IMAGE_FOLDER_EXTS`), in sorted walk order."""

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"missing image folder: {self.root}")
        self.files = image_files(self.root)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_FOLDER_EXTS)}) under {self.root}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.root.resolve().name

    def content_files(self) -> list[Path]:
        return [self.root / rel for rel in self.files]

    def samples(self) -> Iterator[tuple[str, Callable[[], Any]]]:
        for rel in self.files:
            yield rel, (lambda rel=rel: ImageRecord(rel, self.image(lambda: load_image(self.root / rel))))


def image_files(root: Path) -> list[str]:
    """POSIX paths relative to ``root`` of its image files, sorted as ``os.walk`` sorted gives them."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        found += [Path(folder, f).relative_to(root).as_posix() for f in sorted(files)
                  if f.lower().endswith(IMAGE_FOLDER_EXTS) and not f.startswith(".")]
    return found


class ShardImages(ShardReader):
    """The images of webdataset shards (any other fields ignored)."""

    def __init__(self, urls: Sequence[str], name: str, transform: Transform | None = None) -> None:
        EvalDataset.__init__(self, transform)
        self.root = Path(urls[0]).parent if urls else Path(".")
        self.split = ""
        self.urls = list(urls)
        self.label = name
        self._errors = []

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def content_files(self) -> list[Path]:
        return [Path(u) for u in self.urls]

    def parse(self, sample: dict[str, Any]) -> ImageRecord:
        return ImageRecord(str(sample["__key__"]), self.shard_image(sample))


def open_images(spec: str) -> EvalDataset:
    """The reader of ``--images`` (module table); FileNotFoundError / ValueError say what is wrong."""
    path = Path(spec)
    if path.is_dir():
        if (path / "test" / "nshards.txt").is_file():
            return ShardImages(shard_urls(path, "test"), path.resolve().name)
        tars = sorted(p for p in path.glob("*.tar") if p.is_file())
        if tars:
            return ShardImages([str(p) for p in tars], path.resolve().name)
        return ImageFiles(path)
    if "{" in spec or path.suffix == ".tar":
        from vlp.data.shards import expand_shards

        urls = expand_shards(spec)
        return ShardImages(urls, Path(urls[0]).parent.resolve().name)
    if path.is_file():
        raise ValueError(f"--images {spec}: give a folder of images, a shard folder or a .tar / brace pattern of shards")
    raise FileNotFoundError(f"--images {spec} does not exist")
