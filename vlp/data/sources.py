"""Which shards a loader reader reads, in which order (epoch mode and resampled mode), and reading
them with every sample's position, so that a reader can be put back where it was.

Epoch mode: a permutation of all shards seeded by (seed, epoch), split by rank, then by logical
reader, so that each sample is read exactly once per epoch across ranks x readers. Every reader
walks the epochs on its own (each epoch's split is deterministic), so the stream needs no shared
epoch counter; ``epochs`` bounds it (None: endless).

Resampled mode: shards drawn with replacement, a source picked by weight and then a shard of it
uniformly; draw number d of a reader comes from a generator seeded by (seed, rank, reader, d), so
the draws are independent per reader and any draw can be recomputed from its number alone.

A shard's *ordinal* numbers the shards of one reader's stream: epoch * shards-per-epoch + index in
epoch mode, the draw number in resampled mode. A sample's position is (ordinal, index in its shard)
and ``PositionedReader`` tags every sample with it (``__pos__``); its ``restore`` re-reads only the
shards a saved buffer's members come from and the current shard (tar bytes, nothing decoded).
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import webdataset as wds

from vlp.data.shards import ShardSource
from vlp.data.tar_stream import tar_samples

Sample = Dict[str, Any]


def worker_info() -> tuple[int, int]:
    """(this loader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class EpochShardStream(torch.utils.data.IterableDataset):
    """{"url", "epoch"} dicts: per-epoch shuffled shards of this rank and reader."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int = 0, world_size: int = 1,
                 epochs: Optional[int] = None, start_epoch: int = 0) -> None:
        super().__init__()
        self.urls, self.seed, self.rank, self.world_size, self.epochs = list(urls), seed, rank, world_size, epochs
        self.start_epoch = start_epoch  # a resumed run continues with this epoch's permutation
        self._split: Tuple[Any, List[str]] = (None, [])

    def split(self, epoch: int, reader: int, readers: int) -> List[str]:
        """The shards of ``reader`` (of ``readers``) in ``epoch``, in reading order."""
        if self._split[0] != (epoch, reader, readers):
            order = list(self.urls)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._split = ((epoch, reader, readers), order[self.rank::self.world_size][reader::readers])
        return self._split[1]

    def per_epoch(self, reader: int, readers: int) -> int:
        """How many shards ``reader`` reads per epoch (the same every epoch)."""
        return len(range(self.rank, len(self.urls), self.world_size)[reader::readers])

    def ordinals(self, reader: int, readers: int) -> Tuple[int, Optional[int]]:
        """(first ordinal, end ordinal or None when endless) of ``reader``'s stream."""
        n = self.per_epoch(reader, readers)
        end = None if self.epochs is None else (self.start_epoch + self.epochs) * n
        return self.start_epoch * n, end

    def shard_at(self, ordinal: int, reader: int, readers: int) -> Dict[str, object]:
        """{"url", "epoch"} of shard ``ordinal`` of ``reader``'s stream."""
        epoch, index = divmod(ordinal, self.per_epoch(reader, readers))
        return {"url": self.split(epoch, reader, readers)[index], "epoch": epoch}

    def __iter__(self) -> Iterator[Dict[str, object]]:
        worker, num_workers = worker_info()
        first, end = self.ordinals(worker, num_workers)
        if first == end or self.per_epoch(worker, num_workers) == 0:
            return  # build_train_loader refuses this case; never spin on an empty split
        for ordinal in itertools.count(first) if end is None else range(first, end):
            yield self.shard_at(ordinal, worker, num_workers)


class ResampledShardStream(torch.utils.data.IterableDataset):
    """Endless {"url", "epoch"} dicts drawn with replacement: a source by weight, then one of its shards.
    "epoch" counts passes' worth of draws (draws // shards) so captions still vary per pass."""

    def __init__(self, sources: Sequence[ShardSource], seed: int, rank: int = 0, start_epoch: int = 0) -> None:
        super().__init__()
        self.sources, self.seed, self.rank, self.start_epoch = list(sources), seed, rank, start_epoch
        self.weights = [s.weight for s in self.sources]
        self.total = sum(len(s.urls) for s in self.sources)

    def ordinals(self, reader: int, readers: int) -> Tuple[int, Optional[int]]:
        """(first draw, None): endless."""
        return 0, None

    def shard_at(self, ordinal: int, reader: int, readers: int = 1) -> Dict[str, object]:
        """{"url", "epoch"} of draw ``ordinal`` of ``reader``."""
        # a resumed run without a position (start_epoch > 0) draws a fresh sequence, not the first one again
        key = f"{self.seed}/{self.rank}/{reader}" + (f"/{self.start_epoch}" if self.start_epoch else "")
        rng = random.Random(f"{key}/{ordinal}")
        source = rng.choices(self.sources, weights=self.weights)[0] if len(self.sources) > 1 else self.sources[0]
        return {"url": rng.choice(source.urls), "epoch": self.start_epoch + ordinal // self.total}

    def __iter__(self) -> Iterator[Dict[str, object]]:
        worker, num_workers = worker_info()
        for draw in itertools.count():
            yield self.shard_at(draw, worker, num_workers)


ShardStream = Any  # EpochShardStream | ResampledShardStream: ordinals(), shard_at()


def read_samples(shards: Iterator[Dict[str, object]], handler) -> Iterator[Sample]:
    """Raw samples of each shard (opened through webdataset's gopen, parsed by ``tar_stream``), tagged
    with "__epoch__". A shard that fails to open or read goes to ``handler`` (count and go on)."""
    for shard in shards:
        for _, sample in shard_samples(shard, handler):
            yield sample


def shard_samples(shard: Dict[str, object], handler) -> Iterator[Tuple[int, Sample]]:
    """(index, sample) of each sample of one shard, tagged with "__epoch__"; an open or read error goes
    to ``handler`` and ends the shard (raised when the handler says so)."""
    url = str(shard["url"])
    stream = None
    try:
        stream = wds.gopen(url)
        for index, sample in enumerate(tar_samples(stream, url, handler)):
            sample["__epoch__"] = shard["epoch"]
            yield index, sample
    except Exception as exn:
        exn.args = exn.args + (url,)
        if not handler(exn):
            raise
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a pipe read only in part: nothing of the data is lost
                pass


def _mute(exn: Exception) -> bool:
    """The handler while replaying samples read before: their errors were counted the first time."""
    return True


class PositionedReader:
    """The samples of one logical reader (``reader`` of ``readers``) of a shard stream, each tagged with
    its position ``__pos__`` = (ordinal, index); ``ordinal``, ``epoch`` and ``read`` say where it is (the
    shard of the last sample it gave, its epoch, and how many samples of it were read, corrupt ones
    included)."""

    def __init__(self, shards: ShardStream, reader: int, readers: int, handler) -> None:
        self.shards, self.reader, self.readers, self.handler = shards, reader, readers, handler
        self.ordinal, self.read, self.epoch = -1, 0, -1
        self.first, self.end = shards.ordinals(reader, readers)
        epoch_mode = hasattr(shards, "per_epoch")
        self.empty = epoch_mode and shards.per_epoch(reader, readers) == 0  # refused by build_train_loader

    def _open(self, ordinal: int, handler) -> Iterator[Tuple[int, Sample]]:
        return shard_samples(self.shards.shard_at(ordinal, self.reader, self.readers), handler)

    def samples(self, ordinal: Optional[int] = None, current: Optional[Iterator[Tuple[int, Sample]]] = None
                ) -> Iterator[Sample]:
        """The stream from shard ``ordinal`` (default: the first) to the end; ``current``: that shard,
        already open and read in part."""
        ordinal = self.first if ordinal is None else ordinal
        while not self.empty and (self.end is None or ordinal < self.end):
            for index, sample in current if current is not None else self._open(ordinal, self.handler):
                sample["__pos__"] = (ordinal, index)
                self.ordinal, self.read, self.epoch = ordinal, index + 1, sample["__epoch__"]
                yield sample
            current, ordinal = None, ordinal + 1

    def restore(self, ordinal: int, read: int, members: Sequence[Sequence[int]]) -> Tuple[List[Sample], Iterator[Sample]]:
        """(the buffer members at ``members`` positions, in order; the stream after sample ``read`` of
        shard ``ordinal``). Re-reads each earlier shard a member comes from up to its last member, and
        the current shard up to ``read``, never decoding; errors met there were counted the first time."""
        wanted = [(int(o), int(i)) for o, i in members]
        last: Dict[int, int] = {}
        for o, i in wanted:
            last[o] = max(last.get(o, -1), i)
        keep, found = set(wanted), {}
        for o in sorted(o for o in last if o < ordinal):
            for index, sample in self._open(o, _mute):
                if (o, index) in keep:
                    sample["__pos__"] = (o, index)
                    found[(o, index)] = sample
                if index >= last[o]:
                    break
        current = self._replay(ordinal, read, keep, found)
        missing = [p for p in wanted if p not in found]
        if missing:
            url = self.shards.shard_at(missing[0][0], self.reader, self.readers)["url"]
            raise ValueError(f"the saved loader position names sample {missing[0][1]} of {url}, which does not "
                             f"read any more ({len(missing)} member(s) missing): the shards changed since it was saved")
        self.ordinal, self.read = ordinal, read
        self.epoch = self.shards.shard_at(ordinal, self.reader, self.readers)["epoch"]
        return [found[p] for p in wanted], self.samples(ordinal, current)

    def _replay(self, ordinal: int, read: int, keep: set, found: Dict[Tuple[int, int], Sample]
                ) -> Iterator[Tuple[int, Sample]]:
        """Shard ``ordinal`` opened and read up to sample ``read`` (its members in ``keep`` go to
        ``found``); what it reads after that is live (its errors counted)."""
        live = [read <= 0]
        opened = self._open(ordinal, lambda exn: self.handler(exn) if live[0] else True)
        while not live[0]:
            item = next(opened, None)
            if item is None:
                url = self.shards.shard_at(ordinal, self.reader, self.readers)["url"]
                raise ValueError(f"the saved loader position is at sample {read} of {url}, past its end: "
                                 "the shards changed since it was saved")
            index, sample = item
            if (ordinal, index) in keep:
                sample["__pos__"] = (ordinal, index)
                found[(ordinal, index)] = sample
            live[0] = index + 1 >= read
        return opened


def shard_stream(sources: List[ShardSource], *, resampled: bool, seed: int, rank: int, world_size: int,
                 epochs: Optional[int], start_epoch: int = 0) -> torch.utils.data.IterableDataset:
    """The shard stream of this rank for ``sources`` in the chosen mode, from ``start_epoch``."""
    if resampled:
        return ResampledShardStream(sources, seed=seed, rank=rank, start_epoch=start_epoch)
    urls = [u for s in sources for u in s.urls]
    return EpochShardStream(urls, seed=seed, rank=rank, world_size=world_size, epochs=epochs, start_epoch=start_epoch)
