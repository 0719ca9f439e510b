"""What a run shows while it trains: TensorBoard event files with the logged scalars, periodic
evaluation at the right steps, the curves drawn at the end, out-of-memory advice instead of a traceback."""

import json

import pytest
from PIL import Image

from eval.training import evaluate_at_end, evaluate_periodic
from vlp.config import load_config
from vlp.train import cli, engine

SMALL = [
    "model.arch.vision_cfg.image_size=32", "model.arch.vision_cfg.width=32", "model.arch.vision_cfg.head_width=16",
    "model.arch.vision_cfg.layers=1", "model.arch.text_cfg.width=32", "model.arch.text_cfg.layers=1",
    "model.arch.embed_dim=16", "train.batch_size=8", "train.log_every=1", "optim.warmup_steps=1",
    "data.shuffle_buffer=0", "data.workers=0", "eval.batch_size=16",
]


def _args(shapes_dir, tmp_path, *extra):
    return [f"data.train_shards={shapes_dir}/train", f"train.output_dir={tmp_path}",
            f"eval.builtin_root={shapes_dir}/eval", *SMALL, *extra]


def test_tensorboard_holds_the_logged_scalars_and_periodic_eval_lands_at_its_steps(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("configs/tiny.yaml", _args(shapes_dir, tmp_path, "train.steps=4", "train.run_name=obs",
                                                 "eval.every=2", "eval.at_end=true"))
    run = engine.train(cfg, evaluate=evaluate_at_end, periodic=evaluate_periodic)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [2]  # step 4 is the final evaluation's
    assert {"eval/zeroshot/acc1", "eval/retrieval/image_retrieval_recall@1"} <= set(evals[0])
    assert not any(k.startswith("eval/compositional") for k in evals[0])  # eval.every_tasks: zeroshot, retrieval
    assert evals[0]["samples_seen"] == 16

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    steps = [r for r in lines if "loss/total" in r]
    assert [s for s, _ in scalars["loss/total"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss/total"]] == pytest.approx([r["loss/total"] for r in steps], rel=1e-6)
    assert [v for _, v in scalars["lr"]] == pytest.approx([r["lr"] for r in steps], rel=1e-6)
    eval_tags = [t for t in scalars if t.startswith("eval/")]
    assert eval_tags and all(s in (2, 4) for t in eval_tags for s, _ in scalars[t])
    final = json.loads((run / "eval_results.json").read_text())
    some_entry = next(iter(final))
    some_metric = next(iter(final[some_entry]["metrics"]))
    assert scalars[f"eval/{some_entry}/{some_metric}"][-1] == (4, pytest.approx(final[some_entry]["metrics"][some_metric]))

    with Image.open(run / "training_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 400


def test_report_to_none_writes_no_event_files(shapes_dir, tmp_path):
    cfg = load_config("configs/tiny.yaml", _args(shapes_dir, tmp_path, "train.steps=1", "train.run_name=quiet",
                                                 "train.report_to=none", "train.plot=false", "eval.at_end=false"))
    run = engine.train(cfg, evaluate=None, periodic=None)
    assert not (run / "tensorboard").exists() and not (run / "training_curves.png").exists()


def test_out_of_memory_in_a_step_prints_what_would_fit(shapes_dir, tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(engine, "compute_objective", no_memory)
    code = cli.main(["--config", "configs/tiny.yaml", *_args(shapes_dir, tmp_path, "train.steps=2", "train.run_name=oom",
                                                             "train.report_to=none", "eval.at_end=false")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "train.accum_steps=" in err and "model.grad_checkpointing=true" in err
