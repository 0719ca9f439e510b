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
