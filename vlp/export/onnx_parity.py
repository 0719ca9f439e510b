"""The ONNX export's parity check: onnxruntime's embeddings against the PyTorch model's on a small
random batch, the image graph at two batch sizes, the text graph at two batch sizes and two lengths.

The inputs are drawn from a fixed seed. Images are standard-normal pixels (the scale of normalised
ones). Text rows look like tokenizer output: random ids, an end token at a random position (the
tower's ``eos_id`` for 'eos' pooling, else the largest id, where 'argmax' pools), the tower's pad
id after it; one row of each batch runs to the last position. The reference for a row shorter than
the context is ``model.encode_text`` of the same ids padded to the context (what the text graph
promises, ``vlp.export.onnx_graphs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from vlp.models.dual_encoder import DualEncoder

IMAGE_BATCHES = (1, 3)
TEXT_BATCHES = (1, 4)
SEED = 0


def probe_images(batch: int, image_size: int, seed: int = SEED) -> torch.Tensor:
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def end_token(tower: torch.nn.Module) -> int:
    """The id a row ends with: the tower's ``text_eos_id`` when it pools at it, else the largest id."""
    eos = getattr(tower, "text_eos_id", None)
    if getattr(tower, "text_pool_type", None) == "eos" and eos is not None:
        return int(eos)
    return int(tower.vocab_size) - 1


def probe_ids(tower: torch.nn.Module, batch: int, length: int, seed: int = SEED) -> torch.Tensor:
    """[batch, length] int64 rows of random ids ending in :func:`end_token`, padded with the tower's pad id."""
    generator = torch.Generator().manual_seed(seed)
    end, pad, vocab = end_token(tower), int(getattr(tower, "pad_id", 0)), int(tower.vocab_size)
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in (end, pad)] or [end])
    if end == vocab - 1:  # 'argmax' pools at the largest id: the body stays below it
        allowed = allowed[allowed < end] if bool((allowed < end).any()) else allowed
    ids = allowed[torch.randint(len(allowed), (batch, length), generator=generator)]
    ends = torch.randint(length, (batch,), generator=generator)
    ends[0] = length - 1
    for row, position in enumerate(ends.tolist()):
        ids[row, position] = end
        ids[row, position + 1:] = pad
    return ids


def pad_to_context(ids: torch.Tensor, context_length: int, pad_id: int) -> torch.Tensor:
    return F.pad(ids, (0, context_length - ids.shape[1]), value=pad_id)


def session(path: Path) -> Any:
    """An onnxruntime CPU session of the graph at ``path``."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(ours: torch.Tensor, theirs: Any) -> float:
    return float((torch.from_numpy(theirs).to(ours.dtype) - ours).abs().max())


@torch.no_grad()
def image_parity(model: DualEncoder, path: Path, batches: Sequence[int] = IMAGE_BATCHES) -> List[Dict[str, Any]]:
    """[{'batch', 'max_abs_diff'}] of the image graph at ``path`` against ``model.encode_image``."""
    graph = session(path)
    name = graph.get_inputs()[0].name
    rows = []
    for batch in batches:
        images = probe_images(batch, model.image_size, seed=SEED + batch)
        theirs = graph.run(None, {name: images.numpy()})[0]
        rows.append({"batch": batch, "max_abs_diff": _max_diff(model.encode_image(images), theirs)})
    return rows


def text_lengths(context_length: int) -> List[int]:
    """The full context and about half of it."""
    return sorted({context_length, max(1, context_length // 2)}, reverse=True)


@torch.no_grad()
def text_parity(model: DualEncoder, path: Path, batches: Sequence[int] = TEXT_BATCHES) -> List[Dict[str, Any]]:
    """[{'batch', 'length', 'max_abs_diff'}] of the text graph at ``path`` against ``model.encode_text``
    of the same ids padded to the context."""
    graph = session(path)
    name = graph.get_inputs()[0].name
    tower, context = model.text_tower, model.context_length
    rows = []
    for batch in batches:
        for length in text_lengths(context):
            ids = probe_ids(tower, batch, length, seed=SEED + batch * 1000 + length)
            ours = model.encode_text(pad_to_context(ids, context, int(getattr(tower, "pad_id", 0))))
            theirs = graph.run(None, {name: ids.numpy()})[0]
            rows.append({"batch": batch, "length": length, "max_abs_diff": _max_diff(ours, theirs)})
    return rows
