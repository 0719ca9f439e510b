"""``vlp-prep synth-shapes``: the built-in synthetic shapes set."""

from __future__ import annotations

import argparse
import sys


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``synth-shapes`` sub-command."""
    p = sub.add_parser(
        "synth-shapes",
        help="render the synthetic shapes image-text set",
        description=(
            "Render one- and two-object shape images with captions into WebDataset shards "
            "(OUT/train), CLIP_benchmark-layout zero-shot and retrieval sets and a "
            "compositional set (OUT/eval), plus OUT/dataset.json. Same arguments -> "
            "byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train-samples", type=int, required=True, help="number of training images")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    p.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    p.add_argument("--shard-samples", "--shard-size", type=int, default=2000, dest="shard_samples",
                   help="most samples per shard, train and eval (--shard-size is the same option)")
    p.add_argument(
        "--zeroshot-per-class", type=int, default=40, help="zero-shot images per class (16 classes)"
    )
    p.add_argument("--retrieval-samples", type=int, default=400, help="retrieval images")
    p.add_argument("--compositional-samples", type=int, default=400, help="compositional images")
    p.add_argument("--retrieval-captions", type=int, default=0,
                   help="captions per retrieval image, 1-8 (0: 2 or 3 per image, drawn)")
    p.add_argument(
        "--workers", type=int, default=None, help="processes for training shards (None: one per CPU)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier set in --out")
    p.set_defaults(func=_run_synth_shapes)


def _run_synth_shapes(args: argparse.Namespace) -> int:
    from data_prep.synth_shapes import SynthShapesConfig, run

    cfg = SynthShapesConfig(
        out=args.out,
        train_samples=args.train_samples,
        seed=args.seed,
        image_size=args.image_size,
        shard_size=args.shard_samples,
        zeroshot_per_class=args.zeroshot_per_class,
        retrieval_samples=args.retrieval_samples,
        compositional_samples=args.compositional_samples,
        retrieval_captions=args.retrieval_captions,
    )
    try:
        cfg.validate()
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        run(cfg, workers=args.workers, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        if isinstance(err, OSError) and err.filename:
            err = OSError(f"cannot write under --out {args.out}: {err.strerror}: {err.filename}")
        print(f"vlp-prep synth-shapes: error: {err}", file=sys.stderr)
        return 2
    return 0
