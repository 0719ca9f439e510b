"""The learnable temperature (and SigLIP's optional bias) of the contrastive logits."""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import nn


class LogitHead(nn.Module):
    """``logit_scale``: the learnable log of the logits' scale (its exp multiplies the cosine
    similarities), kept in [0, log(max_logit_scale)] by :meth:`clamp_`; ``logit_bias``: an
    optional learnable additive bias (SigLIP), None when not configured.

    ``forward()`` gives the outputs-dict entries: ``logit_scale`` (the exp, a scalar tensor) and,
    when there is a bias, ``logit_bias``.
    """

    def __init__(self, init_logit_scale: float = math.log(1 / 0.07), max_logit_scale: float = 100.0,
                 init_logit_bias: Optional[float] = None) -> None:
        super().__init__()
        # as open_clip creates them (same values, same dtype; no random draw)
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.logit_bias = nn.Parameter(torch.ones([]) * init_logit_bias) if init_logit_bias is not None else None
        self.max_log_scale = math.log(max_logit_scale)

    @classmethod
    def from_parameters(cls, logit_scale: nn.Parameter, logit_bias: Optional[nn.Parameter],
                        max_logit_scale: float = 100.0) -> "LogitHead":
        """A head holding existing parameters (an open_clip model's), not copies."""
        head = cls(max_logit_scale=max_logit_scale)
        head.logit_scale = logit_scale
        head.logit_bias = logit_bias
        return head

    def scale(self) -> torch.Tensor:
        """exp(logit_scale): the factor of the cosine similarities."""
        return self.logit_scale.exp()

    def forward(self) -> Dict[str, torch.Tensor]:
        outputs = {"logit_scale": self.scale()}
        if self.logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias
        return outputs

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep exp(logit_scale) in [1, max_logit_scale] (called after every optimizer step)."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)
