"""``vlp-prep`` / ``python -m data_prep``: offline data preparation commands.

Each sub-command lives in its own module with a ``register(subparsers)`` function; adding a
command is one module plus one line in ``COMMAND_MODULES``. Modules import their heavy
dependencies inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "data_prep.synth_shapes_cli",  # synth-shapes: built-in synthetic set
    "data_prep.tokenizer_cli",  # tokenizer: train a SentencePiece model on shard captions
    "data_prep.negatives_cli",  # negatives: add NegCLIP-style hard-negative captions
    "data_prep.ingest_cli",  # ingest: folders, tables, JSONL, COCO, img2dataset -> shards
    "data_prep.merge_stats_cli",  # merge-stats: finish an ingest run as --part i/N jobs
    "data_prep.dedup_cli",  # dedup: near-duplicate removal over image embeddings (faiss)
)


def build_parser() -> argparse.ArgumentParser:
    """The ``vlp-prep`` argument parser."""
    parser = argparse.ArgumentParser(prog="vlp-prep", description="Offline data preparation for vlp.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
