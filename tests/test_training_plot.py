"""vlp.train.plots: a run's metrics.jsonl (and eval_results.json) -> training_curves.png, a PNG of
the documented size whose curves are where the records say; no matplotlib -> a warning and None."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from vlp.train.plots import DPI, FIGSIZE, PLOT_FILE, collect_curves, plot_training

GLOBAL_BATCH = 64


def write_run(root: Path, samples_seen: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(10, 101, 10):
        record = {"step": step, "lr": 1e-3 * step / 100, "logit_scale": 14.0 + step / 10,
                  "loss/total": 4.0 - step / 50, "loss/clip": 3.5 - step / 50, "samples_per_s": 100.0,
                  "skipped_samples": {"decode": 1}}
        if samples_seen:
            record["samples_seen"] = step * GLOBAL_BATCH
        lines.append(json.dumps(record))
        if step % 50 == 0:  # a periodic evaluation's line
            lines.append(json.dumps({"step": step, **({"samples_seen": step * GLOBAL_BATCH} if samples_seen else {}),
                                     "eval/zeroshot/acc1": step / 200, "eval/zeroshot/skipped": 0.0,
                                     "eval/retrieval/image_retrieval_recall@1": step / 400}))
    lines.append("not json (a torn line)")
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval_results.json").write_text(json.dumps({"zeroshot": {"metrics": {"acc1": 0.625, "acc5": 1.0}}}))
    (root / "train_summary.json").write_text(json.dumps({"steps": 100, "global_batch": GLOBAL_BATCH}))
    return root


def test_the_curves_are_against_samples_seen(tmp_path: Path) -> None:
    curves = collect_curves(write_run(tmp_path / "run"))
    assert curves.x_label == "samples seen"
    assert sorted(curves.losses) == ["clip", "total"]
    assert curves.losses["total"][0] == (10 * GLOBAL_BATCH, 3.8) and curves.losses["total"][-1] == (6400, 2.0)
    assert curves.evals == {"zeroshot/acc1": [(3200, 0.25), (6400, 0.5)],
                            "retrieval/image_retrieval_recall@1": [(3200, 0.125), (6400, 0.25)]}  # no "skipped"
    assert curves.lr[-1] == (6400, pytest.approx(1e-3)) and curves.logit_scale[0] == (640, 15.0)
    assert curves.final == {"zeroshot/acc1": (6400, 0.625), "zeroshot/acc5": (6400, 1.0)}

    # an older run without samples_seen: step x the global batch of its summary, then the step itself
    old = write_run(tmp_path / "old", samples_seen=False)
    assert collect_curves(old).losses["total"][0] == (640, 3.8)
    (old / "train_summary.json").unlink()
    fallback = collect_curves(old)
    assert fallback.x_label == "optimizer step" and fallback.losses["total"][0] == (10, 3.8)


def test_plot_training_writes_a_png_of_the_documented_size(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    run = write_run(tmp_path / "run")
    path = plot_training(run)
    assert path == run / PLOT_FILE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)) == (1200, 800)
        image.load()
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # curves, labels and legends, not a blank canvas
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    first = path.read_bytes()
    assert plot_training(run) == path and path.read_bytes()[:8] == first[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_run_draws_nothing(tmp_path: Path, caplog) -> None:
    pytest.importorskip("matplotlib")
    with caplog.at_level(logging.WARNING):
        assert plot_training(tmp_path) is None
    assert "has no metric lines to draw" in caplog.text and not (tmp_path / PLOT_FILE).exists()


def test_missing_matplotlib_warns_and_returns_none(tmp_path: Path, monkeypatch, caplog) -> None:
    run = write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with caplog.at_level(logging.WARNING):
        assert plot_training(run) is None
    assert not (run / PLOT_FILE).exists()
    assert "matplotlib is not installed" in caplog.text and "pip install 'vlp[track]'" in caplog.text
