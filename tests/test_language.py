"""The caption language filter: py3langid's identification, the threshold, codes checked, and
ingest counting captions and samples left out by language."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.ingest import run_ingest
from data_prep.ingest_options import IngestOptions
from data_prep.language import LanguageFilter, caption_language, parse_languages
from ingest_fixtures import write_image

pytest.importorskip("py3langid")

CAPTIONS = {"en": "a photo of a dog running on the beach", "de": "ein Hund läuft am Strand entlang",
            "fr": "un chien qui court sur la plage", "ja": "浜辺を走っている犬の写真"}


@pytest.mark.parametrize("lang", sorted(CAPTIONS))
def test_languages_are_identified(lang: str) -> None:
    found, prob = caption_language(CAPTIONS[lang])
    assert found == lang and 0.5 < prob <= 1.0


def test_threshold_letters_and_codes() -> None:
    english = LanguageFilter(frozenset({"en"}))
    assert english.check(CAPTIONS["en"]) is None and english.check(CAPTIONS["de"]) == "language"
    assert english.check("12345 !!") is None  # no letter: no language to find, not checked
    lang, prob = caption_language("ein Hund am Strand")
    assert lang == "de" and prob < 0.9
    assert LanguageFilter(frozenset({"de"}), min_probability=prob - 1e-3).check("ein Hund am Strand") is None
    assert LanguageFilter(frozenset({"de"}), min_probability=prob + 1e-3).check("ein Hund am Strand") == "language"
    assert parse_languages(" en, DE ") == {"en", "de"}
    with pytest.raises(ValueError, match=r"unknown language code\(s\) \['xx'\]"):
        parse_languages("en,xx")


def test_ingest_keeps_the_chosen_languages_and_counts_the_rest(tmp_path: Path) -> None:
    rows = [{"image": f"{i}.jpg", "caption": caption} for i, caption in enumerate(
        [CAPTIONS["en"], CAPTIONS["de"], [CAPTIONS["fr"], CAPTIONS["en"]], CAPTIONS["ja"], "2024"])]
    for i in range(len(rows)):
        write_image(tmp_path / f"{i}.jpg", i)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = run_ingest(IngestOptions(inputs=[str(tmp_path / "pairs.jsonl")], output=str(tmp_path / "out"),
                                     languages="en"), progress=False)
    assert stats["samples_written"] == 3  # English, the French+English pair (its English caption), '2024'
    assert stats["skipped"] == {"language": 2} and stats["dropped_captions"] == {"language": 1}
    assert json.loads((tmp_path / "out" / "ingest.json").read_text())["options"]["languages"] == "en"
    with pytest.raises(ValueError, match="unknown language"):
        IngestOptions(inputs=["x"], output="y", languages="english").validate()
