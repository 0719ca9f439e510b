"""Training with the extra objectives: hard negatives and second views flow from shards to losses."""

import json

from data_prep.__main__ import main as prep_main
from test_engine_faults import SMALL
from vlp.config import load_config
from vlp.data.decode import second_caption
from vlp.train import engine


def test_second_caption_prefers_another_caption_else_drops_words():
    assert second_caption(["a red circle", "a circle that is red"], "a red circle", 0, 0, "k") == "a circle that is red"
    one = second_caption(["a small red circle left of a large blue square"], "a small red circle left of a large blue square",
                         0, 0, "k1", drop=0.5)
    words = "a small red circle left of a large blue square".split()
    assert one != " ".join(words) and set(one.split()) <= set(words)
    assert one == second_caption([" ".join(words)], " ".join(words), 0, 0, "k1", drop=0.5)  # reproducible


def test_negatives_and_views_reach_every_term(shapes_dir, tmp_path):
    neg_dir = tmp_path / "neg"
    assert prep_main(["negatives", "--shards", str(shapes_dir / "train"), "--output", str(neg_dir), "--per-caption", "2"]) == 0
    terms = ("[{name: clip}, {name: negclip, weight: 0.5}, {name: intra_modal, weight: 0.5},"
             " {name: mv_infonce, weight: 0.1}, {name: dcl, weight: 0.1}]")
    cfg = load_config("configs/tiny.yaml", [f"data.train_shards={neg_dir}", f"train.output_dir={tmp_path}",
                                            "train.run_name=objectives", *SMALL, "train.steps=3",
                                            "data.num_negatives=2", "data.image_views=2", "data.text_views=2",
                                            f"loss.terms={terms}"])
    run = engine.train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    for name in ("clip", "negclip", "intra_modal", "mv_infonce", "dcl"):
        assert last[f"loss/{name}"] > 0, name
    expected = last["loss/clip"] + 0.5 * last["loss/negclip"] + 0.5 * last["loss/intra_modal"] \
        + 0.1 * last["loss/mv_infonce"] + 0.1 * last["loss/dcl"]
    assert abs(last["loss/total"] - expected) < 1e-4
    # the hard negatives make NegCLIP's image->text problem harder than CLIP's on the same batch
    assert last["loss/negclip"] > last["loss/clip"]
