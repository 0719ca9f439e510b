"""The transformers export (vlp.export.hf_format.export_hf): a folder CLIPModel / SiglipModel and their
processors load offline, computing our embeddings from raw images and texts; what has no counterpart
is refused before anything is written; a transformers CLIPModel goes through vlp and back bit for bit.
Train-free: tiny random models, everything local."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tiny_arch import TINY_ARCH
from data_prep.tokenizer_train import train_sentencepiece
from vlp.config import Config, ModelConfig
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform
from vlp.export.hf_format import export_hf
from vlp.export.staging import UnsupportedExport
from vlp.interop.load import load_eval_model
from vlp.models.factory import build_model
from vlp.models.hf_clip_arch import arch_from_hf_clip_config

VISION = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
FULL_VOCAB = {"embed_dim": 16, "vision_cfg": VISION,  # tiny widths, open_clip's BPE vocabulary and context
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CAPTIONS = ["a red cube", "a photo of a green ball.", "Tom &amp; Jerry &lt;3", "“curly” ‘quotes’ — dashes…",
            "ＦＵＬＬＷＩＤＴＨ text", "  two  dogs\tplaying\nin the snow  ", "", "zebra " * 90]
PROMPTS = [f"a photo of a {c}." for c in ("cube", "ball", "cone", "star")]


def _cfg(arch: dict, tokenizer: str = "open_clip", **model) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(arch=arch, tokenizer=tokenizer, **model)
    return cfg


def _model(cfg: Config, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg.model).eval()


def _images() -> list:
    """PIL images whose resize and centre crop transformers' image processor computes as open_clip's
    eval transform does (its crop offset is floor((L - S) / 2), torchvision's round(): equal here)."""
    rng = np.random.default_rng(0)
    sizes = [(40, 24), (16, 16), (31, 23), (24, 52)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)))  # grayscale ("L")
    return images


def _hf_features(out: object) -> torch.Tensor:
    return F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)


def _clip_and_processor(folder: Path):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    # the PIL backend resizes as open_clip does (Pillow's bicubic); the default torchvision one
    # resizes tensors (within a level or two of 255)
    return model, CLIPProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_clip_export_computes_our_embeddings_from_raw_images_and_texts(quick_gelu: bool, tmp_path: Path) -> None:
    cfg = _cfg(FULL_VOCAB, quick_gelu=quick_gelu)
    model = _model(cfg)
    out = export_hf(model, cfg, tmp_path / "hf")
    raw = json.loads((out / "config.json").read_text())
    act = "quick_gelu" if quick_gelu else "gelu"
    assert raw["text_config"]["hidden_act"] == raw["vision_config"]["hidden_act"] == act
    assert raw["text_config"]["eos_token_id"] == 2  # transformers' argmax pooling, as open_clip's tower pools
    clip, processor = _clip_and_processor(out)
    assert torch.equal(clip.logit_scale.detach(), model.logit_head.logit_scale.detach())

    images, transform, ours_tok = _images(), eval_transform(model.image_size), build_tokenizer("open_clip", 77)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixels, torch.stack([transform(im) for im in images]), atol=1e-5)
    texts = processor(text=CAPTIONS + PROMPTS, padding="max_length", truncation=True, return_tensors="pt")
    ids = ours_tok(CAPTIONS + PROMPTS)
    eos = (ids == 49407).int().argmax(1)
    for row, end in enumerate(eos.tolist()):  # our ids up to the end token (the padding is the end token)
        assert texts["input_ids"][row, :end + 1].tolist() == ids[row, :end + 1].tolist()
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(torch.stack([transform(im) for im in images])), model.encode_text(ids)
        theirs_img = _hf_features(clip.get_image_features(pixel_values=pixels))
        theirs_txt = _hf_features(clip.get_text_features(**texts))
        logits = clip(pixel_values=pixels, input_ids=texts["input_ids"][-4:],
                      attention_mask=texts["attention_mask"][-4:]).logits_per_image
    assert (theirs_img - ours_img).abs().max() < 1e-5
    assert (theirs_txt - ours_txt).abs().max() < 1e-5
    ours_logits = model.logit_head.scale() * ours_img @ ours_txt[-4:].T
    assert (logits - ours_logits).abs().max() < 1e-4
    assert torch.equal(logits.argmax(1), ours_logits.argmax(1))  # zero-shot: the same class for every image

    flipped = "gelu" if quick_gelu else "quick_gelu"  # the recorded activation is the one that reproduces ours
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_pretrained(str(out))
    config.text_config.hidden_act = config.vision_config.hidden_act = flipped
    other = CLIPModel.from_pretrained(str(out), config=config, local_files_only=True).eval()
    with torch.no_grad():
        assert (_hf_features(other.get_text_features(**texts)) - ours_txt).abs().max() > 1e-4


