"""The CLIP loss against hand computation, gradcheck, and the objective registry."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ConfigError, LossTermConfig
from vlp.losses.contrastive import clip_loss
from vlp.losses.registry import compute_objective, validate_terms


def test_identity_embeddings_give_closed_form_loss():
    eye = torch.eye(3)
    # logits = I: each row's CE is -log(e / (e + 2)) = log(e + 2) - 1, the same both ways.
    expected = math.log(math.e + 2) - 1
    assert clip_loss(eye, eye, torch.tensor(1.0)).item() == pytest.approx(expected, abs=1e-6)


def test_3x3_case_matches_scalar_hand_computation():
    image = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]), dim=-1)
    text = F.normalize(torch.tensor([[0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    scale = 2.0
    sims = [[scale * sum(image[i][k].item() * text[j][k].item() for k in range(3)) for j in range(3)] for i in range(3)]
    row_ce = [math.log(sum(math.exp(s) for s in sims[i])) - sims[i][i] for i in range(3)]
    col_ce = [math.log(sum(math.exp(sims[j][i]) for j in range(3))) - sims[i][i] for i in range(3)]
    expected = (sum(row_ce) / 3 + sum(col_ce) / 3) / 2
    # by hand: rows (0.3392 + 0.9475 + 0.7348) / 3, columns (1.0267 + 0.6271 + 0.3392) / 3
    assert expected == pytest.approx(0.6691, abs=1e-3)
    assert clip_loss(image, text, torch.tensor(scale)).item() == pytest.approx(expected, abs=1e-6)


def test_label_smoothing_changes_loss_as_cross_entropy_does():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(4, 5), dim=-1), F.normalize(torch.randn(4, 5), dim=-1)
    logits = 10 * image @ text.T
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels, label_smoothing=0.1)
                + F.cross_entropy(logits.T, labels, label_smoothing=0.1)) / 2
    got = clip_loss(image, text, torch.tensor(10.0), label_smoothing=0.1)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert got.item() != pytest.approx(clip_loss(image, text, torch.tensor(10.0)).item(), abs=1e-4)


def test_gradcheck_float64():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    def loss64(i, t, s):
        logits = s * i @ t.T
        labels = torch.arange(i.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.autograd.gradcheck(clip_loss, (image, text, scale))
    assert torch.autograd.gradcheck(loss64, (image, text, scale))
    # and the production function's gradients match that reference
    got = torch.autograd.grad(clip_loss(image, text, scale), (image, text, scale))
    want = torch.autograd.grad(loss64(image, text, scale), (image, text, scale))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)


def test_objective_sums_weighted_terms():
    eye = torch.eye(3)
    outputs = {"image_emb": eye, "text_emb": eye, "logit_scale": torch.tensor(1.0)}
    losses = compute_objective(outputs, [LossTermConfig(name="clip", weight=0.5)])
    assert losses["total"].item() == pytest.approx(0.5 * losses["clip"].item())


def test_unknown_term_and_option_fail_with_valid_names():
    with pytest.raises(ConfigError, match="did you mean 'clip'"):
        validate_terms([LossTermConfig(name="clp")])
    with pytest.raises(ConfigError, match="valid: label_smoothing, chunked, chunk_size"):
        validate_terms([LossTermConfig(name="clip", options={"smoothing": 0.1})])


def test_chunked_option_gives_the_dense_value():
    torch.manual_seed(0)
    outputs = {"image_emb": F.normalize(torch.randn(8, 4), dim=-1), "text_emb": F.normalize(torch.randn(8, 4), dim=-1),
               "logit_scale": torch.tensor(10.0)}
    dense = compute_objective(outputs, [LossTermConfig(name="clip")])["total"]
    chunked = compute_objective(outputs, [LossTermConfig(name="clip", options={"chunked": True, "chunk_size": 3})])["total"]
    assert chunked.item() == pytest.approx(dense.item(), abs=1e-6)


def test_matches_open_clip_clip_loss_value_and_gradients():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    ours, anchor = clip_loss(image, text, scale), ClipLoss()(image, text, scale)
    assert ours.item() == pytest.approx(anchor.item(), abs=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (image, text, scale)), torch.autograd.grad(anchor, (image, text, scale))):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("terms, overrides, message", [
    ("[{name: negclip}]", [], "needs data.num_negatives >= 1"),
    ("[{name: siglip}]", [], "needs model.init_logit_bias"),
    ("[{name: intra_modal, options: {modalities: image}}]", [], "needs data.image_views=2"),
    ("[{name: mv_infonce}]", [], "needs data.image_views=2 or data.text_views=2"),
])
def test_terms_whose_inputs_are_not_configured_fail_at_start(terms, overrides, message):
    from vlp.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny.yaml", [f"loss.terms={terms}", *overrides])
    # and the same terms load once their inputs are configured
    fixes = {"negclip": "data.num_negatives=2", "siglip": "model.init_logit_bias=-10.0",
             "intra_modal": "data.image_views=2", "mv_infonce": "data.text_views=2"}
    name = terms.split("name: ")[1].split("}")[0].split(",")[0]
    assert load_config("configs/tiny.yaml", [f"loss.terms={terms}", fixes[name]]).loss.terms[0].name == name
