"""``vlp-eval`` / ``python -m eval``: evaluate a checkpoint on many tasks at once, or on one.

    python -m eval run --model M --tasks zeroshot,retrieval,compositionality,diagnostics,linear_probe \\
        --datasets [KIND:]PATH,... --output DIR          # JSON per task, results.csv, summary.md
    python -m eval zeroshot|retrieval|diagnostics|linear_probe|compositional --model M --dataset D --output F.json
    python -m eval aro --subset vg_relation|vg_attribution|coco_order|flickr30k_order --model M --dataset DIR --output F
    python -m eval sugarcrepe [--subset replace_obj,...] [--image-root DIR] --model M --dataset DIR --output F
    python -m eval winoground --model M --dataset DIR --output F.json
    python -m eval builtin --model M --root DIR --output-dir DIR   # = `run` on DIR/{zeroshot,retrieval,compositional}
    python -m eval captioning --model M --dataset D --output F.json [--strategy beam ...]  # BLEU, CIDEr-D, ...
    python -m eval caption --model M --images DIR|SHARDS --output captions.jsonl [--strategy ...]

M is a run directory or checkpoint of ours, an open_clip checkpoint file (with --model-config: an
open_clip model name or model-config JSON), an open_clip local-dir export, or a local transformers
CLIP directory. Embeddings are cached on disk by model and dataset content (--cache-dir, default
$VLP_CACHE_DIR or ~/.cache/vlp/eval; --no-cache to turn off). Data parallel: start it with
``torchrun --nproc_per_node N -m eval run ...``.

The sub-commands, their options and ``run``'s task list all come from the task declarations
(:mod:`eval.tasks.registry`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from eval.encoding.cache import default_cache_dir
from eval.report import write_result
from eval.suite import format_table
from eval.tasks import registry
from eval.tasks.task import Option



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


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        parser.add_argument(*option.flags, **option.kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: ``run``, one sub-command per task, and ``builtin``."""
    parser = argparse.ArgumentParser(prog="vlp-eval", description="Evaluate a CLIP model (CLIP_benchmark metrics).")
    sub = parser.add_subparsers(dest="command", required=True)
    families, kinds = registry.families(), registry.kinds()

    run = sub.add_parser("run", help="several tasks on several datasets; JSON per task, CSV, markdown")
    _add_common(run)
    run.add_argument("--tasks", default=",".join(families), help=f"comma-separated, from {', '.join(families)}")
    run.add_argument("--datasets", required=True, nargs="+",
                     help=f"[KIND:]PATH items (comma- or space-separated); KIND one of {', '.join(kinds)}")
    run.add_argument("--output", required=True, help="output folder")
    _add_options(run, registry.options("run"))

    for task in registry.all_tasks():
        single = sub.add_parser(task.name, help=task.help or f"run the {task.name} task on one dataset")
        _add_common(single)
        single.add_argument("--dataset", required=True, help="dataset folder or file (see `eval run` for the formats)")
        single.add_argument("--output", required=True, help="result JSON file to write")
        _add_options(single, [o for o in task.options if "task" in o.scopes])

    suite = registry.builtin_tasks()
    builtin = sub.add_parser("builtin", help=f"`run` of {', '.join(dict.fromkeys(t.family for t in suite))} on "
                                             f"ROOT/{{{','.join(str(t.builtin) for t in suite)}}}")
    _add_common(builtin)
    builtin.add_argument("--root", required=True,
                         help=f"folder holding {', '.join(f'{t.builtin}/' for t in suite)}")
    builtin.add_argument("--output-dir", "--output", dest="output_dir", required=True,
                         help="output folder: the files `run --output` writes (<dataset>_<task>.json, results.csv, "
                              "summary.md, retrieval PNG)")
    _add_options(builtin, registry.options("builtin"))

    from eval.captioning.cli import add_caption_arguments

    caption = sub.add_parser("caption", help="captions of a folder of images or of shards from a CoCa model, as JSON lines")
    _add_common(caption)
    add_caption_arguments(caption)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Fail before loading anything when a path or number is wrong."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model} does not exist")
    if args.command == "run":
        return
    data = Path(args.root if args.command == "builtin" else args.dataset)
    if (args.command == "builtin" or registry.get_task(args.command).folder) and not data.is_dir():
        raise FileNotFoundError(f"dataset folder {data} does not exist")
    if not data.exists():
        raise FileNotFoundError(f"dataset {data} does not exist")


def make_encoder(args: argparse.Namespace) -> Any:
    """Runtime (one or many ranks), cache and lazily loaded model for ``args``."""
    from eval.encoding.cache import EmbeddingCache
    from eval.encoding.encoder import EncodeOptions, Encoder
    from eval.encoding.parallel import init_runtime
    from eval.encoding.source import model_source

    runtime = init_runtime(args.device)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    source = model_source(args.model, cache, device=runtime.device, model_config=args.model_config,
                          allow_mismatch=args.allow_mismatch)
    options = EncodeOptions(args.batch_size, args.num_workers, not args.no_progress)
    return Encoder(source, cache, runtime, options)


def _scope_values(args: argparse.Namespace, scope: str) -> dict[str, Any]:
    return {option.dest: getattr(args, option.dest) for option in registry.options(scope)}


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run what ``args`` asks for and write its files; return {label: result} (rank 0 writes)."""
    from eval.run import RunOptions, parse_dataset_specs, parse_tasks, run_single, run_tasks

    if args.command == "caption":  # --images, not --dataset: read by eval.captioning.images
        from eval.captioning.cli import caption_command

        _check_args(argparse.Namespace(**{**vars(args), "command": "run"}))
        return caption_command(args, make_encoder(args))
    _check_args(args)
    if args.command == "run":  # names checked before the encoder (and its runtime) start
        tasks = parse_tasks(args.tasks)
        specs = parse_dataset_specs([i for chunk in args.datasets for i in chunk.split(",")])
        encoder = make_encoder(args)
        results = run_tasks(encoder, tasks, specs, args.output, RunOptions(**_scope_values(args, "run")))
        labelled: dict[str, dict[str, Any]] = {}
        for r in results:  # two datasets of one name stay two entries
            label = f"{r['dataset']}/{r['task']}"
            labelled[label if label not in labelled else f"{label}#{len(labelled)}"] = r
        return labelled
    encoder = make_encoder(args)
    if args.command == "builtin":  # `run` on the suite's folders: same files, same cache
        from eval.suite import run_builtin

        return run_builtin(encoder, args.root, args.output_dir, RunOptions(**_scope_values(args, "builtin")))
    task = registry.get_task(args.command)
    main = encoder.runtime.is_main
    result = run_single(encoder, task, Path(args.dataset), vars(args), Path(args.output))
    if main:
        result["path"] = str(write_result(args.output, result))
    return {args.command: result}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status (2 on a bad path, value or model)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (FileNotFoundError, ValueError) as exn:  # a ModelMismatchError too: its message names --allow-mismatch
        print(f"vlp-eval: error: {exn}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(format_table(results))
    for result in results.values():
        if result.get("skipped"):
            print(f"warning: {result['skipped']} corrupt sample(s) skipped in {result['dataset']}")
        for warning in result.get("model_warnings", []) or []:
            print(f"warning: model: {warning}")
        for field in ("path", "histogram_png", "top5_grid_png", "captions_jsonl"):
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
