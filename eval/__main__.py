"""``vlp-eval`` / ``python -m eval``: run one eval task, or the built-in suite, and write JSON.

    python -m eval zeroshot|retrieval|compositional --model RUN_OR_CKPT --dataset DIR --output FILE.json
    python -m eval builtin --model RUN_OR_CKPT --root DIR --output-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from eval.report import write_result
from eval.suite import BUILTIN_TASKS, format_table

SINGLE_TASKS = tuple(BUILTIN_TASKS)  # zeroshot, retrieval, compositional


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run directory or checkpoint file of ours")
    parser.add_argument("--batch-size", type=int, default=256, help="images (and texts) per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-command per task plus ``builtin``."""
    parser = argparse.ArgumentParser(prog="vlp-eval", description="Evaluate a vlp model (CLIP_benchmark metrics).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SINGLE_TASKS:
        task = sub.add_parser(name, help=f"run the {name} task on one dataset")
        _add_common(task)
        task.add_argument("--dataset", required=True, help="dataset directory (webdataset layout)")
        task.add_argument("--output", required=True, help="result JSON file to write")
    builtin = sub.add_parser("builtin", help="run all tasks on ROOT/{zeroshot,retrieval,compositional}")
    _add_common(builtin)
    builtin.add_argument("--root", required=True, help="folder holding zeroshot/, retrieval/, compositional/")
    builtin.add_argument("--output-dir", required=True, help="folder for <task>.json results")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Fail before loading anything when a path or number is wrong."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model} does not exist")
    data = args.root if args.command == "builtin" else args.dataset
    if not Path(data).is_dir():
        raise FileNotFoundError(f"dataset folder {data} does not exist")


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Load the model, run the requested task(s), write JSON; return {task: result}."""
    from vlp.models.loading import load_model  # lazy: eval's own modules import without vlp.models

    _check_args(args)
    loaded = load_model(args.model, device=args.device)
    options = dict(batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                   progress=not args.no_progress)
    results: dict[str, dict[str, Any]] = {}
    if args.command == "builtin":
        from eval.suite import evaluate_builtin

        results = evaluate_builtin(loaded, args.root, **options)
        for name, result in results.items():
            result["path"] = str(write_result(Path(args.output_dir) / f"{name}.json", result))
    else:
        _, task = BUILTIN_TASKS[args.command]
        result = task(loaded, args.dataset, **options)
        result["path"] = str(write_result(args.output, result))
        results[args.command] = result
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status (2 on a bad path or value)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (FileNotFoundError, ValueError) as exn:
        print(f"vlp-eval: error: {exn}", file=sys.stderr)
        return 2
    print(format_table(results))
    for result in results.values():
        if result.get("skipped"):
            print(f"warning: {result['skipped']} corrupt sample(s) skipped in {result['dataset']}")
        print(f"wrote {result['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
