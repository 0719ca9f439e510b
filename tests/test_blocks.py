"""vlp.models.towers.blocks: the block forward equals open_clip's ResidualAttentionBlock (features
and gradients, with and without a causal mask, all rows or one row per sample), the reduced-precision
CPU attention equals the float64 reference within bfloat16 rounding, and blocks it does not cover
run their own forward."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer

from vlp.models.towers.blocks import attention, block_forward, run_blocks, supports_block_forward


def _block(seed=0, **options):
    torch.manual_seed(seed)
    block = ResidualAttentionBlock(32, 4, batch_first=True, **options).double()
    with torch.no_grad():  # random biases and norm affines, so a wrong bias or norm shows
        for name, param in block.named_parameters():
            if name.endswith("bias") or "ln" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return block


def _causal(length):
    return torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_block_forward_equals_the_block_with_its_gradients(masked, layer_scale):
    block = _block(ls_init_value=layer_scale)
    x = torch.randn(3, 7, 32, dtype=torch.float64, requires_grad=True)
    mask = _causal(7) if masked else None
    weights = torch.randn(3, 7, 32, dtype=torch.float64)
    params = [x, *block.parameters()]
    reference = block(x, attn_mask=mask)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    ours = block_forward(block, x, mask)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-10)
    for got, want in zip(torch.autograd.grad((ours * weights).sum(), params), expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("masked", [False, True])
def test_one_row_per_sample_equals_those_rows_of_the_full_block(masked):
    """rows [B]: the output at those positions only, and the same gradients as reading them from
    the full output (the other rows' work is not done)."""
    block = _block()
    x = torch.randn(4, 6, 32, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([5, 0, 3, 3])
    mask = _causal(6) if masked else None
    full = block(x, attn_mask=mask)[torch.arange(4), rows].unsqueeze(1)
    params = [x, *block.parameters()]
    expected = torch.autograd.grad(full.pow(2).sum(), params)
    mlp_rows = []
    handle = block.mlp.register_forward_hook(lambda module, args, out: mlp_rows.append(args[0].shape[:2]))
    ours = block_forward(block, x, mask, rows=rows)
    handle.remove()
    assert mlp_rows == [(4, 1)]
    torch.testing.assert_close(ours, full, atol=1e-12, rtol=1e-10)
    for got, want in zip(torch.autograd.grad(ours.pow(2).sum(), params), expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_attention_in_every_dtype_equals_the_float64_reference(dtype):
    """Reduced precision on a CPU takes the product-softmax-product path; float32 SDPA. Both within
    the dtype's rounding of the float64 result, mask included; a fully masked-out key gets no weight."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64) for _ in range(3))
    mask = _causal(5)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert got.dtype == dtype
    tolerance = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got.double(), reference, atol=tolerance, rtol=tolerance)
    first = attention(q[:, :, :1].to(dtype), k.to(dtype), v.to(dtype), mask[:1])  # row 0 sees key 0 only
    torch.testing.assert_close(first.double(), v[:, :, :1], atol=tolerance, rtol=tolerance)


def test_run_blocks_equals_open_clips_transformer_with_checkpointing():
    torch.manual_seed(0)
    transformer = Transformer(32, 3, 4, batch_first=True).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
    mask = _causal(6)
    reference = transformer(x, attn_mask=mask)
    expected = torch.autograd.grad(reference.sum(), [x, *transformer.parameters()])
    transformer.grad_checkpointing = True
    ours = run_blocks(transformer, x, attn_mask=mask)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-10)
    for got, want in zip(torch.autograd.grad(ours.sum(), [x, *transformer.parameters()]), expected):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    rows = torch.tensor([4, 1])
    torch.testing.assert_close(run_blocks(transformer, x, attn_mask=mask, last_rows=rows),
                               reference[torch.arange(2), rows].unsqueeze(1), atol=1e-12, rtol=1e-10)


def test_blocks_it_does_not_reproduce_run_their_own_forward():
    cross = _block()
    cross.ln_1_kv = torch.nn.LayerNorm(32)  # open_clip's cross-attention block
    assert not supports_block_forward(cross)
    sequence_first = ResidualAttentionBlock(32, 4, batch_first=False)
    assert not supports_block_forward(sequence_first)
    dropout = _block()
    dropout.attn.dropout = 0.1
    assert not supports_block_forward(dropout)
    hooked = _block()
    assert supports_block_forward(hooked)
    handle = hooked.attn.out_proj.register_forward_pre_hook(lambda *a: None)
    assert not supports_block_forward(hooked)
    handle.remove()
    torch.manual_seed(0)
    transformer = Transformer(32, 2, 4, batch_first=True).double()
    calls = []
    transformer.resblocks[1].attn.register_forward_pre_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    rows = torch.tensor([0, 4])
    with torch.no_grad():
        reference = transformer(x)
        calls.clear()
        ours = run_blocks(transformer, x, last_rows=rows)
    assert calls == [1]  # the hooked last block ran as a module; its rows were taken afterwards
    torch.testing.assert_close(ours, reference[torch.arange(2), rows].unsqueeze(1), atol=1e-12, rtol=1e-10)
