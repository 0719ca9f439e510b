"""The ``captioning`` eval task and ``python -m eval caption`` on a tiny CoCa checkpoint: the
CLI writes the captions ``generate_captions`` gives, the task's scores are the metrics module's
on them, and a model without a caption head or bad input is refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tiny_arch import TINY_ARCH

ARCH = {**TINY_ARCH, "text_cfg": {**TINY_ARCH["text_cfg"], "vocab_size": 49408, "context_length": 16}}
COMMON = ["--no-progress", "--device", "cpu", "--num-workers", "0", "--batch-size", "64", "--no-cache"]


def save_model(path: Path, heads: str | None) -> Path:
    """A tiny checkpoint of ours (config inside), with ``model.heads`` set by ``heads``."""
    from vlp.config import config_to_yaml, load_config
    from vlp.models.factory import build_model

    cfg = load_config("configs/tiny.yaml", [f"model.heads={heads}"] if heads else [])
    cfg.model.arch = ARCH
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.save({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)}, path)
    return path


@pytest.fixture(scope="module")
def coca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("coca") / "coca.pt", "{caption: {}}")


def reference_captions(ckpt: Path, images: list[Image.Image], max_length: int) -> list[str]:
    """``generate_captions`` on ``images`` (one batch), the model loaded as eval loads it."""
    from vlp.interop.load import load_eval_model
    from vlp.models.heads.generation import GenerationConfig, generate_captions

    loaded = load_eval_model(str(ckpt))
    pixels = torch.stack([loaded.image_transform(image) for image in images])
    with torch.no_grad():
        return generate_captions(loaded.model, pixels, loaded.tokenizer, GenerationConfig(max_length=max_length))


def test_captioning_task_scores_the_captions_it_writes(coca: Path, shapes_dir: Path, tmp_path: Path) -> None:
    from eval.__main__ import main
    from eval.captioning.metrics import caption_metrics
    from eval.datasets.shards import RetrievalShards

    data = shapes_dir / "eval" / "retrieval"
    out = tmp_path / "cap.json"
    assert main(["captioning", "--model", str(coca), "--dataset", str(data), "--output", str(out), *COMMON,
                 "--max-length", "4", "--no-java-metrics", "--caption-samples", "3"]) == 0
    result = json.loads(out.read_text())
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    records = list(RetrievalShards(data))
    assert [line["key"] for line in lines] == [r.key for r in records] and result["num_images"] == len(records)
    assert [line["caption"] for line in lines] == reference_captions(coca, [r.image for r in records], 4)
    expected = caption_metrics({f"{i}/{r.key}": line["caption"] for i, (r, line) in enumerate(zip(records, lines))},
                               {f"{i}/{r.key}": r.captions for i, r in enumerate(records)}, java_metrics=False)
    assert result["metrics"] == pytest.approx(expected["metrics"], rel=1e-12)
    assert set(result["metrics"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"}
    assert result["metrics_skipped"] == expected["metrics_skipped"]
    assert result["task"] == "captioning" and result["generation"]["max_length"] == 4 and result["skipped"] == 0
    assert result["samples"] == [{"key": l["key"], "caption": l["caption"], "references": l["references"]}
                                 for l in lines[:3]]


def test_caption_cli_writes_one_line_per_image(coca: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eval.__main__ import main

    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    colours = {"a.png": "red", "b.jpg": "blue", "sub/c.png": "green", "sub/d.webp": "white"}
    for name, colour in colours.items():
        Image.new("RGB", (24, 20), colour).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "captions.jsonl"
    assert main(["caption", "--model", str(coca), "--images", str(folder), "--output", str(out), *COMMON,
                 "--max-length", "5"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["file"] for line in lines] == sorted(colours)
    images = [Image.open(folder / name).convert("RGB") for name in sorted(colours)]
    assert [line["caption"] for line in lines] == reference_captions(coca, images, 5)
    printed = capsys.readouterr().out
    assert "1 corrupt sample(s) skipped" in printed and f"wrote {out}" in printed


def test_caption_cli_reads_shards(coca: Path, shapes_dir: Path, tmp_path: Path) -> None:
    from eval.__main__ import main
    from eval.datasets.shards import RetrievalShards

    data = shapes_dir / "eval" / "retrieval"
    out = tmp_path / "shards.jsonl"
    pattern = str(data / "test" / "{0..0}.tar")
    assert main(["caption", "--model", str(coca), "--images", pattern, "--output", str(out), *COMMON,
                 "--strategy", "beam", "--beams", "2", "--max-length", "3"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    first_shard = [r.key for r in RetrievalShards(data)][: len(lines)]
    assert lines and [line["key"] for line in lines] == first_shard
    assert all(set(line) == {"key", "caption"} and isinstance(line["caption"], str) for line in lines)


def test_a_model_without_a_caption_head_is_refused_or_not_applicable(shapes_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from eval.__main__ import main

    plain = save_model(tmp_path / "plain.pt", None)
    data = shapes_dir / "eval" / "retrieval"
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "x.png")
    assert main(["caption", "--model", str(plain), "--images", str(folder), "--output", str(tmp_path / "c.jsonl"),
                 *COMMON]) == 2
    assert "model.heads.caption" in capsys.readouterr().err and not (tmp_path / "c.jsonl").exists()
    assert main(["captioning", "--model", str(plain), "--dataset", str(data), "--output", str(tmp_path / "r.json"),
                 *COMMON]) == 2
    assert "needs a model with model.heads.caption" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["run", "--model", str(plain), "--tasks", "retrieval,captioning", "--datasets", f"retrieval:{data}",
                 "--output", str(out), *COMMON, "--grid-queries", "0"]) == 0
    result = json.loads((out / "retrieval_captioning.json").read_text())
    assert result["metrics"] == {} and "model.heads.caption" in result["not_applicable"]
    summary = (out / "summary.md").read_text()
    assert "## captioning" in summary and "not applicable: captioning needs model.heads.caption" in summary


def test_bad_images_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from eval.__main__ import main

    model = tmp_path / "m.pt"
    model.write_bytes(b"x")  # never loaded: the input is refused first
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["caption", "--model", str(model), "--output", str(tmp_path / "o.jsonl"), *COMMON]
    assert main([*base, "--images", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--images", str(empty)]) == 2
    assert "no images" in capsys.readouterr().err
    assert main([*base, "--images", str(tmp_path / "s-{0..1}.tar")]) == 2
    assert "shard(s) not found" in capsys.readouterr().err
