"""DualEncoder: outputs dict, trimmed text encoding equal to open_clip's, temperature clamp, weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from tiny_arch import TINY_ARCH
from vlp.models.arch import resolve_arch
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import load_weights


def _model():
    torch.manual_seed(0)
    return DualEncoder(TINY_ARCH).double().eval()


def test_forward_returns_normalised_embeddings_and_scale():
    model = _model()
    tokens = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0]])
    out = model(torch.randn(2, 3, 16, 16, dtype=torch.float64), tokens)
    assert set(out) == {"image_emb", "text_emb", "logit_scale"}
    assert out["image_emb"].shape == out["text_emb"].shape == (2, 16)
    assert torch.allclose(out["image_emb"].norm(dim=-1), torch.ones(2, dtype=torch.float64))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07)


def test_trimmed_text_encoding_equals_full_context():
    model = _model()
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(4, 8, dtype=torch.long)
    for row, length in enumerate([3, 5, 2, 4]):  # last real token (the max id) ends each caption
        tokens[row, :length - 1] = torch.randint(1, 60, (length - 1,), generator=g)
        tokens[row, length - 1] = 63
    trimmed = model.encode_text(tokens)
    full = F.normalize(model.clip.encode_text(tokens), dim=-1)
    assert torch.allclose(trimmed, full, atol=1e-12)
    # gradients of every text parameter agree too (the trimmed path computes the last block for
    # the end token of each caption alone)
    model.train()
    weights = torch.randn(4, 16, generator=g, dtype=torch.float64)
    params = [p for p in model.text_tower.parameters() if p.requires_grad]
    g_trim = torch.autograd.grad((model.encode_text(tokens) * weights).sum(), params)
    g_full = torch.autograd.grad((F.normalize(model.clip.encode_text(tokens), dim=-1) * weights).sum(), params)
    for trim, full in zip(g_trim, g_full):
        assert torch.allclose(trim, full, atol=1e-12)


def test_trimmed_text_with_eos_pooling_and_a_hooked_block_equals_full_context():
    """'eos' pooling takes the first end id; a block with a hook runs its own forward (hook called)."""
    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "pool_type": "eos", "eos_id": 63}}
    torch.manual_seed(0)
    model = DualEncoder(arch).double().train()
    tokens = torch.tensor([[62, 5, 63, 7, 63, 0, 0, 0], [62, 63, 0, 0, 0, 0, 0, 0], [62, 9, 9, 9, 9, 9, 63, 0]])
    calls = []
    model.text_tower.transformer.resblocks[-1].register_forward_pre_hook(lambda *a: calls.append(1))
    params = [p for p in model.text_tower.parameters() if p.requires_grad]
    trimmed = model.encode_text(tokens)
    assert calls == [1]
    full = F.normalize(model.clip.encode_text(tokens), dim=-1)
    assert torch.allclose(trimmed, full, atol=1e-12)
    for trim, ref in zip(torch.autograd.grad(trimmed.sum(), params), torch.autograd.grad(full.sum(), params)):
        assert torch.allclose(trim, ref, atol=1e-12)


def test_logit_scale_clamp_keeps_exp_at_most_max():
    model = DualEncoder(TINY_ARCH, max_logit_scale=100.0)
    with torch.no_grad():
        model.clip.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.clip.logit_scale.exp().item() == pytest.approx(100.0)
    with torch.no_grad():
        model.clip.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.clip.logit_scale.item() == 0.0
    assert math.log(100.0) == pytest.approx(model.max_log_scale)


def test_load_weights_accepts_open_clip_keys_and_rejects_mismatch():
    source, target = _model().float(), DualEncoder(TINY_ARCH)
    load_weights(target, source.clip.state_dict())  # open_clip naming, no 'clip.' prefix
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    other = dict(TINY_ARCH, embed_dim=8)
    with pytest.raises((ValueError, RuntimeError)):
        load_weights(DualEncoder(other), source.state_dict())


def test_resolve_arch_by_name_and_dict():
    assert resolve_arch("ViT-B-32")["embed_dim"] == 512
    assert resolve_arch(TINY_ARCH)["vision_cfg"]["patch_size"] == 8
    with pytest.raises(ValueError, match="unknown open_clip model"):
        resolve_arch("ViT-Q-99")


def test_optional_inputs_add_their_embeddings():
    model = _model()
    tokens = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0]])
    negatives = torch.stack([tokens.flip(0), tokens], dim=1)  # [2, 2, 8]
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = model(images, tokens, neg_text=negatives, image_aug=images.flip(-1), text_aug=tokens.flip(0))
    assert out["neg_text_emb"].shape == (2, 2, 16)
    assert torch.allclose(out["neg_text_emb"][0, 0], out["text_emb"][1]) and torch.allclose(out["neg_text_emb"][1, 1], out["text_emb"][1])
    assert torch.allclose(out["text_emb_aug"], out["text_emb"].flip(0))
    assert torch.allclose(out["image_emb_aug"], model.encode_image(images.flip(-1)))
    assert "logit_bias" not in out
