"""Caption metrics: BLEU-1..4 and CIDEr-D equal pycocoevalcap's own scorers, the pure-Python
tokenizer equals pycocoevalcap's PTBTokenizer (when Java is here), METEOR / SPICE are computed
or skipped with a reason, and a missing pycocoevalcap names the install line."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import sys

import pytest

from eval.captioning import metrics
from eval.captioning.metrics import caption_metrics
from eval.captioning.ptb import java_tokenize, tokenize, tokenize_caption

PREDICTIONS = {
    "1": "A man riding a wave on a surfboard.",
    "2": "Two dogs playing in the grass",
    "3": "a plate of food with broccoli",
    "4": "A red bus driving down the street.",
}
REFERENCES = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave.", "A person surfing."],
    "2": ["Two dogs play in the grass.", "Dogs running on a lawn", "two brown dogs", "A pair of dogs outside.",
          "The dogs are playing."],
    "3": ["A plate with food on it.", "Food on a white plate"],
    "4": ["A red double-decker bus on a street.", "A bus driving down the road.", "The red bus is moving."],
}
CAPTIONS = [
    "A man riding a wave on top of a surfboard.", "Two dogs don't like the cat's toy!",
    "It's a black-and-white photo of a 1950s car, isn't it?", "The U.S. flag flies over Mr. Smith's house.",
    'A woman (wearing a hat) holds a "big" umbrella.', "I can't believe it's 3.5 feet tall; it's huge...",
    'A sign reads: "STOP" -- then turns left.', "Price is $5.99 or 5% off & more.", "He said 'hello' to them.",
    "They're gonna eat the pizza, aren't they?", "Kids wanna play with 1,000 balls.", "People cannot stand it.",
    "We'll see, you'd think, I've been there.", "A 10-year-old boy's birthday cake", "a clock at 10:30 a.m.",
    "The dog's ball is the dogs' ball.", "Don\u2019t touch \u201cthe\u201d car\u2019s wheel\u2026",
    "A man \u2014 a woman \u2013 a child", "hat(s) on the table?!", "a train on the tracks- near a station",
    "Half is 1/2 of it, at 100 km/h", "A {curly} [square] bracket test.", "an old man  with   extra spaces .",
]


def pycoco_scores(gts: dict, res: dict) -> dict:
    """BLEU-1..4 and CIDEr-D by pycocoevalcap's scorers themselves."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu_1": bleu[0], "bleu_2": bleu[1], "bleu_3": bleu[2], "bleu_4": bleu[3], "cider": cider}


def test_bleu_and_cider_equal_pycocoevalcap_on_several_references() -> None:
    scores = caption_metrics(PREDICTIONS, REFERENCES, java_metrics=False)
    gts = tokenize(REFERENCES)
    res = tokenize({k: [v] for k, v in PREDICTIONS.items()})
    assert gts["1"][0] == "a man riding a wave on top of a surfboard" and res["4"] == ["a red bus driving down the street"]
    expected = pycoco_scores(gts, res)
    assert scores["metrics"] == pytest.approx(expected, rel=1e-12)
    assert 0 < scores["metrics"]["bleu_4"] < scores["metrics"]["bleu_1"] < 1 and scores["metrics"]["cider"] > 0
    assert set(scores["metrics_skipped"]) == {"meteor", "spice"}


def test_bleu_of_one_caption_equals_a_hand_computation() -> None:
    scores = caption_metrics({"x": "the cat sat down"}, {"x": ["The cat sat up."]}, java_metrics=False)["metrics"]
    # same length (brevity penalty 1): unigrams 3/4, bigrams 2/3, trigrams 1/2, 4-grams 0/1
    assert scores["bleu_1"] == pytest.approx(3 / 4, rel=1e-6)
    assert scores["bleu_2"] == pytest.approx(math.sqrt(3 / 4 * 2 / 3), rel=1e-6)
    assert scores["bleu_3"] == pytest.approx((3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3), rel=1e-6)
    assert scores["bleu_4"] < 1e-3  # pycocoevalcap's tiny smoothing of the empty 4-gram count
    exact = caption_metrics({"x": "the cat sat"}, {"x": ["the cat sat", "a dog"]}, java_metrics=False)["metrics"]
    assert exact["bleu_1"] == pytest.approx(1.0) and exact["bleu_3"] == pytest.approx(1.0)


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTBTokenizer needs a Java runtime")
def test_python_tokenizer_equals_ptbtokenizer() -> None:
    captions = {str(i): [c] for i, c in enumerate(CAPTIONS)}
    assert tokenize(captions) == java_tokenize(captions)
    assert caption_metrics(PREDICTIONS, REFERENCES, java_metrics=False) == caption_metrics(
        PREDICTIONS, REFERENCES, java_metrics=False, tokenizer="java")


def test_tokenizer_keeps_what_ptb_keeps() -> None:
    assert tokenize_caption("Two dogs don't like the cat's toy!") == "two dogs do n't like the cat 's toy"
    assert tokenize_caption('A woman (wearing a hat) holds a "big" umbrella.') == \
        "a woman -lrb- wearing a hat -rrb- holds a big umbrella"  # lowercased brackets stay, as in pycocoevalcap
    assert tokenize_caption("Price is $5.99 or 5% off, at 10:30 a.m.") == "price is $ 5.99 or 5 % off at 10:30 a.m."


