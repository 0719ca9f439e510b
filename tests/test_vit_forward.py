"""The faster forward of open_clip's VisionTransformer gives open_clip's own features, and the same
gradients in training mode, on every pooling variant it takes, and hands other towers back."""

import open_clip
import pytest
import torch

from vlp.models.dual_encoder import DualEncoder
from vlp.interop.open_clip_files import OpenCLIPEncoder
from vlp.models.towers.vit_forward import image_features, supports_fast_forward, vit_forward

VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 16}
TEXT = {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}


def _clip(seed=0, **vision):
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=24, vision_cfg={**VISION, **vision}, text_cfg=TEXT).eval()
    with torch.no_grad():  # random biases and LayerNorm affines, so a wrong bias or norm shows
        for name, param in model.visual.named_parameters():
            if name.endswith("bias") or "ln" in name or "gamma" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def _images(n=5):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


VARIANTS = {
    "class token": {},
    "class token, LN after pool": {"final_ln_after_pool": True},
    "average pool": {"pool_type": "avg"},
    "no pool (all tokens)": {"pool_type": "none"},
    "layer scale": {"ls_init_value": 0.5},
    "quick gelu": {},
    "no ln_pre": {"no_ln_pre": True},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_inference_forward_equals_open_clip(name):
    model = _clip(**VARIANTS[name]) if name != "quick gelu" else _quick_gelu_clip()
    assert supports_fast_forward(model.visual)
    with torch.no_grad():
        reference = model.visual(_images())
        fast = vit_forward(model.visual, _images())
    assert fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, atol=2e-6, rtol=1e-5)


def _quick_gelu_clip():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=24, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=True).eval()


def test_class_token_path_computes_only_the_class_token_in_the_last_block():
    """The last block's MLP sees one row per image on the class-token path, every row otherwise."""
    rows = []
    for pool, expected in (("tok", 1), ("avg", 17)):
        model = _clip(pool_type=pool)
        handle = model.visual.transformer.resblocks[-1].mlp.register_forward_hook(
            lambda module, args, out: rows.append(args[0].shape[1]))
        with torch.no_grad():
            vit_forward(model.visual, _images(2))
        handle.remove()
        assert rows.pop() == expected


def _grads(model, forward, images, weights):
    model.zero_grad(set_to_none=True)
    (forward(images) * weights).sum().backward()
    return {name: p.grad.clone() for name, p in model.visual.named_parameters()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_forward_gives_open_clips_gradients(name):
    """Train mode with grad: features and every parameter's gradient equal open_clip's forward
    (float64, so only the summation order differs)."""
    model = (_clip(**VARIANTS[name]) if name != "quick gelu" else _quick_gelu_clip()).double().train()
    images = _images(3).double()
    reference = model.visual(images)
    weights = torch.randn(reference.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = _grads(model, model.visual, images, weights)
    fast = vit_forward(model.visual, images)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=1e-10)
    got = _grads(model, lambda x: vit_forward(model.visual, x), images, weights)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-12, rtol=1e-10, msg=key)


def test_patch_dropout_and_checkpointing_keep_open_clips_gradients():
    """Patch dropout draws the same patches from the same generator state; checkpointed blocks
    give the same gradients; an image size that is not a multiple of the patch drops the remainder
    as the convolution does."""
    model = _clip(patch_dropout=0.5).double().train()
    model.visual.set_grad_checkpointing(True)
    images = torch.randn(3, 3, 35, 37, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = torch.randn(3, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(5)
    expected = _grads(model, model.visual, images, weights)
    torch.manual_seed(5)
    got = _grads(model, lambda x: vit_forward(model.visual, x), images, weights)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-12, rtol=1e-10, msg=key)


def test_the_image_tower_trains_through_it():
    """The DualEncoder's image tower takes this forward with grad on (open_clip's forward not called)."""
    dual = DualEncoder({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT}).train()
    calls = []
    own_forward = dual.image_tower.visual.forward
    dual.image_tower.visual.forward = lambda x: calls.append(1) or own_forward(x)
    features = dual.encode_image(_images(2))
    assert calls == [] and features.requires_grad


def test_unsupported_towers_fall_back():
    attn_pool = _clip(attentional_pool=True)
    assert not supports_fast_forward(attn_pool.visual)
    tokens = _clip()
    tokens.visual.output_tokens = True
    assert not supports_fast_forward(tokens.visual)
    torch.manual_seed(0)
    resnet = open_clip.CLIP(embed_dim=24, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
                            text_cfg=TEXT).eval()
    assert not supports_fast_forward(resnet.visual)
    with torch.no_grad():
        torch.testing.assert_close(image_features(resnet, _images(2)), resnet.encode_image(_images(2)))
    hooked = _clip()
    assert supports_fast_forward(hooked.visual)
    handle = hooked.visual.conv1.register_forward_pre_hook(lambda *a: None)
    assert not supports_fast_forward(hooked.visual)  # e.g. ZeRO-3 gathers parameters in such hooks
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    assert not supports_fast_forward(hooked.visual)
    handle.remove()
    assert supports_fast_forward(hooked.visual)


def test_a_hooked_block_runs_its_own_forward_with_the_same_features():
    """A block with hooks (FSDP, ZeRO-3) is called as a module, so the hook runs; the rest stays fast."""
    model = _clip()
    calls = []
    handle = model.visual.transformer.resblocks[1].attn.register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        reference = model.visual(_images(2))
        calls.clear()
        fast = vit_forward(model.visual, _images(2))
    handle.remove()
    assert calls == [1]
    torch.testing.assert_close(fast, reference, atol=2e-6, rtol=1e-5)


def test_eval_encoders_use_it_with_the_same_embeddings():
    model = _clip()
    images = _images(4)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.visual(images), dim=-1)
        torch.testing.assert_close(OpenCLIPEncoder(model).encode_image(images), reference, atol=1e-6, rtol=0)
    dual = DualEncoder({"embed_dim": 24, "vision_cfg": VISION, "text_cfg": TEXT}).eval()
    with torch.no_grad():
        torch.testing.assert_close(dual.encode_image(images),
                                   torch.nn.functional.normalize(dual.clip.visual(images), dim=-1),
                                   atol=1e-6, rtol=0)
