"""An exponential moving average of the model's weights (Polyak averaging, as timm's ModelEmaV2).

After each optimizer update ``ema = decay * ema + (1 - decay) * weights`` for every floating
parameter and buffer (integer buffers are copied). The average lives in float32 on the training
device beside the model, is checkpointed under ``"ema"``, and is what the end-of-training
evaluation and the exports use when a run has one (``train.ema_decay``).
"""

from __future__ import annotations

import copy
from typing import Dict, List

import torch
from torch import nn


class WeightAverage:
    """The EMA of ``model``'s state; ``module`` is a frozen copy holding it, ready to evaluate."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0

    def _pairs(self, model: nn.Module) -> tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """(ema floats, model floats, ema others, model others) in matching order."""
        ours, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ours.items() if v.is_floating_point()]
        others = [k for k, v in ours.items() if not v.is_floating_point()]
        return ([ours[k] for k in floats], [theirs[k].detach() for k in floats],
                [ours[k] for k in others], [theirs[k] for k in others])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step toward ``model``'s current weights (the unwrapped model)."""
        ema_f, model_f, ema_o, model_o = self._pairs(model)
        if model_f and model_f[0].dtype != torch.float32:
            model_f = [t.float() for t in model_f]
        torch._foreach_lerp_(ema_f, model_f, 1.0 - self.decay)
        for mine, theirs in zip(ema_o, model_o):
            mine.copy_(theirs)
        self.updates += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
