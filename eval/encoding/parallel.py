"""Data-parallel evaluation through Accelerate: which rank this is, its device, and gathering.

Under ``torchrun --nproc_per_node N python -m eval run ...`` every rank encodes a disjoint part
of each dataset (``EvalDataset.partition``) and of each text list; the parts are gathered on every
rank and put back in dataset order, so metrics equal a single-process run. Rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class EvalRuntime:
    """One process's place in the evaluation: ``rank`` of ``world``, and its torch device."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pass None elsewhere): decisions such as a cache hit
        are made once, so every rank takes the same branch before the next collective."""
        return obj if self.world == 1 else self.gather(obj)[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def init_runtime(device: str | None = None) -> EvalRuntime:
    """A single-process runtime, or, when started by torchrun (WORLD_SIZE > 1), Accelerate's
    process state (gloo on CPU, NCCL on CUDA) with this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return EvalRuntime(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from accelerate import PartialState

    use_cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    return EvalRuntime(rank=state.process_index, world=state.num_processes, device=str(state.device))


def process_group_runtime(device: str | torch.device) -> EvalRuntime:
    """This process's place in a torch.distributed group its caller already started (the
    trainer's), on ``device``; a single-process runtime when there is no group of several."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return EvalRuntime(rank=dist.get_rank(), world=dist.get_world_size(), device=str(device))
    return EvalRuntime(device=str(device))


def split_evenly(n: int, world: int, rank: int) -> slice:
    """The ``rank``-th of ``world`` contiguous, near-equal slices of ``range(n)``."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def map_sliced(runtime: EvalRuntime, n: int, work: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """``work`` on this rank's slice of ``range(n)``, gathered and concatenated in order."""
    part = work(split_evenly(n, runtime.world, runtime.rank))
    parts = runtime.gather(part)
    non_empty = [p for p in parts if p.numel()]
    return torch.cat(non_empty) if non_empty else part
