"""``vlp-prep dedup``: drop near-duplicate images (faiss over a checkpoint's image embeddings)."""

from __future__ import annotations

import argparse
import sys


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``dedup`` sub-command."""
    p = sub.add_parser(
        "dedup",
        help="remove near-duplicate images using a checkpoint's image embeddings",
        description=(
            "Embed every image of --shards with the model in --model (a run directory or a "
            "checkpoint file), find pairs with cosine similarity above --threshold with faiss, "
            "keep the first sample of each near-duplicate group and write the rest unchanged to "
            "new shards in --output with sizes.json, stats.json and duplicates.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--shards", required=True, help="folder of input .tar shards")
    p.add_argument("--model", required=True, help="run directory or checkpoint file")
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity above which images are duplicates")
    p.add_argument("--output", required=True, help="output folder for the deduplicated shards")
    p.add_argument("--shard-samples", "--shard-size", type=int, default=10_000, dest="shard_samples",
                   help="most samples per output shard (--shard-size is the same option)")
    p.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    p.add_argument("--device", default="cpu", help="torch device for the model")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_dedup)


def _run_dedup(args: argparse.Namespace) -> int:
    from data_prep.dedup import run_dedup

    try:
        if args.shard_samples < 1 or args.batch_size < 1:
            raise ValueError("--shard-samples and --batch-size must be >= 1")
        stats = run_dedup(args.shards, args.model, args.output, args.threshold, shard_samples=args.shard_samples,
                          batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                          progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"vlp-prep dedup: error: {err}", file=sys.stderr)
        return 2
    print(f"dedup: kept {stats['samples_written']} of {stats['input_samples']} samples, removed "
          f"{stats['near_duplicates_removed']} near-duplicates (threshold {stats['threshold']}); "
          f"stats: {args.output}/stats.json")
    return 0
