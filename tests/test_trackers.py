"""vlp.train.trackers: metrics through accelerate's trackers into ``<run>/tensorboard/``, read back
from the event files; a resumed run appends; a missing package is a warning, not a crash."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from accelerate import Accelerator

from vlp.config import Config
from vlp.train import trackers as trackers_module
from vlp.train.trackers import TENSORBOARD_DIR, numeric_values, open_trackers, wandb_run_id


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def config(report_to: str = "tensorboard") -> Config:
    cfg = Config()
    cfg.train.report_to = report_to
    return cfg


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every event file in ``log_dir``, as TensorBoard shows them (values are
    stored as float32: the tests log values exact in float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_records_reach_the_event_file_with_their_steps(accelerator: Accelerator, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    run.mkdir()
    trackers = open_trackers(accelerator, config(), run)
    assert trackers.names == ["tensorboard"] and trackers.tensorboard_dir == run / TENSORBOARD_DIR
    trackers.log({"step": 10, "loss/total": 2.5, "lr": 2.0 ** -10, "skipped_samples": {"decode": 3},
                  "note": "text is left out", "nonfinite_steps": 0}, step=10)
    trackers.log({"step": 20, "loss/total": 1.25, "lr": 2.0 ** -11, "nonfinite_steps": 1}, step=20)
    trackers.log({"eval/zeroshot/acc1": 0.75}, step=20)
    trackers.close()
    trackers.close()  # idempotent
    assert accelerator.trackers == [] and accelerator.log_with == []  # handed back: end_training finishes nothing twice

    found = scalars(run / TENSORBOARD_DIR)
    assert found == {"loss/total": [(10, 2.5), (20, 1.25)], "lr": [(10, 2.0 ** -10), (20, 2.0 ** -11)],
                     "nonfinite_steps": [(10, 0.0), (20, 1.0)], "eval/zeroshot/acc1": [(20, 0.75)]}


def test_a_resumed_run_appends_and_hides_the_steps_it_trains_again(accelerator: Accelerator, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    first = open_trackers(accelerator, config(), tmp_path)
    for step, loss in [(1, 4.0), (2, 3.0), (3, 2.0)]:
        first.log({"loss/total": loss}, step=step)
    first.close()
    again = open_trackers(accelerator, config(), tmp_path, start_step=2)  # resumed from the step-2 checkpoint
    for step, loss in [(3, 2.5), (4, 1.5)]:
        again.log({"loss/total": loss}, step=step)
    again.close()
    assert len(list((tmp_path / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 2  # same folder, appended
    assert scalars(tmp_path / TENSORBOARD_DIR) == {"loss/total": [(1, 4.0), (2, 3.0), (3, 2.5), (4, 1.5)]}


def test_missing_tensorboard_warns_with_the_pip_command(accelerator: Accelerator, tmp_path: Path, monkeypatch,
                                                        caplog) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    with caplog.at_level(logging.WARNING):
        trackers = open_trackers(accelerator, config(), tmp_path)
    assert trackers.names == []
    trackers.log({"loss/total": 1.0}, step=1)  # no crash, nothing written
    trackers.close()
    assert not (tmp_path / TENSORBOARD_DIR).exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the tensorboard package is not installed" in warnings[0]
    assert "install it with: pip install 'vlp[track]'" in warnings[0]


def test_missing_wandb_warns_and_tensorboard_still_logs(accelerator: Accelerator, tmp_path: Path, monkeypatch,
                                                        caplog) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING):
        trackers = open_trackers(accelerator, config("tensorboard,wandb"), tmp_path)
    assert trackers.names == ["tensorboard"]
    trackers.log({"lr": 0.5}, step=3)
    trackers.close()
    assert "train.report_to=tensorboard,wandb: the wandb package is not installed" in caplog.text
    assert "pip install 'vlp[track]'" in caplog.text
    assert scalars(tmp_path / TENSORBOARD_DIR) == {"lr": [(3, 0.5)]}


def test_none_and_other_ranks_build_nothing(accelerator: Accelerator, tmp_path: Path, monkeypatch) -> None:
    assert open_trackers(accelerator, config("none"), tmp_path).names == []
    monkeypatch.setattr(type(accelerator), "is_main_process", property(lambda self: False))
    trackers = open_trackers(accelerator, config(), tmp_path)
    assert trackers.names == []
    trackers.log({"loss/total": 1.0}, step=1)
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_only_numbers_are_logged_and_wandb_ids_are_stable(tmp_path: Path) -> None:
    import numpy as np

    assert numeric_values({"a": 1, "b": 2.5, "c": np.float32(0.5), "d": "x", "e": {"f": 1}, "g": [1], "h": True}) == \
        {"a": 1, "b": 2.5, "c": 0.5, "h": 1}
    run = tmp_path / "tiny run+1"
    assert wandb_run_id(run) == wandb_run_id(tmp_path / "." / "tiny run+1")
    assert wandb_run_id(run).startswith("tiny-run-1-") and wandb_run_id(run) != wandb_run_id(tmp_path / "other")
    assert trackers_module.tracker_names("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert trackers_module.tracker_names("none") == []
    flat = trackers_module.flat_config(config())  # what W&B gets as its run config
    assert flat["train.batch_size"] == 256 and flat["train.report_to"] == "tensorboard"
    assert flat["loss.terms"] == "[{'name': 'clip', 'weight': 1.0, 'options': {}}]"
