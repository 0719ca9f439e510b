"""Memory-efficient InfoNCE: logits computed a block of queries at a time and recomputed in backward.

The dense loss keeps [B, N] logits (and softmax) alive for backward, which is what stops a single
machine at a contrastive batch of ~16k. ``chunked_cross_entropy`` keeps only the per-row
log-sum-exp [B] and recomputes each [chunk, N] block in backward, so the extra memory is
O(chunk x N) whatever B is. Values and gradients equal the dense form (tests check 1e-5 in
float32, 1e-10 in float64).
"""

from __future__ import annotations

from typing import Optional

import torch

from vlp.losses.distributed import gather_with_grad, world_info


class _ChunkedCrossEntropy(torch.autograd.Function):
    """mean_i [ (1 - eps) (lse_i - l_i,pos(i)) + eps (lse_i - mean_j l_ij) ] with l = scale * q @ k.T."""

    @staticmethod
    def forward(ctx, queries, keys, scale, positives, chunk: int, smoothing: float):  # type: ignore[override]
        rows = queries.shape[0]
        lse = torch.empty(rows, dtype=queries.dtype, device=queries.device)
        total = queries.new_zeros(())
        key_mean = keys.mean(dim=0)
        for start in range(0, rows, chunk):
            q = queries[start:start + chunk]
            logits = scale * (q @ keys.T)
            block_lse = torch.logsumexp(logits, dim=1)
            lse[start:start + chunk] = block_lse
            positive = logits.gather(1, positives[start:start + chunk, None]).squeeze(1)
            loss_rows = block_lse - (1 - smoothing) * positive
            if smoothing:
                loss_rows = loss_rows - smoothing * scale * (q @ key_mean)
            total = total + loss_rows.sum()
            del logits
        ctx.save_for_backward(queries, keys, scale, positives, lse)
        ctx.chunk, ctx.smoothing = chunk, smoothing
        return total / rows

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        queries, keys, scale, positives, lse = ctx.saved_tensors
        rows, cols = queries.shape[0], keys.shape[0]
        eps, weight = ctx.smoothing, grad_out / rows
        grad_q = torch.empty_like(queries)
        grad_k = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=queries.dtype, device=queries.device)
        for start in range(0, rows, ctx.chunk):
            q = queries[start:start + ctx.chunk]
            sims = q @ keys.T  # logits / scale
            # d loss_i / d logits_ij = softmax_ij - (1 - eps) [j == pos(i)] - eps / N
            g = torch.exp(scale * sims - lse[start:start + ctx.chunk, None])
            g.scatter_add_(1, positives[start:start + ctx.chunk, None],
                           torch.full((q.shape[0], 1), -(1 - eps), dtype=g.dtype, device=g.device))
            if eps:
                g.sub_(eps / cols)
            g.mul_(weight)
            grad_scale += (g * sims).sum()
            g.mul_(scale)
            grad_q[start:start + ctx.chunk] = g @ keys
            grad_k.addmm_(g.T, q)
            del sims, g
        return grad_q, grad_k, grad_scale.reshape(scale.shape), None, None, None


