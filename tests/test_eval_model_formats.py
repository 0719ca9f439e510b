"""load_eval_model: every format gives the reference library's embeddings; mismatch checks fire on
planted mismatches and stay quiet on clean models. Tiny random-init models, all local."""

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
from vlp.models.consistency import ModelMismatchError, check_model_consistency, pretrained_tag_declarations
from vlp.models.external import detect_format, load_eval_model
from vlp.models.hf_clip import text_attention_mask
from vlp.models.loading import load_eval_model as load_eval_model_reexport
from vlp.models.loading import load_model
from vlp.train.checkpoint import save_atomic

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


# ---------------------------------------------------------------- activation

def test_activation_from_checkpoint_name_vs_model_config_name(tmp_path, registered):
    path = _save_train_checkpoint(tmp_path / "tiny-quickgelu.pt", _clip_state(_arch(quick_gelu=True)))
    with pytest.raises(ModelMismatchError, match="activation: the checkpoint's file name .* declares QuickGELU"):
        load_eval_model(path, model_config="vlp-tiny-test")
    assert load_eval_model(path, model_config="vlp-tiny-test-quickgelu").warnings == []


def test_activation_from_sidecar_config_and_override(tmp_path):
    directory = tmp_path / "oc"
    directory.mkdir()
    _write_json(directory / "open_clip_config.json", {"model_cfg": _arch(quick_gelu=True)})
    torch.save(_clip_state(_arch(quick_gelu=True)), directory / "open_clip_pytorch_model.bin")
    gelu_json = _write_json(tmp_path / "gelu.json", _arch())
    with pytest.raises(ModelMismatchError, match="open_clip_config.json .* declares QuickGELU but the model is built with GELU"):
        load_eval_model(directory / "open_clip_pytorch_model.bin", model_config=gelu_json)
    with pytest.raises(ModelMismatchError, match="activation"):
        load_eval_model(directory, quick_gelu=False)
    loaded = load_eval_model(directory, quick_gelu=False, allow_mismatch=True)
    assert len(loaded.warnings) == 1 and loaded.warnings[0].startswith("activation:")
    assert loaded.model.clip.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "GELU"
    clean = load_eval_model(directory / "open_clip_pytorch_model.bin",
                            model_config=_write_json(tmp_path / "qg.json", _arch(quick_gelu=True)))
    assert clean.warnings == [] and clean.model.clip.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


def test_activation_from_explicit_pretrained_tag(tmp_path, registered, monkeypatch):
    tag = {"quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    for name in ("vlp-tiny-test", "vlp-tiny-test-quickgelu"):
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"openai": tag})
    path = _save_train_checkpoint(tmp_path / "epoch_1.pt", _clip_state(_arch(quick_gelu=True)))
    with pytest.raises(ModelMismatchError, match="pretrained tag vlp-tiny-test/openai declares QuickGELU"):
        load_eval_model(path, model_config="vlp-tiny-test", pretrained_tag="openai")
    loaded = load_eval_model(path, model_config="vlp-tiny-test-quickgelu", pretrained_tag="openai")
    assert loaded.warnings == [] and list(loaded.image_transform.transforms[-1].mean) == [0.5, 0.5, 0.5]


def test_activation_from_open_clip_pretrained_tag_metadata(tmp_path):
    assert pretrained_tag_declarations(None, "ViT-B-32", "openai")[0][1] is True
    assert pretrained_tag_declarations(None, "ViT-B-32", "laion2b_s34b_b79k")[0][1] is False
    problems = check_model_consistency(declared_activation=pretrained_tag_declarations(None, "ViT-B-32", "openai"),
                                       built_quick_gelu=False)
    assert len(problems) == 1 and "ViT-B-32/openai declares QuickGELU" in problems[0]
    # a file in the HF cache folder of the openai tag's hub repo, evaluated with a GELU config
    snapshot = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in _clip_state(_arch()).items()}, str(snapshot / "open_clip_model.safetensors"))
    gelu_json = _write_json(tmp_path / "gelu.json", _arch())
    with pytest.raises(ModelMismatchError, match="pretrained tag ViT-B-32/openai"):
        load_eval_model(snapshot / "open_clip_model.safetensors", model_config=gelu_json)
    assert load_eval_model(snapshot / "open_clip_model.safetensors", model_config=gelu_json, quick_gelu=True).warnings == []
    with pytest.raises(ValueError, match="needs model_config to be an open_clip model name"):
        load_eval_model(snapshot / "open_clip_model.safetensors", model_config=gelu_json, pretrained_tag="openai")


