"""Gradient caching (GradCache, Gao et al. 2021; BASIC, Pham et al. 2021) as one training-step function.

A contrastive objective couples every sample of the batch with every other, so a batch does not
split into independent micro-batches. :func:`cached_backward` gives the gradients of one batch of
``k`` micro-batches in the memory of one micro-batch's graph plus the outputs of the whole batch:

1. each micro-batch is forwarded without graph (``torch.no_grad``, under ``autocast``), the CPU
   and CUDA random states saved before each;
2. the ``k`` outputs dicts are joined into the outputs of the whole batch (:func:`join_outputs`),
   floating-point tensors made leaves that require grad;
3. the objective is computed on them (every configured term, the heads' included) and the
   gradient of ``scale_loss(total)`` is taken with respect to the joined outputs (the cache);
4. each micro-batch is forwarded again with graph from its saved random state (dropout and patch
   dropout draw the same masks, so the outputs are the first pass's) and its slice of the cache is
   back-propagated; all but the last inside ``no_sync()`` (DDP all-reduces once, in the last).

The loss is not divided by ``k``: it is the objective of the whole batch. The loss terms gather
embeddings across ranks themselves (vlp/losses/distributed.py), so on several processes the
objective of the joined local outputs is that of the global batch (``k`` x micro x world).

Joining (:func:`join_outputs`): an output is batch rows (concatenated along dim 0) unless the
model declares otherwise in ``output_joins`` (``DualEncoder.output_joins``: the encoder's
``logit_scale`` / ``logit_bias`` and the heads' ``Head.joins``): ``("shared",)`` is the same in
every micro-batch (checked) and taken once, its gradient sent back through the last second pass
only (the synced one: DDP then sees every parameter's gradient in the pass it reduces);
``("pad", fill)`` pads dim 1 to the longest micro-batch with ``fill`` (the caption head's logits
and labels, whose length is each micro-batch's longest caption) and un-pads the gradient. Integer
and non-tensor outputs take no gradient (a non-tensor output is the first micro-batch's).

State written by forward passes is written once, as in plain accumulation: heads skip their own
state in the second pass (``vlp.models.heads.registry.replaying``: the prototype head keeps each
pair once for its k-means episode), and every buffer of the model (BatchNorm running statistics
of a ResNet tower) is restored after the second passes to its value after the first, so each
micro-batch moves the running statistics once (GradCache itself lets both passes update them,
counting every micro-batch twice). The random generators end where the first pass and the
objective left them, as if each forward had run once. Batch statistics in training mode are the
micro-batch's (as in GradCache): a BatchNorm tower's gradients are those of ``k`` micro-batches.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vlp.models.heads.registry import replaying

Join = Tuple[Any, ...]
BATCH: Join = ("batch",)
"""Batch rows: concatenated along dim 0 (every output not declared otherwise)."""
KINDS = ("batch", "shared", "pad")


def _identity(loss: Tensor) -> Tensor:
    return loss


def output_joins(model: Any) -> Dict[str, Join]:
    """The model's declared joins (``output_joins``), looking through DDP (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers; {} for a model that declares none."""
    core = model
    for _ in range(8):
        joins = getattr(core, "output_joins", None)
        if joins is not None:
            return dict(joins)
        core = getattr(core, "module", None) or getattr(core, "_orig_mod", None)
        if core is None:
            break
    return {}


@dataclass
class Layout:
    """Where each micro-batch's part of a joined output lies: per output its join, the row
    offsets of the micro-batches (``k`` + 1 of them) and, for padded outputs, each part's length."""

    joins: Dict[str, Join]
    offsets: Dict[str, List[int]]
    lengths: Dict[str, List[int]]

    def part(self, name: str, joined: Tensor, index: int) -> Tensor:
        """Micro-batch ``index``'s part of ``joined`` (the joined output ``name`` or its gradient)."""
        start, stop = self.offsets[name][index], self.offsets[name][index + 1]
        part = joined[start:stop]
        if self.joins[name][0] == "pad":
            part = part.narrow(_pad_dim(self.joins[name]), 0, self.lengths[name][index])
        return part


