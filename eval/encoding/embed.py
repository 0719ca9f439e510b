"""Batched encoding of images and texts into L2-normalised float32 CPU tensors."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F


class EvalModel(Protocol):
    """What eval needs from a model bundle; ``vlp.interop.loaded.LoadedModel`` satisfies it."""

    model: torch.nn.Module  # .encode_image([B,3,H,W]) -> [B,D]; .encode_text([B,L]) -> [B,D]
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_transform: Callable[[Any], torch.Tensor]
    name: str


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model without either)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Dtype of the model's first floating-point parameter (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode under ``torch.no_grad()``; restore its training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().float(), dim=-1).cpu()


@torch.no_grad()
def encode_image_batch(
    model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor], device: torch.device | str | None = None
) -> torch.Tensor:
    """Encode one batch of transformed images ([B,3,H,W] or a list of [3,H,W]) -> [B, D].

    Images are cast to the model's floating dtype (e.g. a bf16 model gets bf16 pixels).
    """
    batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    device = torch.device(device) if device is not None else model_device(model)
    return _normalised(model.encode_image(batch.to(device=device, dtype=model_dtype(model))))


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encode many transformed images in batches of ``batch_size`` -> [N, D]."""
    chunks = [
        encode_image_batch(model, images[start : start + batch_size], device)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def token_lengths(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """[B] position of the last non-padding token + 1 (the real length before padding)."""
    positions = torch.arange(1, tokens.shape[1] + 1).expand_as(tokens)
    return (positions * (tokens != pad_id)).max(dim=1).values


def length_batches(sorted_lengths: Sequence[int], batch_size: int, max_padding: float = 0.1) -> list[slice]:
    """Consecutive batches of at most ``batch_size`` texts, given token lengths in ascending
    order, each closed early when padding to its longest text would add more than
    ``max_padding`` of its real tokens (so mixed lengths cost at most ~10% padded work)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches, start, real = [], 0, 0
    for i, length in enumerate(sorted_lengths):
        count = i - start + 1
        if count > 1 and (count > batch_size or count * length > (1 + max_padding) * (real + length)):
            batches.append(slice(start, i))
            start, real = i, 0
        real += length
    if start < len(sorted_lengths):
        batches.append(slice(start, len(sorted_lengths)))
    return batches


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Tokenize and encode ``texts`` in batches of ``batch_size`` -> [N, D], in input order.

    Texts are batched in order of token length (:func:`length_batches`), so each batch is padded
    only to its own longest text (the text towers run only up to it); every row is independent
    of its batch, so the result is the same as in input order.
    """
    device = torch.device(device) if device is not None else model_device(model)
    if not len(texts):
        return torch.zeros(0, 0)
    tokens = tokenizer(list(texts))
    lengths = token_lengths(tokens, int(getattr(tokenizer, "pad_id", 0) or 0))  # HF tokenizers pad with their own id
    order = torch.argsort(lengths, stable=True)
    chunks = [_normalised(model.encode_text(tokens[order[batch]].to(device)))
              for batch in length_batches(lengths[order].tolist(), batch_size)]
    sorted_emb = torch.cat(chunks)
    out = torch.empty_like(sorted_emb)
    out[order] = sorted_emb
    return out
