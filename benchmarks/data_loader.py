"""Loader throughput: vlp's training stream against open_clip_train's ``get_wds_dataset``.

Both read the same shards (generated here, deterministically: smooth photo-like JPEGs with grain,
512x384 by default, captions of 8-16 words), decode, random-resized-crop to 224 px (bicubic, area
0.9-1.0, open_clip's train transform), tokenize with open_clip's BPE (context 77) and batch in
DataLoader workers. The anchor normalises in its workers and delivers float32 batches; ours
delivers uint8 batches (as shipped: the training step normalises them on its device), so two
figures are measured for ours:

- ``ours``: uint8 batches as the training loop receives them; ``ratio`` = ours / anchor.
- ``ours_cpu_normalise``: the same loader, plus ``normalize_on_device`` to float32 in the consuming
  process on CPU for every batch (what a CPU-only run pays); ``ratio_with_cpu_normalise``.

Counted: images delivered to the consuming process after warm-up batches (worker start,
shuffle-buffer fill). Each measurement runs in its own subprocess, ours (both ways) and the anchor's
alternating, ``--rounds`` times; the best round of each is reported (the least disturbed by other
load on the machine; every round is listed too).

open_clip_train needs ``webdataset<=0.2.86`` and pandas, which clash with our webdataset, so the
anchor runs in its own environment ``.venv-anchor`` (made on first use, reused after): a venv whose
own site-packages hold webdataset 0.2.86 and pandas, with a .pth file that adds this
environment's site-packages after them (the same torch, torchvision, Pillow and open_clip, so
only the loaders differ).

    python benchmarks/data_loader.py                      # ~2000 images of 512x384, 1 and 2 workers
    python benchmarks/data_loader.py --width 1024 --height 768   # large images: reduced-size decode

Last line: one JSON object with images/s of all three per worker count, ``ratio`` = ours / anchor and
``ratio_with_cpu_normalise`` = ours_cpu_normalise / anchor (top level: the lowest over worker counts).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_ENV = ROOT / ".venv-anchor"
KINDS = ("ours", "ours_cpu_normalise", "anchor")
WORDS = ("a photo of the red blue green small large old new wooden dog cat car tree house street beach "
         "mountain person child table window river sky cloud near under beside on in with two three").split()


def make_shards(out: Path, samples: int, shard_size: int, width: int, height: int, seed: int = 0) -> Path:
    """``samples`` photo-like JPEGs (smooth colour fields, edges and grain, quality 90) with captions."""
    import numpy as np
    import webdataset as wds
    from PIL import Image, ImageFilter

    stamp = out / f"done-{samples}-{shard_size}-{width}x{height}-{seed}"
    if stamp.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {}
    for shard in range((samples + shard_size - 1) // shard_size):
        name = f"bench-{shard:06d}.tar"
        with wds.TarWriter(str(out / name)) as sink:
            count = 0
            for i in range(shard * shard_size, min(samples, (shard + 1) * shard_size)):
                coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                base = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
                edges = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
                edges = edges.resize((width, height), Image.NEAREST).filter(ImageFilter.GaussianBlur(2))
                mixed = Image.blend(base, edges, 0.35)
                grain = rng.normal(0, 6, (height, width, 3))
                pixels = np.clip(np.asarray(mixed, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                caption = " ".join(rng.choice(WORDS, size=int(rng.integers(8, 17))))
                sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": caption})
                count += 1
        sizes[name] = count
    (out / "sizes.json").write_text(json.dumps(sizes))
    stamp.write_text("")
    return out


def ensure_anchor_env() -> Path:
    """The anchor environment's python (created on first use, reused after)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from anchor_env import ensure_env

    check = ("import webdataset, pandas, open_clip_train.data; "
             "assert webdataset.__version__ <= '0.2.86', webdataset.__version__")
    return ensure_env(ANCHOR_ENV.name, check, packages=["webdataset<=0.2.86", "pandas"])


def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=77)


