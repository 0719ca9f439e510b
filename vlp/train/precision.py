"""The requested numeric precision, honoured on every device.

Accelerate runs bf16 autocast on CPU and GPU and fp16 autocast with a gradient scaler on GPU; for
fp16 on a CPU it would silently stay in fp32. There this class runs float16 autocast and a
``torch.amp.GradScaler('cpu')`` itself, so ``train.precision`` always means what it says.
``pure_bf16`` keeps the weights themselves (so their gradients and AdamW's moments) in bfloat16
and runs without autocast; the loss terms still compute in float32 (vlp/losses/registry.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType


def accelerate_precision(precision: str, on_cpu: bool) -> str:
    """The ``mixed_precision`` to give Accelerate for ``train.precision`` (fp16 on CPU is ours to run)."""
    if precision in ("fp32", "pure_bf16") or (precision == "fp16" and on_cpu):
        return "no"
    return precision


class Precision:
    """Autocast, loss scaling and the optimizer step for one ``train.precision`` on ``accelerator``."""

    def __init__(self, accelerator: Accelerator, precision: str) -> None:
        self.accelerator = accelerator
        self.name = precision
        own_fp16 = precision == "fp16" and accelerator.device.type == "cpu"
        self.own_scaler = torch.amp.GradScaler("cpu") if own_fp16 else None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype images enter the model in: the weights' own under pure bf16, float32 otherwise."""
        return torch.bfloat16 if self.name == "pure_bf16" else torch.float32

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in the weight dtype of this precision (bfloat16 for pure_bf16, as built otherwise)."""
        return model.to(torch.bfloat16) if self.name == "pure_bf16" else model

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss as the backward pass sees it: multiplied by the gradient scaler's scale under fp16."""
        scaler = self.scaler
        return scaler.scale(loss) if scaler is not None else loss

    @property
    def scaler(self) -> Optional[torch.amp.GradScaler]:
        """The active gradient scaler (ours on CPU, accelerate's on GPU), or None."""
        return self.own_scaler if self.own_scaler is not None else self.accelerator.scaler

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.own_scaler is not None:
            return torch.autocast("cpu", dtype=torch.float16)
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(self.own_scaler.scale(loss) if self.own_scaler is not None else loss)

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter],
             clip_norm: Optional[float]) -> bool:
        """Unscale (fp16), clip the global norm, step. Returns False when the gradient scaler
        skipped the update (inf/NaN gradients in float16: the scale is lowered and the step dropped)."""
        if self.own_scaler is not None:
            self.own_scaler.unscale_(optimizer)
        if clip_norm is not None and self.scaler is None and fused_adam(optimizer) and self._whole_gradients():
            step_with_clipped_gradients(optimizer, parameters, clip_norm)
            return True
        if clip_norm is not None:
            self.accelerator.clip_grad_norm_(parameters, clip_norm)
        if self.own_scaler is None:
            optimizer.step()
            return not getattr(optimizer, "step_was_skipped", False)  # accelerate's scaler on GPU
        scale = self.own_scaler.get_scale()
        self.own_scaler.step(optimizer)
        self.own_scaler.update()
        return self.own_scaler.get_scale() >= scale

    def _whole_gradients(self) -> bool:
        """Each rank holds every parameter's whole gradient (one process or DDP), not a shard (FSDP,
        DeepSpeed, whose own clipping accelerate calls)."""
        return self.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                         DistributedType.MEGATRON_LM)

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if state and self.scaler is not None:
            self.scaler.load_state_dict(state)


def fused_adam(optimizer: Any) -> Optional[torch.optim.Optimizer]:
    """The torch optimizer inside ``optimizer`` (accelerate's AcceleratedOptimizer wraps it) when it
    is a fused Adam/AdamW, else None."""
    while getattr(optimizer, "optimizer", optimizer) is not optimizer:
        optimizer = optimizer.optimizer
    fused = isinstance(optimizer, torch.optim.Adam) and optimizer.defaults.get("fused")  # AdamW is an Adam
    return optimizer if fused else None


def step_with_clipped_gradients(optimizer: Any, parameters: Iterable[torch.nn.Parameter],
                                clip_norm: float) -> torch.Tensor:
    """``clip_grad_norm_(parameters, clip_norm)`` then ``optimizer.step()`` for a fused Adam/AdamW
    (or accelerate's wrapper of one), the clip factor applied inside the fused kernel: it divides
    each gradient by ``grad_scale`` as it reads it, so the separate pass that multiplies every
    gradient by the factor (3-4% of a step at ViT-B/32) is not made. The same update up to float
    rounding; returns the total norm."""
    inner = fused_adam(optimizer)
    if inner is None:
        raise TypeError(f"step_with_clipped_gradients needs a fused Adam/AdamW, got {type(optimizer).__name__}")
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    factor = torch.clamp(clip_norm / (norm + 1e-6), max=1.0)  # clip_grad_norm_'s factor
    inner.grad_scale = (1.0 / factor).to(torch.float32)
    try:
        optimizer.step()
    finally:
        del inner.grad_scale
    return norm
