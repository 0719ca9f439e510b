"""Weight-decay exclusions and the warmup + cosine schedule, on exact values."""

import math

import pytest

from tiny_arch import TINY_ARCH
from vlp.config import OptimConfig
from vlp.models.dual_encoder import DualEncoder
from vlp.models.open_clip_layout import from_open_clip_key, open_clip_model
from vlp.train.optim import build_optimizer, lr_factor


def test_no_decay_on_norms_biases_embeddings_and_temperature():
    model = DualEncoder(TINY_ARCH)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.2))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in opt.param_groups[0]["params"]}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    # named as open_clip names them, in our layout (vlp.models.open_clip_layout)
    for name in ("logit_scale", "ln_final.weight", "ln_final.bias", "token_embedding.weight",
                 "positional_embedding", "visual.class_embedding",
                 "transformer.resblocks.0.attn.in_proj_bias"):
        assert from_open_clip_key(name) in no_decay, name
    for name in ("transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight",
                 "text_projection", "visual.proj"):
        assert from_open_clip_key(name) in decay, name
    # the same groups as under open_clip's names (what checkpoints before the model had named parts were trained with)
    as_open_clip = build_optimizer(open_clip_model(model), OptimConfig(weight_decay=0.2))
    for ours, theirs in zip(opt.param_groups, as_open_clip.param_groups):
        assert {id(p) for p in ours["params"]} == {id(p) for p in theirs["params"]}


def test_warmup_then_cosine_values():
    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 14, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 14, cfg) == pytest.approx(1.0)
    # halfway through the 10 decay steps: min + (1 - min) * 0.5
    assert lr_factor(9, 14, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(14, 14, cfg) == pytest.approx(0.1)
    assert lr_factor(100, 14, cfg) == pytest.approx(0.1)
    assert lr_factor(6, 14, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_constant_schedule_after_warmup():
    cfg = OptimConfig(warmup_steps=2, schedule="constant")
    assert [lr_factor(s, 10, cfg) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_linear_schedule_after_warmup_falls_on_a_straight_line():
    cfg = OptimConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    assert [lr_factor(s, 12, cfg) for s in range(2)] == [0.5, 1.0]
    assert [lr_factor(s, 12, cfg) for s in (2, 7, 12, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    floor = OptimConfig(warmup_steps=0, schedule="linear", min_lr_ratio=0.2)
    assert lr_factor(5, 10, floor) == pytest.approx(0.2 + 0.8 * 0.5)
