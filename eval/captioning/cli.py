"""``python -m eval caption``: captions of a folder of images or of webdataset shards, from a
model with a CoCa caption head, as JSON lines::

    python -m eval caption --model RUN --images DIR|SHARDS --output captions.jsonl \\
        [--strategy greedy|beam|top_k|top_p] [--beams 4] [--max-length 30] [--top-k 50] [--top-p 0.9]
        [--temperature 1.0] [--batch-size N] [--device cuda]

One line per readable image, in input order: ``{"file": "a/b.jpg", "caption": ...}`` for a folder
(its path relative to DIR), ``{"key": ..., "caption": ...}`` for shards. Unreadable images are
skipped, counted and reported. ``--images`` is read by :func:`eval.captioning.images.open_images`;
the model is loaded as every eval command loads it (a run directory or checkpoint of ours).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from eval.captioning.generate import caption_head_reason, dataset_captions
from eval.captioning.images import ImageFiles, open_images
from eval.tasks.captioning import GENERATION_FLAGS, config_from
from vlp.utils.atomic import write_text_atomic


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    """``--images``, ``--output`` and the generation settings (the common model options are the caller's)."""
    parser.add_argument("--images", required=True,
                        help="folder of images (recursively), shard folder, or .tar / brace pattern of shards")
    parser.add_argument("--output", required=True, help="JSON lines file to write: one {file|key, caption} per image")
    for name, (flag, kwargs) in GENERATION_FLAGS.items():
        metavar = {} if "choices" in kwargs else {"metavar": flag.upper().replace("-", "_")}
        parser.add_argument(f"--{flag}", dest=f"caption_{name}", default=None, **kwargs, **metavar)


def caption_lines(records: list[Any], captions: list[str], field: str) -> str:
    """The JSON lines text: ``{field: record key, "caption": caption}`` per image."""
    return "".join(json.dumps({field: r.key, "caption": c}, ensure_ascii=False) + "\n"
                   for r, c in zip(records, captions))


def caption_command(args: argparse.Namespace, encoder: Any) -> dict[str, dict[str, Any]]:
    """Caption ``args.images`` with ``encoder``'s model and write ``args.output`` (rank 0); the
    summary as ``{"caption": result}`` (metrics: images captioned; skipped: unreadable ones)."""
    config = config_from(vars(args))  # settings and input checked before the model is loaded
    dataset = open_images(args.images)
    reason = caption_head_reason(encoder)
    if reason is not None:
        raise ValueError(f"--model {args.model}: captioning needs model.heads.caption: {reason}")
    records, captions, skipped = dataset_captions(encoder, dataset, config, desc=f"caption {dataset.name}")
    field = "file" if isinstance(dataset, ImageFiles) else "key"
    result: dict[str, Any] = {"dataset": dataset.name, "model": encoder.source.name, "task": "caption",
                              "metrics": {"images": len(records)}, "skipped": len(skipped)}
    if encoder.runtime.is_main:
        write_text_atomic(args.output, caption_lines(records, captions, field))
        result["path"] = str(args.output)
    return {"caption": result}
