"""``vlp-eval`` / ``python -m eval``: run one eval task, or the built-in suite, and write JSON.

    python -m eval zeroshot|retrieval|compositional --model RUN_OR_CKPT --dataset DIR --output FILE.json
    python -m eval builtin --model RUN_OR_CKPT --root DIR --output-dir DIR
    python -m eval aro --subset vg_relation|vg_attribution|coco_order|flickr30k_order --model M --dataset DIR --output F
    python -m eval sugarcrepe [--subset replace_obj,...] [--image-root DIR] --model M --dataset DIR --output F
    python -m eval winoground|diagnostics --model M --dataset DIR --output FILE.json
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
FORMAT_TASKS = ("aro", "sugarcrepe", "winoground", "diagnostics")  # published formats and diagnostics


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
    helps = {"aro": "ARO VG-Relation/VG-Attribution/COCO-Order/Flickr30k-Order from the published files",
             "sugarcrepe": "SugarCrepe subsets from the published JSON files and COCO val2017 images",
             "winoground": "Winoground from examples.jsonl and images/",
             "diagnostics": "modality gap, uniformity, alignment, effective rank, similarity histogram PNG"}
    tasks = {}
    for name in SINGLE_TASKS + FORMAT_TASKS:
        task = tasks[name] = sub.add_parser(name, help=helps.get(name, f"run the {name} task on one dataset"))
        _add_common(task)
        task.add_argument("--dataset", required=True, help="dataset directory (see the task module for its layout)")
        task.add_argument("--output", required=True, help="result JSON file to write")
    from eval.aro import SUBSETS as ARO_SUBSETS
    from eval.sugarcrepe import SUBSETS as SUGARCREPE_SUBSETS

    tasks["aro"].add_argument("--subset", required=True, choices=ARO_SUBSETS, help="which ARO set")
    tasks["aro"].add_argument("--exclude", default="", help="comma-separated relations/attribute pairs to leave out")
    tasks["sugarcrepe"].add_argument("--subset", default=",".join(SUGARCREPE_SUBSETS),
                                     help="comma-separated subsets (default: all seven)")
    tasks["sugarcrepe"].add_argument("--image-root", default=None,
                                     help="COCO val2017 folder (default DIR/val2017 or DIR)")
    tasks["diagnostics"].add_argument("--histogram", default=None,
                                      help="similarity histogram PNG (default: the output path with .png)")
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
    if args.command == "sugarcrepe":
        from eval.sugarcrepe import SUBSETS as SUGARCREPE_SUBSETS

        unknown = [s for s in args.subset.split(",") if s.strip() and s.strip() not in SUGARCREPE_SUBSETS]
        if unknown:
            choices = ", ".join(SUGARCREPE_SUBSETS)
            raise ValueError(f"unknown SugarCrepe subset(s) {', '.join(unknown)}; choose from {choices}")
    data = args.root if args.command == "builtin" else args.dataset
    if not Path(data).is_dir():
        raise FileNotFoundError(f"dataset folder {data} does not exist")


def _run_format_task(loaded: Any, args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Dispatch one of FORMAT_TASKS (the published-format loaders take no ``num_workers``)."""
    common = {k: v for k, v in options.items() if k != "num_workers"}
    if args.command == "aro":
        from eval.aro import evaluate_aro

        exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
        return evaluate_aro(loaded, args.dataset, args.subset, exclude=exclude, **common)
    if args.command == "sugarcrepe":
        from eval.sugarcrepe import evaluate_sugarcrepe

        subsets = [s.strip() for s in args.subset.split(",") if s.strip()]
        return evaluate_sugarcrepe(loaded, args.dataset, subsets, image_root=args.image_root, **common)
    if args.command == "winoground":
        from eval.winoground import evaluate_winoground

        return evaluate_winoground(loaded, args.dataset, **common)
    from eval.diagnostics import evaluate_diagnostics

    histogram = args.histogram or str(Path(args.output).with_suffix(".png"))
    return evaluate_diagnostics(loaded, args.dataset, histogram_path=histogram, **options)


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
    elif args.command in FORMAT_TASKS:
        result = _run_format_task(loaded, args, options)
        result["path"] = str(write_result(args.output, result))
        results[args.command] = result
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
        if "histogram_png" in result:
            print(f"wrote {result['histogram_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
