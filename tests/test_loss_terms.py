"""Each objective on one process: hand computations and agreement with open_clip where it has one."""

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import CoCaLoss

from vlp.losses.captioning import caption_loss
from vlp.losses.contrastive import clip_loss, decoupled_loss, negclip_loss
from vlp.losses.geometry import alignment, uniformity
from vlp.losses.hard_negatives import cacr_weighted_clip_loss, mochi_loss
from vlp.losses.intra_modal import intra_modal_term, mv_infonce


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_dcl_drops_the_positive_from_the_denominator():
    eye = torch.eye(3, dtype=torch.float64)
    # logits = I: denominator without the positive is 2 * e^0, so each row is log(2) - 1
    assert decoupled_loss(eye, eye, torch.tensor(1.0)).item() == pytest.approx(math.log(2) - 1, abs=1e-12)


def test_negclip_appends_negative_columns():
    image, text, neg = _unit(4, 5), _unit(4, 5, seed=1), _unit(4, 2, 5, seed=2)
    scale = torch.tensor(3.0, dtype=torch.float64)
    labels = torch.arange(4)
    wide = scale * image @ torch.cat([text, neg.reshape(8, 5)]).T
    expected = (F.cross_entropy(wide, labels) + F.cross_entropy(scale * text @ image.T, labels)) / 2
    assert negclip_loss(image, text, neg, scale).item() == pytest.approx(expected.item(), abs=1e-12)
    assert negclip_loss(image, text, neg, scale).item() > clip_loss(image, text, scale).item()


def test_cacr_without_weights_is_clip_and_weights_change_it():
    image, text, scale = _unit(6, 4), _unit(6, 4, seed=1), torch.tensor(5.0, dtype=torch.float64)
    assert cacr_weighted_clip_loss(image, text, scale).item() == pytest.approx(clip_loss(image, text, scale).item(), abs=1e-12)
    assert abs(cacr_weighted_clip_loss(image, text, scale, 1.0, 3.0).item() - clip_loss(image, text, scale).item()) > 1e-3


def test_mochi_with_one_hardest_negative_duplicates_its_column():
    image, text, scale = _unit(5, 4), _unit(5, 4, seed=1), torch.tensor(4.0, dtype=torch.float64)
    logits = scale * image @ text.T
    masked = logits.clone().fill_diagonal_(float("-inf"))
    hardest = masked.max(dim=1).values[:, None]  # mixing the single hardest negative with itself gives it back
    labels = torch.arange(5)
    expected = (F.cross_entropy(torch.cat([logits, hardest], 1), labels) + F.cross_entropy(logits.T, labels)) / 2
    assert mochi_loss(image, text, scale, hardest=1, synthetic=1).item() == pytest.approx(expected.item(), abs=1e-10)


def test_uniformity_and_alignment_by_definition():
    x, y = _unit(5, 3), _unit(5, 3, seed=1)
    pairs = [math.exp(-2 * (x[i] - x[j]).pow(2).sum().item()) for i in range(5) for j in range(5) if i != j]
    assert uniformity(x).item() == pytest.approx(math.log(sum(pairs) / len(pairs)), abs=1e-12)
    assert alignment(x, y).item() == pytest.approx((x - y).pow(2).sum(1).mean().item(), abs=1e-12)
    same = x[:1].expand(5, 3)
    assert uniformity(same).item() == pytest.approx(0.0, abs=1e-12)  # all points equal: exp(0) = 1


def test_mv_infonce_two_views_by_hand():
    a, b, t = _unit(3, 4), _unit(3, 4, seed=1), 0.5
    views = [a, b]
    total = 0.0
    for i in range(3):
        pos = sum(math.exp((views[l][i] @ views[m][i]).item() / t) for l in range(2) for m in range(2) if l != m)
        neg = sum(math.exp((views[l][i] @ views[m][j]).item() / t) for j in range(3) if j != i for l in range(2) for m in range(2))
        total += -math.log(pos / (pos + neg))
    assert mv_infonce(views, t).item() == pytest.approx(total / 3, abs=1e-10)


def test_intra_modal_is_clip_between_views_at_its_temperature():
    a, b = _unit(4, 3), _unit(4, 3, seed=1)
    outputs = {"image_emb": a, "image_emb_aug": b}
    expected = clip_loss(a, b, torch.tensor(1 / 0.2, dtype=torch.float64))
    assert intra_modal_term(outputs, modalities="image", temperature=0.2).item() == pytest.approx(expected.item(), abs=1e-12)
    with pytest.raises(ValueError, match="modalities must be one of"):
        intra_modal_term(outputs, modalities="audio")


def test_caption_loss_matches_open_clip_coca_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(1, 11, (3, 5), generator=g)
    labels[0, 2:] = 0
    _, anchor = CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0)(None, None, logits, labels, None)
    ours = caption_loss(logits, labels)
    assert ours.item() == pytest.approx(anchor.item(), abs=1e-12)
    ga, = torch.autograd.grad(anchor, logits)
    go, = torch.autograd.grad(ours, logits)
    assert torch.allclose(ga, go, atol=1e-12)
