"""Eval results: JSON files (atomic writes), a merged CSV, a markdown summary, a retrieval grid PNG.

Every writer goes through a temp file in the destination folder + ``os.replace``, so a crash
never leaves a half-written report under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from vlp.utils.atomic import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy scalars, tuples and paths -> plain JSON types (NaN stays a float NaN)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist() if value.numel() != 1 else value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def dumps(result: dict[str, Any]) -> str:
    """Indented JSON text. NaN is written as ``NaN``, as CLIP_benchmark's ``json.dump`` does."""
    return json.dumps(to_jsonable(result), indent=2, sort_keys=False, allow_nan=True) + "\n"


def write_result(path: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write ``result`` to ``path`` atomically; a crash never leaves a half-written file there."""
    write_text_atomic(path, dumps(result))
    return Path(path)


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a result JSON written by :func:`write_result` (NaN parsed back to float NaN)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_nan(value: Any) -> bool:
    """True for a float NaN (used when printing metrics)."""
    return isinstance(value, float) and math.isnan(value)


# ---------------------------------------------------------------- merged CSV

ResultLike = Union[dict[str, Any], str, os.PathLike]
ID_COLUMNS: tuple[str, ...] = ("dataset", "model", "task")


def load_results(results: Iterable[ResultLike] | Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Result dicts from dicts and/or JSON paths (a mapping, e.g. the suite's output, gives its values)."""
    items = results.values() if isinstance(results, Mapping) else results
    return [dict(item) if isinstance(item, dict) else read_result(item) for item in items]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts -> one level, keys joined with ``.`` (``{"a": {"b": 1}}`` -> ``a.b``)."""
    flat: dict[str, Any] = {}
    for key, value in to_jsonable(dict(metrics)).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def csv_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row as CLIP_benchmark's ``build`` makes it (``clip_benchmark/cli.py``).

    The metrics become columns under their own names (nested ones flattened with ``.``), then
    the other top-level fields overwrite same-named keys, and ``model_fullname`` is
    ``model + " " + pretrained`` (just ``model`` when there is no ``pretrained``). Unlike
    CLIP_benchmark, top-level lists and dicts (per-class recall, val sweeps) are left out: they
    stay in the JSON.
    """
    result = to_jsonable(dict(result))
    row = flatten_metrics(result.get("metrics") or {})
    row.update({k: v for k, v in result.items() if k != "metrics" and _is_scalar(v)})
    model = str(row.get("model", ""))
    row["model_fullname"] = f"{model} {row['pretrained']}" if row.get("pretrained") not in (None, "") else model
    return row


def csv_columns(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """``dataset, model, task``, metric columns, other scalar fields, ``model_fullname``; each
    group in order of first appearance across ``results``."""
    metric_cols: dict[str, None] = {}
    other_cols: dict[str, None] = {}
    for result in results:
        metric_cols.update(dict.fromkeys(flatten_metrics(result.get("metrics") or {})))
        other_cols.update(dict.fromkeys(k for k, v in result.items() if k != "metrics" and _is_scalar(v)))
    head = list(ID_COLUMNS)
    middle = [c for c in metric_cols if c not in head]
    middle += [c for c in other_cols if c not in head and c not in metric_cols]
    return head + [c for c in middle if c != "model_fullname"] + ["model_fullname"]


def build_csv(results: Iterable[ResultLike] | Mapping[str, dict[str, Any]], out_csv: str | os.PathLike[str]) -> Path:
    """Merge results (dicts or JSON paths) into one CSV, one row per result; see :func:`csv_row`.

    A cell a result lacks is empty; NaN is written ``nan``; floats keep full precision (``repr``).
    """
    loaded = [to_jsonable(r) for r in load_results(results)]
    columns = csv_columns(loaded)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for result in loaded:
        writer.writerow(csv_row(result))
    write_text_atomic(out_csv, buffer.getvalue())
    return Path(out_csv)


# ---------------------------------------------------------------- markdown summary

#: task -> the metric columns of its markdown table; other tasks show every metric they report
MAIN_METRICS: dict[str, tuple[str, ...]] = {
    "zeroshot_classification": ("acc1", "acc5", "mean_per_class_recall"),
    "linear_probe": ("acc1", "acc5", "mean_per_class_recall"),
    "captioning": ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "meteor", "spice"),
}


def result_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown bullets under a task's table: metrics a result could not compute
    (``metrics_skipped``) and results that do not apply to their model (``not_applicable``)."""
    notes = []
    for result in rows:
        where = f"{result.get('dataset', '')} / {result.get('model', '')}"
        if result.get("not_applicable"):
            notes.append(f"- {where}: not applicable: {result['not_applicable']}")
        for metric, reason in (result.get("metrics_skipped") or {}).items():
            notes.append(f"- {where}: {metric} {reason}")
    return ["", *notes] if notes else []


def format_value(value: Any) -> str:
    """4 decimals for floats, ``nan`` for NaN, ``-`` for a missing value, ``str`` otherwise."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(results: Iterable[ResultLike] | Mapping[str, dict[str, Any]]) -> str:
    """Markdown: per task (in order of first appearance) a ``## task`` heading and a table with
    one row per result (dataset, model) and the task's main metrics as columns."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for result in load_results(results):
        by_task.setdefault(str(result.get("task", "?")), []).append(result)
    sections = []
    for task, rows in by_task.items():
        flat = [flatten_metrics(r.get("metrics") or {}) for r in rows]
        present = {key for metrics in flat for key in metrics}
        if task in MAIN_METRICS:
            columns = [m for m in MAIN_METRICS[task] if m in present]
        else:
            columns = list(dict.fromkeys(key for metrics in flat for key in metrics))
        header = ["dataset", "model", *columns]
        lines = [f"## {task}", "", "| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
        for result, metrics in zip(rows, flat):
            cells = [str(result.get("dataset", "")), str(result.get("model", ""))]
            cells += [format_value(metrics.get(m)) for m in columns]
            lines.append("| " + " | ".join(map(_cell, cells)) + " |")
        sections.append("\n".join(lines + result_notes(rows)))
    return "\n\n".join(sections) + "\n"


def write_markdown_summary(
    results: Iterable[ResultLike] | Mapping[str, dict[str, Any]], out_md: str | os.PathLike[str]
) -> Path:
    """Write :func:`markdown_summary` of ``results`` to ``out_md`` atomically."""
    write_text_atomic(out_md, markdown_summary(results))
    return Path(out_md)


# ---------------------------------------------------------------- retrieval grid

CORRECT_COLOR: tuple[int, int, int] = (0, 200, 0)
EMPTY_COLOR: tuple[int, int, int] = (235, 235, 235)
ImageLike = Union[Image.Image, str, os.PathLike]


def _open_rgb(item: ImageLike) -> Image.Image | None:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exn:
        log.warning("retrieval grid: cannot read image %s (%s); drawing an empty cell", item, exn)
        return None


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last kept line ends with ``...`` if text was cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1] + " ..."
    return lines


def retrieval_grid_png(
    query_texts: Sequence[str],
    top_images: Sequence[Sequence[ImageLike]],
    out_png: str | os.PathLike[str],
    k: int = 5,
    correct: Sequence[int | None] | None = None,
    *,
    thumb_size: int = 96,
    border: int = 4,
    label_width: int = 220,
) -> Path:
    """PNG grid of text->image retrieval: one row per query, its text on the left, then its top
    ``k`` images (paths or PIL images, best first) as thumbnails fitted into ``thumb_size``.

    ``correct[i]`` is the rank (0-based) of query i's true image in ``top_images[i]`` (None if it
    is not retrieved); that cell gets a ``border``-pixel green frame. Each cell is
    ``thumb_size + 2 * border`` square, so the image is ``label_width + k * cell`` by
    ``len(query_texts) * cell`` pixels. Missing or unreadable images leave a grey cell.
    """
    if len(query_texts) != len(top_images) or (correct is not None and len(correct) != len(query_texts)):
        raise ValueError("query_texts, top_images (and correct, if given) need one entry per query")
    if not query_texts or k < 1:
        raise ValueError("need at least one query and k >= 1")
    cell = thumb_size + 2 * border
    canvas = Image.new("RGB", (label_width + k * cell, len(query_texts) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line_h = max(int(draw.textbbox((0, 0), "Ag", font=font)[3]) + 2, 1)
    for row, (text, images) in enumerate(zip(query_texts, top_images)):
        top = row * cell
        lines = _wrap(draw, str(text), font, label_width - 2 * border, max(1, (cell - 2 * border) // line_h))
        for n, line in enumerate(lines):
            draw.text((border, top + border + n * line_h), line, fill="black", font=font)
        for col in range(k):
            left = label_width + col * cell
            image = _open_rgb(images[col]) if col < len(images) else None
            if image is None:
                draw.rectangle([left + border, top + border, left + border + thumb_size - 1,
                                top + border + thumb_size - 1], fill=EMPTY_COLOR)
            else:
                thumb = ImageOps.contain(image, (thumb_size, thumb_size))
                offset = ((thumb_size - thumb.width) // 2, (thumb_size - thumb.height) // 2)
                canvas.paste(thumb, (left + border + offset[0], top + border + offset[1]))
            if correct is not None and correct[row] == col:
                draw.rectangle([left, top, left + cell - 1, top + cell - 1], outline=CORRECT_COLOR, width=border)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    write_bytes_atomic(out_png, buffer.getvalue())
    return Path(out_png)
