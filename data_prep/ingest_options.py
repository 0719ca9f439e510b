"""Options of ``vlp-prep ingest``: one dataclass, every knob with a default and a one-line doc."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from data_prep.readers import reader_names
from data_prep.readers.imagefolder import DEFAULT_TEMPLATE, check_template

RESIZE_MODES = ("shorter", "longer")
IMAGE_FORMATS = ("jpg", "webp")
# Pillow's own default cap (~89.5 Mpx, a 1024 x 1024 x 3 x 3 x 9.5 image): larger images are bombs.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class IngestOptions:
    """What to read, how to filter and transform it, and how to shard the output."""

    inputs: list[str] = field(default_factory=list)  # input paths (folder, table, jsonl, coco json, img2dataset dir)
    output: str = ""  # output folder for shards, sizes.json, stats.json
    format: str = "auto"  # reader: auto | folder | imagefolder | table | jsonl | coco | img2dataset
    image_column: str = "image"  # table/jsonl field holding the image path (or bytes in Parquet)
    caption_column: str = "caption"  # table/jsonl field holding the caption (a list is allowed in jsonl)
    image_root: str | None = None  # folder that relative image paths start from (default: the input's folder)
    caption_template: str = DEFAULT_TEMPLATE  # imagefolder caption; '{}' is the class name
    class_names: str | None = None  # imagefolder: file naming the class folders (ImageNet wnid -> name)
    resize: int = 0  # target side in pixels for --resize-mode (0: keep the original size)
    resize_mode: str = "shorter"  # which side --resize sets: shorter | longer (aspect ratio is kept)
    upscale: bool = False  # also enlarge images smaller than --resize (default: only shrink)
    image_format: str = "jpg"  # encoded output format: jpg | webp
    quality: int = 95  # JPEG/WebP encoding quality 1..100
    min_size: int = 0  # skip images whose shorter side is below this many pixels (0: off)
    max_aspect_ratio: float = 0.0  # skip images with longer/shorter side above this (0: off)
    min_caption_chars: int = 1  # captions shorter than this (after stripping) are dropped
    max_caption_chars: int = 0  # captions longer than this are dropped (0: no limit)
    languages: str = ""  # keep captions in these languages ('en,de'; py3langid codes); '' = no filter
    min_language_prob: float = 0.0  # with languages: also require this probability of the language
    dedup: bool = False  # drop exact duplicate images (same SHA-256 of the source bytes); first kept
    shard_samples: int = 10_000  # records per chunk = most samples per shard
    shard_bytes: int = 0  # also close a shard when its estimated encoded bytes reach this (0: off)
    workers: int = 1  # worker processes (1: in-process)
    seed: int | None = None  # shuffle the records within each chunk (seed, chunk index); None: input order
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb cap on width*height
    strict: bool = False  # fail on the first bad record, naming it, instead of skipping it
    pattern: str = "shard-%06d.tar"  # shard file name pattern

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not self.inputs:
            raise ValueError("at least one --input is required")
        if not self.output:
            raise ValueError("--output is required")
        choices = {"format": reader_names(), "resize_mode": RESIZE_MODES, "image_format": IMAGE_FORMATS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(valid)}")
        minimums = {"resize": 0, "quality": 1, "min_size": 0, "min_caption_chars": 0, "max_caption_chars": 0,
                    "shard_samples": 1, "shard_bytes": 0, "workers": 1, "max_pixels": 1}
        for name, low in minimums.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.quality > 100:
            raise ValueError(f"quality must be <= 100, got {self.quality}")
        if self.max_aspect_ratio != 0 and self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be 0 (off) or >= 1, got {self.max_aspect_ratio}")
        if self.max_caption_chars and self.max_caption_chars < self.min_caption_chars:
            raise ValueError("max_caption_chars must be >= min_caption_chars")
        if not 0 <= self.min_language_prob <= 1:
            raise ValueError(f"min_language_prob must be in [0, 1], got {self.min_language_prob}")
        if self.languages:
            from data_prep.language import parse_languages

            parse_languages(self.languages)
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        check_template(self.caption_template)
        if "%" not in self.pattern or not self.pattern.endswith(".tar"):
            raise ValueError(f"pattern must hold a %-index and end in .tar, got {self.pattern!r}")

    def fingerprint(self) -> dict[str, Any]:
        """The options that decide the output bytes (workers, strict and output do not)."""
        out = asdict(self)
        for name in ("workers", "strict", "output"):
            out.pop(name)
        if self.caption_template == DEFAULT_TEMPLATE:  # keeps ingest.json of earlier versions resumable
            out.pop("caption_template")
        if self.class_names is None:
            out.pop("class_names")
        if not self.languages:  # the same: options added later are recorded only when set
            out.pop("languages")
            out.pop("min_language_prob")
        return out
