"""Pure metrics of the published compositionality benchmarks (ARO, SugarCrepe, Winoground).

Every comparison is strict: the true caption (or image) must score strictly higher, so a tie
is a miss. For ARO VG-Relation / VG-Attribution this is exactly the ARO repo's
``argmax([false, true]) == 1`` (numpy's argmax returns the first maximum, the false caption);
SugarCrepe uses ``pos > neg``; Winoground defines its scores with ``>``. For ARO's Order sets the
repo puts the true caption first and takes ``argmax``, which would count a tie as a hit; we stay
strict there too (with real float embeddings exact ties do not occur).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def strict_pair_accuracy(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """SugarCrepe accuracy: fraction of pairs with ``positive > negative`` (NaN when empty)."""
    positive, negative = positive.double().view(-1), negative.double().view(-1)
    if positive.shape != negative.shape:
        raise ValueError(f"positive and negative lengths differ: {positive.numel()} and {negative.numel()}")
    return (positive > negative).double().mean().item() if positive.numel() else math.nan


def best_of_options(scores: torch.Tensor) -> torch.Tensor:
    """[N, K] scores with the true option in column 0 -> [N] bool: column 0 beats every other strictly."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected [N, K>=2] scores, got {tuple(scores.shape)}")
    scores = scores.double()
    return scores[:, 0] > scores[:, 1:].max(dim=1).values


def grouped_accuracy(correct: torch.Tensor, groups: Sequence[str]) -> tuple[float, float, dict[str, float]]:
    """(macro, micro, per-group accuracy) of [N] 0/1 ``correct`` split by ``groups`` names.

    Macro is the unweighted mean over groups (ARO's VG-Relation over relation types and
    VG-Attribution over attribute pairs); micro is the plain mean over samples.
    """
    correct = correct.double().view(-1)
    if len(groups) != correct.numel():
        raise ValueError(f"need one group per sample, got {len(groups)} groups for {correct.numel()} samples")
    if not correct.numel():
        return math.nan, math.nan, {}
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    owner = torch.tensor([index[g] for g in groups], dtype=torch.long)
    hits = torch.bincount(owner, weights=correct, minlength=len(names))
    totals = torch.bincount(owner, minlength=len(names)).double()
    per_group = {name: (hits[i] / totals[i]).item() for i, name in enumerate(names)}
    macro = sum(per_group.values()) / len(per_group)
    return macro, correct.mean().item(), per_group


def aro_vg_metrics(true_scores: torch.Tensor, false_scores: torch.Tensor, groups: Sequence[str]) -> dict[str, object]:
    """ARO VG-Relation / VG-Attribution: {"macro_accuracy", "micro_accuracy", "per_group"}."""
    correct = true_scores.double().view(-1) > false_scores.double().view(-1)
    macro, micro, per_group = grouped_accuracy(correct, groups)
    return {"macro_accuracy": macro, "micro_accuracy": micro, "per_group": per_group}


def winoground_scores(scores: torch.Tensor) -> dict[str, float]:
    """Winoground text, image and group scores from [N, 2, 2] scores indexed [example, caption, image].

    Text score: for each image its own caption wins, ``s(c0,i0) > s(c1,i0)`` and ``s(c1,i1) > s(c0,i1)``.
    Image score: for each caption its own image wins, ``s(c0,i0) > s(c0,i1)`` and ``s(c1,i1) > s(c1,i0)``.
    Group score: both hold. Each is the fraction of examples (NaN when there are none).
    """
    if scores.dim() != 3 or tuple(scores.shape[1:]) != (2, 2):
        raise ValueError(f"expected [N, 2, 2] scores (example, caption, image), got {tuple(scores.shape)}")
    s = scores.double()
    c0i0, c0i1, c1i0, c1i1 = s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 1, 1]
    text = (c0i0 > c1i0) & (c1i1 > c0i1)
    image = (c0i0 > c0i1) & (c1i1 > c1i0)
    group = text & image
    if not s.shape[0]:
        return {"text_score": math.nan, "image_score": math.nan, "group_score": math.nan}
    return {
        "text_score": text.double().mean().item(),
        "image_score": image.double().mean().item(),
        "group_score": group.double().mean().item(),
    }
