"""model.grad_checkpointing: checkpointed blocks in both towers give the gradients of the plain
forward and of open_clip's own checkpointed forward (float64), and the refusal names the key for a
tower without it."""

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

import vlp.models.towers.blocks as blocks_module  # noqa: E402
from vlp.config import ConfigError, ModelConfig  # noqa: E402
from vlp.losses.contrastive import clip_loss  # noqa: E402
from vlp.models.factory import build_model  # noqa: E402

ARCH = copy.deepcopy(TINY_ARCH)
ARCH["vision_cfg"]["layers"] = ARCH["text_cfg"]["layers"] = 2
TEXTS = torch.tensor([[1, 5, 63, 0, 0, 0, 0, 0], [1, 7, 9, 11, 63, 0, 0, 0], [1, 2, 63, 0, 0, 0, 0, 0]])


def _grads(model):
    model.train()
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = model(images, TEXTS)
    clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"]).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _model(**options):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=ARCH, **options)).double()


def _counting_checkpoint(monkeypatch):
    calls = []
    original = blocks_module.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(blocks_module, "checkpoint", counted)
    return calls


def test_checkpointing_gives_the_same_gradients(monkeypatch):
    plain = _grads(_model())
    model = _model(grad_checkpointing=True)
    assert model.image_tower.visual.transformer.grad_checkpointing and model.text_tower.transformer.grad_checkpointing
    calls = _counting_checkpoint(monkeypatch)
    checkpointed = _grads(model)
    assert len(calls) == 4  # two blocks in each tower ran through torch.utils.checkpoint
    assert plain.keys() == checkpointed.keys()
    assert all(plain[n].abs().sum() > 0 for n in plain if "transformer" in n and n.endswith("weight"))
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-10


def test_checkpointing_gives_open_clips_checkpointed_gradients():
    """The towers' own forwards (trimmed text, fast ViT) under checkpointing against open_clip's
    CLIP forward over the same modules, checkpointed by open_clip."""
    model = _model(grad_checkpointing=True)
    ours = _grads(model)
    model.zero_grad(set_to_none=True)
    clip = model.clip
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    image = torch.nn.functional.normalize(clip.encode_image(images), dim=-1)
    text = torch.nn.functional.normalize(clip.encode_text(TEXTS), dim=-1)
    clip_loss(image, text, model.logit_head()["logit_scale"]).backward()
    theirs = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert max((ours[n] - theirs[n]).abs().max().item() for n in ours) <= 1e-10


def test_a_tower_without_checkpointing_is_refused_naming_the_key():
    resnet = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
              "text_cfg": ARCH["text_cfg"]}
    with pytest.raises(ConfigError, match="model.grad_checkpointing: the image tower 'open_clip' "
                                          r"\(open_clip ModifiedResNet\) has no gradient checkpointing"):
        build_model(ModelConfig(arch=resnet, grad_checkpointing=True))
