"""Eval dataset readers on tiny shards, and end-to-end tasks with a fake model of known scores."""

from __future__ import annotations

import io
import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from eval.tasks.compositionality import evaluate_compositional
from eval.encoding.batching import batches, split_skipped
from eval.datasets.records import Skipped
from eval.datasets.shards import ClassificationShards, CompositionalShards, RetrievalShards
from eval.report import read_result, write_result
from eval.tasks.retrieval import evaluate_retrieval
from eval.suite import evaluate_builtin, flat_metrics, format_table
from eval.tasks.zeroshot import evaluate_zeroshot

RED, GREEN, BLUE = (250, 10, 0), (5, 240, 20), (0, 30, 220)

# ---------------------------------------------------------------- fake model

# Text embedding = vector of the first known colour word in the caption (normalised by the model).
WORDS: dict[str, list[float]] = {
    "red": [1, 0, 0],
    "green": [0, 1, 0],
    "blue": [0, 0, 1],
    "pinkish": [0.6, 0, 0.8],
    "teal": [0, 0.28, 0.96],
    "mauve": [0.8, 0, 0.6],
    "khaki": [2 / 3, 2 / 3, 1 / 3],
}
VOCAB = list(WORDS)


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    ids = []
    for text in texts:
        words = [w.strip(".,") for w in text.lower().split()]
        ids.append([next((VOCAB.index(w) for w in words if w in WORDS), len(VOCAB))])
    return torch.tensor(ids, dtype=torch.long)


