"""``vlp-prep merge-stats``: finish an ingest that ran as ``--part i/N`` jobs."""

from __future__ import annotations

import argparse
import sys


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``merge-stats`` sub-command."""
    p = sub.add_parser("merge-stats", help="finish an ingest run as --part i/N jobs: dedup, sizes.json, stats.json",
                       description="Check that every chunk of the ingest in --output is done (naming the missing "
                                   "ones), drop exact duplicates across parts when the ingest used --dedup, and "
                                   "write sizes.json, stats.json and classnames.txt, as one job would have.")
    p.add_argument("--output", required=True, help="the ingest's output folder (its ingest.json names the input)")
    p.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from data_prep.ingest import EmptyIngestError, IngestError, merge_stats

    try:
        stats = merge_stats(args.output)
    except EmptyIngestError as err:
        print(f"vlp-prep merge-stats: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError, IngestError) as err:
        print(f"vlp-prep merge-stats: error: {err}", file=sys.stderr)
        return 1
    skipped = ", ".join(f"{k}={v}" for k, v in stats["skipped"].items()) or "none"
    print(f"merge-stats: {stats['samples_written']} samples in {stats['shards']} shards, {stats['bytes']} bytes; "
          f"skipped {stats['skipped_total']} ({skipped}); stats: {args.output}/stats.json")
    return 0
