"""The Accelerator of a run, and the model and optimizer states a checkpoint holds under it.

Distribution is accelerate's alone: DDP under ``torchrun`` (gloo on CPU, NCCL on GPU), and FSDP or
DeepSpeed from an ``accelerate launch --config_file configs/accelerate/...`` file (see
docs/DISTRIBUTED.md). The state functions are collective: every rank calls them, so a sharded
model can gather its full state; the checkpoint itself is written by rank 0.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from accelerate import Accelerator

from vlp.config import Config
from vlp.train.precision import accelerate_precision


def make_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator: the precision accelerate runs for ``train.precision`` (see
    vlp/train/precision.py); ``cpu=True`` without a GPU, which makes accelerate use gloo (MULTI_CPU)
    under torchrun."""
    on_cpu = not torch.cuda.is_available()
    return Accelerator(mixed_precision=accelerate_precision(cfg.train.precision, on_cpu), cpu=on_cpu)


def full_model_state(accelerator: Accelerator, model: Any) -> Dict[str, torch.Tensor]:
    """The unwrapped model's full state dict (collective; rank 0 writes it)."""
    return accelerator.get_state_dict(model)


def full_optimizer_state(accelerator: Accelerator, model: Any, optimizer: Any) -> Dict[str, Any]:
    """The optimizer's full state dict (collective)."""
    return optimizer.state_dict()