class _SymmetricChunkedInfoNCE(torch.autograd.Function):
    """Both directions of one-process InfoNCE from the same [chunk, B] blocks of ``image @ text.T``.

    Row log-sum-exps come from each block; column log-sum-exps are accumulated across blocks
    with a streaming (running max, rescaled sum) logsumexp. Backward recomputes each block once
    and applies both softmaxes to it, so the loss costs four [chunk, B] matmuls per block in all,
    against six for the dense form that builds ``image @ text.T`` and ``text @ image.T``.
    """

    @staticmethod
    def forward(ctx, image, text, scale, chunk: int, smoothing: float):  # type: ignore[override]
        n = image.shape[0]
        lse_row = torch.empty(n, dtype=image.dtype, device=image.device)
        col_max = torch.full((n,), float("-inf"), dtype=image.dtype, device=image.device)
        col_sum = torch.zeros(n, dtype=image.dtype, device=image.device)
        positive_sum = image.new_zeros(())
        for start in range(0, n, chunk):
            logits = scale * (image[start:start + chunk] @ text.T)
            lse_row[start:start + chunk] = torch.logsumexp(logits, dim=1)
            rows = torch.arange(logits.shape[0], device=logits.device)
            positive_sum = positive_sum + logits[rows, rows + start].sum()
            new_max = torch.maximum(col_max, logits.max(dim=0).values)
            col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(logits - new_max).sum(dim=0)
            col_max = new_max
            del logits
        lse_col = col_max + torch.log(col_sum)
        loss = 0.5 * (lse_row.sum() + lse_col.sum()) - (1 - smoothing) * positive_sum
        if smoothing:
            # sum_i mean_j logits_ij (rows) and sum_j mean_i logits_ij (columns) both equal
            # scale * sum(I) . sum(T) / n; each direction carries weight 0.5 * eps
            loss = loss - smoothing * scale * (image.sum(0) @ text.sum(0)) / n
        ctx.save_for_backward(image, text, scale, lse_row, lse_col)
        ctx.chunk, ctx.smoothing = chunk, smoothing
        return loss / n

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        image, text, scale, lse_row, lse_col = ctx.saved_tensors
        n, eps = image.shape[0], ctx.smoothing
        weight = grad_out * 0.5 / n
        grad_i = torch.empty_like(image)
        grad_t = torch.zeros_like(text)
        grad_scale = torch.zeros((), dtype=image.dtype, device=image.device)
        for start in range(0, n, ctx.chunk):
            block = image[start:start + ctx.chunk]
            sims = block @ text.T
            logits = scale * sims
            g = torch.exp(logits - lse_row[start:start + ctx.chunk, None])
            g += torch.exp(logits - lse_col[None, :])
            del logits
            rows = torch.arange(g.shape[0], device=g.device)
            g[rows, rows + start] -= 2 * (1 - eps)
            if eps:
                g.sub_(2 * eps / n)
            g.mul_(weight)
            grad_scale += (g * sims).sum()
            g.mul_(scale)
            grad_i[start:start + ctx.chunk] = g @ text
            grad_t.addmm_(g.T, block)
            del sims, g
        return grad_i, grad_t, grad_scale.reshape(scale.shape), None, None


BLOCK_ELEMENTS = 1 << 24  # default block: 16M logits (64 MB in float32), whatever the batch


def block_rows(chunk: Optional[int], cols: int) -> int:
    """Rows per block: ``chunk`` if given, else as many as keep a block at BLOCK_ELEMENTS."""
    if chunk is None:
        return max(1, BLOCK_ELEMENTS // max(cols, 1))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return chunk


def chunked_cross_entropy(queries: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor,
                          positives: torch.Tensor, chunk: Optional[int] = None,
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``scale * queries @ keys.T`` rows against column ``positives[i]``,
    equal to ``F.cross_entropy(logits, positives, label_smoothing=...)`` without keeping the logits."""
    chunk = block_rows(chunk, keys.shape[0])
    return _ChunkedCrossEntropy.apply(queries, keys, scale, positives, chunk, label_smoothing)


def chunked_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                      chunk: Optional[int] = None, label_smoothing: float = 0.0,
                      positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The CLIP loss of vlp.losses.contrastive.clip_loss (global batch, local-loss form), with
    O(chunk x global batch) memory instead of O(local batch x global batch)."""
    rank, world = world_info()
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    image_emb, text_emb, scale = image_emb.to(dtype), text_emb.to(dtype), logit_scale.to(dtype)
    if world == 1 and positives is None:
        rows = block_rows(chunk, text_emb.shape[0])
        return _SymmetricChunkedInfoNCE.apply(image_emb, text_emb, scale, rows, label_smoothing)
    all_image, all_text = gather_with_grad(image_emb), gather_with_grad(text_emb)
    if positives is None:
        positives = torch.arange(image_emb.shape[0], device=image_emb.device) + rank * image_emb.shape[0]
    loss_i = chunked_cross_entropy(image_emb, all_text, scale, positives, chunk, label_smoothing)
    loss_t = chunked_cross_entropy(text_emb, all_image, scale, positives, chunk, label_smoothing)
    return (loss_i + loss_t) / 2
