"""``vlp-prep negatives``: copy shards, adding NegCLIP-style hard-negative captions (``key.neg.json``)."""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``negatives`` sub-command."""
    p = sub.add_parser(
        "negatives",
        help="add hard-negative captions to shards",
        description=(
            "Copy WebDataset shards to --output (same shard names, same samples, byte-identical "
            "members) adding key.neg.json = {\"caption\", \"negatives\": [...], \"types\": [...]} "
            "(plus \"alternatives\": [{caption, negatives, types}] for the other captions of a .json list) "
            "with perturbed versions of each sample's .txt caption: attribute swaps, object swaps "
            "around a relation (word lists, no tagger) and seeded word-order shuffles. Copies "
            "sizes.json and writes stats.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--shards", required=True, help="shard spec: directory, brace pattern, or several joined by '::'")
    p.add_argument("--output", required=True, help="output directory (must not be the input directory)")
    p.add_argument("--per-caption", type=int, default=3, help="negatives per caption at most")
    p.add_argument("--seed", type=int, default=0, help="seed (each sample's shuffles depend on seed and key)")
    p.add_argument("--caption-key", default="txt", help="sample field holding the caption")
    p.set_defaults(func=_run_negatives)


def _run_negatives(args: argparse.Namespace) -> int:
    from vlp.data.shards import expand_shards

    try:
        if args.per_caption < 1:
            raise ValueError(f"--per-caption must be >= 1, got {args.per_caption}")
        urls = expand_shards(args.shards)
        stats = add_negatives(urls, args.output, per_caption=args.per_caption, seed=args.seed,
                              caption_key=args.caption_key)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        print(f"vlp-prep negatives: error: {err}", file=sys.stderr)
        return 2
    print(f"{stats['samples']} samples in {stats['shards']} shard(s) -> {args.output}: "
          f"{stats['negatives']} negatives; {stats['samples_without_lexicon_perturbation']} samples with "
          f"shuffles only, {stats['samples_without_negatives']} with none (see stats.json)")
    return 0


def add_negatives(urls: List[str], output: str | os.PathLike, *, per_caption: int = 3, seed: int = 0,
                  caption_key: str = "txt", generator: Optional[Any] = None, progress: bool = True) -> Dict[str, Any]:
    """Copy the shards ``urls`` into ``output`` adding ``key.neg.json`` to every sample; returns
    the stats also written to ``output/stats.json``.

    Each output shard keeps its input name, its samples and their members byte for byte (a
    ``.gz`` member is written with the same decompressed content), and is renamed into place only
    when complete. ``sizes.json`` is copied when all shards come from one folder that has one,
    else written from the counts.
    """
    from tqdm import tqdm

    from data_prep.negatives import NegativeGenerator, sample_rng, words_of
    from data_prep.shard_writer import SIZES_NAME, ShardWriter, encode_json
    from data_prep.tokenizer_train import iter_shard_samples, sample_captions
    from vlp.utils.atomic import open_atomic, write_bytes_atomic, write_json_atomic

    out = Path(output)
    names = [os.path.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise ValueError("two input shards share a file name; their copies would collide in --output")
    if any(Path(u).resolve().parent == out.resolve() for u in urls):
        raise ValueError(f"--output {out} holds the input shards; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    generator = generator or NegativeGenerator(per_caption=per_caption)
    start = time.time()
    stats: Dict[str, Any] = {"shards": 0, "samples": 0, "negatives": 0, "by_type": {},
                             "samples_with_lexicon_perturbation": 0, "samples_without_lexicon_perturbation": 0,
                             "samples_without_negatives": 0, "samples_without_caption": 0,
                             "captions_not_utf8": 0, "per_caption": per_caption, "seed": seed}
    sizes: Dict[str, int] = {}
    for url, name in tqdm(list(zip(urls, names)), desc="shards", unit=" shard", disable=not progress,
                          file=sys.stderr):
        count = 0
        # ShardWriter names shard i ``pattern % i``; '%.0s' prints nothing, so the name stays as is
        with ShardWriter(out, name.replace("%", "%%") + "%.0s", max_count=2**62, sizes_name=None) as writer:
            for sample in iter_shard_samples(url):
                key = sample.pop("__key__")
                raw = sample.get(caption_key, b"")
                try:
                    caption = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    caption = raw.decode("utf-8", errors="replace").strip()
                    stats["captions_not_utf8"] += 1
                texts, types = generator(caption, sample_rng(seed, key)) if caption else ([], [])
                _count_sample(stats, caption, types, len(words_of(caption)))
                fields = {k: (gzip.decompress(v) if k.endswith(".gz") else v)
                          for k, v in sample.items() if k != "neg.json"}
                record: Dict[str, Any] = {"caption": caption, "negatives": texts, "types": types}
                others = [c for c in sample_captions(sample) if c != caption] if "json" in sample else []
                if others:  # several captions per image: negatives of each, for whichever the loader draws
                    record["alternatives"] = [
                        dict(zip(("caption", "negatives", "types"), (c, *generator(c, sample_rng(seed, f"{key}:{c}")))))
                        for c in others]
                fields["neg.json"] = encode_json(record)
                writer.write({"__key__": key, **fields})
                count += 1
        if count == 0:  # ShardWriter writes no file for no samples: keep the (empty) shard anyway
            with open_atomic(out / name, "wb") as handle, tarfile.open(fileobj=handle, mode="w"):
                pass
        sizes[name] = count
        stats["shards"] += 1
    folders = {Path(u).parent for u in urls}
    source_sizes = folders.pop() / SIZES_NAME if len(folders) == 1 else None
    if source_sizes is not None and source_sizes.is_file():
        write_bytes_atomic(out / SIZES_NAME, source_sizes.read_bytes())
    else:
        write_json_atomic(out / SIZES_NAME, sizes)
    stats["sizes"] = sizes
    stats["seconds"] = round(time.time() - start, 3)
    write_json_atomic(out / "stats.json", stats)
    return stats


def _count_sample(stats: Dict[str, Any], caption: str, types: List[str], n_words: int) -> None:
    from data_prep.negatives import LEXICON_TYPES

    stats["samples"] += 1
    stats["negatives"] += len(types)
    for kind in types:
        stats["by_type"][kind] = stats["by_type"].get(kind, 0) + 1
    if not caption:
        stats["samples_without_caption"] += 1
    if any(kind in LEXICON_TYPES for kind in types):
        stats["samples_with_lexicon_perturbation"] += 1
    else:
        stats["samples_without_lexicon_perturbation"] += 1
    if not types:
        stats["samples_without_negatives"] += 1
