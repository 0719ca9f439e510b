"""The DualEncoder as named parts: tower interfaces, towers and heads chosen by name, the open_clip
layout mapping, and initial weights bitwise equal to open_clip's own CLIP under the same seed."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tiny_arch import TINY_ARCH
from vlp.config import ModelConfig
from vlp.errors import ConfigError
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import build_model, load_weights
from vlp.models.heads import HEADS, Head
from vlp.models.logit_head import LogitHead
from vlp.models.open_clip_layout import (as_vlp_state, from_open_clip_state, open_clip_model, to_open_clip_key,
                                         to_open_clip_state)
from vlp.models.towers import TOWERS, ImageTower, TowerFeatureError, build_tower
from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower, OpenCLIPTextTower

RESNET_ARCH = {**TINY_ARCH, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}}
CUSTOM_ARCH = {**TINY_ARCH, "custom_text": True}


def _inputs(size=16, n=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0],
                                                                      [62, 63, 0, 0, 0, 0, 0, 0]])[:n]


# ---------------------------------------------------------------- tower interfaces

def test_tower_interfaces_give_pooled_and_per_token_shapes():
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH).eval()
    images, ids = _inputs()
    assert model.image_tower.image_size == model.image_size == 16
    assert model.text_tower.context_length == model.context_length == 8 and model.text_tower.vocab_size == 64
    with torch.no_grad():
        assert model.image_tower(images).shape == (3, 16)  # pooled, projected, not normalised
        assert model.text_tower(ids).shape == (3, 16)
        patches = model.image_tower.token_features(images)
        states = model.text_tower.token_states(ids)
    assert patches.shape == (3, 4, 32)  # (16 / 8) ** 2 patches, width 32
    assert states.shape == (3, 8, 32)
    assert not model.image_tower.visual.output_tokens  # the flag is put back
    # the text tower's pooled embedding is its token states at the end token, projected
    pooled = states[torch.arange(3), ids.argmax(dim=-1)] @ model.text_tower.text_projection
    torch.testing.assert_close(pooled, model.text_tower(ids))
    # the ViT's per-token features are what open_clip's own tower gives with output_tokens
    reference = copy.deepcopy(model.image_tower.visual)
    reference.output_tokens = True
    with torch.no_grad():
        torch.testing.assert_close(patches, reference(images)[1])


def test_a_tower_without_per_token_features_says_which_it_is():
    model = DualEncoder(RESNET_ARCH).eval()
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(TowerFeatureError, match="image tower 'open_clip' \\(open_clip ModifiedResNet\\) gives no "
                                                "per-token features"):
        model.image_tower.token_features(torch.randn(2, 3, 32, 32))


def test_whole_held_text_tower_gives_per_position_states():
    model = DualEncoder(CUSTOM_ARCH).eval()
    assert isinstance(model.text_tower, OpenCLIPCustomTextTower)
    _, ids = _inputs()
    with torch.no_grad():
        assert model.text_tower.token_states(ids).shape == (3, 8, 32)


# ---------------------------------------------------------------- towers by name

class _MeanColourTower(ImageTower):
    """The mean colour of each image, projected: a tower outside open_clip."""

    def __init__(self, embed_dim: int, size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, embed_dim)
        self.size = size

    @property
    def image_size(self) -> int:
        return self.size

    def forward(self, pixels):
        return self.proj(pixels.mean(dim=(2, 3)))


def test_towers_are_chosen_by_name_and_unknown_names_fail_at_config_time(monkeypatch):
    monkeypatch.setitem(TOWERS["image"], "mean_colour",
                        lambda arch, quick_gelu: _MeanColourTower(arch["embed_dim"], arch["vision_cfg"]["image_size"]))
    cfg = ModelConfig(arch=TINY_ARCH, image_tower="mean_colour")
    model = build_model(cfg).eval()
    assert isinstance(model.image_tower, _MeanColourTower) and isinstance(model.text_tower, OpenCLIPTextTower)
    assert {k.split(".")[0] for k in model.state_dict()} == {"image_tower", "text_tower", "logit_head"}
    images, ids = _inputs()
    out = model(images, ids)
    assert out["image_emb"].shape == out["text_emb"].shape == (3, 16)
    with pytest.raises(TowerFeatureError, match="'mean_colour'"):
        model.image_tower.token_features(images)
    with pytest.raises(ConfigError, match="model.text_tower: unknown text tower 'bert', valid names: open_clip"):
        ModelConfig(arch=TINY_ARCH, text_tower="bert")
    with pytest.raises(ConfigError, match="model.image_tower: unknown image tower 'vit'.*mean_colour, open_clip"):
        ModelConfig(arch=TINY_ARCH, image_tower="vit")
    with pytest.raises(ConfigError, match="valid names"):
        build_tower("text", "nope", TINY_ARCH, False)


# ---------------------------------------------------------------- heads by name

class _ColourProbe(Head):
    """A linear probe on the image embedding: adds 'probe_logits' [B, classes]."""

    provides = ("probe_logits",)

    def __init__(self, image_tower, text_tower, classes: int = 2) -> None:
        super().__init__(image_tower, text_tower)
        self.linear = nn.Linear(16, classes)

    def forward(self, inputs, outputs):
        assert set(inputs) == {"image", "text"}
        return {"probe_logits": self.linear(outputs["image_emb"])}


class _Undeclared(Head):
    provides = ("one",)

    def forward(self, inputs, outputs):
        return {"one": outputs["text_emb"], "two": outputs["text_emb"]}


def test_a_head_from_config_adds_its_output_and_trains(monkeypatch):
    monkeypatch.setitem(HEADS, "colour_probe", _ColourProbe)
    cfg = ModelConfig(arch=TINY_ARCH, heads={"colour_probe": {"classes": 3}})
    torch.manual_seed(0)
    model = build_model(cfg)
    assert "heads.colour_probe.linear.weight" in model.state_dict()
    assert model.head_outputs == {"colour_probe": ("probe_logits",)}
    assert len(list(model.parameters())) == len(list(DualEncoder(TINY_ARCH).parameters())) + 2  # towers not doubled
    images, ids = _inputs()
    labels = torch.tensor([0, 1, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.heads["colour_probe"].linear.weight.detach().clone()
    losses = []
    for _ in range(15):
        out = model(images, ids)
        assert out["probe_logits"].shape == (3, 3) and {"image_emb", "text_emb", "logit_scale"} <= set(out)
        loss = F.cross_entropy(out["probe_logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(before, model.heads["colour_probe"].linear.weight)
    # a checkpoint with the head loads back with it
    again = build_model(cfg, for_checkpoint=True)
    load_weights(again, model.state_dict())
    assert torch.equal(again.heads["colour_probe"].linear.weight, model.heads["colour_probe"].linear.weight)


def test_head_config_errors_name_what_to_fix(monkeypatch):
    monkeypatch.setitem(HEADS, "colour_probe", _ColourProbe)
    monkeypatch.setitem(HEADS, "undeclared", _Undeclared)
    with pytest.raises(ConfigError, match="model.heads.captioner: unknown head 'captioner', valid names: .*colour_probe"):
        ModelConfig(arch=TINY_ARCH, heads={"captioner": {}})
    with pytest.raises(ConfigError, match="unknown option\\(s\\) \\['width'\\]; valid options: classes"):
        ModelConfig(arch=TINY_ARCH, heads={"colour_probe": {"width": 4}})

    class _Shadow(_ColourProbe):
        provides = ("image_emb",)

    monkeypatch.setitem(HEADS, "shadow", _Shadow)
    with pytest.raises(ConfigError, match="provides 'image_emb', which the DualEncoder already gives"):
        ModelConfig(arch=TINY_ARCH, heads={"shadow": {}})
    model = DualEncoder(TINY_ARCH, heads={"undeclared": {}})
    with pytest.raises(ValueError, match="head 'undeclared' returned \\['two'\\], which it does not declare"):
        model(*_inputs())


# ---------------------------------------------------------------- the open_clip layout

@pytest.mark.parametrize("arch, cls", [(TINY_ARCH, open_clip.CLIP), (CUSTOM_ARCH, open_clip.CustomTextCLIP)])
def test_init_is_bitwise_open_clips_under_the_same_seed(arch, cls):
    torch.manual_seed(7)
    ours = DualEncoder(arch, init_logit_bias=-10.0)
    torch.manual_seed(7)
    theirs = cls(**{k: arch[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}, init_logit_bias=-10.0)
    mapped = to_open_clip_state(ours)
    assert list(mapped) == [to_open_clip_key(k) for k in ours.state_dict()]
    assert mapped.keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(mapped[key], value), key
    # open_clip's object over our parts lists the parameters as open_clip does (checkpoint optimizers relied on it)
    assert [n for n, _ in open_clip_model(ours).named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_init_with_an_hf_text_tower_is_bitwise_open_clips(tmp_path):
    from test_hf_text_tower import hf_arch, save_tiny_bert

    arch = hf_arch(save_tiny_bert(tmp_path / "bert"))
    torch.manual_seed(3)
    ours = build_model(ModelConfig(arch=arch, tokenizer=f"hf:{tmp_path / 'bert'}"))
    torch.manual_seed(3)
    theirs = open_clip.CustomTextCLIP(**{k: arch[k] for k in ("embed_dim", "vision_cfg", "text_cfg")})
    mapped = to_open_clip_state(ours)
    assert mapped.keys() == theirs.state_dict().keys()
    assert all(torch.equal(mapped[k], v) for k, v in theirs.state_dict().items())


@pytest.mark.parametrize("arch, cls", [(TINY_ARCH, open_clip.CLIP), (CUSTOM_ARCH, open_clip.CustomTextCLIP)])
def test_open_clip_layout_round_trip(arch, cls):
    torch.manual_seed(0)
    ours = DualEncoder(arch).eval()
    with torch.no_grad():
        ours.logit_head.logit_scale.fill_(2.5)
    theirs = cls(**{k: arch[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}).eval()
    theirs.load_state_dict(to_open_clip_state(ours), strict=True)
    images, ids = _inputs()
    with torch.no_grad():
        # ours runs the patch convolution as a matrix product and the text tower only up to the longest
        # caption: other kernels and matmul shapes, float32 rounding apart
        torch.testing.assert_close(theirs.encode_image(images, normalize=True), ours.encode_image(images), atol=1e-6, rtol=0)
        torch.testing.assert_close(theirs.encode_text(ids, normalize=True), ours.encode_text(ids), atol=1e-6, rtol=0)
    assert theirs.logit_scale.item() == 2.5
    back = DualEncoder(arch).eval()
    back.load_state_dict(from_open_clip_state(theirs.state_dict()), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_state_layouts_are_recognised():
    ours = DualEncoder(TINY_ARCH).state_dict()
    open_clip_names = {to_open_clip_key(k): v for k, v in ours.items()}
    assert as_vlp_state(ours).keys() == ours.keys()
    assert as_vlp_state(open_clip_names).keys() == ours.keys()
    assert as_vlp_state({f"module.{k}": v for k, v in open_clip_names.items()}).keys() == ours.keys()
    assert as_vlp_state({f"clip.{k}": v for k, v in open_clip_names.items()}).keys() == ours.keys()
    assert to_open_clip_key("logit_head.logit_bias") == "logit_bias"
    with pytest.raises(KeyError, match="no open_clip name"):
        to_open_clip_key("heads.probe.linear.weight")


def test_open_clip_view_shares_the_parameters():
    model = DualEncoder(TINY_ARCH, max_logit_scale=50.0)
    view = model.clip
    assert isinstance(view, open_clip.CLIP)
    assert view.token_embedding is model.text_tower.token_embedding and view.visual is model.image_tower.visual
    with torch.no_grad():
        view.logit_scale.fill_(6.0)
    assert model.logit_head.scale().item() == pytest.approx(torch.tensor(6.0).exp().item())
    model.clamp_logit_scale()
    assert model.logit_head.scale().item() == pytest.approx(50.0)
    assert isinstance(DualEncoder(CUSTOM_ARCH).clip, open_clip.CustomTextCLIP)


def test_logit_head_outputs_and_existing_parameters():
    head = LogitHead(init_logit_scale=2.0, init_logit_bias=-10.0)
    out = head()
    assert list(out) == ["logit_scale", "logit_bias"]
    assert out["logit_scale"].item() == pytest.approx(torch.tensor(2.0).exp().item()) and out["logit_bias"].item() == -10.0
    scale = nn.Parameter(torch.tensor(1.5))
    shared = LogitHead.from_parameters(scale, None)
    assert shared.logit_scale is scale and "logit_bias" not in shared() and shared.logit_bias is None


def test_custom_text_false_builds_clips_text_layout_as_open_clip_does() -> None:
    """open_clip builds CustomTextCLIP only when custom_text is true: an arch saying false holds
    the text parts as CLIP does (text_tower.transformer.*), so its weights load in open_clip's CLIP."""
    plain = DualEncoder({**TINY_ARCH, "custom_text": False}).state_dict()
    custom = DualEncoder({**TINY_ARCH, "custom_text": True}).state_dict()
    assert any(k.startswith("text_tower.transformer.") for k in plain) and not any(k.startswith("text_tower.text.") for k in plain)
    assert any(k.startswith("text_tower.text.") for k in custom)
    theirs = open_clip.CLIP(**TINY_ARCH).state_dict()
    assert {k for k in plain if k.startswith("text_tower.")} == \
        {"text_tower." + k for k in theirs if not k.startswith("visual.") and k != "logit_scale"}
