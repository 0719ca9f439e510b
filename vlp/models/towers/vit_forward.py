"""An exact, faster forward of open_clip's VisionTransformer, for training and inference.

The same weights as ``visual(images)``, three ways faster:

- the patch embedding (a convolution whose kernel equals its stride, no bias) runs as one
  matrix product of the image's patches with the kernel viewed as a matrix: the same sums, and
  on a CPU its backward is a matrix product too (the convolution's backward took a third of a
  ViT-B/32 bfloat16 step);
- the blocks run through :func:`vlp.models.towers.blocks.run_blocks` (one QKV product, an
  attention kernel chosen for the device and dtype);
- when the image feature is the class token (``pool_type == 'tok'``), the last block computes
  its query, attention output and MLP for the class token alone: keys and values still come from
  every token, and no other token's output of the last block is read, so the feature and its
  gradients are unchanged. That removes about 10/12 of the last block's work (about 7% of a
  ViT-B/32 forward and backward).

The result equals ``visual(images)`` up to float rounding, with grad and in training mode too
(patch dropout, gradient checkpointing); ``tests/test_vit_forward.py`` checks features and
gradients on every pooling variant. Towers this forward does not cover (attention pooling,
token outputs, other stems) use open_clip's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from vlp.models.towers.blocks import has_forward_hooks, run_blocks

_POOLS = ("tok", "avg", "none")


def supports_fast_forward(visual: nn.Module) -> bool:
    """True when ``visual`` is an open_clip VisionTransformer this module's forward reproduces."""
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    if type(visual) is not VisionTransformer or not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        return False
    if visual.attn_pool is not None or visual.output_tokens or getattr(visual, "pool_type", None) not in _POOLS:
        return False
    conv = visual.conv1
    if type(conv) is not nn.Conv2d or conv.bias is not None or conv.groups != 1 or conv.padding != (0, 0):
        return False
    if conv.kernel_size != conv.stride or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    # the stem reads the convolution's weight without calling it (hooks that gather it, as
    # DeepSpeed ZeRO-3's, need its own call); the blocks check their own hooks
    return not has_forward_hooks(visual) and not has_forward_hooks(conv)


def patch_embed(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip's ``visual._embeds(images)`` with the patch convolution as a matrix product:
    [B, 1 + patches, width] (patch dropout and ``ln_pre`` applied as open_clip applies them)."""
    from open_clip.transformer import _expand_token

    weight = visual.conv1.weight  # [width, channels, ph, pw]
    width, channels, ph, pw = weight.shape
    batch, _, height, wide = images.shape
    gh, gw = height // ph, wide // pw  # a convolution with stride = kernel drops the remainder
    patches = images[:, :, :gh * ph, :gw * pw].reshape(batch, channels, gh, ph, gw, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, gh * gw, channels * ph * pw)
    x = patches @ weight.reshape(width, -1).t()
    x = torch.cat([_expand_token(visual.class_embedding, batch).to(x.dtype), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def vit_forward(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` (pooled and projected image features) for a tower that
    :func:`supports_fast_forward`, in any mode, with or without grad."""
    x = patch_embed(visual, images)
    class_token = None
    if visual.pool_type == "tok":  # only position 0 is read after the last block
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    x = run_blocks(visual.transformer, x, last_rows=class_token)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def image_features(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``clip.encode_image(images)`` (unnormalised), through the fast forward when the
    architecture is supported."""
    visual = getattr(clip, "visual", None)
    if visual is not None and supports_fast_forward(visual):
        return vit_forward(visual, images)
    return clip.encode_image(images)
