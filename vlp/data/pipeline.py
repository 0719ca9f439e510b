"""The training stream: shards -> samples -> decoded, augmented, tokenized batches.

Order of one epoch: a permutation of the shard list seeded by (seed, epoch), split by rank, then
by loader worker, so that each sample is read once per epoch across ranks x workers. Every worker
walks the epochs on its own (each epoch's split is deterministic), so the stream never ends and
needs no shared epoch counter. Samples are shuffled in a buffer, decoded with Pillow, transformed,
tokenized and batched inside the workers. A sample that fails to read or decode is skipped and
counted; the counts ride along with the next batch as ``batch["skipped"]``.
"""

from __future__ import annotations

import io
import itertools
import random
import warnings
from typing import Any, Dict, Iterator, List, Sequence

import torch
import webdataset as wds
from PIL import Image

from vlp.config import ConfigError
from vlp.data.shards import count_samples, expand_shards
from vlp.data.skips import SkipCounter
from vlp.data.tokenizers import Tokenizer
from vlp.data.transforms import ImageTransform

Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default bomb limit, made explicit: larger is an error, not a warning


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class EpochShardStream(torch.utils.data.IterableDataset):
    """Infinite iterator of {"url": ...}: per-epoch shuffled shards of this rank and worker."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.urls, self.seed, self.rank, self.world_size = list(urls), seed, rank, world_size

    def __iter__(self) -> Iterator[Dict[str, str]]:
        worker, num_workers = _worker()
        for epoch in itertools.count():
            order = list(self.urls)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            mine = order[self.rank::self.world_size][worker::num_workers]
            for url in mine:
                yield {"url": url}


def decode_sample(sample: Dict[str, Any], image_keys: Sequence[str], caption_key: str) -> tuple[Image.Image, str]:
    """The (RGB image, caption) of a raw webdataset sample; raises ValueError naming what is wrong."""
    image_bytes = next((sample[k] for k in image_keys if k in sample), None)
    if image_bytes is None:
        raise ValueError("missing_image")
    if caption_key not in sample:
        raise ValueError("missing_caption")
    try:
        caption = sample[caption_key].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("caption_not_utf8") from None
    if not caption:
        raise ValueError("empty_caption")
    try:
        image = Image.open(io.BytesIO(image_bytes))
        image.load()
    except Image.DecompressionBombError:
        raise ValueError("image_too_large") from None
    except Exception:
        raise ValueError("image_unreadable") from None
    return image.convert("RGB"), caption


class BatchAssembler:
    """Pipeline stage: raw samples in, batches {image, text, skipped} out (in the worker)."""

    def __init__(self, batch_size: int, transform: ImageTransform, tokenizer: Tokenizer,
                 image_keys: Sequence[str], caption_key: str, skips: SkipCounter) -> None:
        self.batch_size, self.transform, self.tokenizer = batch_size, transform, tokenizer
        self.image_keys, self.caption_key, self.skips = image_keys, caption_key, skips

    def __call__(self, samples: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        images: List[torch.Tensor] = []
        captions: List[str] = []
        for sample in samples:
            try:
                image, caption = decode_sample(sample, self.image_keys, self.caption_key)
                images.append(self.transform(image))
                captions.append(caption)
            except ValueError as err:
                self.skips.add(str(err), sample.get("__key__", ""))
                continue
            if len(images) == self.batch_size:
                yield {"image": torch.stack(images), "text": self.tokenizer(captions),
                       "skipped": self.skips.drain()}
                images, captions = [], []


def build_train_loader(shards: str, batch_size: int, transform: ImageTransform, tokenizer: Tokenizer, *,
                       workers: int = 1, shuffle_buffer: int = 2000, seed: int = 0, rank: int = 0,
                       world_size: int = 1, image_keys: Sequence[str] = ("jpg", "png", "webp"),
                       caption_key: str = "txt") -> torch.utils.data.DataLoader:
    """An endless DataLoader of this rank's training batches (already collated in the workers)."""
    urls = expand_shards(shards)
    readers = world_size * max(workers, 1)
    if len(urls) < readers:
        raise ConfigError(f"data.workers: {len(urls)} shard(s) for {world_size} rank(s) x {max(workers, 1)} worker(s): "
                         f"some readers would get no data; lower data.workers or write more shards")
    if len(urls) % readers:
        warnings.warn(f"{len(urls)} shards do not split evenly over {readers} readers; "
                      "per-epoch sample counts differ between readers")
    skips = SkipCounter()
    stages: List[Any] = [
        EpochShardStream(urls, seed=seed, rank=rank, world_size=world_size),
        wds.tarfile_to_samples(handler=skips.handler),
    ]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 1000),
                                  rng=random.Random(seed + 7919 * (rank + 1))))
    stages.append(BatchAssembler(batch_size, transform, tokenizer, image_keys, caption_key, skips))
    pipeline = wds.DataPipeline(*stages)
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def epoch_samples(shards: str) -> int | None:
    """Samples per epoch of ``shards`` from sizes.json, None when unknown."""
    return count_samples(expand_shards(shards))
