"""Synthetic shapes: a tiny, easy, deterministic image-text set for tests and demos.

Images show one or two flat shapes on a light background; captions (see
:mod:`data_prep.shapes_captions`) name colour, shape, optionally size, position or the
relation between the two objects. :func:`generate` writes the training shards, the three
evaluation sets and ``dataset.json`` (written last: its presence marks a complete set).
Output bytes depend only on the arguments: every shard draws from its own RNG seeded by
(seed, stream, shard index), JPEG settings are fixed and tar member mtimes are constant.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data_prep import clip_benchmark_layout as cbl
from data_prep.shapes_captions import (
    CLASSNAMES,
    COLOURS,
    RADIUS,
    RADIUS_JITTER,
    RELATIONS,
    SHAPES,
    SIZES,
    TEMPLATES,
    Obj,
    Scene,
    class_index,
    compositional_item,
    retrieval_captions,
    sample_caption,
    sample_pair,
    sample_single,
)
from data_prep.shard_writer import ShardWriter, encode_json, write_json_atomic, write_sizes_json

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 195, 0),
}
BACKGROUND_RGB = (236, 236, 232)
TINT_JITTER = 8  # per-channel background tint, +-
COLOUR_JITTER = 12  # per-channel object colour, +-
NOISE = 3  # per-pixel uniform noise, +-
SUPERSAMPLE = 2
JPEG_QUALITY = 90
STREAM_TRAIN, STREAM_ZEROSHOT, STREAM_RETRIEVAL, STREAM_COMPOSITIONAL = 0, 1, 2, 3
TRAIN_PATTERN = "shard-%06d.tar"


# -- rendering -----------------------------------------------------------------------
def _draw_object(
    draw: ImageDraw.ImageDraw, obj: Obj, side: int, rgb: tuple[int, int, int], scale: float
) -> None:
    cx, cy = obj.x * side, obj.y * side
    r = RADIUS[obj.size] * scale * side
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif obj.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=rgb)
    elif obj.shape == "cross":
        t = 0.33 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=rgb)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; valid: {SHAPES}")


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` (supersampled, with small tint, colour jitter and pixel noise)."""
    side = image_size * SUPERSAMPLE
    tint = rng.integers(-TINT_JITTER, TINT_JITTER + 1, size=3)
    bg = tuple(int(v) for v in np.clip(np.array(BACKGROUND_RGB) + tint, 0, 255))
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOUR_RGB[obj.colour]) + jitter, 0, 255))
        scale = float(rng.uniform(1 - RADIUS_JITTER, 1 + RADIUS_JITTER))
        _draw_object(draw, obj, side, rgb, scale)  # type: ignore[arg-type]
    img = img.reduce(SUPERSAMPLE)
    noise = rng.integers(-NOISE, NOISE + 1, size=(image_size, image_size, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def encode_jpeg(img: Image.Image) -> bytes:
    """JPEG bytes with fixed settings (deterministic for a given Pillow/libjpeg)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buf.getvalue()


# -- sample streams ------------------------------------------------------------------
def train_samples(seed: int, shard: int, start: int, count: int, image_size: int) -> Iterator[dict[str, Any]]:
    """Training samples ``start .. start+count-1`` of one shard (RNG from seed and shard)."""
    rng = np.random.default_rng([seed, STREAM_TRAIN, shard])
    for i in range(start, start + count):
        scene = sample_single(rng) if rng.random() < 0.5 else sample_pair(rng)
        caption = sample_caption(scene, rng)
        img = render_scene(scene, image_size, rng)
        meta = encode_json(scene.to_json(caption))
        yield {"__key__": "%09d" % i, "jpg": encode_jpeg(img), "txt": caption, "json": meta}


def zeroshot_samples(seed: int, per_class: int, image_size: int) -> Iterator[dict[str, Any]]:
    """Balanced one-object images, ``per_class`` of each colour x shape class, shuffled."""
    rng = np.random.default_rng([seed, STREAM_ZEROSHOT])
    labels = np.repeat(np.arange(len(CLASSNAMES)), per_class)
    labels = labels[rng.permutation(len(labels))]
    for index, label in enumerate(labels):
        colour, shape = CLASSNAMES[int(label)].split(" ")
        scene = sample_single(rng, colour=colour, shape=shape)
        assert class_index(colour, shape) == int(label)
        yield cbl.classification_sample(index, encode_jpeg(render_scene(scene, image_size, rng)), int(label))


def retrieval_samples(seed: int, count: int, image_size: int, captions: int = 0) -> Iterator[dict[str, Any]]:
    """One- and two-object images, each with ``captions`` differently phrased true captions
    (0: 2 or 3, drawn per image)."""
    rng = np.random.default_rng([seed, STREAM_RETRIEVAL])
    for index in range(count):
        scene = sample_single(rng) if index % 2 == 0 else sample_pair(rng)
        texts = retrieval_captions(scene, rng, captions or int(rng.integers(2, 4)))
        yield cbl.retrieval_sample(index, encode_jpeg(render_scene(scene, image_size, rng)), texts)


def compositional_samples(seed: int, count: int, image_size: int) -> Iterator[dict[str, Any]]:
    """Two-object images with a true caption and swap/shuffle negatives."""
    rng = np.random.default_rng([seed, STREAM_COMPOSITIONAL])
    for index in range(count):
        scene = sample_pair(rng, distinct_both=True)
        item = compositional_item(scene, rng)
        img = encode_jpeg(render_scene(scene, image_size, rng))
        yield {"__key__": cbl.sample_key(index), "jpg": img, "json": encode_json(item)}


# -- generation ----------------------------------------------------------------------
@dataclass(frozen=True)
class SynthShapesConfig:
    """Arguments of ``synth-shapes`` (all outputs are a function of these)."""

    out: str
    train_samples: int
    seed: int = 0
    image_size: int = 96
    shard_size: int = 2000
    zeroshot_per_class: int = 40
    retrieval_samples: int = 400
    compositional_samples: int = 400
    retrieval_captions: int = 0  # captions per retrieval image; 0: 2 or 3 drawn per image

    def validate(self) -> None:
        """Raise ValueError naming the first bad argument."""
        checks = {
            "train_samples": self.train_samples >= 1,
            "seed": self.seed >= 0,
            "image_size": self.image_size >= 16,
            "shard_size": self.shard_size >= 1,
            "zeroshot_per_class": self.zeroshot_per_class >= 1,
            "retrieval_samples": self.retrieval_samples >= 1,
            "compositional_samples": self.compositional_samples >= 1,
            "retrieval_captions": 0 <= self.retrieval_captions <= 8,
        }
        for name, ok in checks.items():
            if not ok:
                minimum = 16 if name == "image_size" else (0 if name == "seed" else 1)
                flag = "--shard-samples" if name == "shard_size" else "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= {minimum}, got {getattr(self, name)}")


def _write_train_shard(job: tuple[str, int, int, int, int, int]) -> tuple[str, int]:
    """Pool worker: write one training shard; returns (shard name, sample count)."""
    directory, seed, shard, start, count, image_size = job
    with ShardWriter(directory, TRAIN_PATTERN, count, start_index=shard, sizes_name=None) as writer:
        writer.write_all(train_samples(seed, shard, start, count, image_size))
    ((name, n),) = writer.sizes.items()
    return name, n


def _train_jobs(cfg: SynthShapesConfig, directory: Path) -> list[tuple[str, int, int, int, int, int]]:
    jobs = []
    for shard, start in enumerate(range(0, cfg.train_samples, cfg.shard_size)):
        count = min(cfg.shard_size, cfg.train_samples - start)
        jobs.append((str(directory), cfg.seed, shard, start, count, cfg.image_size))
    return jobs


MANAGED = ("train", "eval/zeroshot", "eval/retrieval", "eval/compositional", "dataset.json")


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier set unless ``overwrite``; then clear what we manage."""
    existing = [m for m in MANAGED if (out / m).exists()]
    if existing and not overwrite:
        held = ", ".join(existing)
        raise FileExistsError(f"{out} already holds {held}; pass --overwrite or choose another --out")
    for m in existing:
        path = out / m
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _pool_context() -> Any:
    """``fork`` where available (workers inherit the imports, ~3 s faster each), else spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def generate(
    cfg: SynthShapesConfig, *, workers: int | None = None, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Write the whole synthetic set under ``cfg.out``; returns the ``dataset.json`` dict."""
    cfg.validate()
    out = Path(cfg.out)
    prepare_out_dir(out, overwrite)
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    jobs = _train_jobs(cfg, train_dir)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    sizes: dict[str, int] = {}
    with tqdm(total=cfg.train_samples, desc="train", unit="img", disable=not progress) as bar:
        if workers == 1:
            results = map(_write_train_shard, jobs)
            for name, n in results:
                sizes[name] = n
                bar.update(n)
        else:
            with _pool_context().Pool(workers) as pool:
                for name, n in pool.imap(_write_train_shard, jobs):
                    sizes[name] = n
                    bar.update(n)
    write_sizes_json(train_dir, sizes)

    evals = out / "eval"
    n_zero = cfg.zeroshot_per_class * len(CLASSNAMES)
    n_ret, n_comp = cfg.retrieval_samples, cfg.compositional_samples
    eval_sets = (
        ("zeroshot", zeroshot_samples(cfg.seed, cfg.zeroshot_per_class, cfg.image_size), n_zero),
        ("retrieval", retrieval_samples(cfg.seed, n_ret, cfg.image_size, cfg.retrieval_captions), n_ret),
        ("compositional", compositional_samples(cfg.seed, n_comp, cfg.image_size), n_comp),
    )
    eval_shards: dict[str, int] = {}
    for name, samples, total in eval_sets:
        stream = tqdm(samples, total=total, desc=name, unit="img", disable=not progress)
        eval_shards[name] = len(cbl.write_split(evals / name, stream, max_count=cfg.shard_size))
    cbl.write_classification_meta(evals / "zeroshot", CLASSNAMES, TEMPLATES)
    cbl.write_retrieval_meta(evals / "retrieval")

    meta: dict[str, Any] = {
        "generator": "vlp data_prep synth-shapes",
        "args": {k: v for k, v in asdict(cfg).items() if k != "out"},
        "classnames": list(CLASSNAMES),
        "templates": list(TEMPLATES),
        "vocabulary": {
            "shapes": list(SHAPES),
            "colours": list(COLOURS),
            "sizes": list(SIZES),
            "relations": list(RELATIONS),
        },
        "counts": {
            "train": sum(sizes.values()),
            "train_shards": len(sizes),
            "zeroshot": n_zero,
            "zeroshot_shards": eval_shards["zeroshot"],
            "retrieval": cfg.retrieval_samples,
            "retrieval_shards": eval_shards["retrieval"],
            "compositional": cfg.compositional_samples,
            "compositional_shards": eval_shards["compositional"],
        },
        "layout": {
            "train": "train/shard-{000000..%06d}.tar" % (len(sizes) - 1),
            "zeroshot": "eval/zeroshot/test/{0..%d}.tar" % (eval_shards["zeroshot"] - 1),
            "retrieval": "eval/retrieval/test/{0..%d}.tar" % (eval_shards["retrieval"] - 1),
            "compositional": "eval/compositional/test/{0..%d}.tar" % (eval_shards["compositional"] - 1),
        },
    }
    write_json_atomic(out / "dataset.json", meta)
    return meta


def run(cfg: SynthShapesConfig, *, workers: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Generate with progress bars and print a one-line summary."""
    t0 = time.perf_counter()
    meta = generate(cfg, workers=workers, overwrite=overwrite)
    c = meta["counts"]
    print(
        f"synth-shapes: {c['train']} train images in {c['train_shards']} shards, "
        f"{c['zeroshot']} zero-shot ({len(CLASSNAMES)} classes), {c['retrieval']} retrieval, "
        f"{c['compositional']} compositional -> {cfg.out} in {time.perf_counter() - t0:.1f}s "
        f"(see {Path(cfg.out) / 'dataset.json'})"
    )
    return meta
