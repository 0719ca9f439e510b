"""The CoCa captioning head: token plumbing through the DualEncoder, start-up checks naming the
tower, and the same logits as open_clip's own CoCa on the same weights."""

from __future__ import annotations

import open_clip
import pytest
import torch

from tiny_arch import TINY_ARCH
from vlp.config import ModelConfig
from vlp.errors import ConfigError
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import build_model
from vlp.losses.captioning import caption_loss
from vlp.models.heads.captioning import CaptionHead
from vlp.models.towers import TowerFeatureError

RESNET_ARCH = {**TINY_ARCH, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}}
IDS = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0], [62, 3, 4, 5, 63, 0, 0, 0]])


def _images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_the_head_changes_no_embedding_and_returns_no_tokens():
    torch.manual_seed(0)
    plain = DualEncoder(TINY_ARCH)
    torch.manual_seed(0)
    coca = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}})
    towers = {k: v for k, v in coca.state_dict().items() if not k.startswith("heads.")}
    assert towers.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in towers.items())  # the head is drawn after the towers
    assert coca.token_reads == ("image_tokens", "text_tokens") and plain.token_reads == ()
    for train in (True, False):
        plain.train(train), coca.train(train)
        out, reference = coca(_images(), IDS), plain(_images(), IDS)
        assert set(out) == {"image_emb", "text_emb", "logit_scale", "caption_logits", "caption_labels"}
        torch.testing.assert_close(out["image_emb"], reference["image_emb"], rtol=0, atol=1e-6)
        torch.testing.assert_close(out["text_emb"], reference["text_emb"], rtol=0, atol=1e-6)
    # the text tower ran only up to the batch's last end token (position 4): 4 predictions per row
    assert out["caption_logits"].shape == (3, 4, 64)
    assert torch.equal(out["caption_labels"], IDS[:, 1:5])


def test_tokens_from_one_pass_equal_the_separate_features():
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}}).eval()
    with torch.no_grad():
        pooled, states = model.text_tower.forward_with_tokens(IDS)
        torch.testing.assert_close(pooled, model.text_tower(IDS))
        torch.testing.assert_close(states, model.text_tower.token_states(IDS)[:, :5])
        image, tokens = model.image_tower.forward_with_tokens(_images())
        torch.testing.assert_close(image, model.image_tower(_images()))
        torch.testing.assert_close(tokens, model.image_tower.token_features(_images()))
    assert tokens.shape == (3, 4, 32) and model.image_tower.token_width == 32 and not model.image_tower.tokens_pooled
    assert model.text_tower.token_width == 32 and model.text_tower.causal


def test_a_caption_head_on_a_resnet_fails_when_the_model_is_built_naming_the_tower():
    with pytest.raises(TowerFeatureError, match=r"model.heads.caption: .*image tower 'open_clip' "
                                                r"\(open_clip ModifiedResNet\) gives no per-token features"):
        build_model(ModelConfig(arch=RESNET_ARCH, heads={"caption": {}}))
    assert DualEncoder(RESNET_ARCH).encode_image(_images(2, 32)).shape == (2, 16)  # without the head it builds


def test_a_bidirectional_text_tower_and_bad_options_are_refused():
    arch = {**TINY_ARCH, "custom_text": True, "text_cfg": {**TINY_ARCH["text_cfg"], "no_causal_mask": True}}
    with pytest.raises(ConfigError, match=r"model.heads.caption: the CoCa head needs a causal text tower.*"
                                          r"open_clip TextTransformer"):
        DualEncoder(arch, heads={"caption": {}})
    with pytest.raises(ConfigError, match=r"model.heads.caption.heads: the width 32 is not a multiple of heads=3"):
        DualEncoder(TINY_ARCH, heads={"caption": {"heads": 3}})
    with pytest.raises(ConfigError, match=r"model.heads.caption.n_queries: must be a positive number, got 0"):
        DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 0}})
    with pytest.raises(ConfigError, match=r"model.heads.caption: unknown option\(s\) \['queries'\]"):
        ModelConfig(arch=TINY_ARCH, heads={"caption": {"queries": 4}})


