"""Per-record work of ingestion, pure functions run in worker processes.

:func:`inspect_record` is the cheap check step (captions, file bytes, SHA-256, image header:
decompression-bomb cap, minimum size, aspect ratio); :func:`encode_entry` is the expensive step
(full decode, orientation, resize, encode) that only finds truncated or corrupt pixel data. A
chunk task runs both on one record after the other, so the bytes are read once.
Both return either a result or a :class:`Skip` with a reason from :data:`SKIP_REASONS`.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from data_prep.ingest_options import IngestOptions
from data_prep.language import LanguageFilter, parse_languages
from data_prep.readers.base import ImageSource, Record, describe, read_image_bytes

SKIP_REASONS: tuple[str, ...] = (
    "missing_file", "missing_caption", "bad_row", "empty_file", "unreadable_image", "truncated_image",
    "decompression_bomb", "too_small", "aspect_ratio", "caption_not_utf8", "caption_empty",
    "caption_too_short", "caption_too_long", "language", "duplicate",
)
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP"}


@dataclass
class Skip:
    """A record left out: ``reason`` (one of SKIP_REASONS) and a ``name`` for messages."""

    reason: str
    name: str


@dataclass
class PlanEntry:
    """A record that passed the planning checks: valid captions, stored size, hash, size estimate."""

    source_id: str
    image: ImageSource
    captions: list[str]
    meta: dict[str, Any]
    width: int
    height: int
    sha256: str
    est_bytes: int
    dropped_captions: list[str] = field(default_factory=list)
    data: bytes | None = field(default=None, repr=False)
    """The source bytes read by the checks (kept for encoding, so a record is read once)."""


def check_caption(caption: str | bytes, opts: IngestOptions) -> tuple[str | None, str | None]:
    """(stripped caption, None) when it passes, else (None, skip reason)."""
    try:
        text = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
        text.encode("utf-8")  # str from a surrogate-escaped non-UTF-8 file fails here
    except UnicodeError:
        return None, "caption_not_utf8"
    text = text.strip()
    if not text:
        return None, "caption_empty"
    if len(text) < opts.min_caption_chars:
        return None, "caption_too_short"
    if opts.max_caption_chars and len(text) > opts.max_caption_chars:
        return None, "caption_too_long"
    if opts.languages:
        reason = _language_filter(opts.languages, opts.min_language_prob).check(text)
        if reason:
            return None, reason
    return text, None


@lru_cache(maxsize=4)
def _language_filter(languages: str, min_probability: float) -> LanguageFilter:
    return LanguageFilter(parse_languages(languages), min_probability)


def output_size(width: int, height: int, opts: IngestOptions) -> tuple[int, int]:
    """The (width, height) an image of this size is resized to (aspect kept, rounded)."""
    if not opts.resize:
        return width, height
    side = min(width, height) if opts.resize_mode == "shorter" else max(width, height)
    scale = opts.resize / side
    if scale >= 1 and not opts.upscale:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


@contextmanager
def _pixel_cap(opts: IngestOptions) -> Iterator[None]:
    """Pillow's pixel cap at ``opts.max_pixels`` inside the block (restored after), with both of
    its levels (the warning above the cap, the error above twice the cap) raised as
    DecompressionBombError. Pillow checks in open() and, for some formats, again in load()/seek()."""
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, opts.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombWarning as warning:
        raise Image.DecompressionBombError(str(warning)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _read(image: ImageSource) -> bytes | Skip:
    try:
        data = read_image_bytes(image)
    except FileNotFoundError:
        return Skip("missing_file", "")
    except OSError:
        return Skip("unreadable_image", "")
    return data if data else Skip("empty_file", "")


def inspect_record(record: Record, opts: IngestOptions) -> PlanEntry | Skip:
    """Planning checks for one record (no pixel decoding)."""
    name = describe(record.image, record.source_id)
    if record.error:
        return Skip(record.error, name)
    captions, dropped = [], []
    for caption in record.captions:
        text, reason = check_caption(caption, opts)
        if reason:
            dropped.append(reason)
        else:
            captions.append(text)
    if not captions:
        return Skip(dropped[0] if dropped else "missing_caption", name)
    data = _read(record.image)
    if isinstance(data, Skip):
        return Skip(data.reason, name)
    try:
        with _pixel_cap(opts), Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in _ROTATED:
                width, height = height, width
    except Image.DecompressionBombError:
        return Skip("decompression_bomb", name)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return Skip("unreadable_image", name)
    if opts.min_size and min(width, height) < opts.min_size:
        return Skip("too_small", name)
    if opts.max_aspect_ratio and max(width, height) / max(1, min(width, height)) > opts.max_aspect_ratio:
        return Skip("aspect_ratio", name)
    out_w, out_h = output_size(width, height, opts)
    est = max(1, round(len(data) * (out_w * out_h) / (width * height)))
    return PlanEntry(record.source_id, record.image, captions, dict(record.meta), width, height,
                     hashlib.sha256(data).hexdigest(), est, dropped, data)


def encode_entry(entry: PlanEntry, opts: IngestOptions) -> tuple[bytes, tuple[int, int]] | Skip:
    """Decode, orient, convert to RGB, resize and encode one planned image -> (bytes, (w, h))."""
    name = describe(entry.image, entry.source_id)
    data = entry.data if entry.data is not None else _read(entry.image)
    if isinstance(data, Skip):
        return Skip(data.reason, name)
    try:
        with _pixel_cap(opts), Image.open(io.BytesIO(data)) as im:
            target = output_size(entry.width, entry.height, opts)
            if im.format == "JPEG" and target != (entry.width, entry.height):
                side = 2 * max(target)  # DCT downscale that keeps both sides >= 2x the target in any orientation
                im.draft("RGB", (side, side))
            im.load()
            image = ImageOps.exif_transpose(im).convert("RGB")
    except Image.DecompressionBombError:
        return Skip("decompression_bomb", name)
    except UnidentifiedImageError:
        return Skip("unreadable_image", name)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        return Skip("truncated_image" if "truncated" in str(err).lower() else "unreadable_image", name)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    save_args: dict[str, Any] = {"quality": opts.quality}
    if opts.image_format == "webp":
        save_args["method"] = 4
    image.save(buffer, _PIL_FORMAT[opts.image_format], **save_args)
    return buffer.getvalue(), image.size
