"""SigLIP loss: hand value, agreement with open_clip's SigLipLoss, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from vlp.losses.sigmoid import chunked_siglip_loss, siglip_loss


def test_two_by_two_by_hand():
    eye = torch.eye(2)
    # logits = 1 * I + 0: diagonal 1 (label +1), off-diagonal 0 (label -1)
    expected = (2 * math.log(1 + math.exp(-1)) + 2 * math.log(2)) / 2
    assert siglip_loss(eye, eye, torch.tensor(1.0), torch.tensor(0.0)).item() == pytest.approx(expected, abs=1e-6)


def test_matches_open_clip_value_and_gradients():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    ours = siglip_loss(image, text, scale, bias)
    anchor = SigLipLoss()(image, text, scale, bias)
    assert ours.item() == pytest.approx(anchor.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (image, text, scale, bias)),
                    torch.autograd.grad(anchor, (image, text, scale, bias))):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_matches_dense_float64(chunk):
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    dense = siglip_loss(image, text, scale, bias)
    ours = chunked_siglip_loss(image, text, scale, bias, chunk=chunk)
    assert ours.item() == pytest.approx(dense.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (image, text, scale, bias)),
                    torch.autograd.grad(dense, (image, text, scale, bias))):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
