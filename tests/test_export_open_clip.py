"""The open_clip export against open_clip itself: weights bit-identical through open_clip -> ours ->
open_clip, the same embeddings, zero-shot predictions and preprocessing in open_clip as here, CoCa
as open_clip's CoCa (same caption logits), the registry name that loads the weights by name, and
parts open_clip cannot express refused before anything is written."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tiny_arch import TINY_ARCH
from vlp.config import ModelConfig, load_config
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import eval_transform
from vlp.export.open_clip_arch import check_open_clip_layout, open_clip_model_cfg, open_clip_state
from vlp.export.open_clip_format import OPEN_CLIP_BIN, OPEN_CLIP_WEIGHTS, export_open_clip, registry_name
from vlp.export.open_clip_registry import registry_names
from vlp.export.staging import UnsupportedExport
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import build_model
from vlp.models.towers.base import ImageTower
from vlp.models.towers.open_clip_text import OpenCLIPCustomTextTower

ROOT = Path(__file__).resolve().parents[1]
# real open_clip BPE ids (vocab 49408), a 32-pixel image, two blocks a tower
PARITY_ARCH = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
COCA_VISION = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
               "attentional_pool": True, "attn_pooler_queries": 5, "attn_pooler_heads": 2}
COCA_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
IDS = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0], [62, 3, 4, 5, 63, 0, 0, 0]])


def _load(folder: Path):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess


def _assert_same_state(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    unequal = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not unequal, f"not bit-identical: {unequal[:5]}"


# ---------------------------------------------------------------- open_clip -> ours -> open_clip

def _file_source(folder: Path, quick_gelu: bool) -> tuple:
    """An open_clip CLIP at random init saved as a bare state dict (.pt) or, with QuickGELU, as
    safetensors with open_clip_config.json beside it declaring the activation: (model, path, arch,
    the weights as saved)."""
    torch.manual_seed(1)  # not the seed ours is built with: the weights must come from the file
    clip = open_clip.CLIP(**TINY_ARCH, quick_gelu=quick_gelu)
    with torch.no_grad():
        clip.logit_scale.fill_(3.25)
    folder.mkdir()
    if quick_gelu:
        path = folder / "weights.safetensors"
        save_file(clip.state_dict(), str(path))
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_ARCH, "quick_gelu": True}}))
        return clip, path, TINY_ARCH, load_file(str(path))
    path = folder / "weights.pt"
    torch.save(clip.state_dict(), path)
    return clip, path, TINY_ARCH, torch.load(path, weights_only=True)


def _local_dir_source(folder: Path, quick_gelu: bool) -> tuple:
    """A CustomTextCLIP saved by open_clip's own save_for_hf (a local-dir: config, .safetensors and .bin)."""
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_for_hf
    from open_clip.transform import PreprocessCfg

    arch = {**TINY_ARCH, "custom_text": True}
    torch.manual_seed(1)
    clip = open_clip.CustomTextCLIP(**TINY_ARCH, quick_gelu=quick_gelu)
    with torch.no_grad():
        clip.logit_scale.fill_(3.25)
    set_model_preprocess_cfg(clip, asdict(PreprocessCfg(size=16)))
    no_files = type("NoFiles", (), {"save_pretrained": lambda self, where: None})()
    save_for_hf(clip, no_files, {**arch, "quick_gelu": quick_gelu}, str(folder))
    return clip, folder, arch, load_file(str(folder / "open_clip_model.safetensors"))


