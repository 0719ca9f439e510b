"""``vlp-prep dedup``: drop near-duplicate images (faiss over a checkpoint's image embeddings)."""

from __future__ import annotations

import argparse
import sys

from data_prep.dedup_options import AUTO_EXACT_MAX, INDEX_KINDS, IndexOptions


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``dedup`` sub-command."""
    p = sub.add_parser(
        "dedup",
        help="remove near-duplicate images using a checkpoint's image embeddings",
        description=(
            "Embed every image of --shards with the model in --model (a run directory or a "
            "checkpoint file), find pairs with cosine similarity above --threshold with faiss, "
            "keep the first sample of each near-duplicate group and write the rest unchanged to "
            "new shards in --output with sizes.json, stats.json and duplicates.json. The search is "
            "exact (IndexFlatIP, O(N^2)) up to --exact-max embeddings and approximate above "
            "(IVF with 8-bit scalar-quantised lists: D + 8 bytes per embedding, trained on a "
            "random sample, filled and queried in batches; pairs re-checked exactly). Embeddings "
            "are spilled to a temporary file in --output (4 * D bytes each) while it runs."
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
    p.add_argument("--index", choices=INDEX_KINDS, default="auto",
                   help="exact: every pair; ivf: inverted lists (approximate, for millions); "
                   "auto: exact up to --exact-max")
    p.add_argument("--exact-max", type=int, default=AUTO_EXACT_MAX,
                   help="with --index auto: most embeddings searched exactly")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (k-means centroids); 0 = 4 * sqrt(N)")
    p.add_argument("--nprobe", type=int, default=IndexOptions.nprobe,
                   help="IVF lists searched per image (more: higher recall, slower; = nlist: exact)")
    p.add_argument("--train-sample", type=int, default=0,
                   help="embeddings drawn at random to train IVF; 0 = min(N, 40 * nlist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the IVF training sample and k-means")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_dedup)


def _run_dedup(args: argparse.Namespace) -> int:
    from data_prep.dedup import run_dedup

    try:
        if args.shard_samples < 1 or args.batch_size < 1:
            raise ValueError("--shard-samples and --batch-size must be >= 1")
        index = IndexOptions(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, train_sample=args.train_sample,
                             seed=args.seed, exact_max=args.exact_max)
        index.validate()
        stats = run_dedup(args.shards, args.model, args.output, args.threshold, shard_samples=args.shard_samples,
                          batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                          progress=not args.no_progress, index=index)
    except (ValueError, OSError) as err:
        print(f"vlp-prep dedup: error: {err}", file=sys.stderr)
        return 2
    print(f"dedup: kept {stats['samples_written']} of {stats['input_samples']} samples, removed "
          f"{stats['near_duplicates_removed']} near-duplicates (threshold {stats['threshold']}, "
          f"{stats['index']['kind']} search); "
          f"stats: {args.output}/stats.json")
    return 0
