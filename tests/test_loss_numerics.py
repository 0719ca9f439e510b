"""Numerical safety of every objective: half-precision inputs are computed in float32, and
duplicate or zero embeddings give finite losses and gradients."""

import pytest
import torch
import torch.nn.functional as F

from test_loss_terms_distributed import TERMS, _term
from vlp.losses.registry import compute_objective

B, K, D, L, V = 6, 2, 8, 4, 7


def _outputs(kind, dtype):
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        emb = lambda *s: F.normalize(torch.randn(*s, D, generator=g), dim=-1)  # noqa: E731
    elif kind == "duplicate":
        row = F.normalize(torch.randn(D, generator=g), dim=-1)
        emb = lambda *s: row.expand(*s, D).clone()  # noqa: E731
    else:
        emb = lambda *s: torch.zeros(*s, D)  # noqa: E731
    labels = torch.randint(1, V, (B, L), generator=g)
    leaves = {"image_emb": emb(B), "text_emb": emb(B), "image_emb_aug": emb(B), "text_emb_aug": emb(B),
              "neg_text_emb": emb(B, K), "caption_logits": torch.randn(B, L, V, generator=g)}
    prototypes = F.normalize(torch.randn(3, D, generator=g), dim=-1)
    leaves["proto_image_emb"], leaves["proto_text_emb"] = emb(B), emb(B)
    leaves["proto_image_scores"], leaves["proto_text_scores"] = emb(B) @ prototypes.T, emb(B) @ prototypes.T
    leaves = {k: v.to(dtype).requires_grad_() for k, v in leaves.items()}
    scales = {"logit_scale": torch.tensor(100.0, requires_grad=True), "logit_bias": torch.tensor(-10.0, requires_grad=True)}
    return {**leaves, **scales, "caption_labels": labels}


@pytest.mark.parametrize("key", sorted(TERMS))
@pytest.mark.parametrize("kind", ["duplicate", "zero"])
def test_degenerate_embeddings_give_finite_loss_and_gradients(key, kind):
    outputs = _outputs(kind, torch.float32)
    loss = compute_objective(outputs, [_term(key)])["total"]
    assert torch.isfinite(loss), (key, kind, loss)
    grads = torch.autograd.grad(loss, [v for v in outputs.values() if v.requires_grad], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads), (key, kind)


@pytest.mark.parametrize("key", sorted(TERMS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(key, dtype):
    half = _outputs("random", dtype)
    torch.manual_seed(0)
    loss_half = compute_objective(half, [_term(key)])["total"]
    full = {k: (v.detach().float().requires_grad_() if v.is_floating_point() else v) for k, v in half.items()}
    torch.manual_seed(0)
    loss_full = compute_objective(full, [_term(key)])["total"]
    assert loss_half.dtype == torch.float32 and torch.isfinite(loss_half)
    assert loss_half.item() == pytest.approx(loss_full.item(), rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("key", sorted(TERMS))
def test_terms_under_bf16_autocast_are_float32_and_finite(key):
    from vlp.models.dual_encoder import DualEncoder
    from tiny_arch import TINY_ARCH

    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, init_logit_bias=-10.0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 16, 16, generator=g)
    tokens = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0]] * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images, tokens, neg_text=tokens.flip(0)[:, None].expand(4, K, 8).contiguous(),
                        image_aug=images.flip(-1), text_aug=tokens.flip(0))
        assert outputs["image_emb"].dtype == torch.bfloat16  # the towers did run in bf16
        outputs["caption_logits"] = (outputs["image_emb"][:, :1, None] + torch.randn(4, L, V, generator=g)).to(torch.bfloat16)
        outputs["caption_labels"] = torch.randint(1, V, (4, L), generator=g)
        prototypes = F.normalize(torch.randn(3, outputs["image_emb"].shape[-1], generator=g), dim=-1)
        for side in ("image", "text"):
            outputs[f"proto_{side}_emb"] = outputs[f"{side}_emb"]
            outputs[f"proto_{side}_scores"] = outputs[f"{side}_emb"] @ prototypes.T.to(torch.bfloat16)
        torch.manual_seed(1)
        loss = compute_objective(outputs, [_term(key)])["total"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # the same bf16 embeddings, upcast by hand and scored without autocast: a term whose matmuls
    # ran in bf16 under autocast would be off by ~1e-2 here
    plain = {k: (v.detach().float() if v.is_floating_point() else v) for k, v in outputs.items()}
    torch.manual_seed(1)
    reference = compute_objective(plain, [_term(key)])["total"]
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6), key
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
