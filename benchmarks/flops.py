"""FLOP counts of a training step and the measured matmul peak, for model FLOP utilisation (MFU).

MFU = (model FLOPs per training step) x (steps per second) / (peak FLOP/s of the same machine,
thread count and dtype). Both parts here:

- :func:`training_flops` counts what one forward + backward performs, with
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions; elementwise work,
  norms and softmax are not counted, as is usual for MFU).
- :func:`clip_step_flops` applies it to open_clip's ``CLIP`` and ``ClipLoss`` for an architecture
  (a config name or an ``{embed_dim, vision_cfg, text_cfg}`` dict) at a batch size, full text
  context, built and run on the ``meta`` device: shapes only, no memory, no time. This is the
  nominal model FLOPs of a CLIP training step, the same number for every tool that trains that
  model (a tool that skips padding tokens does less work and gets credit only through its speed).
- :func:`executed_step_flops` counts what vlp's own training step performs on given captions: its
  text tower runs only up to the batch's longest caption and its last blocks only for the pooled
  token, so it performs fewer FLOPs than the nominal count. FLOPs executed per second over the peak
  is the hardware FLOP utilisation (HFU): how busy the machine's matrix units really are, where
  MFU (nominal FLOPs) also credits the work a tool avoids.
- :func:`matmul_peak` times large square ``torch.matmul`` at the given dtype and thread count,
  best over operand layouts.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Sequence

import torch
import torch.nn.attention
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to 'Global' only. The tracker
    registers global module hooks, and vlp's fast tower forwards step aside for any global hook (it
    may be one that gathers parameters), so counting through it would count another forward than
    the one a run executes."""

    parents = ("Global",)

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def training_flops(step: Callable[[], torch.Tensor]) -> Dict[str, Any]:
    """FLOPs of ``step()`` (which returns a scalar loss) plus the backward of that loss:
    ``{"total": int, "by_op": {op name: int}}``."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        loss = step()
        loss.backward()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def _arch_dict(arch: Any) -> Dict[str, Any]:
    import open_clip

    if isinstance(arch, str):
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"unknown open_clip model config {arch!r}")
        return config
    return dict(arch)


def clip_step_flops(arch: Any, batch: int) -> Dict[str, Any]:
    """Model FLOPs of one CLIP training step (both towers forward + backward and the contrastive
    loss) for ``arch`` at ``batch``, text at its full context length; counted on the meta device."""
    import open_clip
    from open_clip.loss import ClipLoss

    config = _arch_dict(arch)
    keys = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")
    with torch.device("meta"):
        model = (open_clip.CustomTextCLIP if config.get("custom_text") else open_clip.CLIP)(
            **{k: config[k] for k in keys if k in config}, output_dict=True)
        size = config["vision_cfg"]["image_size"]
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        images = torch.empty(batch, 3, *size)
        context = config["text_cfg"].get("context_length", 77)
        texts = torch.zeros(batch, context, dtype=torch.long)
    model.train()
    loss_fn = ClipLoss()

    def step() -> torch.Tensor:
        out = model(images, texts)
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

    counted = training_flops(step)
    counted.update(batch=batch, image_size=list(size), context_length=context)
    return counted


def executed_step_flops(arch: Any, texts: torch.Tensor, image_size: int) -> Dict[str, Any]:
    """FLOPs of one vlp training step (DualEncoder forward + backward and the CLIP loss) on the token
    ids ``texts`` [B, context] and B random images: what vlp executes (real CPU tensors; the trimmed
    text length depends on the captions)."""
    from vlp.losses.contrastive import clip_loss
    from vlp.models.dual_encoder import DualEncoder

    model = DualEncoder(arch).train()
    images = torch.randn(texts.shape[0], 3, image_size, image_size)

    def step() -> torch.Tensor:
        out = model(images, texts)
        return clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"])

    # the counter has no formula for the CPU flash-attention kernel: the math backend's products
    # (the same FLOPs, QK^T and AV) are what it counts, as on the meta device of clip_step_flops
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        counted = training_flops(step)
    counted.update(batch=int(texts.shape[0]), longest_caption=int(texts.argmax(dim=-1).max()) + 1)
    return counted


LAYOUTS = {"nn": lambda a, b: torch.matmul(a, b), "nt": lambda a, b: torch.matmul(a, b.t()),
           "tn": lambda a, b: torch.matmul(a.t(), b)}


def matmul_peak(dtype: torch.dtype, threads: int, sizes: Sequence[int] = (512, 1024, 2048, 4096),
                repeats: int = 2, max_call_s: float = 1.0) -> Dict[str, Any]:
    """Best FLOP/s of ``torch.matmul`` on square ``dtype`` matrices with ``threads`` threads.

    Each size is timed in three operand layouts (``a @ b``, ``a @ b.T``, ``a.T @ b``: a model's
    linear layers multiply by a transposed weight, and on some CPUs the bfloat16 kernel is ten times
    faster in one layout than in another). Sizes go up from the smallest, each layout while its call at the
    next size (8x the work) is predicted to take at most ``max_call_s``: the largest affordable of ``sizes`` is
    reached on a fast kernel, and a slow (emulated) dtype stops early instead of taking minutes.
    Each size and layout: one warm-up call, then ``repeats`` timed calls (skipped when the warm-up
    alone took over ``max_call_s``); the best rate over all calls is the peak."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, best_at, tried = 0.0, None, []
        generator = torch.Generator().manual_seed(0)
        layouts = dict(LAYOUTS)
        for n in sorted(sizes):
            if not layouts:
                break
            a = torch.randn(n, n, generator=generator).to(dtype)
            b = torch.randn(n, n, generator=generator).to(dtype)
            for layout, product in list(layouts.items()):
                start = time.perf_counter()
                product(a, b)  # warm-up
                call = time.perf_counter() - start
                for _ in range(repeats if call <= max_call_s else 0):
                    start = time.perf_counter()
                    product(a, b)
                    call = min(call, time.perf_counter() - start)
                if 2.0 * n ** 3 / call > best:
                    best, best_at = 2.0 * n ** 3 / call, (n, layout)
                if call * 8 > max_call_s:
                    del layouts[layout]  # the next size would take too long in this layout
            tried.append(n)
        return {"flop_per_s": best, "gflop_per_s": round(best / 1e9, 2), "size": best_at[0], "layout": best_at[1],
                "sizes_tried": tried, "dtype": str(dtype).replace("torch.", ""), "threads": threads}
    finally:
        torch.set_num_threads(previous)