@pytest.mark.parametrize("source,quick_gelu", [("file", False), ("file", True), ("local-dir", False)])
def test_open_clip_to_ours_to_open_clip_is_bit_identical(source: str, quick_gelu: bool, tmp_path: Path) -> None:
    make = _file_source if source == "file" else _local_dir_source
    clip, path, arch, expected = make(tmp_path / "source", quick_gelu)
    torch.manual_seed(0)
    ours = build_model(ModelConfig(arch=arch, quick_gelu=quick_gelu, init_from=str(path))).eval()
    assert ours.logit_head.logit_scale.item() == 3.25
    out = export_open_clip(ours, tmp_path / "export", pytorch_bin=True)
    loaded, _ = _load(out)
    _assert_same_state(loaded.state_dict(), expected)
    _assert_same_state(load_file(str(out / OPEN_CLIP_WEIGHTS)), expected)
    _assert_same_state(torch.load(out / OPEN_CLIP_BIN, weights_only=True), expected)
    assert type(loaded) is type(clip)
    text_mlp = (loaded.text.transformer if source == "local-dir" else loaded.transformer).resblocks[0].mlp
    assert (type(text_mlp.gelu).__name__ == "QuickGELU") == quick_gelu
    bin_only = tmp_path / "bin_only"  # open_clip reads the .bin alone as well
    bin_only.mkdir()
    for name in ("open_clip_config.json", OPEN_CLIP_BIN):
        (bin_only / name).write_bytes((out / name).read_bytes())
    _assert_same_state(_load(bin_only)[0].state_dict(), expected)


# ---------------------------------------------------------------- embeddings, zero-shot, preprocessing

