"""model.grad_checkpointing: open_clip's checkpointed blocks in both towers give the gradients of
the plain forward (float64), and the refusal names the key for a tower without it."""

import copy
import os
import sys

import open_clip.transformer
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

import vlp.models.towers.open_clip_text as text_module  # noqa: E402
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
    original = open_clip.transformer.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counted)
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


def test_the_trimmed_text_forward_under_checkpointing_gives_the_same_gradients(monkeypatch):
    """can_trim_text steps aside under checkpointing; the trimmed forward would give the same gradients too."""
    plain = _grads(_model())
    model = _model(grad_checkpointing=True)
    trimmed = []

    def trim_anyway(clip):
        trimmed.append(1)
        return isinstance(clip, text_module.OpenCLIPTextTower)

    monkeypatch.setattr(text_module, "can_trim_text", trim_anyway)
    calls = _counting_checkpoint(monkeypatch)
    checkpointed = _grads(model)
    assert trimmed and len(calls) == 4
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-10


def test_a_tower_without_checkpointing_is_refused_naming_the_key():
    resnet = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
              "text_cfg": ARCH["text_cfg"]}
    with pytest.raises(ConfigError, match="model.grad_checkpointing: the image tower 'open_clip' "
                                          r"\(open_clip ModifiedResNet\) has no gradient checkpointing"):
        build_model(ModelConfig(arch=resnet, grad_checkpointing=True))
