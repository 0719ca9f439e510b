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
from typing import Any, Sequence

import torch

from eval.caption_scoring import CaptionChoice, score_choices
from eval.compositional_metrics import strict_pair_accuracy
from eval.embed import EvalModel

SUBSETS: tuple[str, ...] = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
TASK = "image_caption_selection"


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


def evaluate_sugarcrepe(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    subsets: Sequence[str] = SUBSETS,
    image_root: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the given SugarCrepe subsets; return the result dict.

    Keys: dataset, model, task, metrics {acc, acc_<subset>, acc_replace/swap/add}, count_per_subset,
    num_samples, skipped (malformed entries plus unreadable images).
    """
    subsets = list(dict.fromkeys(subsets))
    if not subsets:
        raise ValueError("no SugarCrepe subset selected")
    image_root = Path(image_root) if image_root is not None else default_image_root(dataset_dir)
    if not image_root.is_dir():
        raise FileNotFoundError(f"missing SugarCrepe image folder (COCO val2017): {image_root}")
    read = {subset: read_subset(dataset_dir, subset, image_root) for subset in subsets}  # all files checked first
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped = 0
    for subset, (choices, bad) in read.items():
        scores, unreadable = score_choices(loaded, choices, batch_size, device, progress, f"sugarcrepe {subset}")
        ok = [s for s in scores if s is not None]
        pairs = torch.stack(ok) if ok else torch.zeros(0, 2)
        metrics[f"acc_{subset}"] = strict_pair_accuracy(pairs[:, 0], pairs[:, 1])
        counts[subset] = len(ok)
        skipped += len(bad) + len(unreadable)
    for family in ("replace", "swap", "add"):
        values = [metrics[f"acc_{s}"] for s in subsets if s.startswith(family + "_")]
        if values:
            metrics[f"acc_{family}"] = sum(values) / len(values)
    per_subset = [metrics[f"acc_{s}"] for s in subsets]
    return {
        "dataset": "sugarcrepe",
        "model": loaded.name,
        "task": TASK,
        "metrics": {"acc": sum(per_subset) / len(per_subset), **metrics},
        "count_per_subset": counts,
        "num_samples": sum(counts.values()),
        "skipped": skipped,
    }
