"""vlp-export's choices and what every export carries: the checkpoint and weights it is made from
(--checkpoint, --weights), no training state, a safetensors export that loads back for eval and
fine-tuning, and the model card's facts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tiny_arch import TINY_ARCH
from vlp.checkpoints import save_atomic
from vlp.config import config_to_yaml, load_config
from vlp.export.cli import main as export_main
from vlp.interop.load import load_eval_model
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import build_model

EVAL = {"zeroshot": {"dataset": "shapes", "metrics": {"acc1": 0.8125, "acc5": 1.0}},
        "retrieval": {"dataset": "shapes", "metrics": {"image_retrieval_recall@1": 0.3}}}


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return DualEncoder(TINY_ARCH).state_dict()


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run with two step checkpoints and final.pt, each holding trained and averaged weights
    and the training state an export must leave out; its summary and end-of-training eval."""
    cfg = load_config("configs/tiny.yaml", ["train.ema_decay=0.99"])
    cfg.model.arch = TINY_ARCH
    run = tmp_path / "run"
    for seed, (name, step) in enumerate([("step-00000002.pt", 2), ("step-00000004.pt", 4), ("final.pt", 4)]):
        model = _state(seed)
        save_atomic({"model": model, "ema": _state(100 + seed), "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}},
                     "rng": [torch.get_rng_state()], "grad_scaler": None, "step": step, "samples_seen": 512 * step,
                     "config": config_to_yaml(cfg)}, run / "checkpoints" / name)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    (run / "train_summary.json").write_text(json.dumps({"steps": 4, "global_batch": 512, "world_size": 2,
                                                        "precision": "bf16"}))
    (run / "eval_results.json").write_text(json.dumps(EVAL))
    return run


def _ckpt(run: Path, name: str) -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weights,entry", [("auto", "ema"), ("ema", "ema"), ("raw", "model")])
def test_weights_choice(run: Path, tmp_path: Path, weights: str, entry: str) -> None:
    out = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out), "--weights", weights]) == 0
    assert _equal(load_file(str(out)), _ckpt(run, "final.pt")[entry])


@pytest.mark.parametrize("which,name", [("auto", "final.pt"), ("final", "final.pt"), ("newest", "final.pt"),
                                        ("step-00000002.pt", "step-00000002.pt")])
def test_checkpoint_choice(run: Path, tmp_path: Path, which: str, name: str) -> None:
    out = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out),
                        "--checkpoint", which, "--weights", "raw"]) == 0
    assert _equal(load_file(str(out)), _ckpt(run, name)["model"])


def test_newest_is_the_most_steps_done(run: Path, tmp_path: Path) -> None:
    (run / "checkpoints" / "final.pt").unlink()
    out = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out),
                        "--checkpoint", "newest", "--weights", "raw"]) == 0
    assert _equal(load_file(str(out)), _ckpt(run, "step-00000004.pt")["model"])


def test_a_missing_checkpoint_names_those_there(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(tmp_path / "m.safetensors"),
                        "--checkpoint", "step-00000003.pt"]) == 2
    err = capsys.readouterr().err
    assert "step-00000003.pt" in err and "final.pt, step-00000002.pt, step-00000004.pt" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_ema_required_but_absent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = TINY_ARCH
    save_atomic({"model": _state(0), "step": 1, "config": config_to_yaml(cfg)}, tmp_path / "r" / "checkpoints" / "final.pt")
    assert export_main(["--model", str(tmp_path / "r"), "--format", "safetensors", "--output",
                        str(tmp_path / "m.safetensors"), "--weights", "ema"]) == 2
    assert "no weight average" in capsys.readouterr().err


def test_safetensors_holds_weights_and_config_only_and_loads_back(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out), "--weights", "raw"]) == 0
    weights = load_file(str(out))
    assert set(weights) == set(DualEncoder(TINY_ARCH).state_dict())  # no optimizer, scaler or RNG entries
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert set(metadata) == {"format", "vlp_state_layout", "vlp_quick_gelu", "vlp_config"}
    assert "optimizer" not in metadata["vlp_config"].split("\noptim:")[0]  # the config only, no state
    # evaluation reads it whole, config and all
    model = DualEncoder(TINY_ARCH)
    model.load_state_dict(_ckpt(run, "final.pt")["model"])
    model.eval()
    loaded = load_eval_model(out, allow_mismatch=True)  # the tiny vocabulary is not the BPE's
    images, texts = torch.randn(2, 3, 16, 16), torch.randint(1, 60, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.model.encode_text(texts), model.encode_text(texts))
    # fine-tuning starts from it: model.init_from
    cfg = load_config("configs/tiny.yaml", [f"model.init_from={out}"])
    cfg.model.arch = TINY_ARCH
    assert _equal(build_model(cfg.model).state_dict(), weights)


