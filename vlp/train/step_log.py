"""The metric lines of a run: losses averaged over ranks, throughput, learning rate, temperature,
counters and the heads' metrics, written to metrics.jsonl (rank 0), the trackers and the progress bar."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Dict

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from vlp.train.accelerator import full_value


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def sum_over_ranks(counts: Counter[str]) -> Dict[str, int]:
    total: Counter[str] = Counter()
    for part in gather_object([dict(counts)]):
        total.update(part)
    return dict(total)


def log_due(state: Any) -> bool:
    return state.step % state.cfg.train.log_every == 0 or state.step == state.cfg.train.steps


def run_head_hooks(state: Any, outputs: Dict[str, torch.Tensor]) -> None:
    """After an optimizer update, on every rank: at a log step each head's ``step_metrics`` of
    this step's outputs (kept for the log line as ``head/<name>/<key>``), then each head's ``after_step``."""
    heads = getattr(state.unwrapped, "heads", {})
    if log_due(state):
        state.head_metrics = {f"head/{name}/{key}": value.item() if isinstance(value, torch.Tensor) else value
                              for name, head in heads.items() for key, value in head.step_metrics(outputs).items()}
    for head in heads.values():
        head.after_step()


def log_step(state: Any, losses: Dict[str, torch.Tensor], progress: tqdm) -> Dict[str, Any]:
    """One metric line (returned): mean losses over ranks, throughput since the last line, counters,
    learning rate and temperature; rank 0 appends it to metrics.jsonl and the trackers."""
    elapsed = time.perf_counter() - state.window_start
    names = list(losses)
    means = state.accelerator.reduce(torch.stack([losses[k].detach().float() for k in names]), reduction="mean")
    mean_losses = dict(zip(names, means.tolist()))
    scale = full_value(state.unwrapped.logit_head.scale())  # collective under FSDP2 (a sharded parameter)
    record: Dict[str, Any] = {
        "step": state.step, "samples_seen": state.samples_seen, "lr": state.scheduler.get_last_lr()[0],
        "logit_scale": scale, "samples_per_s": state.window_samples / max(elapsed, 1e-9),
        **{f"loss/{k}": v for k, v in mean_losses.items()},
        "skipped_samples": sum_over_ranks(state.skipped.totals), "nonfinite_steps": state.nonfinite_total,
        **({"scaler_skipped_steps": state.scaler_skipped} if state.precision.scaler is not None else {}),
        **state.head_metrics,
    }
    state.head_metrics = {}
    if state.samples_per_epoch:
        record["epoch"] = state.samples_seen / state.samples_per_epoch
    terms = {k: f"{v:.3f}" for k, v in mean_losses.items() if k != "total" or len(mean_losses) > 2}
    progress.set_postfix(loss=f"{mean_losses['total']:.3f}", **({} if len(terms) < 2 else terms),
                         lr=f"{record['lr']:.2e}", T=f"{1 / scale:.4f}", samples_s=f"{record['samples_per_s']:.0f}")
    if state.accelerator.is_main_process:
        state.run_dir.log_metrics(record)
        if state.trackers is not None:
            state.trackers.log(record, state.step)
    state.window_start, state.window_samples = time.perf_counter(), 0
    return record