def _pad_dim(join: Join) -> int:
    return int(join[2]) if len(join) > 2 else 1


def _check_join(name: str, join: Join) -> Join:
    if not isinstance(join, tuple) or not join or join[0] not in KINDS or (join[0] == "pad" and len(join) < 2):
        raise ValueError(f"gradient caching: output {name!r} declares the join {join!r}; valid: ('batch',), "
                         "('shared',), ('pad', fill) or ('pad', fill, dim)")
    return join


def _join_shared(name: str, values: Sequence[Any]) -> Any:
    first = values[0]
    for value in values[1:]:
        same = torch.equal(first, value) if isinstance(first, Tensor) else first == value
        if not same:
            raise ValueError(f"gradient caching: output {name!r} is declared shared (the same for every "
                             "micro-batch) but differs between micro-batches; declare it as batch rows or padded")
    return first.detach() if isinstance(first, Tensor) else first  # a new leaf, also for a parameter itself


def _join_padded(values: Sequence[Tensor], join: Join) -> Tuple[Tensor, List[int]]:
    dim = _pad_dim(join)
    lengths = [int(v.shape[dim]) for v in values]
    longest = max(lengths)
    padded = []
    for value, length in zip(values, lengths):
        pad = [0, 0] * (value.dim() - 1 - dim) + [0, longest - length]  # F.pad counts from the last dim
        padded.append(F.pad(value, pad, value=join[1]) if length < longest else value)
    return torch.cat(padded), lengths


def join_outputs(parts: Sequence[Mapping[str, Any]], joins: Mapping[str, Join]) -> Tuple[Dict[str, Any], Layout]:
    """The outputs of the whole batch from the outputs of its micro-batches, and where each part lies."""
    names = list(parts[0])
    for i, part in enumerate(parts[1:], 1):
        if list(part) != names:
            raise ValueError(f"gradient caching: micro-batch {i} gives the outputs {sorted(part)}, micro-batch 0 "
                             f"{sorted(names)}: every micro-batch must have the same inputs")
    joined: Dict[str, Any] = {}
    layout = Layout({}, {}, {})
    for name in names:
        values = [part[name] for part in parts]
        join = _check_join(name, tuple(joins.get(name, BATCH)))
        if join[0] == "shared" or not isinstance(values[0], Tensor):
            join = ("shared",)
            joined[name] = _join_shared(name, values)
        elif values[0].dim() == 0:
            raise ValueError(f"gradient caching: output {name!r} is a scalar, not batch rows; the model must "
                             "declare its join in output_joins (e.g. ('shared',) for one made from parameters only)")
        elif join[0] == "pad":
            joined[name], layout.lengths[name] = _join_padded(values, join)
        else:
            joined[name] = torch.cat(values)
        layout.joins[name] = join
        if join[0] != "shared":
            rows = [0]
            for value in values:
                rows.append(rows[-1] + int(value.shape[0]))
            layout.offsets[name] = rows
    return joined, layout


RngState = Tuple[Tensor, Optional[List[Tensor]]]


def _rng_state() -> RngState:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: RngState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _detached(values: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v.detach() if isinstance(v, Tensor) else v for k, v in values.items()}


