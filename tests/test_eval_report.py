"""Reports: JSON round trip, merged CSV, markdown summary, retrieval grid PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.report import (
    CORRECT_COLOR,
    EMPTY_COLOR,
    build_csv,
    csv_row,
    markdown_summary,
    read_result,
    retrieval_grid_png,
    write_markdown_summary,
    write_result,
)

ZS = {
    "dataset": "cifar10",
    "model": "tiny",
    "task": "zeroshot_classification",
    "metrics": {"acc1": 0.123456789, "acc5": float("nan"), "mean_per_class_recall": torch.tensor(0.5)},
    "per_class_recall": {"cat": 0.5, "dog": None},
    "num_samples": 10,
    "skipped": 1,
}
RET = {
    "dataset": "flickr",
    "model": "tiny",
    "task": "zeroshot_retrieval",
    "metrics": {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 1 / 3},
    "num_images": 4,
    "num_texts": 8,
    "skipped": 0,
}
LP = {
    "dataset": "pets",
    "model": "big|model",
    "pretrained": "laion",
    "task": "linear_probe",
    "metrics": {"acc1": 1.0, "acc5": 0.99995, "mean_per_class_recall": 0.87654},
    "weight_decay": 0.001,
    "val_scores": [{"weight_decay": 0.001, "acc1": 1.0, "loss": 0.1}],
    "skipped": 0,
}


def test_json_round_trip(tmp_path: Path) -> None:
    back = read_result(write_result(tmp_path / "r.json", ZS))
    assert back["metrics"]["mean_per_class_recall"] == 0.5 and math.isnan(back["metrics"]["acc5"])


def test_csv_round_trip_columns_and_values(tmp_path: Path) -> None:
    path = write_result(tmp_path / "zs.json", ZS)
    out = build_csv([path, RET, LP], tmp_path / "sub" / "bench.csv")
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    assert columns == [
        "dataset", "model", "task",
        "acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@1",
        "num_samples", "skipped", "num_images", "num_texts", "pretrained", "weight_decay",
        "model_fullname",
    ]
    assert rows[0] == {
        "dataset": "cifar10", "model": "tiny", "task": "zeroshot_classification",
        "acc1": "0.123456789", "acc5": "nan", "mean_per_class_recall": "0.5",
        "image_retrieval_recall@1": "", "text_retrieval_recall@1": "",
        "num_samples": "10", "skipped": "1", "num_images": "", "num_texts": "", "pretrained": "",
        "weight_decay": "", "model_fullname": "tiny",
    }
    assert float(rows[1]["text_retrieval_recall@1"]) == 1 / 3  # full precision survives
    assert rows[1]["num_texts"] == "8" and rows[1]["acc1"] == ""
    assert rows[2]["model_fullname"] == "big|model laion" and rows[2]["weight_decay"] == "0.001"
    assert "val_scores" not in columns and "per_class_recall" not in columns  # lists/dicts stay in the JSON


def test_csv_row_flattens_nested_metrics_and_top_level_wins() -> None:
    row = csv_row({"dataset": "d", "model": "m", "task": "t", "skipped": 2,
                   "metrics": {"acc": 0.5, "by_type": {"swap": 0.25}, "skipped": 9}})
    assert row == {"acc": 0.5, "by_type.swap": 0.25, "skipped": 2, "dataset": "d", "model": "m", "task": "t",
                   "model_fullname": "m"}


def test_markdown_summary_exact(tmp_path: Path) -> None:
    results = {"zeroshot": ZS, "retrieval": RET, "probe": LP, "zs2": {**ZS, "dataset": "stl10", "metrics": {"acc1": 1}}}
    expected = (
        "## zeroshot_classification\n"
        "\n"
        "| dataset | model | acc1 | acc5 | mean_per_class_recall |\n"
        "|---|---|---|---|---|\n"
        "| cifar10 | tiny | 0.1235 | nan | 0.5000 |\n"
        "| stl10 | tiny | 1 | - | - |\n"
        "\n"
        "## zeroshot_retrieval\n"
        "\n"
        "| dataset | model | image_retrieval_recall@1 | text_retrieval_recall@1 |\n"
        "|---|---|---|---|\n"
        "| flickr | tiny | 0.2500 | 0.3333 |\n"
        "\n"
        "## linear_probe\n"
        "\n"
        "| dataset | model | acc1 | acc5 | mean_per_class_recall |\n"
        "|---|---|---|---|---|\n"
        "| pets | big\\|model | 1.0000 | 1.0000 | 0.8765 |\n"
    )
    assert markdown_summary(results) == expected
    out = write_markdown_summary(list(results.values()), tmp_path / "summary.md")
    assert out.read_text() == expected


def solid(color: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_retrieval_grid_size_and_green_border(tmp_path: Path) -> None:
    red, blue = (220, 0, 0), (0, 0, 220)
    blue_path = tmp_path / "blue.png"
    solid(blue).save(blue_path)
    queries = ["a red square on a table", "a blue thing"]
    tops = [[solid(red)] * 6, [solid(red), blue_path, str(tmp_path / "missing.png")]]
    out = retrieval_grid_png(queries, tops, tmp_path / "grid.png", k=5, correct=[0, 1], thumb_size=40, border=3,
                             label_width=100)
    image = Image.open(out).convert("RGB")
    cell = 40 + 2 * 3
    assert image.size == (100 + 5 * cell, 2 * cell)
    # row 0: correct image at rank 0 -> green frame around the first cell, none around the second
    assert image.getpixel((100, 0)) == CORRECT_COLOR
    assert image.getpixel((100 + cell - 1, cell - 1)) == CORRECT_COLOR
    assert image.getpixel((100 + cell + 1, 1)) == (255, 255, 255)
    # the 20x10 image is fitted into 40x40 keeping its aspect: 40x20, centred
    assert image.getpixel((100 + 3 + 20, 3 + 20)) == red
    assert image.getpixel((100 + 3 + 20, 3 + 5)) == (255, 255, 255)
    # row 1: rank 1 (the blue file) is correct; the unreadable file and absent ranks are grey cells
    assert image.getpixel((100 + cell + 1, cell + 1)) == CORRECT_COLOR
    assert image.getpixel((100 + 1, cell + 1)) == (255, 255, 255)
    assert image.getpixel((100 + cell + 3 + 20, cell + 3 + 20)) == blue
    for col in (2, 3, 4):
        assert image.getpixel((100 + col * cell + 3 + 20, cell + 3 + 20)) == EMPTY_COLOR
    # the query text is drawn in the label column
    label = image.crop((0, 0, 100, cell))
    assert min(low for low, _ in label.getextrema()) < 128  # dark text pixels


def test_retrieval_grid_rejects_mismatched_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one entry per query"):
        retrieval_grid_png(["q"], [], tmp_path / "g.png")
    with pytest.raises(ValueError, match="one entry per query"):
        retrieval_grid_png(["q"], [[solid((0, 0, 0))]], tmp_path / "g.png", correct=[0, 1])


def test_quick_exit_keeps_what_a_normal_exit_does(tmp_path):
    """exit_without_teardown: status code, stdout flushed, atexit handlers run, other threads
    finished, an open thread pool and an unneeded background model load do not hold it; only
    the module teardown is skipped."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "script.py"
    script.write_text(f"""
import atexit, threading, time
from pathlib import Path
from eval.__main__ import exit_without_teardown
out = Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.2)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)  # left open: its idle workers must not hold the exit
pool.submit(lambda: (out / "pool").write_text("ran"))
from eval.encoding.source import ModelSource
never = threading.Event()
ModelSource("fp", never.wait, "blocked").start_loading()  # a load nobody needs must not hold it either
print("table", end="")
exit_without_teardown(3)
""")
    root = Path(__file__).resolve().parents[1]
    # a hang (the bug this guards against) fails by the timeout, not by a measured time
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 3, done.stderr
    assert done.stdout == "table"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "pool").read_text() == "ran"
