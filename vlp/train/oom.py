"""Out of memory in a training step, explained: the settings that would fit, as override lines.

An allocation failure deep in a forward or backward pass says how many bytes it wanted, not what
to change. :func:`explain_out_of_memory` wraps the step: an out-of-memory error there (CUDA's
``torch.OutOfMemoryError``, a CPU allocator failure, MPS's) becomes :class:`TrainingOutOfMemory`,
raised from the original, whose message states the batch and the memory the error reported and
lists, cheapest change first, what needs less memory, each as a ``key=value`` line for the
command line, skipping what the config already does:

- gradient caching (``train.accum_steps``): the same global batch, encoded a micro-batch at a time;
- the chunked contrastive loss (``loss.terms.<i>.options.chunked=true`` for a term that has the
  option): no [B x N] logits kept for backward;
- gradient checkpointing (``model.grad_checkpointing=true``): activations recomputed in backward;
- lower precision (``train.precision=bf16``, then ``pure_bf16``);
- a smaller ``train.batch_size`` (a different objective: fewer negatives).

Any other error passes through unchanged.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import torch

CPU_OOM_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")
OTHER_OOM_MARKERS = ("CUDA out of memory", "MPS backend out of memory", "HIP out of memory")
_SIZE = r"([\d.]+ ?[KMGTP]i?B)"


class TrainingOutOfMemory(RuntimeError):
    """A training step ran out of memory; the message lists the settings that would need less."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: torch.OutOfMemoryError, or a RuntimeError of a
    CPU (or MPS/HIP) allocator that ran out."""
    if isinstance(err, TrainingOutOfMemory):
        return False  # already explained
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in CPU_OOM_MARKERS + OTHER_OOM_MARKERS)


def human_bytes(n_bytes: int) -> str:
    """``n_bytes`` in the largest binary unit that keeps it at least 1 (as torch writes sizes: 2.00 GiB)."""
    value, unit = float(n_bytes), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.2f} {unit}" if unit != "B" else f"{n_bytes} B"


def reported_memory(err: BaseException) -> str:
    """What the error says about memory, in a few words ('' when it says nothing parseable)."""
    text = str(err)
    device = "CUDA" if isinstance(err, torch.OutOfMemoryError) or "CUDA" in text else (
        "MPS" if "MPS" in text else "CPU")
    wanted = re.search(r"[Tt]ried to allocate " + _SIZE, text)
    wanted_bytes = re.search(r"you tried to allocate (\d+) bytes", text)
    parts = []
    if wanted:
        parts.append(f"tried to allocate {wanted.group(1)}")
    elif wanted_bytes:
        parts.append(f"tried to allocate {human_bytes(int(wanted_bytes.group(1)))}")
    total = re.search(r"total capacity of " + _SIZE, text) or re.search(_SIZE + r" total capacity", text)
    free = re.search(r"of which " + _SIZE + r" is free", text) or re.search(_SIZE + r" free", text)
    gpu = re.search(r"GPU (\d+)", text)
    if total or free:
        where = f"GPU {gpu.group(1)}: " if gpu else ""
        sizes = [f"{total.group(1)} total" if total else "", f"{free.group(1)} free" if free else ""]
        parts.append(f"({where}{', '.join(s for s in sizes if s)})")
    return f"{device} {' '.join(parts)}" if parts else device


@dataclass
class Advice:
    override: str
    why: str


def _accum_advice(cfg: Any, world_size: int) -> Optional[Advice]:
    batch, accum = cfg.train.batch_size, cfg.train.accum_steps
    factor = 4 if batch % 4 == 0 else 2 if batch % 2 == 0 else 0
    if not factor:
        return None
    global_batch = batch * world_size * accum
    return Advice(f"train.batch_size={batch // factor} train.accum_steps={accum * factor}",
                  f"gradient caching: the same global batch of {global_batch} and the same loss, "
                  f"{batch // factor} samples per process through the towers at a time; slower")


def _chunked_advice(cfg: Any) -> List[Advice]:
    import vlp.losses  # noqa: F401  (registers every term)
    from vlp.losses.registry import LOSS_TERMS

    out = []
    for i, spec in enumerate(cfg.loss.terms):
        term = LOSS_TERMS.get(spec.name)
        if term is None or "chunked" not in inspect.signature(term).parameters or spec.options.get("chunked"):
            continue
        out.append(Advice(f"loss.terms.{i}.options.chunked=true",
                          f"{spec.name}: the loss a block of rows at a time, no [batch x global batch] logits "
                          "kept for backward; the same values and gradients"))
    return out


def _precision_advice(cfg: Any) -> Optional[Advice]:
    precision = cfg.train.precision
    if precision == "fp32":
        return Advice("train.precision=bf16", "bf16 autocast: about half the activation memory (a GPU without "
                      "bf16, older than Ampere: train.precision=fp16)")
    if precision in ("bf16", "fp16"):
        return Advice("train.precision=pure_bf16", "weights, gradients and AdamW state in bf16 too: half their "
                      "memory, less exact than autocast")
    return None


def memory_advice(cfg: Any, world_size: int = 1) -> List[Advice]:
    """The settings that would need less memory than ``cfg``, cheapest change to the result first."""
    advice = [a for a in [_accum_advice(cfg, world_size)] if a is not None] + _chunked_advice(cfg)
    if not cfg.model.grad_checkpointing:
        advice.append(Advice("model.grad_checkpointing=true", "recompute each transformer block in backward "
                             "instead of storing its activations: the same gradients, about a third slower"))
    precision = _precision_advice(cfg)
    if precision is not None:
        advice.append(precision)
    batch = cfg.train.batch_size
    if batch > 1:
        advice.append(Advice(f"train.batch_size={batch // 2}", f"a smaller global batch "
                             f"({batch // 2 * world_size * cfg.train.accum_steps}): fewer negatives per sample, "
                             "a different objective"))
    return advice


def oom_advice(cfg: Any, err: BaseException, world_size: int = 1, step: Optional[int] = None) -> str:
    """The message of :class:`TrainingOutOfMemory` for ``err`` raised by a step of ``cfg``'s run."""
    t = cfg.train
    where = f"training step {step}" if step is not None else "a training step"
    processes = f"{world_size} process{'es' if world_size > 1 else ''}"
    lines = [f"out of memory in {where}: {reported_memory(err)}",
             f"with train.batch_size={t.batch_size} per process x {processes} x train.accum_steps={t.accum_steps} "
             f"= global batch {t.batch_size * world_size * t.accum_steps}, train.precision={t.precision}, "
             f"model.grad_checkpointing={str(cfg.model.grad_checkpointing).lower()}."]
    advice = memory_advice(cfg, world_size)
    if advice:
        width = max(len(a.override) for a in advice)
        lines.append("Settings that need less memory, each an override to add to the command "
                     "(combine them when one is not enough):")
        lines += [f"  {a.override.ljust(width)}  # {a.why}" for a in advice]
        if any(not a.override.startswith("model.grad_checkpointing") for a in advice):
            lines.append("A checkpoint of this run is continued only with model.grad_checkpointing changed; "
                         "the others change what is trained: add train.resume=false or a new train.run_name.")
    else:
        lines.append("The config already uses every memory saving vlp has; a smaller model or more "
                     "processes (torchrun, FSDP) would fit.")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    lines.append(f"(the error: {first[:300]})")
    return "\n".join(lines)


@contextmanager
def explain_out_of_memory(cfg: Any, world_size: int = 1, step: Optional[int] = None) -> Iterator[None]:
    """Run the block; an out-of-memory error in it is raised as :class:`TrainingOutOfMemory`
    (from the original) with :func:`oom_advice`; anything else passes through untouched."""
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise TrainingOutOfMemory(oom_advice(cfg, err, world_size, step)) from err
