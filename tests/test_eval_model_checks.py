"""load_eval_model's mismatch checks: activation, context length, vocabulary and end-of-text pooling fire on
planted mismatches and stay quiet on clean models; fast parameter init. Tiny random-init models, all local."""

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from test_eval_model_formats import (_arch, _assert_same_as_open_clip, _clip_state, _hf_clip_dir,
                                     _save_train_checkpoint, _write_json, registered)  # noqa: F401  (a fixture)
from vlp.config import config_to_yaml, load_config
from vlp.errors import ModelMismatchError
from vlp.interop.consistency import check_model_consistency, pretrained_tag_declarations
from vlp.models.dual_encoder import DualEncoder
from vlp.interop.load import load_eval_model
from vlp.checkpoints import save_atomic


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

    from vlp.interop.fast_init import skip_parameter_init

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

    from vlp.interop.fast_init import skip_parameter_init

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