def _pil_images() -> list:
    rng = np.random.default_rng(0)
    sizes = [(37, 23), (50, 64), (19, 19), (120, 41), (33, 90)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    images.append(Image.fromarray(rng.integers(0, 256, (40, 28), dtype=np.uint8), mode="L"))
    images.append(Image.fromarray(rng.integers(0, 256, (26, 45, 4), dtype=np.uint8), mode="RGBA"))
    colours = np.random.default_rng(0).integers(0, 256, (5, 3))
    return images + [Image.new("RGB", (30 + 7 * i, 45 - 3 * i), tuple(int(c) for c in colour))
                     for i, colour in enumerate(colours)]


CLASSES = ("cat", "dog", "red car", "tree", "snowy mountain")
TEMPLATES = ("a photo of a {}.", "a blurry picture of the {}", "{}")


def _zero_shot(encode_image, encode_text, pixels: torch.Tensor, tokenize) -> tuple:
    """(image embeddings, text embeddings of every prompt, class scores [images, classes]): the
    CLIP_benchmark classifier (templates averaged per class, normalised)."""
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    ids = tokenize(prompts)
    images, texts = encode_image(pixels), encode_text(ids)
    classifier = torch.nn.functional.normalize(texts.view(len(CLASSES), len(TEMPLATES), -1).mean(1), dim=-1)
    return images, texts, images @ classifier.T, ids


def test_embeddings_zero_shot_and_preprocessing_equal_open_clips(tmp_path: Path) -> None:
    torch.manual_seed(5)  # a random model whose zero-shot predictions differ between these images
    model = DualEncoder(PARITY_ARCH).eval()
    out = export_open_clip(model, tmp_path / "oc")
    preprocess_cfg = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess_cfg == {"size": 32, "mode": "RGB", "mean": list(open_clip.OPENAI_DATASET_MEAN),
                              "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                              "resize_mode": "shortest", "fill_color": 0}
    loaded, preprocess = _load(out)
    images = _pil_images()
    ours_pixels = torch.stack([eval_transform(model.image_size)(im) for im in images])
    theirs_pixels = torch.stack([preprocess(im) for im in images])
    assert ours_pixels.shape == (12, 3, 32, 32)
    assert (ours_pixels - theirs_pixels).abs().max().item() == 0.0
    ours_tok, theirs_tok = build_tokenizer("open_clip", model.context_length), open_clip.get_tokenizer(f"local-dir:{out}")
    with torch.no_grad():
        ours = _zero_shot(model.encode_image, model.encode_text, ours_pixels, ours_tok)
        theirs = _zero_shot(lambda x: loaded.encode_image(x, normalize=True),
                            lambda t: loaded.encode_text(t, normalize=True), theirs_pixels, theirs_tok)
    assert torch.equal(ours[3], theirs[3])  # the same ids
    for name, a, b in zip(("image", "text", "scores"), ours[:3], theirs[:3]):
        assert (a - b).abs().max().item() <= 1e-5, name
    predictions = ours[2].argmax(1)
    assert torch.equal(predictions, theirs[2].argmax(1))
    assert len(set(predictions.tolist())) >= 3  # not one class for every image: the comparison means something


@pytest.mark.parametrize("custom_text", [False, True])
def test_the_text_layout_is_written_as_ours(custom_text: bool, tmp_path: Path) -> None:
    """The export states the text layout its weights have: CustomTextCLIP's text.* for custom_text:
    true, CLIP's parts for false (vlp and open_clip read the key alike)."""
    torch.manual_seed(0)
    model = DualEncoder({**TINY_ARCH, "custom_text": custom_text}).eval()
    out = export_open_clip(model, tmp_path / "oc")
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["custom_text"] is custom_text
    loaded, _ = _load(out)
    assert type(loaded) is (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)
    _assert_same_state(loaded.state_dict(), open_clip_state(model))


# ---------------------------------------------------------------- registry names

def test_registry_names_compare_architectures_not_spellings() -> None:
    b32 = open_clip.get_model_config("ViT-B-32")
    assert registry_names(b32) == ["ViT-B-32"]
    assert registry_names({**b32, "quick_gelu": True}) == ["ViT-B-32-quickgelu"]
    spelled_out = {**b32, "vision_cfg": {**b32["vision_cfg"], "mlp_ratio": 4.0, "patch_dropout": 0.5},
                   "text_cfg": {**b32["text_cfg"], "pool_type": "argmax", "output_tokens": False}}
    assert registry_names(spelled_out) == ["ViT-B-32"]
    rn50 = {k: v for k, v in open_clip.get_model_config("RN50").items()}
    rn50["vision_cfg"] = {k: v for k, v in rn50["vision_cfg"].items() if k != "patch_size"}
    assert registry_names(rn50) == ["RN50"]
    assert registry_names({**b32, "init_logit_bias": -10.0}) == []  # a bias parameter open_clip's ViT-B-32 lacks
    assert registry_names({**b32, "embed_dim": 256}) == []
    assert registry_names(TINY_ARCH) == []


def test_a_registry_architecture_loads_by_name_with_the_exported_weights(tmp_path: Path) -> None:
    name = "ViT-S-32-alt"  # the smallest open_clip ViT config (~40M parameters)
    torch.manual_seed(0)
    model = DualEncoder(name).eval()
    assert registry_name(model) == name and registry_name(DualEncoder(TINY_ARCH)) is None
    out = export_open_clip(model, tmp_path / "oc")
    assert json.loads((out / "open_clip_config.json").read_text())["vlp"] == {"registry_name": name}
    by_name, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(out / OPEN_CLIP_WEIGHTS))
    _assert_same_state(by_name.state_dict(), open_clip_state(model))
    image = _pil_images()[3]
    assert torch.equal(preprocess(image), eval_transform(model.image_size)(image))
    pixels = preprocess(image).unsqueeze(0)
    with torch.no_grad():
        assert (by_name.eval().encode_image(pixels, normalize=True) - model.encode_image(pixels)).abs().max() <= 1e-5


def test_the_coca_recipe_is_open_clips_coca_vit_b32() -> None:
    cfg = load_config(str(ROOT / "configs" / "coca_vit_b32.yaml"))
    with torch.device("meta"):  # shapes alone: no memory, no init
        model = build_model(cfg.model)
    assert registry_name(model) == "coca_ViT-B-32"
    check_open_clip_layout(open_clip_model_cfg(model), open_clip_state(model))


# ---------------------------------------------------------------- CoCa

@pytest.mark.parametrize("custom_text,quick_gelu", [(True, False), (False, True)])
def test_coca_exports_as_open_clips_coca_with_the_same_embeddings_and_caption_logits(
        custom_text: bool, quick_gelu: bool, tmp_path: Path) -> None:
    """custom_text with embed_cls (open_clip's CoCa layout), and CLIP's text parts (pooled at the
    end token), which open_clip's CoCa holds as text.*."""
    text = {**COCA_TEXT, "embed_cls": True} if custom_text else COCA_TEXT
    arch = {"embed_dim": 32, "vision_cfg": COCA_VISION, "text_cfg": text, **({"custom_text": True} if custom_text else {})}
    torch.manual_seed(0)
    model = DualEncoder(arch, quick_gelu=quick_gelu, heads={"caption": {}}).eval()
    assert isinstance(model.text_tower, OpenCLIPCustomTextTower) == custom_text
    out = export_open_clip(model, tmp_path / "coca")
    model_cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert model_cfg["multimodal_cfg"] == {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1,
                                           "attn_pooler_heads": 2}
    coca, _ = _load(out)
    assert type(coca) is open_clip.CoCa
    _assert_same_state(coca.state_dict(), load_file(str(out / OPEN_CLIP_WEIGHTS)))
    decoder_keys = [k for k in coca.state_dict() if k.startswith("text_decoder.")]
    assert decoder_keys and all(torch.equal(coca.state_dict()[k], model.state_dict()["heads.caption." + k])
                                for k in decoder_keys)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = coca(images, IDS), model(images, IDS)
    length = got["caption_logits"].shape[1]
    assert length == 4
    assert (got["caption_logits"] - expected["logits"][:, :length]).abs().max().item() <= 1e-5
    assert (got["image_emb"] - expected["image_features"]).abs().max().item() <= 1e-5
    assert (got["text_emb"] - expected["text_features"]).abs().max().item() <= 1e-5
    assert (type(coca.text_decoder.resblocks[0].mlp.gelu).__name__ == "QuickGELU") == quick_gelu


# ---------------------------------------------------------------- refused before writing

class _MeanColour(ImageTower):
    """An image tower open_clip has no counterpart for."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 16)
        self.name = "mean_colour"

    @property
    def image_size(self) -> int:
        return 16

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels.mean((2, 3)))


def _custom_tower_model() -> DualEncoder:
    plain = DualEncoder(TINY_ARCH)
    return DualEncoder.from_parts(TINY_ARCH, _MeanColour(), plain.text_tower, plain.logit_head)


POOLED = {**TINY_ARCH, "vision_cfg": COCA_VISION}
REFUSED = {
    "own pooler": (lambda: DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}}), r"^heads\.caption\.attn_pool: "),
    "text width": (lambda: DualEncoder({**POOLED, "embed_dim": 48}, heads={"caption": {"width": 48, "heads": 4}}),
                   r"^heads\.caption\.text_token_proj: the decoder width 48 differs from the text tower's 32"),
    "image width": (lambda: DualEncoder(POOLED, heads={"caption": {}}),
                    r"^heads\.caption\.image_token_proj: the pooled image tokens \(16 wide"),
    "mlp ratio": (lambda: DualEncoder({**POOLED, "embed_dim": 32}, heads={"caption": {"mlp_ratio": 2.0}}),
                  r"^heads\.caption\.text_decoder: MLP ratio 2, but open_clip's CoCa .* 4"),
    "prototypes": (lambda: DualEncoder(TINY_ARCH, heads={"prototypes": {"num_prototypes": 8}}),
                   r"^heads\.prototypes: open_clip has no counterpart for the PrototypeHead"),
    "image tower": (_custom_tower_model, r"^image_tower: .* image tower 'mean_colour'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_part_open_clip_cannot_express_is_named_before_anything_is_written(case: str, tmp_path: Path) -> None:
    build, message = REFUSED[case]
    model = build()
    with pytest.raises(UnsupportedExport, match=message):
        export_open_clip(model, tmp_path / "out" / "oc")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnsupportedExport, match=message):
        registry_name(model)


def test_an_open_clip_coca_round_trips_through_ours_bit_identical(tmp_path: Path) -> None:
    """open_clip's CoCa -> model.init_from (its text_decoder is our caption head) -> export -> open_clip."""
    arch = {"embed_dim": 32, "vision_cfg": COCA_VISION, "text_cfg": {**COCA_TEXT, "embed_cls": True}, "custom_text": True}
    multimodal = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1, "attn_pooler_heads": 2}
    torch.manual_seed(3)
    coca = open_clip.CoCa(embed_dim=32, multimodal_cfg=multimodal, text_cfg=arch["text_cfg"], vision_cfg=COCA_VISION)
    path = tmp_path / "coca.pt"
    torch.save(coca.state_dict(), path)
    torch.manual_seed(0)
    ours = build_model(ModelConfig(arch=arch, heads={"caption": {}}, init_from=str(path))).eval()
    loaded, _ = _load(export_open_clip(ours, tmp_path / "export"))
    assert type(loaded) is open_clip.CoCa
    _assert_same_state(loaded.state_dict(), coca.state_dict())
