"""model.init_from / init_image_from / init_text_from: open_clip files and local-dirs, transformers
CLIP folders and our own checkpoints and exports give the weights (and features) of their source."""

import copy
import json
import os
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from tiny_arch import TINY_ARCH  # noqa: E402

from vlp.config import Config, ConfigError, ModelConfig, config_to_yaml  # noqa: E402
from vlp.export.open_clip_format import export_safetensors  # noqa: E402
from vlp.models.factory import build_model  # noqa: E402
from vlp.models.open_clip_layout import to_open_clip_state  # noqa: E402

ARCH = copy.deepcopy(TINY_ARCH)
ARCH["vision_cfg"]["layers"] = ARCH["text_cfg"]["layers"] = 2
EOT = 63  # the largest id: argmax pooling finds it, as transformers' pooling at eos_token_id does


def _images():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def _texts():
    return torch.tensor([[62, 5, 9, EOT, 0, 0, 0, 0], [62, 7, EOT, 0, 0, 0, 0, 0], [62, 1, 2, 3, 4, 5, 6, EOT]])


def _open_clip_model(arch=ARCH, seed=1):
    torch.manual_seed(seed)
    return open_clip.CLIP(**arch).eval()


def _local_dir(tmp_path, arch=ARCH, seed=1):
    folder = tmp_path / "oc"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": {}}))
    state = {k: v.contiguous() for k, v in _open_clip_model(arch, seed).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def _ours(**options):
    return build_model(ModelConfig(arch=ARCH, **options)).eval()


def _assert_same_features(ours, reference):
    """Our model and an open_clip model give the same embeddings: open_clip's forward over our modules bitwise."""
    with torch.no_grad():
        clip = ours.clip
        assert torch.equal(clip.encode_image(_images()), reference.encode_image(_images()))
        assert torch.equal(clip.encode_text(_texts()), reference.encode_text(_texts()))
        expected = F.normalize(reference.encode_image(_images()), dim=-1)
        assert torch.allclose(ours.encode_image(_images()), expected, atol=1e-6)
        assert torch.allclose(ours.encode_text(_texts()), F.normalize(reference.encode_text(_texts()), dim=-1), atol=1e-6)


@pytest.mark.parametrize("form", ["pt", "training_pt", "safetensors", "local_dir"])
def test_open_clip_checkpoints_reproduce_open_clip(tmp_path, form):
    folder = _local_dir(tmp_path)
    reference = open_clip.create_model(f"local-dir:{folder}", device="cpu").eval()  # open_clip's own load
    state = reference.state_dict()
    path = {"local_dir": folder, "safetensors": folder / "open_clip_model.safetensors",
            "pt": tmp_path / "epoch_1.pt", "training_pt": tmp_path / "epoch_2.pt"}[form]
    if form == "pt":
        torch.save(state, path)
    elif form == "training_pt":  # open_clip_train's checkpoint: under state_dict, with DDP's module. prefixes
        torch.save({"epoch": 2, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    ours = _ours(init_from=str(path))
    theirs = to_open_clip_state(ours)
    assert theirs.keys() == state.keys() and all(torch.equal(theirs[k], state[k]) for k in state)
    _assert_same_features(ours, reference)


def _hf_clip_dir(path, hidden_act="gelu"):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=8, hidden_act=hidden_act, bos_token_id=62, eos_token_id=EOT, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=8, hidden_act=hidden_act)
    torch.manual_seed(3)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(str(path))
    return model


def _hf_features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_a_transformers_clip_folder_gives_transformers_embeddings(tmp_path, act):
    hf = _hf_clip_dir(tmp_path / "hf", act)
    ours = _ours(init_from=str(tmp_path / "hf"), quick_gelu=act == "quick_gelu")
    with torch.no_grad():
        image = F.normalize(_hf_features(hf.get_image_features(pixel_values=_images())), dim=-1)
        text = F.normalize(_hf_features(hf.get_text_features(input_ids=_texts())), dim=-1)
        assert torch.allclose(ours.encode_image(_images()), image, atol=1e-5)
        assert torch.allclose(ours.encode_text(_texts()), text, atol=1e-5)
    assert torch.equal(ours.logit_head.logit_scale.detach(), hf.logit_scale.detach())


def test_a_quick_gelu_mismatch_is_refused_naming_what_to_set(tmp_path):
    _hf_clip_dir(tmp_path / "hf", "quick_gelu")
    with pytest.raises(ConfigError, match=r"model.init_from: .*QuickGELU \(config.json text_config.hidden_act="
                                          r"'quick_gelu'\) but the model is built with GELU: set model.quick_gelu=true"):
        _ours(init_from=str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="model.init_image_from: .*vision_config.*set model.quick_gelu=true"):
        _ours(init_image_from=str(tmp_path / "hf"))
    folder = _local_dir(tmp_path, {**ARCH, "quick_gelu": True})
    with pytest.raises(ConfigError, match=r"model.init_from: .*model_cfg.quick_gelu\)\) but the model is built with GELU"):
        _ours(init_from=str(folder))
    assert _ours(init_from=str(folder), quick_gelu=True).quick_gelu


def _our_checkpoint(tmp_path, quick_gelu=False, seed=4):
    cfg = Config(model=ModelConfig(arch=ARCH, quick_gelu=quick_gelu))
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    path = tmp_path / f"ckpt-{quick_gelu}.pt"
    torch.save({"config": config_to_yaml(cfg), "model": model.state_dict(), "step": 3}, path)
    return model, cfg, path


def _assert_equal_states(a, b, prefix=""):
    sa = {k: v for k, v in a.state_dict().items() if k.startswith(prefix)}
    sb = {k: v for k, v in b.state_dict().items() if k.startswith(prefix)}
    assert sa and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_our_checkpoint_run_dir_and_export_give_their_weights(tmp_path):
    source, cfg, path = _our_checkpoint(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final.pt").write_bytes(path.read_bytes())
    exported = export_safetensors(source, tmp_path / "model.safetensors", config_to_yaml(cfg))
    with safe_open(str(exported), framework="pt") as f:
        assert f.metadata()["vlp_quick_gelu"] == "false"
    for spec in (path, run, exported):
        _assert_equal_states(_ours(init_from=str(spec)), source)
    _assert_equal_states(_ours(pretrained=str(path)), source)  # the older name is an alias
    with pytest.raises(ConfigError, match="model.pretrained: is an alias of model.init_from"):
        ModelConfig(arch=ARCH, pretrained=str(path), init_from=str(exported))


def test_our_files_record_the_activation(tmp_path):
    source, cfg, path = _our_checkpoint(tmp_path, quick_gelu=True)
    exported = export_safetensors(source, tmp_path / "q.safetensors", config_to_yaml(cfg))
    with safe_open(str(exported), framework="pt") as f:
        assert f.metadata()["vlp_quick_gelu"] == "true"
    with pytest.raises(ConfigError, match=r"model.init_from: .*QuickGELU \(its config \(model.quick_gelu\)\).*"
                                          "set model.quick_gelu=true"):
        _ours(init_from=str(path))
    with pytest.raises(ConfigError, match=r"model.init_text_from: .*QuickGELU \(its metadata vlp_quick_gelu\)"):
        _ours(init_text_from=str(exported))
    _assert_equal_states(_ours(init_from=str(exported), quick_gelu=True), source)


def test_init_image_from_loads_the_image_tower_only(tmp_path):
    source, _, path = _our_checkpoint(tmp_path, seed=4)
    torch.manual_seed(9)
    fresh = _ours()
    torch.manual_seed(9)
    mixed = _ours(init_image_from=str(path))
    _assert_equal_states(mixed, source, "image_tower.")
    _assert_equal_states(mixed, fresh, "text_tower.")  # its random init, bitwise
    _assert_equal_states(mixed, fresh, "logit_head.")
    assert not torch.equal(fresh.image_tower.visual.proj, source.image_tower.visual.proj)
    torch.manual_seed(9)
    _assert_equal_states(_ours(init_text_from=str(path)), source, "text_tower.")


def test_a_tower_that_does_not_fit_is_refused_listing_names_and_shapes(tmp_path):
    wide = copy.deepcopy(ARCH)
    wide["vision_cfg"]["width"] = 64
    folder = _local_dir(tmp_path, wide)
    with pytest.raises(ConfigError, match=r"model.init_image_from: the image tower of .* does not fit model.arch .*"
                                          r"image_tower.visual.conv1.weight: \(64, 3, 8, 8\) in the source, "
                                          r"\(32, 3, 8, 8\) in the model"):
        _ours(init_image_from=str(folder))
    deeper = copy.deepcopy(ARCH)
    deeper["text_cfg"]["layers"] = 3
    with pytest.raises(ConfigError, match=r"model.init_text_from: .*text_tower.transformer.resblocks.2.ln_1.weight "
                                          r"\(32,\): in the source, not in the model"):
        _ours(init_text_from=str(_local_dir(tmp_path / "deeper", deeper)))
    _ours(init_text_from=str(folder))  # the text tower of the same file fits


def test_missing_and_unknown_sources_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.init_from: not found: .*nowhere.pt \(a local file or folder"):
        _ours(init_from=str(tmp_path / "nowhere.pt"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"model.init_text_from: .*notes.txt: not a model in a known format"):
        _ours(init_text_from=str(tmp_path / "notes.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="model.init_image_from: .*folder: a folder in no known format"):
        _ours(init_image_from=str(tmp_path / "folder"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(ConfigError, match=r"model.init_from: .*weights_only=True"):
        _ours(init_from=str(tmp_path / "module.pt"))
    with pytest.raises(ConfigError, match="model.init_from: must name a local file"):
        ModelConfig(arch=ARCH, init_from=" ")


def test_a_saved_config_still_loads_when_its_init_file_is_gone(tmp_path):
    model = build_model(ModelConfig(arch=ARCH, init_from=str(tmp_path / "gone.pt")), for_checkpoint=True)
    assert model.image_size == 16  # evaluation and export rebuild from the checkpoint, not the init file


def test_a_truncated_or_empty_safetensors_names_the_key_and_file(tmp_path):
    folder = _local_dir(tmp_path)
    data = (folder / "open_clip_model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("cut", "empty"):
        with pytest.raises(ConfigError, match=rf"model.init_image_from: .*{name}.safetensors cannot be read as safetensors"):
            _ours(init_image_from=str(tmp_path / f"{name}.safetensors"))
    _hf_clip_dir(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"model.init_from: .*hf/model.safetensors cannot be read as safetensors"):
        _ours(init_from=str(tmp_path / "hf"))


def test_malformed_json_beside_the_weights_names_the_key_and_file(tmp_path):
    folder = _local_dir(tmp_path)
    (folder / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"model.init_from: .*oc/open_clip_config.json is not readable JSON"):
        _ours(init_from=str(folder))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "clip",')
    with pytest.raises(ConfigError, match=r"model.init_text_from: .*hf/config.json is not readable JSON"):
        _ours(init_text_from=str(tmp_path / "hf"))


def test_a_transformers_config_without_hidden_act_means_quick_gelu_and_others_are_refused(tmp_path):
    _hf_clip_dir(tmp_path / "hf", "quick_gelu")
    config = tmp_path / "hf" / "config.json"
    raw = json.loads(config.read_text())
    for section in ("text_config", "vision_config"):
        raw[section].pop("hidden_act")  # transformers' default, which a trimmed config.json leaves out
    config.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"model.init_from: .*QuickGELU .*but the model is built with GELU"):
        _ours(init_from=str(tmp_path / "hf"))
    assert _ours(init_from=str(tmp_path / "hf"), quick_gelu=True).quick_gelu
    raw["vision_config"]["hidden_act"] = "gelu_new"
    config.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"model.init_image_from: .*vision_config.hidden_act='gelu_new'"):
        _ours(init_image_from=str(tmp_path / "hf"), quick_gelu=True)


def test_a_logit_bias_the_model_lacks_is_reported_not_dropped_silently(tmp_path, caplog):
    torch.manual_seed(1)
    torch.save(open_clip.CLIP(**ARCH, init_logit_bias=-10.0).state_dict(), tmp_path / "siglip.pt")
    with caplog.at_level("WARNING", logger="vlp.models.init_from"):
        assert _ours(init_from=str(tmp_path / "siglip.pt")).logit_head.logit_bias is None
    assert "logit_head.logit_bias, which the model does not have (set model.init_logit_bias" in caplog.text
    biased = _ours(init_from=str(tmp_path / "siglip.pt"), init_logit_bias=0.0)
    assert biased.logit_head.logit_bias.item() == -10.0
