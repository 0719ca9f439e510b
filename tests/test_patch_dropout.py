"""model.patch_dropout (FLIP): in training the ViT sees the class token and the configured share
of its patches; in evaluation every patch, the same output as without patch dropout."""

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

from vlp.config import ConfigError, ModelConfig  # noqa: E402
from vlp.models.factory import build_model  # noqa: E402

ARCH = copy.deepcopy(TINY_ARCH)
ARCH["vision_cfg"].update(image_size=32, patch_size=8)  # 16 patches + the class token
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(prob):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=ARCH, patch_dropout=prob))


def _tokens_seen(model):
    """The number of tokens entering the ViT's transformer on one forward."""
    seen = []
    handle = model.image_tower.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    try:
        out = model.encode_image(IMAGES)
    finally:
        handle.remove()
    return seen[0], out


@pytest.mark.parametrize("prob, kept", [(0.5, 8), (0.75, 4), (0.9, 1)])
def test_training_sees_the_configured_share_of_patches(prob, kept):
    model = _model(prob).train()
    seen, out = _tokens_seen(model)
    assert seen == 1 + kept  # the class token and int(16 * (1 - prob)) patches
    reference = _model(0.0).train()
    assert _tokens_seen(reference)[0] == 17
    assert not torch.allclose(out, reference.encode_image(IMAGES), atol=1e-4)


def test_evaluation_sees_every_patch_and_equals_no_dropout():
    model, reference = _model(0.5).eval(), _model(0.0).eval()
    for grad in (True, False):  # open_clip's forward, and the inference forward
        with torch.set_grad_enabled(grad):
            seen, out = _tokens_seen(model)
            assert seen == 17
            assert torch.equal(out, reference.encode_image(IMAGES))


def test_patch_dropout_is_refused_where_there_are_no_patches():
    resnet = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
              "text_cfg": ARCH["text_cfg"]}
    with pytest.raises(ConfigError, match=r"model.patch_dropout: the image tower 'open_clip' \(open_clip "
                                          r"ModifiedResNet\) has no patch dropout"):
        build_model(ModelConfig(arch=resnet, patch_dropout=0.5))
    build_model(ModelConfig(arch=resnet, patch_dropout=0.0))  # off: nothing to refuse
    with pytest.raises(ConfigError, match=r"model.patch_dropout: must be in \[0, 1\), got 1.0"):
        ModelConfig(arch=ARCH, patch_dropout=1.0)
