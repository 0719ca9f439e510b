"""``vlp-prep ingest``: image-text collections -> WebDataset shards + sizes.json + stats.json."""

from __future__ import annotations

import argparse
import sys

from data_prep.readers import READERS, reader_names
from data_prep.readers.registry import DEFAULT_TEMPLATE


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``ingest`` sub-command."""
    p = sub.add_parser(
        "ingest",
        help="convert image folders, class folders, tables, JSONL, COCO or img2dataset output into shards",
        description=(
            "Read image-caption records, filter and resize them, and write WebDataset shards "
            "(key.jpg|webp, key.txt, key.json) with sizes.json and stats.json. Bad records are "
            "skipped and counted by reason (--strict: fail on the first). Rerunning with the same "
            "arguments resumes: complete shards are kept, missing ones written. A class-per-folder "
            "tree (DIR/cat/*.jpg, no .txt captions) is captioned from --caption-template, keeps its label "
            "as key.cls and writes classnames.txt. An ingest that writes no sample exits with status 1. "
            "The input is cut into chunks of --shard-samples records, one shard each, keys = input "
            "positions: --part i/N runs chunks c %% N == i (N independent jobs; then merge-stats), "
            "--engine ray runs them as Ray tasks (--ray-address for a cluster). --dedup is exact over the "
            "whole output (the first copy in key order is kept)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--input", action="append", required=True, dest="inputs",
                   help="input path (repeatable), in any format --format lists")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--format", default="auto", choices=reader_names(),
                   help="input reader; auto tells it from the path (a folder without any .txt whose images are "
                        "in sub-folders is imagefolder, another folder is folder). "
                        + "; ".join(f"{name}: {reader.layout}" for name, reader in READERS.items()))
    p.add_argument("--image-column", default="image", help="table/JSONL image path column")
    p.add_argument("--caption-column", default="caption", help="table/JSONL caption column")
    p.add_argument("--caption-template", default=DEFAULT_TEMPLATE,
                   help="imagefolder caption; '{}' is the class name (underscores read as spaces)")
    p.add_argument("--class-names", default=None, help="class-per-folder input: file naming its folders "
                   "(ImageNet's LOC_synset_mapping.txt, 'FOLDER<TAB>NAME' lines, or JSON); captions and "
                   "classnames.txt use the names")
    p.add_argument("--image-root", default=None, help="folder relative image paths start from (COCO: the images)")
    p.add_argument("--resize", type=int, default=0, help="target side in pixels (0: keep size)")
    p.add_argument("--resize-mode", default="shorter", choices=("shorter", "longer"),
                   help="which side --resize sets; aspect ratio is kept")
    p.add_argument("--upscale", action="store_true", help="also enlarge images smaller than --resize")
    p.add_argument("--image-format", default="jpg", choices=("jpg", "webp"), help="output image encoding")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    p.add_argument("--min-size", type=int, default=0, help="skip images whose shorter side is smaller (0: off)")
    p.add_argument("--max-aspect-ratio", type=float, default=0.0, help="skip images with long/short side above this (0: off)")
    p.add_argument("--min-caption-chars", type=int, default=1, help="drop captions shorter than this")
    p.add_argument("--max-caption-chars", type=int, default=0, help="drop captions longer than this (0: no limit)")
    p.add_argument("--languages", default="", help="keep captions whose identified language is one of these "
                   "(comma list of py3langid codes, e.g. en,de); a sample with no such caption is skipped as 'language'")
    p.add_argument("--min-language-prob", type=float, default=0.0,
                   help="with --languages: also require this probability of the caption's language")
    p.add_argument("--dedup", action="store_true", help="drop exact duplicate images (same bytes); keep the first")
    p.add_argument("--shard-samples", "--shard-size", type=int, default=10_000, dest="shard_samples",
                   help="most samples per shard (--shard-size is the same option)")
    p.add_argument("--shard-bytes", type=int, default=0, help="also cap a shard's estimated bytes (0: off)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--seed", type=int, default=None, help="shuffle the records within each chunk (seeded by this and the chunk index; keys stay input "
                   "positions; default: input order)")
    p.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb cap on width*height "
                   "(default: Pillow's, 89478485)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad record instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier ingest in --output first")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--part", default=None, help="i/N: run only chunks c with c %% N == i (0 <= i < N); then "
                   "'merge-stats --output DIR' once every part is done")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: --workers processes; ray: Ray tasks (pip install -e '.[prep]')")
    p.add_argument("--ray-address", default=None, help="Ray cluster address ('auto', 'ray://HOST:10001'); "
                   "default: a local instance of --workers CPUs")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from data_prep.ingest import EmptyIngestError, IngestError, run_ingest
    from data_prep.ingest_options import DEFAULT_MAX_PIXELS, IngestOptions

    opts = IngestOptions(
        inputs=args.inputs, output=args.output, format=args.format, image_column=args.image_column,
        caption_column=args.caption_column, image_root=args.image_root,
        caption_template=args.caption_template, class_names=args.class_names, resize=args.resize,
        resize_mode=args.resize_mode, upscale=args.upscale, image_format=args.image_format,
        quality=args.quality, min_size=args.min_size, max_aspect_ratio=args.max_aspect_ratio,
        min_caption_chars=args.min_caption_chars, max_caption_chars=args.max_caption_chars,
        languages=args.languages, min_language_prob=args.min_language_prob,
        dedup=args.dedup, shard_samples=args.shard_samples, shard_bytes=args.shard_bytes,
        workers=args.workers, seed=args.seed,
        max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels, strict=args.strict,
    )
    from data_prep.ingest import parse_part

    try:
        part = parse_part(args.part) if args.part else None
        stats = run_ingest(opts, overwrite=args.overwrite, progress=not args.no_progress, part=part,
                           engine=args.engine, address=args.ray_address)
        if part is not None:
            print(f"ingest part {stats['part']}: {stats['chunks']} chunks ({stats['chunks_written']} written now), "
                  f"{stats['samples_written']} samples, {stats['seconds']} s; when every part is done: "
                  f"vlp-prep merge-stats --output {args.output}")
            return 0
    except EmptyIngestError as err:
        print(f"vlp-prep ingest: error: {err}\n(stats: {args.output}/stats.json)", file=sys.stderr)
        return 1
    except (ValueError, OSError, IngestError) as err:
        print(f"vlp-prep ingest: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, IngestError) else 1
    for inp in stats["inputs"]:
        print(f"input {inp['path']}: read as {inp['format']}")
    if stats["classes"] is not None:
        print(f"classes: {stats['classes']} (label i = line i of {args.output}/classnames.txt)")
    skipped = ", ".join(f"{k}={v}" for k, v in stats["skipped"].items()) or "none"
    print(f"ingest: {stats['samples_written']} samples in {stats['shards']} shards "
          f"({stats['shards_reused']} reused), {stats['bytes']} bytes, {stats['seconds']} s; "
          f"skipped {stats['skipped_total']} ({skipped}); stats: {args.output}/stats.json")
    return 0

