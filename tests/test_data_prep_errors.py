"""Every data_prep error a user meets names the path and what was expected, with rc != 0 and no
traceback: reader errors (file, format tried, format detected) and missing or wrong inputs of
every sub-command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.__main__ import main as prep_main
from data_prep.readers import open_reader
from ingest_fixtures import write_image


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = prep_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_csv_read_as_coco_names_file_format_tried_and_detected(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "captions.csv"
    csv.write_text("image,caption\na.jpg,a cat\n")
    code, err = _run(capsys, "ingest", "--input", csv, "--format", "coco", "--output", tmp_path / "o", "--no-progress")
    assert code == 2
    assert err.startswith(f"vlp-prep ingest: error: {csv}: cannot read as coco (JSONDecodeError: Expecting value")
    assert "coco expects a COCO captions .json file" in err
    assert "found a file of 26 bytes (detected format: table); try --format table" in err


@pytest.mark.parametrize("make, fmt, expected", [
    ("csv", "folder", "cannot read as folder (it is a file); folder expects a directory of images"),
    ("csv", "img2dataset", "cannot read as img2dataset (it is a file)"),
    ("dir", "table", "cannot read as table (it is a directory); table expects a .csv/.tsv/.parquet file"),
    ("dir", "img2dataset", "cannot read as img2dataset (no *.tar shards in it)"),
    ("dir", "coco", "cannot read as coco (it is a directory)"),
    ("csv_other_columns", "auto", "cannot read as table (ValueError: no column(s) ['caption', 'image']; "
                                  "columns are ['path', 'text'])"),
    ("coco_no_image_id", "auto", "cannot read as coco (KeyError: 'image_id')"),
    ("tar_not_tar", "img2dataset", "cannot read as img2dataset (ReadError: "),
])
def test_every_reader_error_names_file_tried_and_detected(tmp_path: Path, make: str, fmt: str, expected: str) -> None:
    from data_prep.readers import ReaderError

    paths = {"csv": ("x.csv", "image,caption\na.jpg,a\n", "table"),
             "csv_other_columns": ("x.csv", "path,text\na.jpg,a\n", "table"),
             "coco_no_image_id": ("x.json", json.dumps({"images": [], "annotations": [{"caption": "a"}]}), "coco")}
    if make in paths:
        name, text, detected = paths[make]
        path = tmp_path / name
        path.write_text(text)
    elif make == "tar_not_tar":
        path, detected = tmp_path / "i2d", "img2dataset"
        path.mkdir()
        (path / "00000.tar").write_bytes(b"not a tar at all" * 40)
    else:
        path, detected = tmp_path / "d", "imagefolder"
        write_image(path / "cat" / "1.jpg", 1)
    with pytest.raises(ReaderError) as caught:
        list(open_reader(path, fmt))
    message = str(caught.value)
    assert message.startswith(f"{path}: {expected}")
    assert f"(detected format: {detected})" in message
    assert ("try --format" in message) == (detected != fmt and fmt != "auto")


def _shards_dir(root: Path) -> Path:
    from data_prep.shard_writer import ShardWriter

    with ShardWriter(root, "shard-%06d.tar", max_count=10) as writer:
        writer.write({"__key__": "000", "txt": "a red cube"})
    return root


def test_missing_inputs_of_every_command_are_named(tmp_path: Path, capsys) -> None:
    gone = tmp_path / "gone"
    shards = _shards_dir(tmp_path / "shards")
    cases = [
        (["ingest", "--input", gone, "--output", tmp_path / "o"], f"input not found: {gone}"),
        (["ingest", "--input", gone, "--format", "table", "--output", tmp_path / "o"],
         f"input not found: {gone} (--format table expects a .csv/.tsv/.parquet file"),
        (["ingest", "--input", gone / "x.csv", "--output", tmp_path / "o"], f"input table not found: {gone / 'x.csv'}"),
        (["tokenizer", "--shards", gone, "--vocab-size", 10, "--out", tmp_path / "t.model"], str(gone)),
        (["negatives", "--shards", gone, "--output", tmp_path / "neg"], str(gone)),
        (["dedup", "--shards", gone, "--model", tmp_path / "run", "--output", tmp_path / "dd"],
         f"--shards folder not found: {gone}"),
        (["dedup", "--shards", shards, "--model", gone, "--output", tmp_path / "dd"], f"model not found: {gone}"),
    ]
    for argv, expected in cases:
        code, err = _run(capsys, *argv)
        assert code == 2 and expected in err, (argv, err)


def test_wrong_files_given_to_shard_commands_are_named(tmp_path: Path, capsys) -> None:
    not_tar = tmp_path / "bad" / "shard-000000.tar"
    not_tar.parent.mkdir()
    not_tar.write_text("image,caption\n")
    for argv in (["tokenizer", "--shards", not_tar, "--vocab-size", 10, "--out", tmp_path / "t.model"],
                 ["negatives", "--shards", not_tar, "--output", tmp_path / "neg"]):
        code, err = _run(capsys, *argv)
        assert code == 2 and f"{not_tar}: not a readable tar shard" in err, err
    code, err = _run(capsys, "dedup", "--shards", _shards_dir(tmp_path / "s"), "--model", not_tar,
                     "--output", tmp_path / "dd", "--no-progress")
    assert code == 2 and f"--model {not_tar}: cannot load it as a vlp run directory or checkpoint" in err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = _run(capsys, "synth-shapes", "--out", a_file / "sub", "--train-samples", 2)
    assert code == 2 and f"cannot write under --out {a_file / 'sub'}: Not a directory" in err


def test_tokenizer_on_shards_without_captions(tmp_path: Path, capsys) -> None:
    from data_prep.shard_writer import ShardWriter

    with ShardWriter(tmp_path / "s", "shard-%06d.tar", max_count=10) as writer:
        writer.write({"__key__": "000", "cls": "1"})
    code, err = _run(capsys, "tokenizer", "--shards", tmp_path / "s", "--vocab-size", 10, "--out", tmp_path / "t.model")
    assert code == 2 and "hold no captions (1 samples" in err
    assert not (tmp_path / "t.model").exists()
