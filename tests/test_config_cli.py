"""Config ergonomics: list items by index, string values kept as typed, every key documented in
--help, the resolved config printed by --print-config."""

import dataclasses
import typing

import pytest

from vlp.config import Config, ConfigError, config_from_yaml, load_config
from vlp.train import cli

TINY = "configs/tiny.yaml"
SIGLIP = ["model.init_logit_bias=-10", "model.init_logit_scale=2.302585"]


def test_list_items_are_addressed_by_index_in_both_spellings():
    cfg = load_config(TINY, [*SIGLIP, "loss.terms.0.name=siglip", "loss.terms[0].weight=0.5",
                             "loss.terms.1.name=clip", "loss.terms[1].options.label_smoothing=0.1"])
    assert [(t.name, t.weight, t.options) for t in cfg.loss.terms] == [
        ("siglip", 0.5, {}), ("clip", 1.0, {"label_smoothing": 0.1})]


@pytest.mark.parametrize("override, message", [
    ("loss.terms.0.weight=abc", r"loss\.terms\[0\]\.weight: Value 'abc'"),
    ("loss.terms[0].nme=1", r"loss\.terms\[0\]\.nme: unknown config key; did you mean 'loss\.terms\[0\]\.name'\?"),
    ("loss.terms.3.weight=1", r"loss\.terms\[3\]: index out of range: the list has 1 item"),
    ("loss.terms.0.name=nope", r"loss\.terms\[0\]\.name: unknown objective 'nope'"),
])
def test_errors_inside_a_list_name_the_full_path(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_string_fields_keep_the_text_as_typed():
    assert load_config(TINY, ["train.precision=no"]).train.precision == "fp32"
    assert load_config(TINY, ["train.precision=fp32"]).train.precision == "fp32"
    assert load_config(TINY, ["train.run_name=2024"]).train.run_name == "2024"
    assert load_config(TINY, ["train.run_name=off"]).train.run_name == "off"
    assert load_config(TINY, ["eval.builtin_root=null"]).eval.builtin_root is None
    assert config_from_yaml("train:\n  precision: no\n").train.precision == "fp32"  # YAML 1.1 reads `no` as false


def test_every_key_has_a_doc_and_help_lists_each_with_type_and_default(capsys):
    from vlp.config_docs import iter_keys

    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    keys = list(iter_keys(Config()))
    assert len(keys) > 40
    for key, type_name, default, doc in keys:
        assert doc, f"{key} has no doc string in vlp/config.py"
        assert f"  {key} ({type_name}, default {default})" in text, key
        assert doc in text.replace("\n      ", " "), key
    assert "  train.precision (str, default 'fp32')" in text
    assert "loss.terms[N].weight (float, default 1.0)" in text
    assert "--print-config" in text


def test_each_section_dataclass_field_is_documented():
    from vlp.config_docs import field_docs

    def classes(tp, seen):
        tp = typing.get_args(tp)[0] if typing.get_origin(tp) in (list, typing.Union) else tp
        if dataclasses.is_dataclass(tp) and tp not in seen:
            seen.add(tp)
            for hint in typing.get_type_hints(tp).values():
                classes(hint, seen)
        return seen
    for cls in classes(Config, set()):
        if cls is Config:
            continue
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in field_docs(cls)]
        assert not missing, (cls.__name__, missing)


def test_print_config_prints_the_resolved_yaml_and_exits(capsys, tmp_path):
    code = cli.main(["--config", TINY, "--print-config", "train.steps=7", "loss.terms.0.weight=0.25",
                     f"train.output_dir={tmp_path}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert config_from_yaml(printed) == load_config(TINY, ["train.steps=7", "loss.terms.0.weight=0.25",
                                                           f"train.output_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())  # nothing trained, no run directory
