"""Chunked InfoNCE equals the dense form in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from vlp.losses.chunked import chunked_clip_loss, chunked_cross_entropy
from vlp.losses.contrastive import clip_loss


def _inputs(rows, cols, dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(cols, dim, generator=g, dtype=dtype), dim=-1).requires_grad_()
    scale = torch.tensor(14.3, dtype=dtype, requires_grad=True)
    return q, k, scale


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_cross_entropy_matches_dense_float64(chunk, smoothing):
    q, k, scale = _inputs(10, 13, 6, torch.float64)
    positives = torch.tensor([0, 3, 5, 12, 1, 1, 7, 9, 2, 4])
    dense = F.cross_entropy(scale * q @ k.T, positives, label_smoothing=smoothing)
    ours = chunked_cross_entropy(q, k, scale, positives, chunk=chunk, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(dense.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (q, k, scale)), torch.autograd.grad(dense, (q, k, scale))):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_gradcheck_float64():
    q, k, scale = _inputs(5, 7, 4, torch.float64, seed=1)
    positives = torch.tensor([0, 1, 2, 6, 4])
    assert torch.autograd.gradcheck(lambda a, b, s: chunked_cross_entropy(a, b, s, positives, 2, 0.1), (q, k, scale))


def test_chunked_clip_loss_matches_dense_float32():
    image, text, scale = _inputs(64, 64, 32, torch.float32, seed=2)
    dense = clip_loss(image, text, scale)
    ours = chunked_clip_loss(image, text, scale, chunk=16)
    assert ours.item() == pytest.approx(dense.item(), abs=1e-5)
    for a, b in zip(torch.autograd.grad(ours, (image, text, scale)), torch.autograd.grad(dense, (image, text, scale))):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_symmetric_one_process_form_matches_dense_float64(chunk, smoothing):
    image, text, scale = _inputs(11, 11, 5, torch.float64, seed=3)
    dense = clip_loss(image, text, scale, label_smoothing=smoothing)
    ours = chunked_clip_loss(image, text, scale, chunk=chunk, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(dense.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (image, text, scale)), torch.autograd.grad(dense, (image, text, scale))):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_symmetric_form_is_stable_for_large_logits():
    # exp(100 * 1) overflows float32 unless every exp is taken relative to a running maximum
    image, text, _ = _inputs(32, 32, 8, torch.float32, seed=4)
    scale = torch.tensor(100.0, requires_grad=True)
    ours = chunked_clip_loss(image, text, scale, chunk=8)
    dense = clip_loss(image, text, scale)
    assert torch.isfinite(ours) and ours.item() == pytest.approx(dense.item(), rel=1e-5)
