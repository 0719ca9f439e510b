"""The run's curves in one picture: ``<run>/training_curves.png`` from its metrics.jsonl.

Four panels against samples seen (so runs of different batch sizes line up): the loss terms
(``loss/*``), the evaluation metrics (``eval/<entry>/<metric>`` of the periodic evaluation's
lines, and the end-of-training results of eval_results.json as stars at the run's last point),
the learning rate, and the temperature (``logit_scale``, the multiplier of the cosine logits).
The x of a line is its ``samples_seen``; a line without one (an older run) uses ``step`` times the
global batch of train_summary.json, and the optimizer step itself when that is unknown too.
Drawn with matplotlib's Agg canvas (no display, no pyplot state); without matplotlib: a
warning and no picture.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

PLOT_FILE = "training_curves.png"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "eval_results.json"
SUMMARY_FILE = "train_summary.json"
FIGSIZE = (12.0, 8.0)
DPI = 100
"""The picture is FIGSIZE x DPI pixels: 1200 x 800."""
INSTALL_HINT = "pip install 'vlp[track]'"

Series = Dict[str, List[Tuple[float, float]]]


@dataclass
class Curves:
    """What the picture shows: {name: [(x, y)]} per panel, and the final evaluation's points."""

    x_label: str = "samples seen"
    losses: Series = field(default_factory=dict)
    evals: Series = field(default_factory=dict)
    lr: List[Tuple[float, float]] = field(default_factory=list)
    logit_scale: List[Tuple[float, float]] = field(default_factory=list)
    final: Dict[str, Tuple[float, float]] = field(default_factory=dict)


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl (a line that is not a JSON object with a step is left out)."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def collect_curves(run_root: Path) -> Curves:
    """The curves of the run in ``run_root`` (see the module docstring)."""
    summary = _read_json(run_root / SUMMARY_FILE)
    global_batch = summary.get("global_batch") if isinstance(summary, dict) else None
    records = read_metrics(run_root / METRICS_FILE)
    curves = Curves()
    if not any("samples_seen" in r for r in records) and not global_batch:
        curves.x_label = "optimizer step"
    last_x = 0.0  # where the final evaluation's stars go: the last line (the engine logs the last step)
    for record in records:
        if "samples_seen" in record:
            x = float(record["samples_seen"])
        else:
            x = float(record["step"]) * (global_batch or 1)
        last_x = max(last_x, x)
        for key, value in record.items():
            y = _number(value)
            if y is None:
                continue
            if key.startswith("loss/"):
                curves.losses.setdefault(key[len("loss/"):], []).append((x, y))
            elif key.startswith("eval/") and not key.endswith("/skipped"):
                curves.evals.setdefault(key[len("eval/"):], []).append((x, y))
            elif key == "lr":
                curves.lr.append((x, y))
            elif key == "logit_scale":
                curves.logit_scale.append((x, y))
    results = _read_json(run_root / RESULTS_FILE)
    if isinstance(results, dict):
        for entry, result in results.items():
            metrics = result.get("metrics", {}) if isinstance(result, dict) else {}
            for metric, value in metrics.items():
                y = _number(value)
                if y is not None:
                    curves.final[f"{entry}/{metric}"] = (last_x, y)
    return curves


def _panel(ax: Any, title: str, series: Series, x_label: str, marker: Optional[str] = None) -> Dict[str, Any]:
    """Draw ``series`` on ``ax``; {name: its colour}."""
    colours = {}
    for name, points in series.items():
        xs, ys = zip(*points)
        (line,) = ax.plot(xs, ys, marker=marker, markersize=3, linewidth=1.2, label=name)
        colours[name] = line.get_color()
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.grid(True, alpha=0.3)
    return colours


def _draw_evals(ax: Any, curves: Curves) -> None:
    colours = _panel(ax, "evaluation (stars: at the end of training)" if curves.final else "evaluation",
                     curves.evals, curves.x_label, marker="o")
    for name, (x, y) in curves.final.items():
        kwargs = {"color": colours[name]} if name in colours else {"label": f"{name} (final)"}
        ax.plot([x], [y], marker="*", markersize=11, linestyle="none", **kwargs)
    if not curves.evals and not curves.final:
        ax.text(0.5, 0.5, "no evaluation yet\n(eval.every, eval.at_end)", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    if curves.evals or curves.final:
        ax.legend(fontsize=7, ncol=2 if len(curves.evals) + len(curves.final) > 8 else 1)


def draw(curves: Curves, title: str, path: Path) -> None:
    """The four panels of ``curves`` into the PNG ``path`` (FIGSIZE x DPI pixels), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    (loss_ax, eval_ax), (lr_ax, scale_ax) = fig.subplots(2, 2, sharex=True)
    for ax in (loss_ax, eval_ax):
        ax.tick_params(labelbottom=True)  # every panel keeps its x labels
    _panel(loss_ax, "loss", curves.losses, curves.x_label)
    if curves.losses:
        loss_ax.legend(fontsize=8)
    _draw_evals(eval_ax, curves)
    _panel(lr_ax, "learning rate", {"lr": curves.lr} if curves.lr else {}, curves.x_label)
    _panel(scale_ax, "logit scale (1 / temperature)", {"logit_scale": curves.logit_scale} if curves.logit_scale else {},
           curves.x_label)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)


def plot_training(run_root: Path | str) -> Optional[Path]:
    """Draw the run in ``run_root`` into ``<run_root>/training_curves.png``; its path, or None
    (with a warning) when matplotlib is not installed or the run has no metric lines yet."""
    run_root = Path(run_root)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("train.plot: matplotlib is not installed, so no %s is drawn; install it with: %s",
                    PLOT_FILE, INSTALL_HINT)
        return None
    curves = collect_curves(run_root)
    if not (curves.losses or curves.evals or curves.lr or curves.logit_scale):
        log.warning("train.plot: %s has no metric lines to draw", run_root / METRICS_FILE)
        return None
    path = run_root / PLOT_FILE
    draw(curves, run_root.name, path)
    return path
