"""Config loading: precedence, validation messages, round trip."""

import math

import pytest

from vlp.config import ConfigError, config_from_yaml, config_to_yaml, load_config

TINY = "configs/tiny.yaml"


def test_yaml_overrides_defaults_and_cli_overrides_yaml():
    cfg = load_config(TINY, ["optim.lr=0.002", "train.steps=7"])
    assert cfg.optim.lr == 0.002            # CLI over YAML (1e-3)
    assert cfg.train.steps == 7
    assert cfg.train.batch_size == 128      # from YAML (default 256)
    assert cfg.optim.betas == [0.9, 0.98]   # default, untouched
    assert cfg.model.arch["vision_cfg"]["width"] == 192
    assert cfg.model.init_logit_scale == pytest.approx(math.log(1 / 0.07))


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr: unknown config key; did you mean 'optim.lr'?"),
    ("trian.steps=3", "trian: unknown config key; did you mean 'train'?"),
    ("train.batchsize=3", "did you mean 'train.batch_size'?"),
])
def test_unknown_key_names_the_nearest_valid_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace(".", r"\.")):
        load_config(TINY, [override])


@pytest.mark.parametrize("override, message", [
    ("train.steps=abc", "train.steps"),
    ("optim.lr=-1", "optim.lr: must be > 0"),
    ("train.batch_size=0", "train.batch_size: must be > 0"),
    ("optim.schedule=step", "valid choices: cosine, linear, constant"),
    ("train.precision=fp8", "valid choices: fp32, bf16, fp16"),
    ("data.resize_scale=[0.9,0.5]", "data.resize_scale"),
    ("model.arch=ViT-B-33", "did you mean ViT-B-32"),
    ("model.init_logit_scale=5.0", "exceeds model.max_logit_scale"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_unknown_key_in_yaml_file_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown config key"):
        load_config(path)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("configs/nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(TINY, ["train.steps"])


def test_resolved_yaml_round_trips():
    cfg = load_config(TINY, ["train.seed=3", "loss.terms=[{name: clip, weight: 0.5, options: {label_smoothing: 0.1}}]"])
    again = config_from_yaml(config_to_yaml(cfg))
    assert again == cfg
    assert again.loss.terms[0].options == {"label_smoothing": 0.1}
