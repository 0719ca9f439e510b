"""An exact, faster inference forward for open_clip's VisionTransformer (eval and no grad only).

open_clip's blocks call ``nn.MultiheadAttention``; for inference this forward runs the same
weights through one fused QKV projection and ``scaled_dot_product_attention``, and, when the
image feature is the class token (``pool_type == 'tok'``), the last block computes its query,
attention output and MLP for the class token alone: keys and values still come from every
token, and no other token's output of the last block is read, so the feature is unchanged.
That removes about 10/12 of the last block's work (about 7% of a ViT-B/32 forward).

The result equals ``visual(images)`` up to float rounding (same operations, other kernels);
``tests/test_vit_inference.py`` checks that on every pooling variant. Towers this forward does
not cover (attention pooling, custom blocks, token outputs, and modules that are wrapped or
carry forward hooks, as FSDP and DeepSpeed ZeRO-3 leave them) and any call with grad enabled or
in training mode use open_clip's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_POOLS = ("tok", "avg", "none")


def supports_fast_forward(visual: nn.Module) -> bool:
    """True when ``visual`` is an open_clip VisionTransformer this module's forward reproduces."""
    try:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    if type(visual) is not VisionTransformer or not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        return False
    if visual.attn_pool is not None or visual.output_tokens or getattr(visual, "pool_type", None) not in _POOLS:
        return False
    transformer = visual.transformer
    if not getattr(transformer, "batch_first", False):
        return False
    for block in transformer.resblocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
            return False
        if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or not attn._qkv_same_embed_dim:
            return False
        if attn.bias_k is not None or attn.add_zero_attn or type(attn.out_proj) not in _STOCK_LINEAR:
            return False
    # the forward below reads weights and skips module calls: anything that works through module
    # forwards (hooks, e.g. DeepSpeed ZeRO-3 gathering parameters) needs open_clip's own forward
    return not any(_has_hooks(module) for module in (visual, transformer, *transformer.resblocks,
                                                     *(block.attn for block in transformer.resblocks)))


_STOCK_LINEAR = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _block(block: nn.Module, x: torch.Tensor, class_token_only: bool) -> torch.Tensor:
    """One ResidualAttentionBlock without an attention mask; with ``class_token_only`` only
    position 0's output is computed (keys and values still from every position)."""
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if class_token_only:
        q, x = q[:, :, :1], x[:, :1]
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, q.shape[2], width)
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def vit_inference_forward(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` (pooled and projected image features) for a tower that
    :func:`supports_fast_forward`; call it in eval mode without grad."""
    x = visual._embeds(images)
    blocks = list(visual.transformer.resblocks)
    class_token_only = visual.pool_type == "tok"  # only position 0 is read after the last block
    for i, block in enumerate(blocks):
        x = _block(block, x, class_token_only and i == len(blocks) - 1)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def image_features(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``clip.encode_image(images)`` (unnormalised), through the fast forward when it applies:
    grad disabled, the tower in eval mode, and a supported architecture."""
    visual = getattr(clip, "visual", None)
    if visual is not None and not torch.is_grad_enabled() and not visual.training and supports_fast_forward(visual):
        return vit_inference_forward(visual, images)
    return clip.encode_image(images)
