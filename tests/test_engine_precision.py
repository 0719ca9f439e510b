"""The precision menu and weight averaging: pure bf16 weights, EMA by its formula, checkpointed and
evaluated, channels-last and torch.compile giving the same training."""

import json

import pytest
import torch
from torch import nn

from vlp.checkpoints import load_checkpoint
from vlp.config import load_config
from vlp.train import engine
from vlp.train.ema import WeightAverage

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1",
    "data.shuffle_buffer=0", "data.workers=0", "eval.at_end=false", "train.report_to=none", "train.plot=false",
]


def _cfg(shapes_dir, tmp_path, *extra):
    return load_config("configs/tiny.yaml", [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
                                             *SMALL, *extra])


def _losses(run):
    return [json.loads(line)["loss/total"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_weight_average_follows_its_formula_and_copies_integer_buffers():
    model = nn.Linear(2, 1)
    model.register_buffer("count", torch.tensor(3))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.count.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 2.0))
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.9 * 1.1 + 0.1 * 4.0))
    assert int(ema.module.count) == 7 and not ema.module.weight.requires_grad


def test_ema_is_checkpointed_and_is_what_the_end_of_training_evaluation_sees(shapes_dir, tmp_path):
    seen = {}

    def evaluate(model, cfg, run_dir):
        seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}

    cfg = _cfg(shapes_dir, tmp_path, "train.steps=3", "train.run_name=ema", "train.ema_decay=0.5", "eval.at_end=true")
    run = engine.train(cfg, evaluate=evaluate)
    ckpt = load_checkpoint(run / "checkpoints/final.pt")
    assert ckpt["ema"] is not None and set(ckpt["ema"]) == set(ckpt["model"])
    name = "logit_head.logit_scale"
    assert torch.equal(seen["state"][name], ckpt["ema"][name])
    assert not torch.equal(ckpt["ema"]["image_tower.visual.conv1.weight"], ckpt["model"]["image_tower.visual.conv1.weight"])
    plain = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=3", "train.run_name=plain"), evaluate=None)
    assert load_checkpoint(plain / "checkpoints/final.pt")["ema"] is None
    assert _losses(run) == _losses(plain)  # averaging reads the weights, never changes the training


def test_pure_bf16_keeps_weights_and_optimizer_state_in_bfloat16(shapes_dir, tmp_path):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=pure", "train.precision=pure_bf16"),
                       evaluate=None)
    ckpt = load_checkpoint(run / "checkpoints/final.pt")
    floats = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.bfloat16 for v in floats)
    moments = [s["exp_avg"] for s in ckpt["optimizer"]["state"].values()]
    assert moments and all(m.dtype == torch.bfloat16 for m in moments)
    assert all(torch.isfinite(torch.tensor(_losses(run))))


def test_fp16_on_cpu_runs_float16_autocast_with_a_scaler(shapes_dir, tmp_path):
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=half", "train.precision=fp16"),
                       evaluate=None)
    ckpt = load_checkpoint(run / "checkpoints/final.pt")
    assert ckpt["grad_scaler"] is not None and ckpt["grad_scaler"]["scale"] > 1
    fp32 = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=full"), evaluate=None)
    assert _losses(run) != _losses(fp32)  # float16 matmuls really ran: not silently fp32
    assert abs(_losses(run)[0] - _losses(fp32)[0]) < 1e-2


def test_channels_last_trains_the_same_model(shapes_dir, tmp_path):
    a = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=a"), evaluate=None)
    b = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=b", "train.channels_last=true"),
                     evaluate=None)
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-6)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(shapes_dir, tmp_path):
    eager = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=e"), evaluate=None)
    compiled = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=c", "train.compile=true"),
                            evaluate=None)
    assert _losses(compiled) == pytest.approx(_losses(eager), abs=1e-4)
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(compiled / "checkpoints/final.pt")["model"])


def test_loading_a_run_with_an_average_takes_it_unless_raw_is_asked(shapes_dir, tmp_path):
    from vlp.interop.vlp_files import load_model_and_config

    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2", "train.run_name=avg", "train.ema_decay=0.5"),
                       evaluate=None)
    ckpt = load_checkpoint(run / "checkpoints/final.pt")
    name = "image_tower.visual.conv1.weight"
    for weights, entry in (("auto", "ema"), ("ema", "ema"), ("raw", "model")):
        model, _, _ = load_model_and_config(run, weights=weights)
        assert torch.equal(model.state_dict()[name], ckpt[entry][name]), weights
    plain = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=1", "train.run_name=noavg"), evaluate=None)
    with pytest.raises(ValueError, match="no weight average"):
        load_model_and_config(plain, weights="ema")
