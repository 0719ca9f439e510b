"""``vlp-prep tokenizer``: train a SentencePiece tokenizer on the captions of shards."""

from __future__ import annotations

import argparse
import sys


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``tokenizer`` sub-command."""
    p = sub.add_parser(
        "tokenizer",
        help="train a SentencePiece tokenizer on shard captions",
        description=(
            "Train a SentencePiece model on the captions of WebDataset shards (each sample's .txt "
            "and the 'captions' list of its .json) and write FILE.model atomically; use it with "
            "model.tokenizer=sentencepiece:FILE.model (the text tower's vocab_size follows it). "
            "Writes FILE.model.json with the counts."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--shards", required=True, help="shard spec: directory, brace pattern, or several joined by '::'")
    p.add_argument("--vocab-size", type=int, required=True, help="target number of pieces")
    p.add_argument("--out", required=True, help="output .model file")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character-coverage", type=float, default=1.0, help="share of characters covered")
    p.add_argument("--hard-vocab-limit", action="store_true",
                   help="SentencePiece's hard limit: fail when the captions cannot fill --vocab-size "
                        "(default: a smaller model and a warning with the size reached)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1, writing no model, when the captions cannot fill --vocab-size")
    p.add_argument("--threads", type=int, default=1, help="trainer threads")
    p.set_defaults(func=_run_tokenizer)


def _run_tokenizer(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from data_prep.tokenizer_train import CaptionStats, VocabTooSmallError, iter_captions, train_sentencepiece
    from vlp.data.shards import expand_shards
    from vlp.utils.atomic import write_json_atomic

    start = time.time()
    stats = CaptionStats()
    try:
        if not args.out.endswith(".model"):
            raise ValueError(f"--out must end with .model, got {args.out}")
        urls = expand_shards(args.shards)
        captions = tqdm(iter_captions(urls, stats), desc="captions", unit=" cap", file=sys.stderr,
                        disable=not sys.stderr.isatty())
        pieces = train_sentencepiece(captions, args.out, args.vocab_size, model_type=args.model_type,
                                     character_coverage=args.character_coverage,
                                     hard_vocab_limit=args.hard_vocab_limit, threads=args.threads,
                                     require_full=args.strict)
    except VocabTooSmallError as err:
        print(f"vlp-prep tokenizer: error: {err}; no model written", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        if isinstance(err, RuntimeError) and stats.shards and stats.captions == 0:
            err = ValueError(f"the {stats.shards} shard(s) in {args.shards} hold no captions "
                             f"({stats.samples} samples, none with a .txt or a json 'captions' list)")
        print(f"vlp-prep tokenizer: error: {err}", file=sys.stderr)
        return 2
    if stats.captions == 0:
        print("vlp-prep tokenizer: error: the shards hold no captions", file=sys.stderr)
        return 2
    short = pieces < args.vocab_size
    if short:
        print(f"vlp-prep tokenizer: warning: trained {pieces} pieces, fewer than the requested --vocab-size "
              f"{args.vocab_size}: the captions cannot fill it (--strict makes this an error)", file=sys.stderr)
    summary = {"model": args.out, "pieces": pieces, "vocab_size_requested": args.vocab_size,
               "vocab_size_reached": pieces, "vocab_size_filled": not short,
               "model_vocab_size": pieces + 3, "shards": stats.shards, "samples": stats.samples,
               "captions": stats.captions, "samples_without_caption": stats.samples_without_caption,
               "seconds": round(time.time() - start, 2)}
    write_json_atomic(args.out + ".json", summary)
    requested = f" of the {args.vocab_size} requested" if short else ""
    print(f"trained {pieces} pieces{requested} on {stats.captions} captions from {stats.samples} samples in "
          f"{stats.shards} shard(s) -> {args.out} (text tower vocab_size {pieces + 3})")
    return 0
