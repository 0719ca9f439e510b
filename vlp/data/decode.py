"""Turning one raw webdataset sample into an RGB image, its captions and its hard negatives.

Reads our shards (``key.jpg``, ``key.txt``, ``key.json`` with a "captions" list, ``key.neg.json``),
img2dataset shards (``key.jpg``/``key.txt``/``key.json`` with url, width, height, ...) and
CLIP_benchmark sets (``webp``/``png``/``jpg`` with ``txt`` holding one caption per line, or ``cls``).
Every failure is a ValueError whose message is the skip reason. Every random choice here (the
caption drawn, the second caption view, its dropped words) is a function of (seed, epoch, key),
never of a generator's history, so a resumed or re-split stream draws the same.
"""

from __future__ import annotations

import hashlib
import random
import io
import json
from typing import Any, Dict, List, Optional, Sequence

from PIL import Image

Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default bomb limit, made explicit: larger is an error, not a warning


def decode_image(data: bytes, draft_size: Optional[int] = None) -> Image.Image:
    """The RGB image in ``data``. A JPEG whose short side is at least twice ``draft_size`` is decoded
    at a reduced DCT size (1/2, 1/4, 1/8) that keeps its short side >= ``draft_size``."""
    try:
        image = Image.open(io.BytesIO(data))
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Image.DecompressionBombError:
        raise ValueError("image_too_large") from None
    except Exception:
        raise ValueError("image_unreadable") from None


def _text(value: Any, reason: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(reason) from None


def sample_captions(sample: Dict[str, Any], caption_key: str) -> List[str]:
    """All captions of a sample: the "captions" list of its ``json`` when there is one, else the
    lines of ``caption_key`` (one caption per line, CLIP_benchmark's retrieval convention)."""
    meta = sample.get("json")
    if meta is not None:
        try:
            parsed = json.loads(_text(meta, "json_not_utf8"))
        except json.JSONDecodeError:
            raise ValueError("json_unreadable") from None
        listed = parsed.get("captions") if isinstance(parsed, dict) else None
        if isinstance(listed, list):
            captions = [c.strip() for c in listed if isinstance(c, str) and c.strip()]
            if captions:
                return captions
    if caption_key not in sample:
        raise ValueError("missing_caption")
    captions = [line.strip() for line in _text(sample[caption_key], "caption_not_utf8").splitlines() if line.strip()]
    if not captions:
        raise ValueError("empty_caption")
    return captions


def pick_caption(captions: Sequence[str], seed: int, epoch: int, key: str) -> str:
    """One caption per (seed, epoch, key): reproducible, and usually another one next epoch."""
    if len(captions) == 1:
        return captions[0]
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{key}".encode(), digest_size=8).digest()
    return captions[int.from_bytes(digest, "little") % len(captions)]


def second_caption(captions: Sequence[str], first: str, seed: int, epoch: int, key: str,
                   drop: float = 0.1) -> str:
    """A second text view: another caption of the sample when it has one, else ``first`` with each
    word dropped with probability ``drop`` (at least one word kept); reproducible per (seed, epoch, key)."""
    others = [c for c in captions if c != first]
    if others:
        return pick_caption(others, seed + 1, epoch, key)
    digest = hashlib.blake2b(f"{seed}\x01{epoch}\x01{key}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    words = first.split()
    kept = [w for w in words if rng.random() >= drop]
    return " ".join(kept or [words[rng.randrange(len(words))]]) if words else first


def sample_negatives(sample: Dict[str, Any], caption: Optional[str] = None) -> List[str]:
    """The hard-negative captions of ``key.neg.json`` ({"caption", "negatives": [...], "types": [...],
    "alternatives": [{"caption", "negatives", "types"}, ...]}) for ``caption``: the entry whose
    "caption" it is (the top level when none names it); [] when the sample has none."""
    raw = sample.get("neg.json")
    if raw is None:
        return []
    try:
        parsed = json.loads(_text(raw, "negatives_unreadable"))
    except json.JSONDecodeError:
        raise ValueError("negatives_unreadable") from None
    if not isinstance(parsed, dict):
        raise ValueError("negatives_unreadable")
    entry = parsed
    alternatives = parsed.get("alternatives")
    if caption is not None and parsed.get("caption") not in (None, caption) and isinstance(alternatives, list):
        entry = next((a for a in alternatives if isinstance(a, dict) and a.get("caption") == caption), parsed)
    negatives = entry.get("negatives")
    if not isinstance(negatives, list):
        raise ValueError("negatives_unreadable")
    return [n.strip() for n in negatives if isinstance(n, str) and n.strip()]


def image_bytes(sample: Dict[str, Any], image_keys: Sequence[str]) -> bytes:
    """The encoded image of the first of ``image_keys`` present in ``sample``."""
    for k in image_keys:
        if k in sample:
            return sample[k]
    raise ValueError("missing_image")

