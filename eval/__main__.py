"""``vlp-eval`` / ``python -m eval``: evaluate a checkpoint on many tasks at once, or on one.

    python -m eval run --model M --tasks zeroshot,retrieval,compositionality,diagnostics,linear_probe \\
        --datasets [KIND:]PATH,... --output DIR          # JSON per task, results.csv, summary.md
    python -m eval zeroshot|retrieval|diagnostics|linear_probe|compositional --model M --dataset D --output F.json
    python -m eval aro --subset vg_relation|vg_attribution|coco_order|flickr30k_order --model M --dataset DIR --output F
    python -m eval sugarcrepe [--subset replace_obj,...] [--image-root DIR] --model M --dataset DIR --output F
    python -m eval winoground --model M --dataset DIR --output F.json
    python -m eval builtin --model M --root DIR --output-dir DIR   # = `run` on DIR/{zeroshot,retrieval,compositional}

M is a run directory or checkpoint of ours, an open_clip checkpoint file (with --model-config: an
open_clip model name or model-config JSON), an open_clip local-dir export, or a local transformers
CLIP directory. Embeddings are cached on disk by model and dataset content (--cache-dir, default
$VLP_CACHE_DIR or ~/.cache/vlp/eval; --no-cache to turn off). Data parallel: start it with
``torchrun --nproc_per_node N -m eval run ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from eval.report import write_result
from eval.suite import format_table

ENCODER_TASKS = ("zeroshot", "retrieval", "diagnostics", "linear_probe", "compositional")
FORMAT_TASKS = ("aro", "sugarcrepe", "winoground")  # published formats, scored by caption choice
#: single-task sub-command -> (task name of ``eval run``, dataset kind)
SINGLE = {"zeroshot": ("zeroshot", "classification"), "retrieval": ("retrieval", "retrieval"),
          "diagnostics": ("diagnostics", "retrieval"), "linear_probe": ("linear_probe", "classification"),
          "compositional": ("compositionality", "compositional")}


def default_cache_dir() -> Path:
    if os.environ.get("VLP_CACHE_DIR"):
        return Path(os.environ["VLP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlp" / "eval"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="run dir or checkpoint of ours, open_clip checkpoint or local-dir, or transformers CLIP dir")
    parser.add_argument("--model-config", default=None,
                        help="for an open_clip checkpoint file: open_clip model name or model-config JSON")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="evaluate despite activation/tokenizer/context mismatches (reported in the JSON)")
    parser.add_argument("--batch-size", type=int, default=256, help="images (and texts) per forward pass")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="image decoding processes (default: min(4, CPU count)); 0 decodes in the main process")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder (default $VLP_CACHE_DIR or ~/.cache/vlp/eval)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: ``run``, one sub-command per task, and ``builtin``."""
    parser = argparse.ArgumentParser(prog="vlp-eval", description="Evaluate a CLIP model (CLIP_benchmark metrics).")
    sub = parser.add_subparsers(dest="command", required=True)
    from eval.aro import SUBSETS as ARO_SUBSETS
    from eval.run import KINDS, TASKS
    from eval.sugarcrepe import SUBSETS as SUGARCREPE_SUBSETS

    run = sub.add_parser("run", help="several tasks on several datasets; JSON per task, CSV, markdown")
    _add_common(run)
    run.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    run.add_argument("--datasets", required=True, nargs="+",
                     help=f"[KIND:]PATH items (comma- or space-separated); KIND one of {', '.join(KINDS)}")
    run.add_argument("--output", required=True, help="output folder")
    run.add_argument("--aro-exclude", default="", help="comma-separated ARO relations/attribute pairs to leave out")
    run.add_argument("--grid-queries", type=int, default=4, help="text queries in the retrieval top-5 PNG (0: none)")

    helps = {"aro": "ARO VG-Relation/VG-Attribution/COCO-Order/Flickr30k-Order from the published files",
             "sugarcrepe": "SugarCrepe subsets from the published JSON files and COCO val2017 images",
             "winoground": "Winoground from examples.jsonl and images/",
             "diagnostics": "modality gap, uniformity, alignment, effective rank, similarity histogram PNG",
             "linear_probe": "logistic regression on frozen image features (train/test splits)"}
    tasks = {}
    for name in ENCODER_TASKS + FORMAT_TASKS:
        task = tasks[name] = sub.add_parser(name, help=helps.get(name, f"run the {name} task on one dataset"))
        _add_common(task)
        task.add_argument("--dataset", required=True, help="dataset folder or file (see `eval run` for the formats)")
        task.add_argument("--output", required=True, help="result JSON file to write")
    tasks["aro"].add_argument("--subset", required=True, choices=ARO_SUBSETS, help="which ARO set")
    tasks["aro"].add_argument("--exclude", default="", help="comma-separated relations/attribute pairs to leave out")
    for parser_ in (tasks["aro"], run):
        parser_.add_argument("--keep-symmetric", action="store_true",
                             help="VG-Relation headline macro accuracy over all relations (default: without the "
                                  "symmetric ones, as ARO publishes)")
    tasks["sugarcrepe"].add_argument("--subset", default=",".join(SUGARCREPE_SUBSETS),
                                     help="comma-separated subsets (default: all seven)")
    tasks["sugarcrepe"].add_argument("--image-root", default=None,
                                     help="COCO val2017 folder (default DIR/val2017 or DIR)")
    tasks["diagnostics"].add_argument("--histogram", default=None,
                                      help="similarity histogram PNG (default: the output path with .png)")
    from eval.search import BACKENDS

    builtin = sub.add_parser("builtin", help="`run` of zeroshot, retrieval, compositionality on "
                                             "ROOT/{zeroshot,retrieval,compositional}")
    _add_common(builtin)
    builtin.add_argument("--root", required=True, help="folder holding zeroshot/, retrieval/, compositional/")
    builtin.add_argument("--output-dir", "--output", dest="output_dir", required=True,
                         help="output folder: the files `run --output` writes (<dataset>_<task>.json, results.csv, "
                              "summary.md, retrieval PNG)")
    builtin.add_argument("--grid-queries", type=int, default=4,
                         help="text queries in the retrieval top-5 PNG (0: none)")
    for parser_ in (run, tasks["retrieval"], builtin):
        parser_.add_argument(
            "--search", default="auto", choices=BACKENDS,
            help="retrieval top-k: torch (exact), faiss-flat (exact), faiss-ivf (approximate); auto: torch up to "
                 "100k gallery items, faiss-flat up to 1M, IVF beyond (the JSON's `search` says which ran)")
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
    if args.command == "run":
        return
    data = Path(args.root if args.command == "builtin" else args.dataset)
    if args.command in FORMAT_TASKS + ("builtin",) and not data.is_dir():
        raise FileNotFoundError(f"dataset folder {data} does not exist")
    if not data.exists():
        raise FileNotFoundError(f"dataset {data} does not exist")


