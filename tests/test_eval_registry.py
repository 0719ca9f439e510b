"""The one task registry: every CLI sub-command, ``eval run``'s task list and kinds, and the
built-in suite come from the task declarations; a new task is one declaration."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from eval.tasks import registry
from eval.tasks.task import Task, option
from eval.tasks.zeroshot import open_classification_set
from test_eval_cache import counting_loaded, make_dual_folder


def test_the_cli_and_run_are_generated_from_the_declarations() -> None:
    from eval.__main__ import build_parser

    names = [t.name for t in registry.all_tasks()]
    assert names == ["zeroshot", "retrieval", "compositional", "aro", "sugarcrepe", "winoground", "diagnostics",
                     "linear_probe", "captioning"]
    assert registry.families() == ["zeroshot", "retrieval", "compositionality", "diagnostics", "linear_probe",
                                   "captioning"]
    assert registry.kinds() == ["classification", "retrieval", "compositional", "aro", "sugarcrepe", "winoground"]
    assert [(t.name, t.builtin) for t in registry.builtin_tasks()] == [
        ("zeroshot", "zeroshot"), ("retrieval", "retrieval"), ("compositional", "compositional")]
    commands = build_parser()._subparsers._group_actions[0].choices
    assert list(commands) == ["run", *names, "builtin", "caption"]
    run_flags = {flag for action in commands["run"]._actions for flag in action.option_strings}
    assert {"--grid-queries", "--search", "--aro-exclude", "--keep-symmetric"} <= run_flags
    assert "--subset" not in run_flags and "--histogram" not in run_flags  # their own sub-commands only


@pytest.fixture()
def extra_task(monkeypatch: pytest.MonkeyPatch) -> Task:
    """A task declared here and added to the registry: the mean image-embedding norm, scaled."""

    def run(encoder: Any, dataset: Any, options: dict[str, Any]) -> dict[str, Any]:
        images = encoder.images(dataset, desc="norm")
        value = images.embeddings.norm(dim=1).mean().item() * options["scale"]
        return {"dataset": dataset.name, "model": encoder.source.name, "task": "mean_norm",
                "metrics": {"mean_norm": value}, "skipped": images.skipped}

    task = Task(name="mean_norm", kinds=("classification",), open=open_classification_set, run=run,
                options=(option("--scale", scopes=("task", "run"), type=float, default=1.0, help="factor"),),
                help="mean image embedding norm", order=99)
    monkeypatch.setattr(registry, "_TASKS", {**{t.name: t for t in registry.all_tasks()}, task.name: task})
    return task


def test_a_new_declaration_is_a_sub_command_and_an_eval_run_task(tmp_path: Path, extra_task: Task,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.__main__ import main

    loaded = counting_loaded()
    monkeypatch.setitem(sys.modules, "vlp.interop.load",
                        types.SimpleNamespace(load_eval_model=lambda *a, **k: loaded))
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    data = make_dual_folder(tmp_path / "dual")
    common = ["--model", str(ckpt), "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "out"
    assert main(["run", *common, "--tasks", "zeroshot,mean_norm", "--datasets", f"classification:{data}",
                 "--output", str(out), "--scale", "2"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["dual_mean_norm.json", "dual_zeroshot.json"]
    result = json.loads((out / "dual_mean_norm.json").read_text())
    assert result["metrics"]["mean_norm"] == pytest.approx(2.0) and result["language"] == "en"
    assert loaded.model.images == 3  # the new task shares zeroshot's image embeddings

    assert main(["mean_norm", *common, "--dataset", str(data), "--output", str(tmp_path / "one.json"),
                 "--scale", "3"]) == 0
    assert json.loads((tmp_path / "one.json").read_text())["metrics"]["mean_norm"] == pytest.approx(3.0)
    assert loaded.model.images == 3  # and, on a second run, the cache's


def test_two_tasks_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.SimpleNamespace(TASK=registry.get_task("zeroshot"))
    real = registry.importlib.import_module
    monkeypatch.setattr(registry.importlib, "import_module",
                        lambda name: module if name.endswith(".retrieval") else real(name))
    monkeypatch.setattr(registry, "_TASKS", None)
    with pytest.raises(RuntimeError, match="two eval tasks are named 'zeroshot'"):
        registry.all_tasks()


def test_an_unknown_option_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown option scope"):
        option("--x", scopes=("everywhere",))
