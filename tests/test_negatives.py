"""Hard negatives: exact perturbations of hand-picked captions, word multisets kept, seeded
shuffles, and the negatives CLI copying shards byte for byte with key.neg.json added."""

from __future__ import annotations

import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from data_prep.negatives import (LexiconPerturber, NegativeGenerator, WordOrderPerturber, sample_rng,
                                 words_of)
from data_prep.shard_writer import read_tar_members

EXACT = {
    "a red cube and a blue ball": [("a blue cube and a red ball", "swap_attributes")],
    "A dog on a sofa.": [("A sofa on a dog.", "swap_objects")],
    "a man is riding a horse": [("a horse is riding a man", "swap_objects")],
    "two wooden chairs in front of a brick building": [
        ("two brick chairs in front of a wooden building", "swap_attributes"),
        ("a brick building in front of two wooden chairs", "swap_objects")],
    "a small red cube to the left of a large blue sphere": [
        ("a large red cube to the left of a small blue sphere", "swap_attributes"),
        ("a small blue cube to the left of a large red sphere", "swap_attributes"),
        ("a large blue sphere to the left of a small red cube", "swap_objects")],
    "a big dog is sitting on a bench next to a tree": [
        ("a bench is sitting on a big dog next to a tree", "swap_objects"),
        ("a big dog is sitting on a tree next to a bench", "swap_objects")],
    "a photo of a cat": [],
    "cat": [],
}


@pytest.mark.parametrize("caption", list(EXACT))
def test_lexicon_perturbations_exact(caption: str) -> None:
    assert LexiconPerturber().perturb(caption, random.Random(0)) == EXACT[caption]


def test_every_negative_differs_and_keeps_the_words() -> None:
    generator = NegativeGenerator(per_caption=10)
    for caption in list(EXACT) + ["A man in a red shirt, holding an umbrella!", "a cat a cat"]:
        texts, types = generator(caption, sample_rng(0, caption))
        assert len(texts) == len(types) == len(set(texts))
        for text in texts:
            assert text.lower() != caption.lower()
            assert Counter(words_of(text)) == Counter(words_of(caption))
    assert generator("cat", random.Random(0)) == ([], [])


def test_shuffles_are_seeded_and_keep_punctuation() -> None:
    caption = "A man in a red shirt, holding an umbrella!"
    a = WordOrderPerturber().perturb(caption, sample_rng(3, "k1"))
    assert a == WordOrderPerturber().perturb(caption, sample_rng(3, "k1"))
    assert a != WordOrderPerturber().perturb(caption, sample_rng(4, "k1"))
    assert [t for _, t in a] == ["shuffle_words", "shuffle_trigrams", "shuffle_within_trigrams"]
    for text, _ in a:
        assert text[0].isupper() and text.endswith("!") and text.count(",") == 1
    # "a cat" has one order other than its own; two equal words have none
    assert WordOrderPerturber().perturb("a cat", random.Random(0)) == [("cat a", "shuffle_words")]
    assert WordOrderPerturber().perturb("cat cat", random.Random(0)) == []


def test_generator_takes_types_round_robin_up_to_k() -> None:
    caption = "a small red cube to the left of a large blue sphere"
    texts, types = NegativeGenerator(per_caption=3)(caption, random.Random(0))
    assert types == ["swap_attributes", "swap_objects", "shuffle_words"]
    assert texts[:2] == [EXACT[caption][0][0], EXACT[caption][2][0]]


def _run_cli(*argv: str) -> int:
    from data_prep.__main__ import main

    return main(["negatives", *argv])


def test_negatives_cli_copies_shards_and_adds_neg_json(tmp_path: Path) -> None:
    import webdataset as wds

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    captions = ["a red cube and a blue ball", "a dog on a sofa", "a photo of a cat", "cat", "a small green cone"]
    keys = []
    for s in range(2):
        with wds.TarWriter(str(src / f"shard-{s:06d}.tar")) as sink:
            for i, caption in enumerate(captions):
                key = f"{s:02d}{i:04d}"
                keys.append(key)
                meta = {"i": i, "captions": [caption, "a cat under a table"]} if i == 1 else {"i": i}
                sink.write({"__key__": key, "jpg": bytes([s, i]) * 50, "txt": caption, "json": meta})
    (src / "sizes.json").write_text('{"shard-000000.tar": 5, "shard-000001.tar": 5}\n')
    assert _run_cli("--shards", str(src), "--output", str(out), "--per-caption", "2", "--seed", "7") == 0
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "sizes.json", "stats.json"]
    assert (out / "sizes.json").read_bytes() == (src / "sizes.json").read_bytes()
    for s in range(2):
        before, after = read_tar_members(src / f"shard-{s:06d}.tar"), read_tar_members(out / f"shard-{s:06d}.tar")
        negs = {k: v for k, v in after.items() if k.endswith(".neg.json")}
        assert {k: v for k, v in after.items() if k not in negs} == before  # byte-identical members
        assert sorted(negs) == sorted(f"{k}.neg.json" for k in keys[5 * s: 5 * s + 5])
        records = [json.loads(negs[f"{s:02d}{i:04d}.neg.json"]) for i in range(5)]
        assert records[0]["negatives"][0] == "a blue cube and a red ball"
        assert records[0]["types"] == ["swap_attributes", "shuffle_words"]
        assert records[1]["negatives"][0] == "a sofa on a dog"
        alternative = records[1]["alternatives"]
        assert len(alternative) == 1 and alternative[0]["caption"] == "a cat under a table"
        assert alternative[0]["negatives"][0] == "a table under a cat" and len(alternative[0]["negatives"]) == 2
        assert "alternatives" not in records[0]
        assert records[2]["types"] == ["shuffle_words", "shuffle_trigrams"]
        assert records[3] == {"caption": "cat", "negatives": [], "types": []}
        assert records[4]["types"] == ["shuffle_words", "shuffle_trigrams"]
        with tarfile.open(out / f"shard-{s:06d}.tar") as tar:  # samples stay contiguous and in order
            order = [m.name.split(".")[0] for m in tar.getmembers()]
            assert list(dict.fromkeys(order)) == keys[5 * s: 5 * s + 5]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples"] == 10 and stats["shards"] == 2
    assert stats["samples_with_lexicon_perturbation"] == 4
    assert stats["samples_without_lexicon_perturbation"] == 6 and stats["samples_without_negatives"] == 2
    assert stats["negatives"] == 2 * (2 + 2 + 2 + 0 + 2)
    # same seed -> byte-identical shards
    again = tmp_path / "again"
    assert _run_cli("--shards", str(src), "--output", str(again), "--per-caption", "2", "--seed", "7") == 0
    assert (again / "shard-000001.tar").read_bytes() == (out / "shard-000001.tar").read_bytes()
    assert _run_cli("--shards", str(src), "--output", str(src), "--per-caption", "2") == 2  # refuses in place
    # shards from a folder without sizes.json: sizes written from the counts
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "part-7.tar").write_bytes((src / "shard-000001.tar").read_bytes())
    assert _run_cli("--shards", str(lone / "part-7.tar"), "--output", str(tmp_path / "lone_out")) == 0
    assert json.loads((tmp_path / "lone_out" / "sizes.json").read_text()) == {"part-7.tar": 5}
    assert len(read_tar_members(tmp_path / "lone_out" / "part-7.tar")) == 20
