"""``vlp-train`` / ``python train.py``: train from a YAML recipe plus section.key=value overrides."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from vlp.config import ConfigError, load_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlp-train",
        description="Train a CLIP-style dual encoder. Example: "
                    "python train.py --config configs/tiny.yaml optim.lr=1e-3 train.steps=200")
    parser.add_argument("--config", help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, applied after the YAML")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from vlp.train.engine import train

    try:
        run_dir = train(cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