def test_activation_of_vlp_checkpoint_override(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = _arch()
    save_atomic({"model": DualEncoder(_arch()).state_dict(), "step": 1, "config": config_to_yaml(cfg)},
                tmp_path / "run" / "checkpoints" / "final.pt")
    with pytest.raises(ModelMismatchError, match="model.quick_gelu\\) declares GELU but the model is built with QuickGELU"):
        load_eval_model(tmp_path / "run", quick_gelu=True)
    assert load_eval_model(tmp_path / "run", quick_gelu=False).warnings == []
    # DualEncoder builds from model.quick_gelu alone: an arch saying QuickGELU is a disagreement
    cfg.model.arch = _arch(quick_gelu=True)
    save_atomic({"model": DualEncoder(_arch()).state_dict(), "step": 1, "config": config_to_yaml(cfg)},
                tmp_path / "run2" / "checkpoints" / "final.pt")
    with pytest.raises(ModelMismatchError, match="declarations disagree"):
        load_eval_model(tmp_path / "run2")


def test_activation_of_hf_clip(tmp_path):
    path = _hf_clip_dir(tmp_path / "hf")
    with pytest.raises(ModelMismatchError, match="hidden_act='quick_gelu'"):
        load_eval_model(path, quick_gelu=False)
    named = _hf_clip_dir(tmp_path / "clip-vit-tiny-quickgelu", hidden_act="gelu")
    with pytest.raises(ModelMismatchError, match="folder name"):
        load_eval_model(named)
    assert load_eval_model(_hf_clip_dir(tmp_path / "plain", hidden_act="gelu")).warnings == []


# ---------------------------------------------------------------- context length

def test_context_length_of_checkpoint_vs_config(tmp_path):
    path = _save_train_checkpoint(tmp_path / "ctx16.pt", _clip_state(_arch()))
    with pytest.raises(ModelMismatchError, match="positional embedding has 16 rows but the model config builds 20"):
        load_eval_model(path, model_config=_write_json(tmp_path / "ctx20.json", _arch(context_length=20)))
    loaded = load_eval_model(path, model_config=_write_json(tmp_path / "ctx20.json", _arch(context_length=20)),
                             allow_mismatch=True)
    assert any(w.startswith("context length") for w in loaded.warnings)


def test_context_length_of_tokenizer_vs_tower():
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=12)
    problems = check_model_consistency(tokenizer, model_context_length=16, model_token_rows=49408)
    assert len(problems) == 1 and "emits 12 tokens" in problems[0]
    assert check_model_consistency(open_clip.tokenizer.SimpleTokenizer(context_length=16), model_context_length=16,
                                   model_token_rows=49408) == []


# ---------------------------------------------------------------- vocabulary

def test_vocabulary_smaller_than_the_tokenizer(tmp_path):
    small = _arch(vocab_size=1000)
    path = _save_train_checkpoint(tmp_path / "small-vocab.pt", _clip_state(small))
    with pytest.raises(ModelMismatchError, match="vocabulary: the tokenizer has 49408 ids but the token embedding only 1000"):
        load_eval_model(path, model_config=_write_json(tmp_path / "small.json", small))
    # rows that do not fit the config cannot be evaluated even when mismatches are allowed
    with pytest.raises(ModelMismatchError, match="checkpoint's token embedding has 1000 rows but the model config builds 49408"):
        load_eval_model(path, model_config=_write_json(tmp_path / "tiny.json", _arch()), allow_mismatch=True)


def test_vocabulary_much_larger_than_the_tokenizer():
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    problems = check_model_consistency(tokenizer, model_token_rows=250002)
    assert len(problems) == 1 and "far more than the tokenizer's 49408" in problems[0]
    assert check_model_consistency(tokenizer, model_token_rows=49408 + 64) == []  # padded tables are fine


# ---------------------------------------------------------------- end-of-text pooling