def test_sentencepiece_export_loads_in_our_eval_loader(tmp_path: Path) -> None:
    spm = tmp_path / "caps.model"
    words = [f"a {c} {s} left of a {s2}" for c in ("red", "green", "blue") for s in ("cube", "ball", "cone")
             for s2 in ("ring", "star")]
    train_sentencepiece(words * 3, spm, vocab_size=40)
    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "context_length": 12}}
    cfg = _cfg(arch, f"sentencepiece:{spm}")
    model = _model(cfg)
    texts = words[:4] + ["a red cube &amp; a “blue” ring", "", "cube " * 20]
    ids = build_tokenizer(f"sentencepiece:{spm}", 12)(texts)
    out = export_hf(model, cfg, tmp_path / "hf")
    spm.unlink()  # the export carries its tokenizer
    loaded = load_eval_model(out)
    assert loaded.warnings == []
    assert torch.equal(loaded.tokenizer(texts), ids)
    images = torch.stack([loaded.image_transform(im) for im in _images()])
    with torch.no_grad():
        assert (loaded.model.encode_text(ids) - model.encode_text(ids)).abs().max() < 1e-5
        assert (loaded.model.encode_image(images) - model.encode_image(images)).abs().max() < 1e-5


def test_hf_tokenizer_export_pools_at_its_end_token(tmp_path: Path) -> None:
    """An 'hf:DIR' tokenizer (BERT's [CLS] ... [SEP]) with open_clip's tower, which pools at [SEP]."""
    from test_hf_text_tower import save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert")
    cfg = _cfg(TINY_ARCH, f"hf:{bert}")
    model = _model(cfg)
    texts = ["a red cube", "Tom &amp; Jerry", "", "cube " * 20]
    ids = build_tokenizer(f"hf:{bert}", 8)(texts)
    out = export_hf(model, cfg, tmp_path / "hf")
    sep = json.loads((out / "config.json").read_text())["text_config"]["eos_token_id"]
    assert sep == 3 and model.text_tower.text_eos_id == 3
    loaded = load_eval_model(out)
    assert loaded.warnings == []
    assert torch.equal(loaded.tokenizer(texts), ids)
    with torch.no_grad():
        assert (loaded.model.encode_text(ids) - model.encode_text(ids)).abs().max() < 1e-5


# ---------------------------------------------------------------- what has no counterpart

def _siglip_vit_name() -> str:
    """A SigLIP-shaped timm ViT small enough for a test (timm has none), registered once."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = "vit_vlptest_patch8_siglip_16"
    if not timm.is_model(name):
        def build(pretrained: bool = False, **kwargs) -> VisionTransformer:
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
            return VisionTransformer(**{"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                                        "class_token": False, "global_pool": "map", **kwargs})

        build.__name__ = name
        register_model(build)
    return name


def _siglip_arch(**text) -> dict:
    """open_clip's ViT-B-16-SigLIP layout at tiny sizes."""
    return {"embed_dim": 32, "custom_text": True,
            "vision_cfg": {"image_size": 16, "timm_model_name": _siglip_vit_name(), "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                         "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                         **text}}