def make_encoder(args: argparse.Namespace) -> Any:
    """Runtime (one or many ranks), cache and lazily loaded model for ``args``."""
    from eval.cache import EmbeddingCache
    from eval.encoder import EncodeOptions, Encoder
    from eval.parallel import init_runtime
    from eval.run import model_source

    runtime = init_runtime(args.device)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    source = model_source(args.model, cache, device=runtime.device, model_config=args.model_config,
                          allow_mismatch=args.allow_mismatch)
    options = EncodeOptions(args.batch_size, args.num_workers, not args.no_progress)
    return Encoder(source, cache, runtime, options)


def _run_format_task(loaded: Any, args: argparse.Namespace, device: str) -> dict[str, Any]:
    common = dict(batch_size=args.batch_size, device=device, progress=not args.no_progress)
    if args.command == "aro":
        from eval.aro import evaluate_aro

        exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
        return evaluate_aro(loaded, args.dataset, args.subset, exclude=exclude,
                            symmetric_filter=not args.keep_symmetric, **common)
    if args.command == "sugarcrepe":
        from eval.sugarcrepe import evaluate_sugarcrepe

        subsets = [s.strip() for s in args.subset.split(",") if s.strip()]
        return evaluate_sugarcrepe(loaded, args.dataset, subsets, image_root=args.image_root, **common)
    from eval.winoground import evaluate_winoground

    return evaluate_winoground(loaded, args.dataset, **common)


