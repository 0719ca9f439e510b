"""Where a training stream is, for an exact mid-epoch resume.

Every batch of ``build_train_loader`` carries ``batch["position"]``: a snapshot of the reader that
produced it, taken right after it assembled that batch, in plain ints, strings, lists and tuples
(``torch.load(weights_only=True)`` reads it back):

- ``format``, ``stream`` (the settings that fix what each reader reads: shard count and a digest of
  the shard names, batch size, readers, world size, rank, seed, mode, shuffle buffer),
  ``start_epoch`` (where the stream began);
- ``reader``: the logical reader (loader worker) id, ``batches``: how many batches it has produced;
- ``epoch``, ``shard`` (the ordinal of its current shard: epoch * shards-per-epoch + index in epoch
  mode, the draw number in resampled mode, see ``vlp.data.sources``) and ``read`` (samples of that
  shard read so far, corrupt ones included);
- ``buffer``: the shuffle buffer's members as (shard ordinal, sample index) pairs, in buffer order,
  and ``rng``: the shuffle generator's state (``random.Random.getstate``).

A DataLoader hands batches out round-robin over its workers, so after n consumed batches the next
comes from logical reader n mod W. ``LoaderPosition`` (in the training process) keeps the last
consumed snapshot of each reader and the count; a loader built with its ``state_dict`` as
``position=`` lets physical worker i play logical reader (i + n) mod W from its snapshot, and yields
exactly the batches the uninterrupted loader would have yielded next.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

FORMAT = 1

# what each stream setting is called in the user's config (for the refusal message)
SETTING_NAMES = {"shards": "the shards (data.train_shards / data.sources)", "batch_size": "the batch size",
                 "readers": "data.workers (loader workers)", "world_size": "the world size (processes)",
                 "rank": "the rank", "seed": "the seed", "resampled": "data.resampled",
                 "shuffle_buffer": "data.shuffle_buffer"}


def stream_settings(urls_by_source: Sequence[Sequence[str]], weights: Sequence[float], *, batch_size: int,
                    readers: int, world_size: int, rank: int, seed: int, resampled: bool,
                    shuffle_buffer: int) -> Dict[str, Any]:
    """The settings a position is only valid for. Shards count by file name (a data set moved to
    another folder keeps its positions), per source and with the sources' weights."""
    digest = hashlib.blake2b(digest_size=8)
    for urls, weight in zip(urls_by_source, weights):
        digest.update(f"{float(weight)!r}\x00".encode())
        for url in urls:
            digest.update(os.path.basename(str(url).rstrip("/")).encode() + b"\x00")
        digest.update(b"\x01")
    shards = f"{sum(len(u) for u in urls_by_source)} shard(s), names {digest.hexdigest()}"
    return {"shards": shards, "batch_size": int(batch_size), "readers": int(readers), "world_size": int(world_size),
            "rank": int(rank), "seed": int(seed), "resampled": bool(resampled), "shuffle_buffer": int(shuffle_buffer)}


def check_position(position: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Refuse (ValueError naming each difference) a position saved by a loader with other settings."""
    if not isinstance(position, Mapping) or position.get("format") != FORMAT:
        raise ValueError(f"not a loader position of format {FORMAT}: "
                         f"{type(position).__name__} with format {getattr(position, 'get', dict().get)('format')!r}")
    saved = position.get("stream") or {}
    differences = [f"{SETTING_NAMES.get(k, k)}: saved {saved.get(k)!r}, now {settings[k]!r}"
                   for k in settings if saved.get(k) != settings[k]]
    if differences:
        raise ValueError("the saved loader position belongs to a loader with other settings; it can resume only "
                         "the same stream. Differences: " + "; ".join(differences) +
                         ". Restore those settings, or resume without the position (from the start of its epoch).")
    readers = position.get("readers")
    if not isinstance(readers, (list, tuple)) or len(readers) != settings["readers"]:
        raise ValueError(f"the saved loader position holds {len(readers or ())} reader(s), "
                         f"its settings say {settings['readers']}")


_HEADER = ("format", "stream", "start_epoch")  # the same in every snapshot of a loader: saved once


class LoaderPosition:
    """Training-process tracker of the batches a training loop consumed: ``observe`` each consumed
    batch; ``state_dict`` is the position to save (``build_train_loader(..., position=...)`` resumes
    from it). Built with ``resumed`` (the position a loader was resumed from) it continues that count
    and keeps the snapshots of readers it has not seen again yet."""

    def __init__(self, resumed: Optional[Mapping[str, Any]] = None) -> None:
        self.stream: Optional[Dict[str, Any]] = None
        self.start_epoch = 0
        self.readers: List[Optional[Mapping[str, Any]]] = []
        self.batches = 0
        if resumed is not None:
            self.load_state_dict(resumed)

    def observe(self, batch: Mapping[str, Any]) -> None:
        """Record one consumed batch (its ``position`` snapshot)."""
        snapshot = batch.get("position") if isinstance(batch, Mapping) else None
        if not isinstance(snapshot, Mapping):
            raise ValueError("LoaderPosition.observe: the batch has no 'position' (it must come from "
                             "vlp.data.pipeline.build_train_loader)")
        if self.stream is None:
            self.stream, self.start_epoch = dict(snapshot["stream"]), int(snapshot["start_epoch"])
            self.readers = [None] * self.stream["readers"]
        elif snapshot["stream"] != self.stream:
            raise ValueError("LoaderPosition.observe: a batch of another loader (other stream settings)")
        self.readers[int(snapshot["reader"])] = snapshot
        self.batches += 1

    @property
    def epoch(self) -> Optional[int]:
        """The epoch of the last consumed batch's reader (None before any batch)."""
        seen = [r for r in self.readers if r is not None]
        return max(int(r["epoch"]) for r in seen) if seen else None

    def state_dict(self) -> Dict[str, Any]:
        """{"format", "stream", "start_epoch", "batches", "readers": [snapshot or None per reader]}:
        plain containers, or {} before the first batch (nothing to resume from)."""
        if self.stream is None:
            return {}
        readers = [None if r is None else {k: v for k, v in r.items() if k not in _HEADER} for r in self.readers]
        return {"format": FORMAT, "stream": dict(self.stream), "start_epoch": self.start_epoch,
                "batches": self.batches, "readers": readers}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved ``state_dict`` (an empty one: from the start)."""
        if not state:
            return
        check_position(state, state.get("stream") or {})
        self.stream, self.start_epoch = dict(state["stream"]), int(state["start_epoch"])
        self.batches = int(state["batches"])
        self.readers = [None if r is None else {**r, "stream": self.stream, "format": FORMAT,
                                                "start_epoch": self.start_epoch} for r in state["readers"]]
