"""Winoground (Thrush et al. 2022) read from its published ``examples.jsonl`` and ``images/`` folder.

Layout::

    DIR/examples.jsonl   one JSON object per line: {"id", "image_0", "image_1", "caption_0", "caption_1", ...}
    DIR/images/<image_0>.png   (a name that already has an extension is used as is)

Scores (:func:`eval.compositional_metrics.winoground_scores`): text, image and group score as
defined in the paper, with strict ``>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from eval.caption_scoring import CaptionChoice, score_choices
from eval.compositional_metrics import winoground_scores
from eval.embed import EvalModel

TASK = "winoground"
FIELDS = ("id", "image_0", "image_1", "caption_0", "caption_1")


def image_file(images_dir: Path, name: str) -> Path:
    """``images_dir/name`` when ``name`` has an extension, else ``images_dir/name.png``."""
    return images_dir / (name if Path(name).suffix else f"{name}.png")


def read_examples(dataset_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Well-formed examples of ``examples.jsonl`` and (line number, reason) of malformed lines."""
    path = Path(dataset_dir) / "examples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"missing Winoground file: {path}")
    if not (Path(dataset_dir) / "images").is_dir():
        raise FileNotFoundError(f"missing Winoground image folder: {Path(dataset_dir) / 'images'}")
    examples, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
            missing = [f for f in FIELDS if f not in example]
            if missing:
                raise ValueError(f"missing field(s) {', '.join(missing)}")
            examples.append(example)
        except ValueError as exn:  # json.JSONDecodeError is a ValueError
            bad.append((f"line {number}", f"malformed example: {exn}"))
    return examples, bad


def evaluate_winoground(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run Winoground; return the result dict.

    Keys: dataset, model, task, metrics {text_score, image_score, group_score}, num_samples,
    skipped (malformed lines plus examples with an unreadable image).
    """
    examples, bad = read_examples(dataset_dir)
    images_dir = Path(dataset_dir) / "images"
    choices = []
    for example in examples:
        captions = [str(example["caption_0"]), str(example["caption_1"])]
        for i in (0, 1):
            path = image_file(images_dir, str(example[f"image_{i}"]))
            choices.append(CaptionChoice(f"{example['id']}/image_{i}", path, captions))
    scores, _ = score_choices(loaded, choices, batch_size, device, progress, "winoground")
    per_example = []  # [caption, image] matrices
    for n in range(len(examples)):
        first, second = scores[2 * n], scores[2 * n + 1]
        if first is not None and second is not None:
            per_example.append(torch.stack([first, second], dim=1))  # column = image
    matrix = torch.stack(per_example) if per_example else torch.zeros(0, 2, 2)
    return {
        "dataset": "winoground",
        "model": loaded.name,
        "task": TASK,
        "metrics": winoground_scores(matrix),
        "num_samples": len(per_example),
        "skipped": len(bad) + len(examples) - len(per_example),
    }
