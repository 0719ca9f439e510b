"""Which shards a loader worker reads, in which order: epoch mode and resampled mode.

Epoch mode: a permutation of all shards seeded by (seed, epoch), split by rank, then by loader
worker, so that each sample is read exactly once per epoch across ranks x workers. Every worker
walks the epochs on its own (each epoch's split is deterministic), so the stream needs no shared
epoch counter; ``epochs`` bounds it (None: endless).

Resampled mode: shards drawn with replacement, a source picked by weight and then a shard of it
uniformly, from a generator seeded by (seed, rank, worker): endless, independent per reader, for
multi-node streams and for mixing sources at chosen rates.
"""

from __future__ import annotations

import itertools
import random
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import webdataset as wds

from vlp.data.shards import ShardSource
from vlp.data.tar_stream import tar_samples


def worker_info() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class EpochShardStream(torch.utils.data.IterableDataset):
    """{"url", "epoch"} dicts: per-epoch shuffled shards of this rank and worker."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int = 0, world_size: int = 1,
                 epochs: Optional[int] = None, start_epoch: int = 0) -> None:
        super().__init__()
        self.urls, self.seed, self.rank, self.world_size, self.epochs = list(urls), seed, rank, world_size, epochs
        self.start_epoch = start_epoch  # a resumed run continues with this epoch's permutation

    def __iter__(self) -> Iterator[Dict[str, object]]:
        worker, num_workers = worker_info()
        first = self.start_epoch
        for epoch in itertools.count(first) if self.epochs is None else range(first, first + self.epochs):
            order = list(self.urls)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            mine = order[self.rank::self.world_size][worker::num_workers]
            if not mine:
                return  # build_train_loader refuses this case; never spin on an empty split
            for url in mine:
                yield {"url": url, "epoch": epoch}


class ResampledShardStream(torch.utils.data.IterableDataset):
    """Endless {"url", "epoch"} dicts drawn with replacement: a source by weight, then one of its shards.
    "epoch" counts passes' worth of draws (draws // shards) so captions still vary per pass."""

    def __init__(self, sources: Sequence[ShardSource], seed: int, rank: int = 0, start_epoch: int = 0) -> None:
        super().__init__()
        self.sources, self.seed, self.rank, self.start_epoch = list(sources), seed, rank, start_epoch

    def __iter__(self) -> Iterator[Dict[str, object]]:
        worker, _ = worker_info()
        # a resumed run (start_epoch > 0) draws a fresh sequence instead of replaying the first one
        key = f"{self.seed}/{self.rank}/{worker}" + (f"/{self.start_epoch}" if self.start_epoch else "")
        rng = random.Random(key)
        weights = [s.weight for s in self.sources]
        total = sum(len(s.urls) for s in self.sources)
        for draw in itertools.count():
            source = rng.choices(self.sources, weights=weights)[0] if len(self.sources) > 1 else self.sources[0]
            yield {"url": rng.choice(source.urls), "epoch": self.start_epoch + draw // total}


def read_samples(shards: Iterator[Dict[str, object]], handler) -> Iterator[Dict[str, object]]:
    """Raw samples of each shard (opened through webdataset's gopen, parsed by ``tar_stream``), tagged
    with "__epoch__". A shard that fails to open or read goes to ``handler`` (count and go on)."""
    for shard in shards:
        url = str(shard["url"])
        try:
            stream = wds.gopen(url)
            for sample in tar_samples(stream, url, handler):
                sample["__epoch__"] = shard["epoch"]
                yield sample
        except Exception as exn:
            exn.args = exn.args + (url,)
            if not handler(exn):
                raise


def shard_stream(sources: List[ShardSource], *, resampled: bool, seed: int, rank: int, world_size: int,
                 epochs: Optional[int], start_epoch: int = 0) -> torch.utils.data.IterableDataset:
    """The shard stream of this rank for ``sources`` in the chosen mode, from ``start_epoch``."""
    if resampled:
        return ResampledShardStream(sources, seed=seed, rank=rank, start_epoch=start_epoch)
    urls = [u for s in sources for u in s.urls]
    return EpochShardStream(urls, seed=seed, rank=rank, world_size=world_size, epochs=epochs, start_epoch=start_epoch)