def test_meteor_and_spice_are_computed_or_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = caption_metrics(PREDICTIONS, REFERENCES)
    for name in ("meteor", "spice"):
        if name in scores["metrics"]:
            assert 0.0 < scores["metrics"][name] < 1.0 and name not in scores["metrics_skipped"]
        else:
            assert scores["metrics_skipped"][name].startswith("skipped: ") and len(scores["metrics_skipped"][name]) > 20
    package = metrics.require_pycocoevalcap()
    if shutil.which("java") and not all((package / "spice" / "lib" / m).is_file() for m in metrics.SPICE_MODELS):
        assert "Stanford CoreNLP models absent" in scores["metrics_skipped"]["spice"]
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    without_java = caption_metrics(PREDICTIONS, REFERENCES)
    assert without_java["metrics_skipped"] == {"meteor": "skipped: no Java runtime (java not on PATH)",
                                               "spice": "skipped: no Java runtime (java not on PATH)"}
    assert {k: without_java["metrics"][k] for k in ("bleu_4", "cider")} == \
        {k: scores["metrics"][k] for k in ("bleu_4", "cider")}


def test_a_failing_meteor_is_a_skip_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    import pycocoevalcap.meteor.meteor as meteor

    def broken() -> None:
        raise OSError("java exited")

    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(meteor, "Meteor", broken)
    value, reason = metrics.meteor_score({"a": ["x y"]}, {"a": ["x"]})
    assert value is None and reason == "METEOR did not run: OSError: java exited"


def test_missing_pycocoevalcap_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    with pytest.raises(metrics.CaptionDependencyError, match=r"pip install 'vlp\[caption\]'"):
        caption_metrics(PREDICTIONS, REFERENCES, java_metrics=False)


def test_predictions_and_references_must_match() -> None:
    with pytest.raises(ValueError, match="same images"):
        caption_metrics({"1": "a"}, {"2": ["a"]}, java_metrics=False)
    with pytest.raises(ValueError, match="no reference caption"):
        caption_metrics({"1": "a"}, {"1": []}, java_metrics=False)


def test_cider_of_one_image_is_skipped_not_a_silent_zero() -> None:
    one = caption_metrics({"x": "a cat on a mat"}, {"x": ["a cat on a mat", "a cat sits on the mat"]},
                          java_metrics=False)
    assert "cider" not in one["metrics"] and one["metrics"]["bleu_4"] == pytest.approx(1.0)
    assert one["metrics_skipped"]["cider"].startswith("skipped: CIDEr-D needs at least 2 images")
    two = caption_metrics({"x": "a cat on a mat", "y": "a dog"}, {"x": ["a cat on a mat"], "y": ["a dog runs"]},
                          java_metrics=False)
    assert two["metrics"]["cider"] > 0 and "cider" not in two["metrics_skipped"]


def test_ids_are_matched_as_strings() -> None:
    scores = caption_metrics({1: "a cat", 2: "a dog"}, {"1": ["a cat"], "2": ["a dog"]}, java_metrics=False)
    assert scores["metrics"]["bleu_1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="distinct as strings"):
        caption_metrics({1: "a cat", "1": "a dog"}, {"1": ["a cat"]}, java_metrics=False)


UNICODE_CAPTIONS = {
    "a dog\U0001F436 on the grass \U0001F44D\U0001F3FD": "a dog on the grass",  # emoji: dropped, the word split there
    "a cat\u200bsits on a co\u00adop": "a cat sits on a coop",  # zero-width space separates, soft hyphen goes
    "a \u00abchic\u00bb caf\u00e9 \u2039ok\u203a": "a chic caf\u00e9 ok",  # guillemets are quotes
    "see https://a.com/x?q=1, (http://b.org/p).": "see https://a.com/x?q=1 -lrb- http://b.org/p -rrb-",
}


def test_tokenizer_on_unicode_and_urls() -> None:
    assert {c: tokenize_caption(c) for c in UNICODE_CAPTIONS} == UNICODE_CAPTIONS


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTBTokenizer needs a Java runtime")
def test_python_tokenizer_equals_ptbtokenizer_on_unicode_and_urls() -> None:
    captions = {str(i): [c] for i, c in enumerate(UNICODE_CAPTIONS)}
    assert tokenize(captions) == java_tokenize(captions)


def test_auto_tokenizer_is_java_s_ptb_when_java_is_found_and_python_otherwise(monkeypatch):
    from eval.captioning import metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    assert metrics.resolve_tokenizer("auto") == "python"
    predictions, references = {"a": "a red circle", "b": "two squares"}, {"a": ["a red circle."], "b": ["two blue squares"]}
    assert metrics.caption_metrics(predictions, references, java_metrics=False)["tokenizer"] == "ptb-python"
    monkeypatch.setattr(metrics.shutil, "which", lambda name: "/usr/bin/java")
    assert metrics.resolve_tokenizer("auto") == "java"
    assert metrics.resolve_tokenizer("python") == "python"
    with pytest.raises(ValueError, match="'auto', 'python' or 'java'"):
        metrics.resolve_tokenizer("spacy")
