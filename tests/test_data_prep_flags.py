"""One flag name per idea across data_prep commands: ``--shard-samples`` (samples per shard)
everywhere, ``--shard-size`` accepted as the same option, both giving the same output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_prep.__main__ import build_parser, main as prep_main
from ingest_fixtures import write_image


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_with_shards_takes_both_spellings_as_one_option() -> None:
    commands = _subparsers()
    with_option = {}
    for name, parser in commands.items():
        for action in parser._actions:
            spellings = {"--shard-samples", "--shard-size"} & set(action.option_strings)
            if spellings:
                assert spellings == {"--shard-samples", "--shard-size"}, name
                assert action.option_strings[0] == "--shard-samples" and action.dest == "shard_samples", name
                with_option[name] = action
    assert sorted(with_option) == ["dedup", "ingest", "synth-shapes"]
    base = {"ingest": ["--input", "x", "--output", "y"], "dedup": ["--shards", "s", "--model", "m", "--output", "o"],
            "synth-shapes": ["--out", "o", "--train-samples", "1"]}
    for name, args in base.items():
        one = commands[name].parse_args([*args, "--shard-samples", "7"])
        other = commands[name].parse_args([*args, "--shard-size", "7"])
        assert vars(one) == vars(other) and one.shard_samples == 7


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_spellings_write_identical_shards(tmp_path: Path) -> None:
    for i in range(5):
        write_image(tmp_path / "in" / f"{i}.jpg", i)
        (tmp_path / "in" / f"{i}.txt").write_text(f"caption {i}")
    for flag in ("--shard-samples", "--shard-size"):
        assert prep_main(["ingest", "--input", str(tmp_path / "in"), "--output", str(tmp_path / flag), flag, "2",
                          "--no-progress"]) == 0
    sizes = json.loads((tmp_path / "--shard-size" / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 2, "shard-000001.tar": 2, "shard-000002.tar": 1}
    one, other = _tree(tmp_path / "--shard-samples"), _tree(tmp_path / "--shard-size")
    assert sorted(one) == sorted(other)
    assert all(one[k] == other[k] for k in one if k.endswith(".tar"))


def test_synth_shapes_spellings_write_identical_sets(tmp_path: Path) -> None:
    args = ["synth-shapes", "--train-samples", "10", "--image-size", "32", "--zeroshot-per-class", "1",
            "--retrieval-samples", "4", "--compositional-samples", "4", "--workers", "1"]
    for flag in ("--shard-samples", "--shard-size"):
        assert prep_main([*args, "--out", str(tmp_path / flag), flag, "4"]) == 0
    one, other = _tree(tmp_path / "--shard-samples"), _tree(tmp_path / "--shard-size")
    assert json.loads(one["train/sizes.json"]) == {"shard-000000.tar": 4, "shard-000001.tar": 4,
                                                   "shard-000002.tar": 2}
    assert sorted(one) == sorted(other)
    assert all(one[k] == other[k] for k in one if k.endswith(".tar"))