def test_an_export_converts_from_a_safetensors_export(run: Path, tmp_path: Path) -> None:
    first = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(first)]) == 0
    assert export_main(["--model", str(first), "--format", "safetensors", "--output", str(tmp_path / "n.safetensors")]) == 0
    assert _equal(load_file(str(tmp_path / "n.safetensors")), load_file(str(first)))


def test_model_card_reports_the_run(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "oc"
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(out)]) == 0
    card = (out / "README.md").read_text()
    total = sum(v.numel() for v in _ckpt(run, "final.pt")["ema"].values())
    assert f"**{total:,}**" in card  # parameter count (the tiny model has under 100k)
    assert "- samples seen: 2,048" in card and "- steps: 4 of" in card
    assert "- global batch: 512 (2 processes)" in card and "- precision: bf16" in card
    assert "the weight average (EMA, decay 0.99)" in card and "`final.pt`" in card
    assert "| zeroshot | shapes | acc1 | 0.8125 |" in card
    assert "| retrieval | shapes | image_retrieval_recall@1 | 0.3000 |" in card
    assert "open_clip.create_model_and_transforms('local-dir:oc')" in card
    assert "VisionTransformer (image_size 16, patch_size 8, layers 1, width 32)" in card
    assert "- data: `data/shapes/train` (epochs)" in card


def test_model_card_of_an_earlier_checkpoint_does_not_claim_the_final_eval(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out),
                        "--checkpoint", "step-00000002.pt"]) == 0
    card = (tmp_path / "m.README.md").read_text()
    assert "acc1" not in card and "is of step 4, not of this checkpoint (step 2)" in card
    assert "model.init_from: m.safetensors" in card


def test_python_dash_m_runs_the_cli(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    done = subprocess.run([sys.executable, "-m", "vlp.export", "--model", str(run), "--format", "safetensors",
                           "--output", str(out), "--weights", "raw", "--no-card"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _equal(load_file(str(out)), _ckpt(run, "final.pt")["model"]) and not (tmp_path / "m.README.md").exists()


def test_onnx_through_the_cli_records_its_parity_in_the_card(run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert export_main(["--model", str(run), "--format", "onnx", "--output", str(out), "--atol", "0"]) == 2
    assert "onnx" not in capsys.readouterr().out and not out.exists()  # a gate of 0 refuses any difference
    assert export_main(["--model", str(run), "--format", "onnx", "--output", str(out), "--opset", "18"]) == 0
    meta = json.loads((out / "vlp_onnx.json").read_text())
    assert meta["opset"] == 18 and 0 < meta["parity"]["max_abs_diff"] <= 1e-4
    card = (out / "README.md").read_text()
    assert f"largest difference {meta['parity']['max_abs_diff']:.2e} (allowed 0.0001)" in card
    assert "ort.InferenceSession('onnx/image_encoder.onnx')" in card


def test_hf_through_the_cli_names_the_class_and_keeps_the_sigmoid_bias_in_the_card(tmp_path: Path) -> None:
    cfg = load_config("configs/siglip_tiny.yaml")
    cfg.model.arch = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "vocab_size": 49408}}
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_atomic({"model": model.state_dict(), "step": 3, "config": config_to_yaml(cfg)},
                tmp_path / "run" / "checkpoints" / "final.pt")
    out = tmp_path / "hf"
    assert export_main(["--model", str(tmp_path / "run"), "--format", "hf", "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["CLIPModel"] and config["vlp_export"]["logit_bias"] == -10.0
    card = (out / "README.md").read_text()
    assert "model = CLIPModel.from_pretrained('hf')" in card and "backend='pil'" in card
    assert "logit bias -10 is kept in config.json (vlp_export)" in card
