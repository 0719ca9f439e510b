"""The caption language filter: py3langid's identification, the threshold, codes checked, short
captions left undetermined, pickling, and ingest counting captions and samples left out by language."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("py3langid")

from data_prep.ingest import run_ingest  # noqa: E402
from data_prep.ingest_options import IngestOptions  # noqa: E402
from data_prep.language import (UNDETERMINED, LanguageFilter, caption_language, count_letters,  # noqa: E402
                                parse_languages)
from ingest_fixtures import write_image  # noqa: E402

CAPTIONS = {"en": "a photo of a dog running on the beach", "de": "ein Hund läuft am Strand entlang",
            "fr": "un chien qui court sur la plage", "ja": "浜辺を走っている犬の写真"}


@pytest.mark.parametrize("lang", sorted(CAPTIONS))
def test_languages_are_identified(lang: str) -> None:
    found, prob = caption_language(CAPTIONS[lang])
    assert found == lang and 0.5 < prob <= 1.0


def test_threshold_and_codes() -> None:
    english = LanguageFilter({"en"})
    assert english.check(CAPTIONS["en"]) is None and english.check(CAPTIONS["de"]) == "language"
    assert english.check(CAPTIONS["ja"]) == "language"
    lang, prob = caption_language("ein Hund am Strand")
    assert lang == "de" and 0.1 < prob < 0.9
    assert LanguageFilter({"de"}, min_probability=prob - 1e-3).check("ein Hund am Strand") is None
    assert LanguageFilter({"de"}, min_probability=prob + 1e-3).check("ein Hund am Strand") == "language"
    assert LanguageFilter({"de", "en"}, min_probability=0.5).check(CAPTIONS["de"]) is None
    assert parse_languages(" en, DE ") == {"en", "de"}
    with pytest.raises(ValueError, match=r"unknown language code\(s\) \['xx'\]"):
        parse_languages("en,xx")
    with pytest.raises(ValueError, match="no language code"):
        parse_languages(" , ")
    with pytest.raises(ValueError, match=r"unknown language code\(s\) \['english'\]"):
        LanguageFilter({"english"})
    with pytest.raises(ValueError, match="min_probability"):
        LanguageFilter({"en"}, min_probability=1.5)


def test_short_captions_are_undetermined_and_kept_unless_asked() -> None:
    english = LanguageFilter({"en"})  # min_letters=10
    for text in ("dog", "red cube", "2024", "🐶🐱", "犬の写真", "IMG_1234.JPG", ""):
        assert english.assess(text) == UNDETERMINED and english.check(text) is None, text
    assert count_letters("red cube 🐶 42") == 7 and count_letters("abcdef", stop_at=3) == 3
    strict = LanguageFilter({"en"}, keep_undetermined=False)
    assert strict.check("red cube") == "language_undetermined" and strict.check(CAPTIONS["en"]) is None
    # at min_letters letters the identifier decides: 'red cube' (7 letters) reads as Romanian
    assert caption_language("red cube")[0] != "en"
    assert LanguageFilter({"en"}, min_letters=7).check("red cube") == "language"
    assert LanguageFilter({"en"}, min_letters=0).assess("2024") == UNDETERMINED  # no letter: never identified


def test_filter_pickles_without_the_model() -> None:
    filt = LanguageFilter({"en", "de"}, min_probability=0.2)
    data = pickle.dumps(filt)
    assert len(data) < 1000
    again = pickle.loads(data)
    assert again == filt and again.check(CAPTIONS["de"]) is None and again.check(CAPTIONS["fr"]) == "language"


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
