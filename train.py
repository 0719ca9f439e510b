"""Train a vlp model: ``python train.py --config configs/tiny.yaml train.steps=200``.

Several processes: ``torchrun --nproc_per_node 2 train.py --config ...``.
"""

import sys

from vlp.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
