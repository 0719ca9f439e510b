"""Every random number generator a training process draws from, saved and restored.

A checkpoint holds one entry per rank: Python's ``random``, NumPy's global generator, torch's CPU
generator and, when CUDA is in use, each CUDA device's generator. Restored on resume, dropout and
patch dropout continue exactly where the interrupted run was. (The loader's randomness is not here:
it is seeded per sample, and its position is ``vlp.data.position``.) Entries are tensors, ints and
tuples only, so a checkpoint still loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch


def capture_rng() -> Dict[str, Any]:
    """This process's generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Set this process's generators to ``state`` (from :func:`capture_rng`)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
