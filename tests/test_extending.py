"""docs/EXTENDING.md, checked: each kind of extension is one new definition plus its
registration, made here from inside tests/ without editing any file of the toolkit.

Each toy registers itself under a test-only name and is removed again after its test.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
from PIL import Image

from vlp.errors import ConfigError


# ---------------------------------------------------------------- a loss term


@pytest.fixture
def toy_term():
    from vlp.losses import registry

    @registry.register_term("toy_mean_cosine", inputs=("image_emb", "text_emb"))
    def toy_mean_cosine(outputs: Dict[str, torch.Tensor], margin: float = 0.0) -> torch.Tensor:
        """1 - mean cosine of the matching pairs, plus a margin."""
        return 1 - (outputs["image_emb"] * outputs["text_emb"]).sum(-1).mean() + margin

    @registry.register_term("toy_needs_negatives", inputs=("image_emb", "neg_text_emb"))
    def toy_needs_negatives(outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["neg_text_emb"].sum() * 0

    yield "toy_mean_cosine"
    for name in ("toy_mean_cosine", "toy_needs_negatives"):
        registry.LOSS_TERMS.pop(name)
        registry.TERM_INPUTS.pop(name)


def test_a_new_loss_term_is_one_function_and_its_decorator(toy_term):
    from vlp.config import load_config
    from vlp.losses.registry import compute_objective

    cfg = load_config("configs/tiny.yaml", [f"loss.terms=[{{name: clip}}, {{name: {toy_term}, weight: 0.5, "
                                            "options: {margin: 0.25}}]"])
    eye = torch.eye(2)
    losses = compute_objective({"image_emb": eye, "text_emb": eye, "logit_scale": torch.tensor(1.0)}, cfg.loss.terms)
    assert losses[toy_term].item() == pytest.approx(0.25)  # identical pairs: cosine 1
    assert losses["total"].item() == pytest.approx(losses["clip"].item() + 0.5 * 0.25)
    # its options are checked against its signature, its declared inputs against the config
    with pytest.raises(ConfigError, match="takes no option 'margn'"):
        load_config("configs/tiny.yaml", [f"loss.terms=[{{name: {toy_term}, options: {{margn: 1}}}}]"])
    with pytest.raises(ConfigError, match=r"\(toy_needs_negatives\) needs data.num_negatives >= 1"):
        load_config("configs/tiny.yaml", ["loss.terms=[{name: toy_needs_negatives}]"])


# ---------------------------------------------------------------- an ingest reader


class PairsReader:
    """A ``.pairs`` file: one ``image-path<TAB>caption`` per line (paths relative to the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator:
        from data_prep.readers.base import Record, missing_reason

        for number, line in enumerate(self.path.read_text().splitlines()):
            image, _, caption = line.partition("\t")
            image_path = str(self.path.parent / image)
            yield Record(f"line{number}", image_path, [caption], {}, error=missing_reason(image_path))


@pytest.fixture
def pairs_format():
    from data_prep.readers.registry import READERS, ReaderFormat, register_reader

    register_reader(ReaderFormat("pairs", "a .pairs file: image path TAB caption per line", directory=False,
                                 build=lambda path, options: PairsReader(path),
                                 claims=lambda path: path.suffix == ".pairs"))
    yield "pairs"
    READERS.pop("pairs")


def test_a_new_ingest_reader_is_one_class_and_its_registration(pairs_format, tmp_path):
    from data_prep.__main__ import main
    from data_prep.readers import detect_format

    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (32, 24), colour).save(tmp_path / f"{i}.png")
    listing = tmp_path / "set.pairs"
    listing.write_text("0.png\ta red square\n1.png\ta blue square\nmissing.png\tnothing here\n2.png\ta green one\n")
    assert detect_format(listing) == "pairs"  # --format auto finds it
    out = tmp_path / "shards"
    assert main(["ingest", "--input", str(listing), "--output", str(out), "--no-progress"]) == 0
    captions = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            captions += [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    assert sorted(captions) == ["a blue square", "a green one", "a red square"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"] == {"missing_file": 1} and stats["inputs"][0]["format"] == "pairs"


# ---------------------------------------------------------------- a tower


def test_a_new_tower_is_one_class_and_its_registration(monkeypatch):
    from tiny_arch import TINY_ARCH
    from vlp.config import ModelConfig
    from vlp.models.factory import build_model
    from vlp.models.towers import TOWERS, ImageTower, register_image_tower

    monkeypatch.setitem(TOWERS, "image", dict(TOWERS["image"]))  # the registration is undone after the test

    class MeanColourTower(ImageTower):
        """The image's mean colour, projected to the embedding width."""

        def __init__(self, embed_dim: int, size: int) -> None:
            super().__init__()
            self.size = size
            self.proj = torch.nn.Linear(3, embed_dim, bias=False)

        @property
        def image_size(self) -> int:
            return self.size

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.proj(pixels.mean(dim=(2, 3)))

    register_image_tower("toy_mean_colour")(
        lambda arch, quick_gelu: MeanColourTower(arch["embed_dim"], arch["vision_cfg"]["image_size"]))
    model = build_model(ModelConfig(arch=TINY_ARCH, image_tower="toy_mean_colour")).eval()
    pixels = torch.zeros(2, 3, 32, 32)
    pixels[0, 0], pixels[1, 2] = 1.0, 1.0  # one red, one blue image
    out = model(pixels, torch.zeros(2, TINY_ARCH["text_cfg"]["context_length"], dtype=torch.long))
    weight = model.image_tower.proj.weight  # [D, 3]
    want = torch.nn.functional.normalize(weight[:, [0, 2]].T, dim=-1)
    torch.testing.assert_close(out["image_emb"], want)
    assert model.image_size == TINY_ARCH["vision_cfg"]["image_size"] and out["text_emb"].shape == out["image_emb"].shape


# ---------------------------------------------------------------- a head (and a term that reads it)


def test_a_new_head_is_one_class_and_its_registration_and_a_term_can_train_it(shapes_dir, tmp_path, request):
    from vlp.config import load_config
    from vlp.losses import registry
    from vlp.models.heads import HEADS, Head, register_head
    from vlp.train import engine

    for table, name in ((HEADS, "toy_norm"), (registry.LOSS_TERMS, "toy_norm_to_one"),
                        (registry.TERM_INPUTS, "toy_norm_to_one")):
        request.addfinalizer(lambda table=table, name=name: table.pop(name, None))  # registrations undone after

    @register_head("toy_norm")
    class NormHead(Head):
        """A learnable scale on the image embedding: adds 'toy_norm' [B]."""

        provides = ("toy_norm",)

        def __init__(self, image_tower, text_tower, init: float = 2.0) -> None:
            super().__init__(image_tower, text_tower)
            self.scale = torch.nn.Parameter(torch.tensor(init))

        def forward(self, inputs, outputs):
            return {"toy_norm": self.scale * outputs["image_emb"].norm(dim=-1)}

    @registry.register_term("toy_norm_to_one", inputs=("toy_norm",))
    def toy_norm_to_one(outputs):
        return ((outputs["toy_norm"] - 1) ** 2).mean()

    terms = "loss.terms=[{name: clip}, {name: toy_norm_to_one}]"
    with pytest.raises(ConfigError, match=r"\(toy_norm_to_one\) needs model.heads.toy_norm \(a head that provides toy_norm\)"):
        load_config("configs/tiny.yaml", [terms])
    cfg = load_config("configs/tiny.yaml", [terms, "model.heads={toy_norm: {init: 3.0}}", "train.steps=4",
                                            "train.log_every=1", "eval.at_end=false", f"data.train_shards={shapes_dir}/train",
                                            f"train.output_dir={tmp_path}", "train.run_name=toy", "train.batch_size=16"])
    run = engine.train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = records[0]["loss/toy_norm_to_one"]
    assert first == pytest.approx((3.0 - 1) ** 2, rel=1e-3)  # unit-norm embeddings times the initial 3.0
    assert records[-1]["loss/toy_norm_to_one"] < first  # and the term trains the head's parameter
    assert [r["loss/total"] for r in records] == pytest.approx(
        [r["loss/clip"] + r["loss/toy_norm_to_one"] for r in records])


# ---------------------------------------------------------------- an eval task


def test_a_new_eval_task_is_one_declaration_and_its_registration(tmp_path, monkeypatch):
    import types
    import sys

    from eval.__main__ import main
    from eval.tasks import registry
    from eval.tasks.task import Task, option
    from eval.tasks.zeroshot import open_classification_set
    from test_eval_cache import counting_loaded, make_dual_folder

    monkeypatch.setattr(registry, "_TASKS", {t.name: t for t in registry.all_tasks()})  # undone after the test

    def count_images(encoder, dataset, options):
        images = encoder.images(dataset, desc="count")
        return {"dataset": dataset.name, "model": encoder.source.name, "task": "image_count",
                "metrics": {"images": len(images.records) * options["times"]}, "skipped": images.skipped}

    registry.register_task(Task(name="image_count", kinds=("classification",), open=open_classification_set,
                                run=count_images, help="count the readable images",
                                options=(option("--times", scopes=("task", "run"), type=int, default=1),)))
    loaded = counting_loaded()
    monkeypatch.setitem(sys.modules, "vlp.interop.load", types.SimpleNamespace(load_eval_model=lambda *a, **k: loaded))
    (tmp_path / "model.pt").write_bytes(b"weights")
    data = make_dual_folder(tmp_path / "dual")  # 3 readable images, 1 broken
    common = ["--model", str(tmp_path / "model.pt"), "--no-progress", "--device", "cpu"]
    assert main(["image_count", *common, "--dataset", str(data), "--output", str(tmp_path / "one.json"),
                 "--times", "2"]) == 0
    result = json.loads((tmp_path / "one.json").read_text())
    assert result["metrics"] == {"images": 6} and result["skipped"] == 1
    assert main(["run", *common, "--tasks", "image_count", "--datasets", f"classification:{data}",
                 "--output", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "dual_image_count.json").read_text())["metrics"] == {"images": 3}