def test_options_default_to_the_text_tower_and_other_widths_add_projections():
    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "layers": 2, "heads": 4, "mlp_ratio": 2.0}}
    head = DualEncoder(arch, heads={"caption": {}}).heads["caption"]
    decoder = head.text_decoder
    assert (decoder.width, decoder.layers, decoder.resblocks[0].attn.num_heads) == (32, 2, 4)
    assert decoder.resblocks[0].mlp.c_fc.out_features == 64 and decoder.text_projection.shape == (32, 64)
    assert head.attn_pool.query.shape == (256, 32) and head.attn_pool.attn.num_heads == 4
    assert head.text_token_proj is None and head.image_token_proj is None
    wide = DualEncoder(TINY_ARCH, heads={"caption": {"width": 48, "heads": 4, "n_queries": 3, "pooler_heads": 2}})
    head = wide.heads["caption"]
    assert head.text_token_proj.in_features == 32 and head.text_token_proj.out_features == 48
    assert head.attn_pool.query.shape == (3, 48) and head.attn_pool.attn.num_heads == 2
    assert wide(_images(), IDS)["caption_logits"].shape == (3, 4, 64)


def test_a_vit_with_its_own_attentional_pooler_is_read_as_it_is():
    vision = {**TINY_ARCH["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 5, "attn_pooler_heads": 2}
    model = DualEncoder({**TINY_ARCH, "vision_cfg": vision}, heads={"caption": {}})
    head = model.heads["caption"]
    assert model.image_tower.tokens_pooled and model.image_tower.token_width == 16  # the pooler's width: embed_dim
    assert head.attn_pool is None and head.image_token_proj.in_features == 16  # no second pooler
    memory = head.encode_image_memory(_images())
    assert memory.shape == (3, 4, 32)  # 5 queries: the first is the contrastive embedding, 4 tokens for the decoder
    # 'parallel' (the CoCa paper's pooling): open_clip's ViT needs width == embed_dim there
    parallel = {**TINY_ARCH, "embed_dim": 32, "vision_cfg": {**vision, "attentional_pool": "parallel"}}
    model = DualEncoder(parallel, heads={"caption": {}})
    assert model.heads["caption"].attn_pool is None and model.heads["caption"].image_token_proj is None
    out = model(_images(), IDS)
    assert out["image_emb"].shape == (3, 32) and out["caption_logits"].shape == (3, 4, 64)
    assert model.heads["caption"].encode_image_memory(_images()).shape == (3, 5, 32)


def test_a_timm_image_tower_gives_its_tokens_from_one_pass():
    arch = {**TINY_ARCH, "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                        "timm_pool": "", "timm_proj": "linear", "image_size": 160}}
    torch.manual_seed(0)
    model = DualEncoder(arch, heads={"caption": {"n_queries": 4}}).eval()
    images = _images(2, 160)
    with torch.no_grad():
        pooled, tokens = model.image_tower.forward_with_tokens(images)
        torch.testing.assert_close(pooled, model.image_tower(images))
        out = model(images, IDS[:2])
    width = model.image_tower.visual.trunk.num_features
    assert tokens.shape[0] == 2 and tokens.shape[2] == width == model.image_tower.token_width
    assert out["caption_logits"].shape == (2, 3, 64)


def _coca_cfgs():
    vision = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
              "attentional_pool": True, "attn_pooler_queries": 5, "attn_pooler_heads": 2}
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1, "embed_cls": True}
    return vision, text


def test_the_open_clip_coca_layout_computes_what_open_clip_coca_computes():
    vision, text = _coca_cfgs()
    torch.manual_seed(0)
    anchor = open_clip.CoCa(32, {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
                            {**text, "output_tokens": True}, {**vision, "output_tokens": True}).eval()
    torch.nn.init.normal_(anchor.text_decoder.text_projection, std=0.1)  # open_clip leaves it uninitialised
    ours = DualEncoder({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text, "custom_text": True},
                       heads={"caption": {}}).eval()
    ours.image_tower.visual.load_state_dict(anchor.visual.state_dict())
    ours.text_tower.text.load_state_dict(anchor.text.state_dict())
    ours.heads["caption"].text_decoder.load_state_dict(anchor.text_decoder.state_dict())
    ours.logit_head.load_state_dict({"logit_scale": anchor.logit_scale.detach()}, strict=False)
    with torch.no_grad():
        expected, got = anchor(_images(), IDS), ours(_images(), IDS)
    length = got["caption_logits"].shape[1]  # decoded up to the batch's last real token (IDS: 4 labels)
    assert length == 4 and torch.all(expected["labels"][:, length:] == 0)
    torch.testing.assert_close(got["caption_logits"], expected["logits"][:, :length])
    assert torch.equal(got["caption_labels"], expected["labels"][:, :length])
    ours_loss = caption_loss(got["caption_logits"], got["caption_labels"])
    anchor_loss = open_clip.loss.CoCaLoss(caption_loss_weight=1.0, clip_loss_weight=0.0)
    _, anchor_caption = anchor_loss(expected["image_features"], expected["text_features"], expected["logits"],
                                    expected["labels"], expected["logit_scale"])
    torch.testing.assert_close(ours_loss, anchor_caption)  # cutting the padding changes no loss
    torch.testing.assert_close(got["image_emb"], expected["image_features"])
    torch.testing.assert_close(got["text_emb"], expected["text_features"])
    assert isinstance(ours.heads["caption"], CaptionHead) and ours.heads["caption"].attn_pool is None


def test_an_hf_text_tower_gives_tokens_from_one_pass_and_is_refused_as_not_causal(tmp_path):
    from test_hf_text_tower import hf_arch, save_tiny_bert

    folder = save_tiny_bert(tmp_path / "bert")
    model = build_model(ModelConfig(arch=hf_arch(folder), tokenizer=f"hf:{folder}")).eval()
    ids = torch.tensor([[2, 7, 8, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
    with torch.no_grad():
        pooled, states = model.text_tower.forward_with_tokens(ids)
        torch.testing.assert_close(pooled, model.text_tower(ids))
        torch.testing.assert_close(states, model.text_tower.token_states(ids)[:, :4])  # cut after the last non-pad
    assert states.shape == (2, 4, 32) == (2, 4, model.text_tower.token_width) and not model.text_tower.causal
    with pytest.raises(ConfigError, match=r"needs a causal text tower.*'open_clip' \(open_clip HFTextEncoder\)"):
        build_model(ModelConfig(arch=hf_arch(folder), tokenizer=f"hf:{folder}", heads={"caption": {}}))


def test_decoding_up_to_the_last_real_token_gives_the_full_context_loss_and_gradients():
    vision, text = _coca_cfgs()
    torch.manual_seed(0)
    model = DualEncoder({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text, "custom_text": True},
                        heads={"caption": {}}).double()
    head, images = model.heads["caption"], _images().double()

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    out = model(images, IDS)
    assert out["caption_logits"].shape[1] == 4 < IDS.shape[1] - 1
    cut = grads(caption_loss(out["caption_logits"], out["caption_labels"]))
    _, states = model.text_tower.forward_with_tokens(IDS)  # the whole context, decoded in full
    _, tokens = model.image_tower.forward_with_tokens(images)
    full_logits = head.decode(head.image_memory(tokens), states[:, :-1])
    full = grads(caption_loss(full_logits, IDS[:, 1:states.shape[1]]))
    assert full.keys() == cut.keys()
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=1e-9, atol=1e-12, msg=name)


def test_a_tokenizer_that_pads_with_another_id_has_its_padding_ignored():
    """Text padded with id 1 (as RoBERTa's tokenizer pads): the head marks those labels -100 and
    decodes only up to the last real token, so the loss is the mean over the real tokens alone."""
    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "pad_id": 1}}
    torch.manual_seed(0)
    model = DualEncoder(arch, heads={"caption": {"n_queries": 4}})
    assert model.text_tower.pad_id == 1
    ids = torch.where(IDS == 0, torch.ones_like(IDS), IDS)
    out = model(_images(), ids)
    assert out["caption_labels"].tolist() == [[5, 9, 63, -100], [7, 63, -100, -100], [3, 4, 5, 63]]
    logits, labels = out["caption_logits"], out["caption_labels"]
    real = labels >= 0
    expected = torch.nn.functional.cross_entropy(logits[real], labels[real])
    torch.testing.assert_close(caption_loss(logits, labels), expected)


def test_a_caption_head_that_no_term_trains_is_refused_before_training():
    from vlp.config import LossTermConfig
    from vlp.models.heads import check_heads_with_terms

    with pytest.raises(ConfigError, match=r"model.heads.caption: no loss term reads .*name: caption"):
        check_heads_with_terms({"caption": {}}, [LossTermConfig(name="clip")])
    check_heads_with_terms({"caption": {}}, [LossTermConfig(name="clip"), LossTermConfig(name="caption", weight=2.0)])
