"""Batches of eval dataset items, read by DataLoader workers, and the split of records from
:class:`~eval.datasets.records.Skipped` markers."""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from eval.datasets.base import EvalDataset
from eval.datasets.records import Skipped

log = logging.getLogger(__name__)


def _as_list(items: list[Any]) -> list[Any]:
    return items


FIRST_BATCH = 32  # items in the first list of each worker: the model starts on it at once


class _Batched(torch.utils.data.IterableDataset):
    """``dataset``'s items (split across workers by the dataset itself) in lists: the first list
    of each worker holds ``first`` items, the others ``size``."""

    def __init__(self, dataset: EvalDataset, size: int, first: int) -> None:
        self.dataset, self.size, self.first = dataset, size, first

    def __iter__(self) -> Iterator[list[Any]]:
        batch, limit = [], self.first
        for item in self.dataset:
            batch.append(item)
            if len(batch) == limit:
                yield batch
                batch, limit = [], self.size
        if batch:
            yield batch


def batches(dataset: EvalDataset, batch_size: int, num_workers: int = 0) -> Iterator[list[Any]]:
    """Lists of up to ``batch_size`` items (records and :class:`Skipped`) in shard order.

    With ``num_workers > 0`` the samples are split across worker processes (order then
    interleaves; records carry their ``index``); each worker's first list then holds at most
    ``FIRST_BATCH`` items, so the model is not idle while a whole batch is decoded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    first = min(batch_size, FIRST_BATCH) if num_workers > 0 else batch_size  # nothing to overlap without workers
    batched = _Batched(dataset, batch_size, first)
    loader = torch.utils.data.DataLoader(batched, batch_size=None, num_workers=num_workers, collate_fn=_as_list)
    yield from loader


def split_skipped(items: list[Any]) -> tuple[list[Any], list[Skipped]]:
    """Separate records from :class:`Skipped` markers, logging each skipped sample."""
    records, skipped = [], []
    for item in items:
        if isinstance(item, Skipped):
            log.warning("skipped sample %s: %s", item.key, item.reason)
            skipped.append(item)
        else:
            records.append(item)
    return records, skipped
