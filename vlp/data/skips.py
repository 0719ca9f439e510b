"""Counting what the loader skips, by reason, so nothing bad in the data is ever silent."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Dict

log = logging.getLogger(__name__)


class SkipCounter:
    """Per-worker tally of skipped samples. ``handler`` plugs into webdataset stages as the
    exception handler (count, log the first few, continue); ``drain`` hands the counts since the
    last drain to the batch that carries them to the training process."""

    def __init__(self, log_first: int = 5) -> None:
        self.pending: Counter[str] = Counter()
        self.total = 0
        self.log_first = log_first

    def add(self, reason: str, detail: str = "") -> None:
        self.pending[reason] += 1
        self.total += 1
        if self.total <= self.log_first:
            log.warning("skipped a sample (%s) %s", reason, detail)

    def handler(self, exn: Exception) -> bool:
        self.add(f"read_error:{type(exn).__name__}", str(exn)[:200])
        return True

    def drain(self) -> Dict[str, int]:
        counts, self.pending = dict(self.pending), Counter()
        return counts
