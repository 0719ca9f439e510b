"""Train a vlp model: ``python train.py --config configs/tiny.yaml train.steps=200``.

Several processes: ``torchrun --nproc_per_node 2 train.py --config ...``. After training, the
built-in evaluation (eval/) runs on the final model when ``eval.at_end`` is on.
"""

import sys

from eval.training import evaluate_at_end, evaluate_periodic
from vlp.train.cli import main

if __name__ == "__main__":
    sys.exit(main(evaluate=evaluate_at_end, periodic=evaluate_periodic))