def _with(section: str, **changes) -> dict:
    return {**TINY_ARCH, section: {**TINY_ARCH[section], **changes}}


UNSUPPORTED = {
    "resnet": ({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
                "text_cfg": TINY_ARCH["text_cfg"]}, {}, "image tower: ModifiedResNet"),
    "attentional_pool": (_with("vision_cfg", attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2), {},
                         "image tower: attentional_pool has no counterpart in transformers' CLIPVisionModel"),
    "layer_scale": (_with("vision_cfg", ls_init_value=0.1), {}, "image tower: layer scale"),
    "bidirectional_text": (_with("text_cfg", no_causal_mask=True), {}, "text tower: no causal mask"),
    "proj_bias": (_with("text_cfg", proj_bias=True), {}, "text tower: a text projection of type a Linear with bias"),
    "caption_head": (TINY_ARCH, {"heads": {"caption": {"n_queries": 4}}}, "heads: caption have no counterpart"),
    "siglip_image_clip_text": ({**_siglip_arch(), "custom_text": False,
                                "text_cfg": {**TINY_ARCH["text_cfg"], "width": 32}}, {},
                               "text tower: a causal mask"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_a_part_without_counterpart_is_refused_before_anything_is_written(case: str, tmp_path: Path) -> None:
    arch, model_options, message = UNSUPPORTED[case]
    cfg = _cfg(arch, **model_options)
    model = _model(cfg)
    out = tmp_path / "exports" / "hf"
    with pytest.raises(UnsupportedExport, match=message):
        export_hf(model, cfg, out)
    assert not (tmp_path / "exports").exists()


def test_an_hf_text_tower_is_refused(tmp_path: Path) -> None:
    from test_hf_text_tower import hf_arch, save_tiny_bert

    bert = save_tiny_bert(tmp_path / "bert")
    cfg = _cfg(hf_arch(bert), f"hf:{bert}")
    with pytest.raises(UnsupportedExport, match=r"text tower: an HF text tower \(HFTextEncoder"):
        export_hf(_model(cfg), cfg, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------- transformers -> vlp -> transformers

@pytest.mark.parametrize("act,eos", [("gelu", 49407), ("quick_gelu", 2)])
def test_transformers_clip_round_trip_is_bit_exact(act: str, eos: int, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": act, "bos_token_id": 49406,
            "eos_token_id": eos, "pad_token_id": 49407, "projection_dim": 24}
    vision = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
              "image_size": 32, "patch_size": 8, "hidden_act": act, "projection_dim": 24}
    torch.manual_seed(0)
    source = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    with torch.no_grad():
        source.logit_scale.fill_(3.125)  # a trained value, not the config's initial one
        for p in source.parameters():  # LayerNorms and biases away from their init too
            p.add_(torch.randn_like(p) * 0.01)
    source.save_pretrained(tmp_path / "src")

    arch = arch_from_hf_clip_config(CLIPConfig.from_pretrained(str(tmp_path / "src")))
    assert arch["text_cfg"].get("pool_type", "argmax") == ("argmax" if eos == 2 else "eos")
    cfg = _cfg(arch, init_from=str(tmp_path / "src"))
    out = export_hf(build_model(cfg.model).eval(), cfg, tmp_path / "back")

    before, after = load_file(str(tmp_path / "src" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    ignore = {"transformers_version", "_name_or_path"}
    first, second = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "src", out))
    assert {k: v for k, v in first.items() if k not in ignore} == {k: v for k, v in second.items() if k not in ignore}


@pytest.mark.parametrize("text,vision,message", [
    ({"hidden_act": "quick_gelu"}, {"hidden_act": "gelu"}, "hidden_act differs between the towers"),
    ({"hidden_act": "gelu_new"}, {"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
    ({"eos_token_id": [49407, 2]}, {}, "text_config.eos_token_id"),
])
def test_arch_from_hf_clip_config_names_what_open_clip_cannot_build(text: dict, vision: dict, message: str) -> None:
    from transformers import CLIPConfig

    assert arch_from_hf_clip_config(CLIPConfig())["quick_gelu"] is True  # transformers' default: OpenAI's QuickGELU
    with pytest.raises(ValueError, match=message):
        arch_from_hf_clip_config(CLIPConfig(text_config=text, vision_config=vision).to_dict())


# ---------------------------------------------------------------- SigLIP: the logit bias

def test_sigmoid_trained_clip_layout_keeps_its_bias_in_the_config(tmp_path: Path) -> None:
    """CLIPModel has no bias parameter (and SiglipModel no place for CLIP towers): the bias is in
    config.json, logits_per_image + bias are our SigLIP logits, and init_from reads it back."""
    cfg = _cfg(FULL_VOCAB, init_logit_bias=-10.0, init_logit_scale=2.302585)
    model = _model(cfg)
    with torch.no_grad():
        model.logit_head.logit_bias.fill_(-7.3)
    out = export_hf(model, cfg, tmp_path / "hf")
    bias = json.loads((out / "config.json").read_text())["vlp_export"]["logit_bias"]
    assert bias == float(model.logit_head.logit_bias.detach())

    clip, processor = _clip_and_processor(out)
    images = _images()
    inputs = processor(text=PROMPTS, images=images, padding="max_length", return_tensors="pt")
    pixels = torch.stack([eval_transform(16)(im) for im in images])
    with torch.no_grad():
        probs = torch.sigmoid(clip(**inputs).logits_per_image + bias)
        outputs = model(pixels, build_tokenizer("open_clip", 77)(PROMPTS))
        logits = outputs["logit_scale"] * outputs["image_emb"] @ outputs["text_emb"].T
        ours = torch.sigmoid(logits + outputs["logit_bias"])
    assert (probs - ours).abs().max() < 1e-5

    back = build_model(_cfg(FULL_VOCAB, init_logit_bias=0.0, init_from=str(out)).model)
    ours_state, their_state = model.state_dict(), back.state_dict()
    assert all(torch.equal(ours_state[k], their_state[k]) for k in ours_state)


def test_siglip_towers_export_as_siglip_model(tmp_path: Path) -> None:
    from transformers import SiglipModel, SiglipProcessor

    cfg = _cfg(_siglip_arch(), init_logit_bias=-10.0, init_logit_scale=2.302585)
    model = _model(cfg)
    out = export_hf(model, cfg, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SiglipModel"]
    siglip = SiglipModel.from_pretrained(str(out), local_files_only=True).eval()
    processor = SiglipProcessor.from_pretrained(str(out), local_files_only=True, backend="pil")
    assert torch.equal(siglip.logit_bias.detach(), model.logit_head.logit_bias.detach().reshape(1))
    assert torch.equal(siglip.logit_scale.detach(), model.logit_head.logit_scale.detach().reshape(1))

    images, texts = _images(), CAPTIONS + PROMPTS
    inputs = processor(text=texts, images=images, padding="max_length", truncation=True, return_tensors="pt")
    ids = build_tokenizer("open_clip", 16)(texts)
    assert torch.equal(inputs["input_ids"], ids)  # whole rows: SigLIP's text model reads the padding too
    pixels = torch.stack([eval_transform(16)(im) for im in images])
    with torch.no_grad():
        theirs = siglip(**inputs)
        outputs = model(pixels, ids)
    assert (F.normalize(theirs.image_embeds, dim=-1) - outputs["image_emb"]).abs().max() < 1e-5
    assert (F.normalize(theirs.text_embeds, dim=-1) - outputs["text_emb"]).abs().max() < 1e-5
    ours = outputs["logit_scale"] * outputs["image_emb"] @ outputs["text_emb"].T + outputs["logit_bias"]
    assert (theirs.logits_per_image - ours).abs().max() < 1e-4
