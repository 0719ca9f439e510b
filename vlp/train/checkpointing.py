"""What a training checkpoint holds, and putting a resumed run back exactly where it was.

A checkpoint holds the model, optimizer, scheduler, gradient scaler and weight average (EMA), the
step and samples seen, the resolved config and world size, and per rank its random generators
(``vlp.train.rng_state``) its loader position (``vlp.data.position``: which shards each
reader finished, how far into the current one, its shuffle buffer) and its heads' states (e.g. a
partly filled k-means episode), so a resumed run continues
mid-epoch with the very batches and random draws the interrupted run would have had. Writing is
collective (a sharded model gathers its state on every rank); rank 0 writes atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from accelerate.utils import gather_object

from vlp.checkpoints import save_atomic
from vlp.config import config_to_yaml
from vlp.train.accelerator import full_model_state, full_optimizer_state
from vlp.train.rng_state import capture_rng, restore_rng


def per_rank(accelerator: Any, value: Any) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    return gather_object([value]) if accelerator.num_processes > 1 else [value]


def save_training_state(state: Any, path: Path) -> None:
    """An atomic checkpoint of everything a resume needs (collective; rank 0 writes, every rank waits)."""
    accelerator = state.accelerator
    prepared = getattr(state.model, "_orig_mod", state.model)  # under train.compile: the module compiled
    model_state = full_model_state(accelerator, prepared)  # collective: a sharded model gathers here
    optimizer_state = full_optimizer_state(accelerator, prepared, state.optimizer)
    rng = per_rank(accelerator, capture_rng())
    data = per_rank(accelerator, state.position.state_dict() if state.position is not None else None)
    heads = per_rank(accelerator, {name: head.rank_state() for name, head in getattr(state.unwrapped, "heads", {}).items()})
    if accelerator.is_main_process:
        save_atomic({
            "model": model_state, "optimizer": optimizer_state, "scheduler": state.scheduler.state_dict(),
            "grad_scaler": state.precision.state_dict(), "ema": state.ema.state_dict() if state.ema else None,
            "step": state.step, "samples_seen": state.samples_seen, "config": config_to_yaml(state.cfg),
            "world_size": accelerator.num_processes, "rng": rng, "data_position": data, "head_states": heads,
            "nonfinite_steps": state.nonfinite_total, "scaler_skipped_steps": state.scaler_skipped,
        }, path)
    accelerator.wait_for_everyone()


def rank_entry(saved: Mapping[str, Any], key: str, rank: int) -> Optional[Any]:
    """This rank's entry of a per-rank list in a checkpoint (None when the checkpoint has none)."""
    entries = saved.get(key)
    return entries[rank] if isinstance(entries, (list, tuple)) and rank < len(entries) else None


def restore_rng_of_rank(saved: Mapping[str, Any], rank: int) -> bool:
    """Restore this rank's generators from a checkpoint; False when it holds none (an older checkpoint)."""
    entry = rank_entry(saved, "rng", rank)
    if entry is None:
        return False
    restore_rng(entry)
    return True


def restore_head_states(saved: Mapping[str, Any], model: Any, rank: int) -> None:
    """Each head's per-rank training state (e.g. a partly filled k-means episode) of this rank."""
    entry = rank_entry(saved, "head_states", rank) or {}
    for name, head in getattr(model, "heads", {}).items():
        head.load_rank_state(entry.get(name))


def counters_of(saved: Mapping[str, Any]) -> Dict[str, int]:
    return {"nonfinite_total": int(saved.get("nonfinite_steps", 0) or 0),
            "scaler_skipped": int(saved.get("scaler_skipped_steps", 0) or 0)}
