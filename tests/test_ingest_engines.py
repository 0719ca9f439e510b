"""Engines (``data_prep.engines``): local and Ray run the same tasks to the same results, stream
them with bounded submission, retry a task that raises or whose worker dies without duplicating
its output or leaving a temporary file, name a task that fails for good, and ship the project's
code to the workers of a cluster they connect to, quietly.

The tasks are ``data_prep.engines.selftest.write_probe``: a project function, as Ray workers import
tasks by module. One local Ray instance (2 CPUs) serves the module; a fresh process checks the
start of a private instance and the connection to a running one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from data_prep.engines import TaskFailedError, run_tasks
from data_prep.engines.selftest import ProbeError, ProbeTask, probe_content, write_probe, worker_code

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs shared by this module's tests (run_tasks uses it as it is)."""
    pytest.importorskip("ray")
    from data_prep.engines.ray_engine import start_local

    ray = start_local(2)
    yield ray
    ray.shutdown()


def _files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the attempt log: name -> bytes (temporary files included)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _attempts(out: Path, name: str) -> int:
    return (out / ".attempts" / name).stat().st_size


def _tasks(n: int, **crash: str) -> list[ProbeTask]:
    return [ProbeTask(f"t{i:02d}", crash.get(f"t{i:02d}", "")) for i in range(n)]


def _expected(tasks: list[ProbeTask]) -> dict[str, bytes]:
    return {t.name: probe_content(t.name) for t in tasks}


@pytest.mark.parametrize("engine,workers", [("local", 1), ("local", 2), ("ray", 2)])
def test_engines_give_the_same_results(engine: str, workers: int, tmp_path: Path, request) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_instance")
    tasks = _tasks(7)
    results = list(run_tasks(engine, write_probe, tasks, str(tmp_path), workers=workers))
    assert sorted(results, key=lambda r: r["name"]) == [
        {"name": t.name, "written": 1, "bytes": len(probe_content(t.name))} for t in tasks]
    assert _files(tmp_path) == _expected(tasks)
    again = list(run_tasks(engine, write_probe, tasks, str(tmp_path), workers=workers))  # idempotent
    assert sorted(again, key=lambda r: r["name"]) == sorted(results, key=lambda r: r["name"])
    assert all(_attempts(tmp_path, t.name) == 1 for t in tasks)


@pytest.mark.parametrize("engine,workers,at_most", [("local", 1, 1), ("local", 2, 4), ("ray", 2, 4)])
def test_results_stream_with_bounded_submission(engine: str, workers: int, at_most: int, tmp_path: Path,
                                                request) -> None:
    if engine == "ray":
        request.getfixturevalue("ray_instance")
    tasks = _tasks(12)
    stream = run_tasks(engine, write_probe, iter(tasks), str(tmp_path), workers=workers)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    # nothing beyond the first window (2 x workers / CPUs) was submitted before the first result
    assert first["name"] in _files(tmp_path) and 1 <= len(_files(tmp_path)) <= at_most
    rest = list(stream)
    assert sorted([first["name"], *(r["name"] for r in rest)]) == [t.name for t in tasks]
    assert _files(tmp_path) == _expected(tasks)


def test_ray_retries_a_raising_and_a_killed_task_without_duplicates(ray_instance, tmp_path: Path) -> None:
    tasks = _tasks(6, t01="exit-once", t04="raise-once")
    results = list(run_tasks("ray", write_probe, tasks, str(tmp_path), workers=2, max_retries=2))
    assert sorted(r["name"] for r in results) == [t.name for t in tasks]  # each result exactly once
    assert _files(tmp_path) == _expected(tasks)  # each file once, whole, no temporary file left
    assert [_attempts(tmp_path, t.name) for t in tasks] == [1, 2, 1, 1, 2, 1]  # the crashed ones ran again


def test_a_task_failing_on_every_attempt_is_named(ray_instance, tmp_path: Path) -> None:
    tasks = [ProbeTask("fine"), ProbeTask("doomed", "raise-always")]
    with pytest.raises(TaskFailedError, match=r"task 'doomed' failed on every attempt \(2, max_retries=1\): "
                                              r"ProbeError: probe doomed fails on purpose \(attempt 2\)") as caught:
        list(run_tasks("ray", write_probe, tasks, str(tmp_path), workers=2, max_retries=1))
    assert caught.value.task == tasks[1] and _attempts(tmp_path, "doomed") == 2
    assert not (tmp_path / "doomed").exists()


def test_local_engine_keeps_the_error_type_and_names_the_task(tmp_path: Path) -> None:
    with pytest.raises(ProbeError) as caught:
        list(run_tasks("local", write_probe, [ProbeTask("a"), ProbeTask("b", "raise-always")], str(tmp_path)))
    assert "(in task 'b')" in caught.value.__notes__
    (tmp_path / "pool").mkdir()
    with pytest.raises(TaskFailedError, match="a worker process of the local pool died"):  # no hang
        list(run_tasks("local", write_probe, _tasks(4, t02="exit-once"), str(tmp_path / "pool"), workers=2))


def test_bad_engine_choices_are_clear(monkeypatch) -> None:
    with pytest.raises(ValueError, match="unknown engine 'spark'; choose one of: local, ray"):
        run_tasks("spark", write_probe, [], "x")
    with pytest.raises(ValueError, match="--ray-address applies to --engine ray"):
        run_tasks("local", write_probe, [], "x", address="auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"--engine ray needs Ray: pip install -e '\.\[prep\]'"):
        run_tasks("ray", write_probe, [], "x")


FRESH_PROCESS = """
import json, os, sys
import ray
from data_prep.engines import run_tasks
from data_prep.engines.selftest import ProbeTask, write_probe, worker_code
address, out = sys.argv[1], sys.argv[2]
remote = list(run_tasks("ray", worker_code, [0, 1], address=address))
connected_after = ray.is_initialized()
local = sorted(r["name"] for r in run_tasks("ray", write_probe, [ProbeTask("a"), ProbeTask("b")], out))
print(json.dumps({"remote": remote, "connected_after": connected_after, "local": local,
                  "initialized_after": ray.is_initialized()}))
"""


def test_a_fresh_process_ships_the_code_to_a_cluster_and_starts_a_quiet_instance(ray_instance, tmp_path: Path
                                                                                   ) -> None:
    """The module's instance plays a cluster: a fresh driver connects to it by address (the
    workers import the project from the shipped ``py_modules``, not the checkout), disconnects
    leaving it running, then starts and stops a private instance; nothing is printed, no
    token-auth file is written."""
    address = ray_instance.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    (tmp_path / "home").mkdir()
    (tmp_path / "out").mkdir()
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, address, str(tmp_path / "out")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    report = json.loads(run.stdout)  # stdout holds the report alone
    assert len(report["remote"]) == 2 and not report["connected_after"] and not report["initialized_after"]
    for where in report["remote"]:
        assert "runtime_resources" in where["data_prep"] and not where["data_prep"].startswith(str(ROOT))
    assert report["local"] == ["a", "b"] and _files(tmp_path / "out") == _expected([ProbeTask("a"), ProbeTask("b")])
    assert not (tmp_path / "home" / ".ray").exists()
    assert ray_instance.is_initialized()
    assert len(list(run_tasks("ray", worker_code, [0]))) == 1  # the "cluster" still runs
