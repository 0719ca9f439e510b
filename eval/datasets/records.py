"""The record types eval readers yield: one per good sample (its ``image`` decoded and
transformed, or None in a metadata-only pass), or a :class:`Skipped` marker.

Records are NamedTuples so the embedding cache can store them as plain rows; ``index`` is the
sample's position in dataset order (set by :class:`eval.datasets.base.EvalDataset`).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Skipped(NamedTuple):
    """A sample (or a whole unreadable tar, index -1) that was dropped, and why."""

    key: str
    reason: str
    index: int = -1


class ClassificationRecord(NamedTuple):
    key: str
    image: Any  # transformed image (PIL image when no transform; None when images are not decoded)
    label: int
    index: int = -1  # position in dataset order, set by EvalDataset.__iter__


class RetrievalRecord(NamedTuple):
    key: str
    image: Any
    captions: list[str]
    index: int = -1


class CompositionalRecord(NamedTuple):
    key: str
    image: Any
    caption: str
    negatives: list[str]
    negative_types: list[str]
    index: int = -1


class ImageRecord(NamedTuple):
    """One image of a published benchmark (a file, maybe cropped); its captions live with the benchmark."""

    key: str
    image: Any
    index: int = -1
