"""Winoground (Thrush et al. 2022) read from its published ``examples.jsonl`` and ``images/`` folder.

Layout::

    DIR/examples.jsonl   one JSON object per line: {"id", "image_0", "image_1", "caption_0", "caption_1", ...}
    DIR/images/<image_0>.png   (a name that already has an extension is used as is)

Scores (:func:`eval.benchmarks.metrics.winoground_scores`): text, image and group score as
defined in the paper, with strict ``>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from eval.benchmarks.choices import CaptionChoice, ChoiceSet, score_choices
from eval.benchmarks.metrics import winoground_scores
from eval.encoding.embed import EvalModel
from eval.encoding.encoder import Encoder

RESULT_TASK = "winoground"  # the result's `task` field (CLIP_benchmark's name)
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


def is_winoground_folder(path: Path) -> bool:
    return (path / "examples.jsonl").is_file()


class WinogroundSet(NamedTuple):
    """Winoground read: two choices per example (each image with both captions), malformed lines."""

    choices: ChoiceSet
    bad: list[tuple[str, str]]


def open_winoground(dataset_dir: str | os.PathLike[str]) -> WinogroundSet:
    examples, bad = read_examples(dataset_dir)
    images_dir = Path(dataset_dir) / "images"
    choices = []
    for example in examples:
        captions = [str(example["caption_0"]), str(example["caption_1"])]
        for i in (0, 1):
            path = image_file(images_dir, str(example[f"image_{i}"]))
            choices.append(CaptionChoice(f"{example['id']}/image_{i}", path, captions))
    files = [Path(dataset_dir) / "examples.jsonl"]
    return WinogroundSet(ChoiceSet("winoground", dataset_dir, choices, files), bad)


def score_winoground(encoder: Encoder, winoground: WinogroundSet) -> dict[str, Any]:
    """Score Winoground through ``encoder``; the result dict.

    Keys: dataset, model, task, metrics {text_score, image_score, group_score}, num_samples,
    skipped (malformed lines plus examples with an unreadable image).
    """
    scores, _ = score_choices(encoder, winoground.choices, "winoground")
    num_examples = len(scores) // 2
    per_example = []  # [caption, image] matrices
    for n in range(num_examples):
        first, second = scores[2 * n], scores[2 * n + 1]
        if first is not None and second is not None:
            per_example.append(torch.stack([first, second], dim=1))  # column = image
    matrix = torch.stack(per_example) if per_example else torch.zeros(0, 2, 2)
    return {
        "dataset": "winoground",
        "model": encoder.source.name,
        "task": RESULT_TASK,
        "metrics": winoground_scores(matrix),
        "num_samples": len(per_example),
        "skipped": len(winoground.bad) + num_examples - len(per_example),
    }


def evaluate_winoground(
    loaded: EvalModel,
    dataset_dir: str | os.PathLike[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Winoground on a model in memory (no cache, one process); see :func:`score_winoground`."""
    winoground = open_winoground(dataset_dir)
    return score_winoground(Encoder.for_loaded(loaded, batch_size, device, progress=progress), winoground)
