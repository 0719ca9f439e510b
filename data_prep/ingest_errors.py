"""The errors of ``vlp-prep ingest`` (shared by its chunk tasks, manifest and finalize)."""

from __future__ import annotations

from typing import Any


class IngestError(RuntimeError):
    """A ``--strict`` failure, chunks not done at finalize, or an output folder that belongs to a
    different ingest (the message names the difference)."""


class EmptyIngestError(IngestError):
    """The ingest wrote no sample; ``stats`` are the counts (also in stats.json)."""

    def __init__(self, message: str, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.stats = stats