def fake_transform(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0


class FakeCLIP(torch.nn.Module):
    """Image embedding: one-hot of the dominant mean colour channel. Text: colour-word vector."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor([*WORDS.values(), [1.0, 1.0, 1.0]]))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(images.mean(dim=(2, 3)).argmax(1), 3).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.table[tokens[:, 0]], dim=-1)


@dataclass
class FakeLoaded:
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_transform: Callable[[Image.Image], torch.Tensor]
    name: str


def fake_loaded() -> FakeLoaded:
    return FakeLoaded(FakeCLIP(), fake_tokenize, fake_transform, "fake-clip")


# ---------------------------------------------------------------- shard builders


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def write_split(root: Path, shards: list[list[dict[str, Any]]]) -> None:
    """Write ``root/test/{i}.tar`` for each list of samples, and ``nshards.txt``."""
    test = root / "test"
    test.mkdir(parents=True, exist_ok=True)
    for i, samples in enumerate(shards):
        with wds.TarWriter(str(test / f"{i}.tar")) as sink:
            for sample in samples:
                sink.write(sample)
    (test / "nshards.txt").write_text(f"{len(shards)}\n")


def make_zeroshot(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\n\nblue\n")  # blank line ignored
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c} shape.\na {c} thing\n")
    write_split(
        root,
        [
            [
                {"__key__": "z0", "png": png(RED), "cls": b"0"},
                {"__key__": "z1", "png": png(RED), "cls": b"0"},
                {"__key__": "z2", "png": png(GREEN), "cls": b"0"},  # mislabelled: predicted green
                {"__key__": "z3", "png": b"not an image", "cls": b"1"},  # corrupt image
            ],
            [
                {"__key__": "z4", "png": png(GREEN), "cls": b"1"},
                {"__key__": "z5", "png": png(BLUE)},  # missing .cls
                {"__key__": "z6", "png": png(BLUE), "cls": b"2\n"},
            ],
        ],
    )
    return root


RETRIEVAL_CAPTIONS = {
    "r0": (RED, "a pinkish square\na red square"),
    "r1": (GREEN, "a green circle\na teal circle"),
    "r2": (BLUE, "a mauve triangle\na khaki triangle\n"),
}


def make_retrieval(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    samples = [{"__key__": k, "png": png(c), "txt": t.encode()} for k, (c, t) in RETRIEVAL_CAPTIONS.items()]
    samples.insert(1, {"__key__": "rbad", "jpg": b"\xff\xd8 truncated jpeg", "txt": b"a red thing"})
    write_split(root, [samples])
    return root


def comp_json(caption: str, negatives: list[str], kinds: list[str]) -> bytes:
    return json.dumps({"caption": caption, "negatives": negatives, "negative_types": kinds}).encode()


def make_compositional(root: Path) -> Path:
    root.mkdir(parents=True)
    samples = [
        {"__key__": "c0", "jpg": png(RED),  # PNG bytes under .jpg: PIL sniffs the format
         "json": comp_json("a red square", ["a green square", "square a red"], ["swap_attribute", "shuffle_words"])},
        {"__key__": "c1", "jpg": png(GREEN),
         "json": comp_json("a green circle", ["a blue circle", "a red circle"], ["swap_attribute", "swap_relation"])},
        {"__key__": "c2", "jpg": png(BLUE), "json": comp_json("a red triangle", ["a blue triangle"], ["swap_attribute"])},
        {"__key__": "c3", "jpg": png(BLUE), "json": json.dumps({"caption": "a blue x"}).encode()},  # no negatives
        {"__key__": "c4", "jpg": b"garbage", "json": comp_json("a", ["b"], ["swap_attribute"])},
    ]
    write_split(root, [samples[:2], samples[2:]])
    return root


# ---------------------------------------------------------------- readers


def test_classification_reader_round_trip_and_skips(tmp_path: Path) -> None:
    ds = ClassificationShards(make_zeroshot(tmp_path / "zs"))
    assert ds.classnames == ["red", "green", "blue"]
    assert ds.templates == ["a photo of a {c} shape.", "a {c} thing"]
    assert ds.name == "zs"
    records, skipped = split_skipped(list(ds))
    assert [(r.key, r.label) for r in records] == [("z0", 0), ("z1", 0), ("z2", 0), ("z4", 1), ("z6", 2)]
    assert records[0].image.mode == "RGB" and records[0].image.getpixel((3, 3)) == RED
    assert sorted(s.key for s in skipped) == ["z3", "z5"]
    assert any("cls" in s.reason for s in skipped)


def test_retrieval_reader_splits_captions_and_skips_bad_image(tmp_path: Path) -> None:
    ds = RetrievalShards(make_retrieval(tmp_path / "ret"), transform=fake_transform)
    items = list(ds)
    records, skipped = split_skipped(items)
    assert [r.key for r in records] == ["r0", "r1", "r2"]
    assert records[2].captions == ["a mauve triangle", "a khaki triangle"]
    assert records[0].image.shape == (3, 8, 8)
    assert [s.key for s in skipped] == ["rbad"]


def test_compositional_reader(tmp_path: Path) -> None:
    records, skipped = split_skipped(list(CompositionalShards(make_compositional(tmp_path / "comp"))))
    assert [r.key for r in records] == ["c0", "c1", "c2"]
    assert records[0].negatives == ["a green square", "square a red"]
    assert records[0].negative_types == ["swap_attribute", "shuffle_words"]
    assert sorted(s.key for s in skipped) == ["c3", "c4"]


def test_missing_shard_and_metadata_are_clear_errors(tmp_path: Path) -> None:
    root = make_zeroshot(tmp_path / "zs")
    (root / "test" / "nshards.txt").write_text("3")
    with pytest.raises(FileNotFoundError, match="2.tar"):
        ClassificationShards(root)
    (root / "test" / "nshards.txt").write_text("2")
    (root / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        ClassificationShards(root)
    with pytest.raises(ValueError, match="retrieval"):
        ClassificationShards(make_retrieval(tmp_path / "ret"))
    with pytest.raises(FileNotFoundError, match="nshards.txt"):
        RetrievalShards(tmp_path / "nowhere")


def test_truncated_tar_is_skipped_and_counted(tmp_path: Path) -> None:
    root = make_compositional(tmp_path / "comp")
    shard0 = root / "test" / "0.tar"
    shard0.write_bytes(shard0.read_bytes()[:700])  # cut inside the first member's data
    records, skipped = split_skipped(list(CompositionalShards(root)))
    assert [r.key for r in records] == ["c2"]  # shard 1 still read in full
    assert any(s.key == "<shard>" for s in skipped)
    assert len(skipped) >= 3  # the broken tar plus c3 and c4


def test_batches_keep_order_and_size(tmp_path: Path) -> None:
    ds = ClassificationShards(make_zeroshot(tmp_path / "zs"))
    sizes = [len(b) for b in batches(ds, batch_size=3)]
    assert sizes == [3, 3, 1]
    keys = [i.key for b in batches(ds, batch_size=3) for i in b]
    assert keys == ["z0", "z1", "z2", "z3", "z4", "z5", "z6"]
    assert all(isinstance(i, Skipped) for b in batches(ds, 3) for i in b if i.key in ("z3", "z5"))


# ---------------------------------------------------------------- end-to-end with the fake model


def test_zeroshot_end_to_end(tmp_path: Path) -> None:
    root = make_zeroshot(tmp_path / "zs")
    result = evaluate_zeroshot(fake_loaded(), root, batch_size=2, progress=False)
    assert result["task"] == "zeroshot_classification" and result["model"] == "fake-clip"
    assert result["dataset"] == "zs"
    m = result["metrics"]
    # preds red, red, green, green, blue vs labels red, red, red, green, blue
    assert m["acc1"] == pytest.approx(4 / 5)
    assert math.isnan(m["acc5"])  # 3 classes < 5
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert result["per_class_recall"] == pytest.approx({"red": 2 / 3, "green": 1.0, "blue": 1.0})
    assert result["num_samples"] == 5 and result["skipped"] == 2
    # shards split across two loader workers give the same numbers
    again = evaluate_zeroshot(fake_loaded(), root, batch_size=2, num_workers=2, progress=False)
    assert again["metrics"]["acc1"] == pytest.approx(4 / 5) and again["skipped"] == 2


def test_retrieval_end_to_end(tmp_path: Path) -> None:
    result = evaluate_retrieval(fake_loaded(), make_retrieval(tmp_path / "ret"), batch_size=2, progress=False)
    m = result["metrics"]
    # text->image @1: only "a red square" and "a green circle" find their image
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 6)
    # image->text @1: red hits via its 2nd caption, green via its 1st, blue's best is "teal" (miss)
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    for k in (5, 10):
        assert m[f"image_retrieval_recall@{k}"] == 1.0 and m[f"text_retrieval_recall@{k}"] == 1.0
    assert (result["num_images"], result["num_texts"], result["skipped"]) == (3, 6, 1)
    assert result["task"] == "zeroshot_retrieval"


def test_compositional_end_to_end(tmp_path: Path) -> None:
    result = evaluate_compositional(fake_loaded(), make_compositional(tmp_path / "comp"), progress=False)
    m = result["metrics"]
    # c0 ties with its shuffled negative (miss), c1 beats both, c2's caption is wrong (miss)
    assert m["acc"] == pytest.approx(1 / 3)
    assert m["acc_swap_attribute"] == pytest.approx(2 / 3)
    assert m["acc_shuffle_words"] == 0.0 and m["acc_swap_relation"] == 1.0
    assert result["count_per_type"] == {"shuffle_words": 1, "swap_attribute": 3, "swap_relation": 1}
    assert result["skipped"] == 2 and result["num_samples"] == 3


def make_builtin_root(root: Path) -> Path:
    make_zeroshot(root / "zeroshot")
    make_retrieval(root / "retrieval")
    make_compositional(root / "compositional")
    return root


def test_builtin_suite_and_table(tmp_path: Path) -> None:
    results = evaluate_builtin(fake_loaded(), make_builtin_root(tmp_path / "bench"), batch_size=4, progress=False)
    assert list(results) == ["zeroshot", "retrieval", "compositional"]
    flat = flat_metrics(results)
    assert flat["zeroshot/acc1"] == pytest.approx(0.8) and flat["compositional/skipped"] == 2
    table = format_table(results)
    assert "image_retrieval_recall@1" in table and "0.8000" in table and "nan" in table
    with pytest.raises(FileNotFoundError, match="compositional"):
        evaluate_builtin(fake_loaded(), tmp_path / "bench" / "zeroshot")


def test_write_result_is_atomic_and_round_trips_nan(tmp_path: Path) -> None:
    path = write_result(tmp_path / "out" / "r.json", {"metrics": {"acc5": math.nan, "acc1": torch.tensor(0.5)}})
    back = read_result(path)
    assert back["metrics"]["acc1"] == 0.5 and math.isnan(back["metrics"]["acc5"])
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_cli_runs_tasks_with_a_fake_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from eval.__main__ import main

    seen: list[tuple[str, str]] = []

    def load_eval_model(path: str, device: str = "cpu", model_config: str | None = None,
                        allow_mismatch: bool = False) -> FakeLoaded:
        seen.append((path, device))
        return fake_loaded()

    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=load_eval_model))
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    root = make_builtin_root(tmp_path / "bench")
    out = tmp_path / "zs.json"
    argv = ["zeroshot", "--model", str(ckpt), "--dataset", str(root / "zeroshot"), "--output", str(out),
            "--device", "cpu"]
    assert main([*argv, "--batch-size", "3", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"dataset", "model", "task", "metrics", "skipped"}
    assert result["metrics"]["acc1"] == pytest.approx(0.8) and result["skipped"] == 2
    assert seen == [(str(ckpt), "cpu")]
    printed = capsys.readouterr().out
    assert "acc1" in printed and str(out) in printed

    assert main(["builtin", "--model", str(ckpt), "--root", str(root), "--output-dir", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [  # what `eval run` writes (test_eval_outputs.py)
        "compositional_compositionality.json", "results.csv", "retrieval_retrieval.json",
        "retrieval_retrieval_top5.png", "summary.md", "zeroshot_zeroshot.json"]
    assert json.loads((tmp_path / "o" / "retrieval_retrieval.json").read_text())["metrics"][
        "text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert main(["retrieval", "--model", str(ckpt), "--dataset", str(tmp_path / "none"), "--output", str(out)]) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_start_small_then_full_and_cover_every_sample_once(tmp_path: Path, workers: int) -> None:
    from eval.encoding.batching import FIRST_BATCH

    root = tmp_path / "many"
    root.mkdir()
    (root / "classnames.txt").write_text("red\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    write_split(root, [[{"__key__": f"k{i:03d}", "png": png(RED), "cls": b"0"} for i in range(s, s + 35)]
                       for s in (0, 35)])
    dataset = ClassificationShards(root)
    sizes, indices = [], []
    for items in batches(dataset, batch_size=40, num_workers=workers):
        sizes.append(len(items))
        indices += [item.index for item in items]
    assert sorted(indices) == list(range(70))
    # one process: full batches (no decoding to overlap); two workers (35 samples each): 32 + 3
    # from each, interleaved
    assert sizes == ([40, 30] if workers == 0 else [FIRST_BATCH, FIRST_BATCH, 3, 3])
    assert [len(b) for b in batches(dataset, batch_size=30)] == [30, 30, 10]  # never above batch_size
