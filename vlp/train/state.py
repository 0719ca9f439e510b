"""What one training run holds between its steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from accelerate import Accelerator

from vlp.config import Config
from vlp.data.skips import SkipReport
from vlp.train.ema import WeightAverage
from vlp.train.precision import Precision
from vlp.train.run_dir import RunDir


@dataclass
class TrainState:
    """Everything one training run holds between its steps."""

    cfg: Config
    accelerator: Accelerator
    precision: Precision
    model: Any
    unwrapped: Any
    optimizer: Any
    scheduler: Any
    transform: Any
    loader: Any
    run_dir: RunDir
    samples_per_epoch: int
    step: int = 0
    samples_seen: int = 0
    skipped: SkipReport = field(default_factory=lambda: SkipReport(0))
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    scaler_skipped: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    window_samples: int = 0
    head_metrics: Dict[str, float] = field(default_factory=dict)  # the heads' step_metrics for the next log line
    ema: Optional[WeightAverage] = None
    position: Any = None  # vlp.data.position.LoaderPosition: the batches consumed, for exact resume
    resumed_from: Optional[Dict[str, Any]] = None  # the checkpoint state of a resumed run (its RNGs restored at the loop's start)
    last_checkpoint_time: float = field(default_factory=time.monotonic)
    trackers: Any = None  # vlp.train.trackers: TensorBoard / wandb through accelerate (rank 0)
    periodic_eval: Any = None  # evaluate(model, cfg, run_dir, step) -> metrics, every eval.every steps

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all processes and gradient-cached micro-batches."""
        return self.cfg.train.batch_size * self.accelerator.num_processes * self.cfg.train.accum_steps


