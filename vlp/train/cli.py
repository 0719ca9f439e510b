"""``vlp-train`` / ``python train.py``: train from a YAML recipe plus section.key=value overrides.

The end-of-training and periodic evaluations are the caller's to hand in (``train.py`` gives eval's);
``vlp-train`` uses the installed ones (vlp/train/evaluation.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from vlp.config import Config, ConfigError, config_to_yaml, load_config
from vlp.train.evaluation import INSTALLED, EvaluationChoice, PeriodicChoice


def _parser() -> argparse.ArgumentParser:
    from vlp.config_docs import describe_config

    return argparse.ArgumentParser(
        prog="vlp-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a CLIP-style dual encoder. Example: "
                    "python train.py --config configs/tiny.yaml optim.lr=1e-3 train.steps=200",
        epilog="config keys (set in the YAML file or as section.key=value; list items by index, "
               "e.g. loss.terms.0.weight=0.5):\n\n" + describe_config(Config()))


def main(argv: Optional[List[str]] = None, evaluate: EvaluationChoice = INSTALLED,
         periodic: PeriodicChoice = INSTALLED) -> int:
    parser = _parser()
    parser.add_argument("--config", help="YAML recipe (see configs/)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (defaults < YAML < overrides) and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after the YAML")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from vlp.train.engine import train
    from vlp.train.oom import TrainingOutOfMemory

    try:
        run_dir = train(cfg, recipe=Path(args.config).stem if args.config else None, evaluate=evaluate,
                        periodic=periodic)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingOutOfMemory as err:  # the advice, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per torchrun process
        print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