def measure(which: str, shards: str, workers: int, batch: int, warmup: int, images: int, samples: int) -> dict:
    """Images/s delivered by one loader (run in a subprocess of the right environment)."""
    import torch

    torch.set_num_threads(1)
    if which in ("ours", "ours_cpu_normalise"):
        sys.path.insert(0, str(ROOT))
        from vlp.data.pipeline import build_train_loader
        from vlp.data.transforms import normalize_on_device, train_transform

        transform = train_transform(224, (0.9, 1.0))
        loader = build_train_loader(shards, batch, transform, _tokenizer(), workers=workers, shuffle_buffer=5000,
                                    seed=0)
        if which == "ours":
            take = lambda b: (b["image"], b["text"])  # noqa: E731
        else:
            take = lambda b: (normalize_on_device(b["image"], transform.mean, transform.std), b["text"])  # noqa: E731
    else:
        from argparse import Namespace

        from open_clip.transform import image_transform
        from open_clip_train.data import get_wds_dataset

        args = Namespace(train_data=shards, train_num_samples=samples * 100, dataset_resampled=False,
                         train_data_upsampling_factors=None, seed=0, batch_size=batch, workers=workers, world_size=1)
        loader = get_wds_dataset(args, image_transform(224, is_train=True), is_train=True,
                                 tokenizer=_tokenizer()).dataloader
        take = lambda b: (b[0], b[1])  # noqa: E731
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count, start = 0, time.perf_counter()
    shape = None
    while count < images:
        image, text = take(next(it))
        shape = (tuple(image.shape[1:]), str(image.dtype), tuple(text.shape[1:]))
        count += image.shape[0]
    elapsed = time.perf_counter() - start
    return {"which": which, "workers": workers, "images": count, "seconds": elapsed, "images_per_s": count / elapsed,
            "batch_shape": shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/vlp-bench-shards", help="where the generated shards go (reused)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=4, help="batches per worker not timed")
    parser.add_argument("--images", type=int, default=1600, help="images timed per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", choices=list(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        (w,) = args.workers
        print(json.dumps(measure(args.measure, args.shards, w, args.batch, args.warmup * max(w, 1), args.images,
                                 args.samples)))
        return

    started = time.perf_counter()
    data = make_shards(Path(args.data) / f"{args.width}x{args.height}", args.samples, args.shard_size,
                       args.width, args.height)
    shards = str(data / f"bench-{{000000..{(args.samples + args.shard_size - 1) // args.shard_size - 1:06d}}}.tar")
    pythons = {"ours": sys.executable, "ours_cpu_normalise": sys.executable, "anchor": str(ensure_anchor_env())}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    runs = []
    for rnd in range(args.rounds):
        for workers in args.workers:
            for which in (KINDS if rnd % 2 == 0 else KINDS[::-1]):
                cmd = [pythons[which], __file__, "--measure", which, "--shards", shards, "--workers", str(workers),
                       "--batch", str(args.batch), "--warmup", str(args.warmup), "--images", str(args.images),
                       "--samples", str(args.samples)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"{which} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                runs.append(result)
                print(f"round {rnd} {which:18s} workers={workers}: {result['images_per_s']:7.1f} images/s "
                      f"batch {result['batch_shape']}", flush=True)
    summary = {"image_size": 224, "source_size": f"{args.width}x{args.height}", "batch": args.batch,
               "images_timed": args.images, "cpus": os.cpu_count(), "rounds": args.rounds}
    for workers in args.workers:
        best = {w: max(r["images_per_s"] for r in runs if r["which"] == w and r["workers"] == workers)
                for w in KINDS}
        summary[f"workers_{workers}"] = {
            **{f"{w}_images_per_s": round(best[w], 1) for w in KINDS},
            "ratio": round(best["ours"] / best["anchor"], 3),
            "ratio_with_cpu_normalise": round(best["ours_cpu_normalise"] / best["anchor"], 3)}
    for key in ("ratio", "ratio_with_cpu_normalise"):
        summary[key] = min(summary[f"workers_{w}"][key] for w in args.workers)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
