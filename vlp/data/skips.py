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


class SkipReport:
    """Training-process tally of the skip counts that batches carry (``batch["skipped"]``).
    ``update`` logs one line with the totals by reason when new skips arrived and at least
    ``interval_s`` seconds passed since the last line (the first skip is logged at once)."""

    def __init__(self, interval_s: float = 60.0, clock=None) -> None:
        import time

        self.totals: Counter[str] = Counter()
        self.interval_s = interval_s
        self.clock = clock or time.monotonic
        self._last_log: float | None = None
        self._unlogged = 0
        self.lines = 0

    def update(self, counts: Dict[str, int]) -> bool:
        """Add one batch's counts; True when a log line was written."""
        if counts:
            self.totals.update(counts)
            self._unlogged += sum(counts.values())
        now = self.clock()
        if self._unlogged and (self._last_log is None or now - self._last_log >= self.interval_s):
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.totals.items()))
            log.warning("skipped %d sample(s) so far (+%d since the last report): %s",
                        sum(self.totals.values()), self._unlogged, reasons)
            self._last_log, self._unlogged = now, 0
            self.lines += 1
            return True
        return False