def _single_task(encoder: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One encoder task on one dataset, through the same code as ``eval run``."""
    import tempfile

    from eval.run import DatasetSpec, RunOptions, run_tasks

    task, kind = SINGLE[args.command]
    with tempfile.TemporaryDirectory() as scratch:
        results = run_tasks(encoder, [task], [DatasetSpec(kind, Path(args.dataset))], scratch,
                            RunOptions(args.batch_size, args.num_workers, not args.no_progress, grid_queries=0,
                                       search=getattr(args, "search", "auto")))
        result = results[0]
        if args.command == "diagnostics" and "histogram_png" in result:
            target = Path(args.histogram or Path(args.output).with_suffix(".png"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(result["histogram_png"]).read_bytes())
            result["histogram_png"] = str(target)
    result.pop("path", None)
    return result


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run what ``args`` asks for and write its files; return {label: result} (rank 0 writes)."""
    _check_args(args)
    encoder = make_encoder(args)
    main = encoder.runtime.is_main
    if args.command == "run":
        from eval.run import RunOptions, parse_dataset_specs, parse_tasks, run_tasks

        items = [i for chunk in args.datasets for i in chunk.split(",")]
        options = RunOptions(args.batch_size, args.num_workers, not args.no_progress,
                             tuple(e.strip() for e in args.aro_exclude.split(",") if e.strip()), args.grid_queries,
                             args.search, aro_symmetric_filter=not args.keep_symmetric)
        results = run_tasks(encoder, parse_tasks(args.tasks), parse_dataset_specs(items), args.output, options)
        labelled: dict[str, dict[str, Any]] = {}
        for r in results:  # two datasets of one name stay two entries
            label = f"{r['dataset']}/{r['task']}"
            labelled[label if label not in labelled else f"{label}#{len(labelled)}"] = r
        return labelled
    if args.command == "builtin":  # `run` on the three folders: same files, same cache
        from eval.run import RunOptions
        from eval.suite import run_builtin

        options = RunOptions(args.batch_size, args.num_workers, not args.no_progress, grid_queries=args.grid_queries,
                             search=args.search)
        return run_builtin(encoder, args.root, args.output_dir, options)
    if args.command in FORMAT_TASKS:
        result = _run_format_task(encoder.loaded, args, str(encoder.device))
        result.setdefault("model_warnings", encoder.model_warnings())
    else:
        result = _single_task(encoder, args)
    if main:
        result["path"] = str(write_result(args.output, result))
    return {args.command: result}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status (2 on a bad path, value or model)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (FileNotFoundError, ValueError) as exn:
        print(f"vlp-eval: error: {exn}", file=sys.stderr)
        return 2
    except Exception as exn:  # a model mismatch is refused with its own message
        if type(exn).__name__ == "ModelMismatchError":  # its message names --allow-mismatch
            print(f"vlp-eval: error: {exn}", file=sys.stderr)
            return 2
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(format_table(results))
    for result in results.values():
        if result.get("skipped"):
            print(f"warning: {result['skipped']} corrupt sample(s) skipped in {result['dataset']}")
        for warning in result.get("model_warnings", []) or []:
            print(f"warning: model: {warning}")
        for field in ("path", "histogram_png", "top5_grid_png"):
            if field in result:
                print(f"wrote {result[field]}")
    if args.command in ("run", "builtin"):
        out = Path(args.output if args.command == "run" else args.output_dir)
        print(f"wrote {out / 'results.csv'} and {out / 'summary.md'}")
    return 0


def exit_without_teardown(code: int) -> None:
    """End the process with ``code`` after what a normal exit does for this program (wait for
    other threads, atexit handlers, log handlers, stdio), skipping only the interpreter's module
    teardown, which takes about a second once torch, open_clip and transformers are imported."""
    import atexit
    import threading

    threading._shutdown()  # what interpreter exit does first: stop idle pools, join non-daemon threads
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> None:
    """The ``vlp-eval`` / ``python -m eval`` command: :func:`main`, then a quick exit."""
    exit_without_teardown(main())


if __name__ == "__main__":
    cli()
