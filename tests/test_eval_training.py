"""``eval.training.evaluate_at_end``: the end-of-training evaluation of a model in memory, through
the embedding cache (keyed by the weights), printing and writing what the engine's final
evaluation did."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from eval.suite import evaluate_builtin, format_table
from eval.training import evaluate_at_end
from test_eval_datasets import make_compositional, make_retrieval, make_zeroshot
from tiny_arch import TINY_ARCH


def make_builtin_root(root: Path) -> Path:
    make_zeroshot(root / "zeroshot")
    make_retrieval(root / "retrieval")
    make_compositional(root / "compositional")
    return root


def tiny_model_and_config(root: Path | None, cache: bool = True):
    """A tiny DualEncoder in training mode (its tokenizer: the default open_clip one) and a
    config naming ``root`` as the built-in eval root."""
    from vlp.config import Config
    from vlp.models.dual_encoder import DualEncoder

    arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "vocab_size": 49408, "context_length": 16}}
    torch.manual_seed(0)
    model = DualEncoder(arch).train()
    cfg = Config()
    cfg.eval.builtin_root = str(root) if root is not None else None
    cfg.eval.batch_size = 3
    cfg.eval.cache = cache
    return model, cfg


def count_encodes(model) -> dict[str, int]:
    """Count the images and texts ``model`` encodes from now on (its weights stay as they are)."""
    calls = {"images": 0, "texts": 0}
    image, text = model.encode_image, model.encode_text

    def encode_image(images, *args, **kwargs):
        calls["images"] += images.shape[0]
        return image(images, *args, **kwargs)

    def encode_text(tokens, *args, **kwargs):
        calls["texts"] += tokens.shape[0]
        return text(tokens, *args, **kwargs)

    model.encode_image, model.encode_text = encode_image, encode_text
    return calls


def test_evaluate_at_end_writes_prints_and_hits_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VLP_CACHE_DIR", str(tmp_path / "cache"))
    root = make_builtin_root(tmp_path / "bench")
    model, cfg = tiny_model_and_config(root)
    run = tmp_path / "run"
    run.mkdir()
    calls = count_encodes(model)
    results = evaluate_at_end(model, cfg, run)
    assert model.training  # back in training mode
    assert list(results) == ["zeroshot", "retrieval", "compositional"]
    assert calls["images"] > 0 and calls["texts"] > 0
    path = run / "eval_results.json"
    text = path.read_text()
    assert json.loads(text)["zeroshot"]["metrics"]["acc1"] == results["zeroshot"]["metrics"]["acc1"]
    assert text.endswith("}\n") and '  "compositional": {' in text  # indented, key-sorted (RunDir.save_json)
    assert capsys.readouterr().out == f"{format_table(results)}\nresults: {path}\n"

    # the engine's evaluation of the same model (no cache) gives the same numbers
    from vlp.interop.loaded import wrap_model

    reference = evaluate_builtin(wrap_model(model, cfg, name=str(run)), root, batch_size=3, progress=False)
    assert json.dumps(reference, sort_keys=True) == json.dumps(results, sort_keys=True)

    # a second evaluation of the same weights is served by the cache: the model is not called
    calls.update(images=0, texts=0)
    path.unlink()
    again = evaluate_at_end(model, cfg, run)
    assert calls == {"images": 0, "texts": 0}
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
    assert path.read_text() == text

    # other weights are another model: a miss, encoded again
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    evaluate_at_end(model, cfg, run)
    assert calls["images"] > 0 and calls["texts"] > 0


def test_evaluate_at_end_without_cache_encodes_every_time(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLP_CACHE_DIR", str(tmp_path / "cache"))
    model, cfg = tiny_model_and_config(make_builtin_root(tmp_path / "bench"), cache=False)
    calls = count_encodes(model)
    first = evaluate_at_end(model, cfg, tmp_path)
    encoded = dict(calls)
    second = evaluate_at_end(model, cfg, tmp_path)
    assert calls == {k: 2 * v for k, v in encoded.items()}
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert not (tmp_path / "cache").exists()


def test_evaluate_at_end_skips_a_missing_root_with_a_warning(tmp_path: Path, caplog, capsys) -> None:
    model, cfg = tiny_model_and_config(tmp_path / "nowhere")
    with caplog.at_level(logging.WARNING):
        assert evaluate_at_end(model, cfg, tmp_path) is None
    assert f"eval.builtin_root {tmp_path / 'nowhere'} not found; skipping the final evaluation" in caplog.text
    model, cfg = tiny_model_and_config(None)
    assert evaluate_at_end(model, cfg, tmp_path) is None
    model, cfg = tiny_model_and_config(make_builtin_root(tmp_path / "bench"))
    cfg.eval.at_end = False
    assert evaluate_at_end(model, cfg, tmp_path) is None
    assert not (tmp_path / "eval_results.json").exists() and capsys.readouterr().out == ""


def test_evaluate_at_end_needs_every_builtin_folder(tmp_path: Path) -> None:
    root = tmp_path / "bench"
    make_zeroshot(root / "zeroshot")
    model, cfg = tiny_model_and_config(root)
    with pytest.raises(FileNotFoundError, match="compositional"):
        evaluate_at_end(model, cfg, tmp_path)


def test_in_memory_fingerprint_sees_what_the_weights_do_not():
    """Two models with the same weights that encode differently (GELU vs QuickGELU) never share
    cache entries; the same model always does."""
    from eval.encoding.source import in_memory_fingerprint
    from vlp.config import Config
    from vlp.interop.loaded import wrap_model
    from vlp.models.dual_encoder import DualEncoder

    def loaded(quick_gelu: bool):
        torch.manual_seed(0)
        return wrap_model(DualEncoder(TINY_ARCH, quick_gelu=quick_gelu).eval(), Config(), name="m")

    plain, quick = loaded(False), loaded(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), quick.model.state_dict().values()))
    images = torch.randn(2, 3, 16, 16)
    assert not torch.equal(plain.model.encode_image(images), quick.model.encode_image(images))
    assert in_memory_fingerprint(plain) != in_memory_fingerprint(quick)
    assert in_memory_fingerprint(plain) == in_memory_fingerprint(loaded(False))