def _first_pass(model: Any, micro_batches: Sequence[Mapping[str, Tensor]],
                autocast: Callable[[], ContextManager]) -> Tuple[List[RngState], List[Dict[str, Any]]]:
    """Each micro-batch's random state before its forward, and its outputs (no graph)."""
    states, parts = [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(_rng_state())
            with autocast():
                parts.append(model(**batch))
    return states, parts


def _cache_gradients(joined: Dict[str, Any], total: Tensor, scale_loss: Callable[[Tensor], Tensor]) -> Dict[str, Tensor]:
    """{output name: d scale_loss(total) / d output} for the joined outputs that take a gradient."""
    leaves = {name: value for name, value in joined.items()
              if isinstance(value, Tensor) and value.requires_grad}
    if not leaves:
        return {}
    grads = torch.autograd.grad(scale_loss(total), list(leaves.values()), allow_unused=True)
    return {name: grad for name, grad in zip(leaves, grads) if grad is not None}


def _replay_part(outputs: Mapping[str, Any], cache: Mapping[str, Tensor], layout: Layout, index: int,
                 last: bool) -> Tuple[List[Tensor], List[Tensor]]:
    """(outputs of micro-batch ``index``'s second pass, their gradients from the cache); shared
    outputs only in the last micro-batch."""
    tensors, grads = [], []
    for name, grad in cache.items():
        if name not in outputs:
            raise ValueError(f"gradient caching: the second pass of micro-batch {index} gives no {name!r}")
        if layout.joins[name][0] == "shared":
            if not last:
                continue
            part = grad
        else:
            part = layout.part(name, grad, index)
        if outputs[name].shape != part.shape:
            raise ValueError(f"gradient caching: the second pass of micro-batch {index} gives {name!r} of shape "
                             f"{tuple(outputs[name].shape)}, the first gave {tuple(part.shape)}")
        if outputs[name].requires_grad:  # not, e.g., the embeddings of a locked tower
            tensors.append(outputs[name])
            grads.append(part)
    return tensors, grads


def _second_pass(model: Any, micro_batches: Sequence[Mapping[str, Tensor]], states: Sequence[RngState],
                 cache: Mapping[str, Tensor], layout: Layout, autocast: Callable[[], ContextManager],
                 no_sync: Callable[[], ContextManager]) -> None:
    """Each micro-batch forwarded again with graph from its saved random state and its slice of the
    cache back-propagated; the graph of each is freed before the next is built."""
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    with replaying():
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            _set_rng_state(states[index])
            with nullcontext() if last else no_sync():
                with autocast():
                    outputs = model(**batch)
                tensors, grads = _replay_part(outputs, cache, layout, index, last)
                if tensors:
                    torch.autograd.backward(tensors, grads)
            del outputs, tensors, grads
    with torch.no_grad():
        for buffer, saved in buffers:  # what the first pass wrote stays: each micro-batch counted once
            buffer.copy_(saved)


def cached_backward(model: Any, micro_batches: Sequence[Mapping[str, Tensor]],
                    objective: Callable[[Dict[str, Any]], Dict[str, Tensor]], *,
                    autocast: Callable[[], ContextManager] = nullcontext,
                    scale_loss: Callable[[Tensor], Tensor] = _identity,
                    no_sync: Callable[[], ContextManager] = nullcontext,
                    keep_going: Optional[Callable[[Dict[str, Tensor]], bool]] = None,
                    joins: Optional[Mapping[str, Join]] = None) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Accumulate into the parameters' ``.grad`` the gradients of ``objective`` over the whole
    batch of ``micro_batches`` (each a dict of the model's keyword inputs); see the module doc.

    ``objective(outputs) -> {term: loss, ..., "total": loss}`` (e.g. ``compute_objective`` with
    the configured terms); ``autocast()``: the precision's autocast context; ``scale_loss``: the
    gradient scaler's ``scale`` under fp16; ``no_sync()``: the data-parallel wrapper's
    ``no_sync`` (entered for all but the last micro-batch); ``keep_going(losses)``: False skips
    the backward (e.g. a loss that is not finite on some rank; called on every rank);
    ``joins``: {output: join} overriding the model's ``output_joins``.

    Returns (the losses, the joined outputs of the whole batch), both detached.
    """
    if not micro_batches:
        raise ValueError("gradient caching needs at least one micro-batch")
    joins = output_joins(model) if joins is None else dict(joins)
    states, parts = _first_pass(model, micro_batches, autocast)
    joined, layout = join_outputs(parts, joins)
    del parts
    for value in joined.values():
        if isinstance(value, Tensor) and value.is_floating_point():
            value.requires_grad_(True)
    losses = objective(joined)
    after = _rng_state()
    if keep_going is not None and not keep_going(losses):
        return _detached(losses), _detached(joined)
    cache = _cache_gradients(joined, losses["total"], scale_loss)
    losses = _detached(losses)
    _second_pass(model, micro_batches, states, cache, layout, autocast, no_sync)
    del cache
    _set_rng_state(after)
    return losses, _detached(joined)


__all__ = ["BATCH", "Layout", "cached_backward", "join_outputs", "output_joins"]
