"""Score images read from local files against a few candidate captions each (ARO, SugarCrepe, Winoground)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from eval.embed import EvalModel, encode_image_batch, encode_texts, eval_mode, model_device

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x, y, width, height (ARO's bbox_x, bbox_y, bbox_w, bbox_h)


class CaptionChoice(NamedTuple):
    """One image file (optionally cropped to ``box``) and the captions to score against it."""

    key: str
    image_path: Path
    captions: list[str]
    box: Box | None = None


def open_rgb(path: str | os.PathLike[str], box: Box | None = None) -> Image.Image:
    """Decode ``path`` to RGB; with ``box`` crop to (x, y, x + w, y + h) as the ARO repo does."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    if box is not None:
        x, y, w, h = box
        rgb = rgb.crop((x, y, x + w, y + h))
    return rgb


def score_choices(
    loaded: EvalModel,
    choices: Sequence[CaptionChoice],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "scoring",
) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
    """Cosine score of each choice's image with each of its captions.

    Returns one [K] tensor per choice (None where the image could not be read) and the
    (key, reason) of every unreadable image, which is logged, never raised.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = loaded.model
    device = device if device is not None else model_device(model)
    scores: list[torch.Tensor | None] = []
    skipped: list[tuple[str, str]] = []
    with eval_mode(model), tqdm(total=len(choices), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(choices), batch_size):
            batch = choices[start : start + batch_size]
            images: list[Any] = []
            kept: list[CaptionChoice] = []
            slots: list[int] = []
            for choice in batch:
                try:
                    images.append(loaded.image_transform(open_rgb(choice.image_path, choice.box)))
                except Exception as exn:  # noqa: BLE001 - a bad image must never stop an eval
                    log.warning("skipped image %s (%s): %s", choice.key, choice.image_path, exn)
                    skipped.append((choice.key, f"{type(exn).__name__}: {exn}"))
                    slots.append(-1)
                    continue
                slots.append(len(kept))
                kept.append(choice)
            per_kept: list[torch.Tensor] = []
            if kept:
                image_emb = encode_image_batch(model, images, device)
                texts = [c for choice in kept for c in choice.captions]
                text_emb = encode_texts(model, loaded.tokenizer, texts, batch_size, device)
                offset = 0
                for i, choice in enumerate(kept):
                    per_kept.append(text_emb[offset : offset + len(choice.captions)] @ image_emb[i])
                    offset += len(choice.captions)
            scores.extend(per_kept[slot] if slot >= 0 else None for slot in slots)
            bar.update(len(batch))
    return scores, skipped