class _SwappedTokenizer:
    """open_clip's BPE with start and end ids swapped: end-of-text is no longer the largest id."""

    def __init__(self):
        self.inner = open_clip.tokenizer.SimpleTokenizer(context_length=16)
        self.eot_token_id = self.inner.sot_token_id
        self.vocab_size = self.inner.vocab_size

    def __call__(self, texts):
        tokens = self.inner(texts)
        sot, eot = self.inner.sot_token_id, self.inner.eot_token_id
        return torch.where(tokens == sot, eot, torch.where(tokens == eot, sot, tokens))


def test_eot_pooling_with_argmax_pooled_tower():
    problems = check_model_consistency(_SwappedTokenizer(), model_context_length=16, model_token_rows=49408)
    assert len(problems) == 1 and problems[0].startswith("end-of-text pooling") and "49406" in problems[0]
    assert check_model_consistency(_SwappedTokenizer(), model_token_rows=49408, text_pool="last") == []


def test_eot_pooling_of_hf_clip(tmp_path):
    # legacy HF configs (eos_token_id == 2) pool at argmax: a pad token added after the vocabulary breaks it
    broken = _hf_clip_dir(tmp_path / "legacy-pad", eos_token_id=2, pad_token="<pad>")
    with pytest.raises(ModelMismatchError, match="end-of-text pooling: the text tower pools at argmax"):
        load_eval_model(broken)
    assert load_eval_model(_hf_clip_dir(tmp_path / "legacy", eos_token_id=2)).warnings == []
    # eos pooling at an id the tokenizer never emits pools position 0
    with pytest.raises(ModelMismatchError, match="pools at the first id 7"):
        load_eval_model(_hf_clip_dir(tmp_path / "bad-eos", eos_token_id=7))


def test_skip_parameter_init_is_scoped() -> None:
    from torch import nn

    from vlp.models.external import skip_parameter_init

    before = nn.init.normal_
    weight = torch.zeros(3, 3)
    with pytest.raises(RuntimeError):
        with skip_parameter_init():
            assert nn.init.normal_(weight) is weight and torch.count_nonzero(weight) == 0  # a no-op inside
            raise RuntimeError("boom")
    assert nn.init.normal_ is before
    nn.init.normal_(weight)
    assert torch.count_nonzero(weight) == 9


def test_skip_parameter_init_covers_attention_and_restores_it() -> None:
    """MultiheadAttention initialises through names it imported from torch.nn.init; inside, those
    draw nothing (the RNG does not move), and outside they draw again."""
    from torch import nn

    from vlp.models.external import skip_parameter_init

    torch.manual_seed(0)
    state = torch.get_rng_state()
    with skip_parameter_init():
        nn.MultiheadAttention(8, 2)
    assert torch.equal(torch.get_rng_state(), state)
    # another thread (the main one, while a model loads in the background) still initialises
    import threading

    other = torch.zeros(4)
    with skip_parameter_init():
        worker = threading.Thread(target=lambda: nn.init.ones_(other))
        worker.start()
        worker.join()
        assert torch.equal(nn.init.ones_(torch.zeros(2)), torch.zeros(2))  # skipped in this thread
    assert torch.equal(other, torch.ones(4))
    attention = nn.MultiheadAttention(8, 2)
    assert not torch.equal(torch.get_rng_state(), state)
    assert attention.in_proj_weight.abs().max() > 0 and torch.count_nonzero(attention.in_proj_bias) == 0


def test_matching_state_is_copied_directly_and_other_layouts_go_through_open_clip(tmp_path, registered,
                                                                                  monkeypatch):
    """A checkpoint with the model's exact keys and shapes is loaded from the one read of the
    file; one open_clip must convert (here a logit_scale saved as shape [1]) still goes through
    open_clip.load_checkpoint. Both give open_clip's own model."""
    calls = []
    real = open_clip.load_checkpoint
    monkeypatch.setattr(open_clip, "load_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    state = _clip_state(_arch())
    plain = _save_train_checkpoint(tmp_path / "plain.pt", state)
    reshaped = _save_train_checkpoint(tmp_path / "reshaped.pt", {**state, "logit_scale": state["logit_scale"].reshape(1)})
    reference = open_clip.create_model("vlp-tiny-test", pretrained=str(plain))
    _assert_same_as_open_clip(load_eval_model(plain, model_config="vlp-tiny-test"), reference)
    assert calls == []
    _assert_same_as_open_clip(load_eval_model(reshaped, model_config="vlp-tiny-test"), reference)
    assert calls == [1]
