"""load_eval_model: every format gives the reference library's embeddings (the mismatch checks:
test_eval_model_checks.py). Tiny random-init models, all local."""

import json
from copy import deepcopy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from vlp.config import config_to_yaml, load_config
from vlp.export.open_clip_format import export_safetensors
from vlp.models.dual_encoder import DualEncoder
from vlp.interop.detect import detect_format
from vlp.interop.load import load_eval_model
from vlp.interop.hf_clip import text_attention_mask
from vlp.interop.load import load_eval_model as load_eval_model_reexport
from vlp.interop.vlp_files import load_model
from vlp.checkpoints import save_atomic

ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TEXTS = ["a photo of a cat", "two dogs playing in the snow", "x"]
ATOL = 1e-5


def _images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _pil():
    g = torch.Generator().manual_seed(1)
    return Image.fromarray((torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy())


def _arch(quick_gelu=False, **text):
    arch = deepcopy(ARCH)
    arch["text_cfg"].update(text)
    if quick_gelu:
        arch["quick_gelu"] = True
    return arch


def _clip_state(arch, seed=0):
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in arch.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
    return open_clip.CLIP(**kwargs, quick_gelu=arch.get("quick_gelu", False)).state_dict()


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _save_train_checkpoint(path, state):
    """As open_clip_train saves: {'epoch', 'name', 'state_dict' with 'module.' prefixes}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.fixture()
def registered(monkeypatch):
    """Tiny configs in open_clip's registry under test names (undone after the test)."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vlp-tiny-test", _arch())
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "vlp-tiny-test-quickgelu", _arch(quick_gelu=True))


def _assert_same_as_open_clip(loaded, reference, tokenizer=None):
    reference.eval()
    tokens = (tokenizer or loaded.tokenizer)(TEXTS)
    assert torch.equal(loaded.tokenizer(TEXTS), tokens)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(_images()),
                              reference.encode_image(_images(), normalize=True), atol=ATOL)
        assert torch.allclose(loaded.model.encode_text(tokens), reference.encode_text(tokens, normalize=True), atol=ATOL)


# ---------------------------------------------------------------- formats load like the reference

def test_vlp_run_dir_and_safetensors_export_match_load_model(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = _arch()
    torch.manual_seed(0)
    model = DualEncoder(_arch()).eval()
    save_atomic({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)},
                tmp_path / "run" / "checkpoints" / "final.pt")
    export_safetensors(model, tmp_path / "model.safetensors", config_to_yaml(cfg))
    reference = load_model(tmp_path / "run")
    tokens = reference.tokenizer(TEXTS)
    for spec in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "final.pt", tmp_path / "model.safetensors"):
        assert detect_format(spec) == "vlp"
        loaded = load_eval_model_reexport(spec)
        assert loaded.warnings == [] and loaded.notes == []
        with torch.no_grad():
            assert torch.allclose(loaded.model.encode_image(_images()), reference.model.encode_image(_images()), atol=ATOL)
            assert torch.allclose(loaded.model.encode_text(tokens), reference.model.encode_text(tokens), atol=ATOL)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_open_clip_file_with_name_or_json_config_matches_open_clip(tmp_path, registered, suffix):
    state = _clip_state(_arch())
    path = tmp_path / f"epoch_1{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        _save_train_checkpoint(path, state)
    config_json = _write_json(tmp_path / "tiny.json", _arch())
    reference = open_clip.create_model("vlp-tiny-test", pretrained=str(path))
    for model_config in ("vlp-tiny-test", config_json):
        assert detect_format(path) == "open_clip_file"
        loaded = load_eval_model(path, model_config=model_config)
        _assert_same_as_open_clip(loaded, reference, open_clip.get_tokenizer("vlp-tiny-test"))
        assert loaded.warnings == []
        assert any(n.startswith("activation: undeclared") for n in loaded.notes)


def test_open_clip_local_dir_matches_open_clip(tmp_path):
    directory = tmp_path / "oc"
    directory.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                  "resize_mode": "shortest"}
    _write_json(directory / "open_clip_config.json", {"model_cfg": _arch(quick_gelu=True), "preprocess_cfg": preprocess})
    save_file({k: v.contiguous() for k, v in _clip_state(_arch(quick_gelu=True)).items()},
              str(directory / "open_clip_model.safetensors"))
    assert detect_format(directory) == "open_clip_dir"
    loaded = load_eval_model(directory)
    reference, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    _assert_same_as_open_clip(loaded, reference, open_clip.get_tokenizer(f"local-dir:{directory}"))
    assert torch.equal(loaded.image_transform(_pil()), transform(_pil()))
    assert loaded.warnings == [] and not any("undeclared" in n for n in loaded.notes)
    # the sidecar also serves a bare weights file in that folder, with no model_config given
    assert load_eval_model(directory / "open_clip_model.safetensors").warnings == []


def _hf_clip_dir(path, hidden_act="quick_gelu", eos_token_id=None, pad_token=None, **text):
    """A tiny transformers CLIP folder: byte-level CLIP BPE with no merges (514 ids), context 16."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    if pad_token:
        tokenizer.add_special_tokens({"pad_token": pad_token})
    tokenizer.save_pretrained(str(path))
    text_cfg = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                    bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id)
    text_cfg.update(text)
    config = CLIPConfig(text_config=text_cfg, projection_dim=32,
                        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8, hidden_act=hidden_act))
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(path))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(path))
    return path


def _hf_features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_hf_clip_dir_matches_transformers_and_padding_changes_nothing(tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    path = _hf_clip_dir(tmp_path / "hf-clip")
    assert detect_format(path) == "hf_clip"
    loaded = load_eval_model(path)
    assert loaded.warnings == [] and loaded.notes == []
    reference = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tokens = loaded.tokenizer(TEXTS)
    assert tokens.shape == (3, 16)
    with torch.no_grad():
        expected_image = F.normalize(_hf_features(reference.get_image_features(pixel_values=_images())), dim=-1)
        assert torch.allclose(loaded.model.encode_image(_images()), expected_image, atol=ATOL)
        text_emb = loaded.model.encode_text(tokens)
        for row, text in enumerate(TEXTS):  # each caption alone, unpadded
            ids = hf_tok([text], truncation=True, max_length=16, return_tensors="pt")["input_ids"]
            expected = F.normalize(_hf_features(reference.get_text_features(input_ids=ids)), dim=-1)[0]
            assert torch.allclose(text_emb[row], expected, atol=ATOL)
        padded = hf_tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
        expected = F.normalize(_hf_features(reference.get_text_features(**padded)), dim=-1)
        assert torch.allclose(text_emb, expected, atol=ATOL)
    pixels = CLIPImageProcessor.from_pretrained(str(path))(images=_pil(), return_tensors="pt")["pixel_values"][0]
    ours = loaded.image_transform(_pil())
    assert ours.shape == pixels.shape == (3, 32, 32)
    assert (ours - pixels).abs().mean() < 1e-3  # PIL vs tensor bicubic resampling differ by rounding only


def test_attention_mask_covers_up_to_the_first_eos():
    ids = torch.tensor([[5, 1, 9, 9, 9], [5, 2, 3, 9, 0]])
    assert text_attention_mask(ids, 9).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]


def test_detection_errors_name_the_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_dir"):
        load_eval_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="hf_clip"):
        load_eval_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="open_clip_file"):
        load_eval_model(tmp_path / "notes.txt")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="model_config"):
        load_eval_model(tmp_path / "bare.safetensors")
