"""SugarCrepe (Hsieh et al. 2023) read from its published JSON files and COCO val2017 images.

Layout::

    DIR/<subset>.json    {id: {"filename": "000000xxxxxx.jpg", "caption": str, "negative_caption": str}}
    IMAGE_ROOT/<filename>   COCO val2017 images (IMAGE_ROOT defaults to DIR/val2017, else DIR)

Subsets: replace_obj, replace_att, replace_rel, swap_obj, swap_att, add_obj, add_att. A sample is
correct when the image scores strictly higher with the caption than with the negative caption
(a tie is a miss). Metrics: ``acc_<subset>`` per subset, the REPLACE/SWAP/ADD means over the
subsets present, and ``acc`` the mean over subsets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from eval.benchmarks.choices import CaptionChoice, ChoiceSet, score_choices
from eval.benchmarks.metrics import strict_pair_accuracy
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder

SUBSETS: tuple[str, ...] = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
RESULT_TASK = "image_caption_selection"  # the result's `task` field (CLIP_benchmark's name)


def default_image_root(dataset_dir: str | os.PathLike[str]) -> Path:
    """DIR/val2017 when it exists, else DIR."""
    val = Path(dataset_dir) / "val2017"
    return val if val.is_dir() else Path(dataset_dir)


def read_subset(
    dataset_dir: str | os.PathLike[str], subset: str, image_root: str | os.PathLike[str]
) -> tuple[list[CaptionChoice], list[tuple[str, str]]]:
    """Choices (image, [caption, negative_caption]) of one subset, and its malformed entries."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown SugarCrepe subset {subset!r}; choose from {', '.join(SUBSETS)}")
    path = Path(dataset_dir) / f"{subset}.json"
    if not path.is_file():
        raise FileNotFoundError(f"missing SugarCrepe file: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object {{id: entry}}")
    choices, bad = [], []
    for key, entry in data.items():
        entry = entry if isinstance(entry, dict) else {}
        fields = [entry.get(f) for f in ("filename", "caption", "negative_caption")]
        if not all(isinstance(f, str) for f in fields):
            bad.append((str(key), "malformed entry: needs string filename, caption and negative_caption"))
            continue
        filename, caption, negative = fields
        choices.append(CaptionChoice(f"{subset}/{key}", Path(image_root) / filename, [caption, negative]))
    return choices, bad


def present_subsets(dataset_dir: str | os.PathLike[str]) -> list[str]:
    """The subsets whose JSON file is in ``dataset_dir``, in :data:`SUBSETS` order."""
    return [s for s in SUBSETS if (Path(dataset_dir) / f"{s}.json").is_file()]


def is_sugarcrepe_folder(path: Path) -> bool:
    return bool(present_subsets(path))


def parse_subsets(text: str) -> list[str]:
    """Comma-separated subset names, checked (ValueError naming the valid ones)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown SugarCrepe subset(s) {', '.join(unknown)}; choose from {', '.join(SUBSETS)}")
    return names


class SugarCrepeSet(NamedTuple):
    """The chosen subsets read: every subset's choices in one :class:`ChoiceSet` (subsets share
    COCO images: each is encoded once), each subset's slice of them and malformed entries."""

    choices: ChoiceSet
    spans: dict[str, slice]
    bad: dict[str, list[tuple[str, str]]]


def open_sugarcrepe(dataset_dir: str | os.PathLike[str], subsets: Sequence[str] = SUBSETS,
                    image_root: str | os.PathLike[str] | None = None) -> SugarCrepeSet:
    """Read ``subsets`` (every file checked before anything is encoded)."""
    subsets = list(dict.fromkeys(subsets))
    if not subsets:
        raise ValueError("no SugarCrepe subset selected")
    image_root = Path(image_root) if image_root is not None else default_image_root(dataset_dir)
    if not image_root.is_dir():
        raise FileNotFoundError(f"missing SugarCrepe image folder (COCO val2017): {image_root}")
    choices: list[CaptionChoice] = []
    spans, bad = {}, {}
    for subset in subsets:
        subset_choices, bad[subset] = read_subset(dataset_dir, subset, image_root)
        spans[subset] = slice(len(choices), len(choices) + len(subset_choices))
        choices += subset_choices
    files = [Path(dataset_dir) / f"{subset}.json" for subset in subsets]
    return SugarCrepeSet(ChoiceSet("sugarcrepe", dataset_dir, choices, files), spans, bad)


def score_sugarcrepe(encoder: Encoder, sugarcrepe: SugarCrepeSet) -> dict[str, Any]:
    """Score the read subsets through ``encoder``; the result dict.

    Keys: dataset, model, task, metrics {acc, acc_<subset>, acc_replace/swap/add}, count_per_subset,
    num_samples, skipped (malformed entries plus unreadable images).
    """
    scores, _ = score_choices(encoder, sugarcrepe.choices, "sugarcrepe")
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped = 0
    for subset, span in sugarcrepe.spans.items():
        ok = [s for s in scores[span] if s is not None]
        pairs = torch.stack(ok) if ok else torch.zeros(0, 2)
        metrics[f"acc_{subset}"] = strict_pair_accuracy(pairs[:, 0], pairs[:, 1])
        counts[subset] = len(ok)
        skipped += len(sugarcrepe.bad[subset]) + (span.stop - span.start) - len(ok)
    subsets = list(sugarcrepe.spans)
    for family in ("replace", "swap", "add"):
        values = [metrics[f"acc_{s}"] for s in subsets if s.startswith(family + "_")]
        if values:
            metrics[f"acc_{family}"] = sum(values) / len(values)
    per_subset = [metrics[f"acc_{s}"] for s in subsets]
    return {
        "dataset": "sugarcrepe",
        "model": encoder.source.name,
        "task": RESULT_TASK,
        "metrics": {"acc": sum(per_subset) / len(per_subset), **metrics},
        "count_per_subset": counts,
        "num_samples": sum(counts.values()),
        "skipped": skipped,
    }


def evaluate_sugarcrepe(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    subsets: Sequence[str] = SUBSETS,
    image_root: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The given SugarCrepe subsets on a model in memory (no cache, one process); see
    :func:`score_sugarcrepe`."""
    sugarcrepe = open_sugarcrepe(dataset_dir, subsets, image_root)
    return score_sugarcrepe(Encoder.for_loaded(loaded, batch_size, device, progress=progress), sugarcrepe)
