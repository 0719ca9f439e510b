"""Caption metrics against reference captions (several per image), by pycocoevalcap's own scorers.

* BLEU-1..4 (``pycocoevalcap.bleu.bleu.Bleu(4)``, "closest" reference length) and CIDEr-D
  (``pycocoevalcap.cider.cider.Cider()``) are pure Python: always computed.
* METEOR (``pycocoevalcap.meteor``: ``java -jar meteor-1.5.jar`` in its package folder) and SPICE
  (``pycocoevalcap.spice``: Java plus the Stanford CoreNLP 3.6.0 models, which pycocoevalcap
  downloads on first use) are computed when they can run here; otherwise the result says why
  (``skipped: <reason>``), never a crash.

Captions are tokenized as pycocoevalcap's ``COCOEvalCap`` does (PTBTokenizer, lowercase, its
punctuation list removed). ``tokenizer="auto"`` (the default) runs pycocoevalcap's PTBTokenizer
itself when a Java runtime is found, so the numbers are COCO's; without Java, the pure-Python
:mod:`eval.captioning.ptb`, which gives the same tokens on ordinary captions (tested) but not on
every exotic one (some abbreviations, currency signs, fractions). The result names the tokenizer
used. ``"java"`` / ``"python"`` force one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval.captioning.ptb import java_tokenize, tokenize

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'vlp[caption]'"
BLEU_KEYS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
SPICE_MODELS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class CaptionDependencyError(ImportError, ValueError):
    """pycocoevalcap is not installed (a ValueError too, so the CLIs report it as a bad setup)."""


def require_pycocoevalcap() -> Path:
    """The pycocoevalcap package folder; :class:`CaptionDependencyError` naming the install line."""
    try:
        import pycocoevalcap.bleu.bleu  # noqa: F401 - the scorers' own modules
        import pycocoevalcap.cider.cider  # noqa: F401
    except ImportError as exn:
        raise CaptionDependencyError(f"caption metrics need pycocoevalcap ({exn}); install it with: "
                                     f"{INSTALL_HINT}") from exn
    from pycocoevalcap.bleu import bleu  # a namespace package: its module file names the folder

    return Path(str(bleu.__file__)).resolve().parent.parent


def _checked(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    """The ids, in order; a ValueError when they differ, or an image has no reference."""
    ids = [str(k) for k in predictions]
    if len(set(ids)) != len(ids) or len({str(k) for k in references}) != len(references):
        raise ValueError("image ids must stay distinct as strings (e.g. not both 1 and '1')")
    if set(ids) != {str(k) for k in references}:
        missing = sorted(set(map(str, references)) ^ set(ids))[:3]
        raise ValueError(f"predictions and references must cover the same images; differing ids: {missing}")
    references = {str(k): v for k, v in references.items()}
    empty = [k for k in ids if not references[k]]
    if empty:
        raise ValueError(f"image {empty[0]!r} has no reference caption")
    return ids


def resolve_tokenizer(tokenizer: str) -> str:
    """'java' or 'python' for ``tokenizer`` ('auto': Java's PTBTokenizer when a Java runtime is found)."""
    if tokenizer not in ("auto", "python", "java"):
        raise ValueError(f"tokenizer must be 'auto', 'python' or 'java', got {tokenizer!r}")
    if tokenizer == "auto":
        return "java" if shutil.which("java") else "python"
    return tokenizer


def tokenized_inputs(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                     tokenizer: str = "python") -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(references, predictions) tokenized as pycocoevalcap's scorers take them: {id: [caption]}."""
    ids = _checked(predictions, references)
    tokenizer = resolve_tokenizer(tokenizer)
    predictions = {str(k): v for k, v in predictions.items()}
    references = {str(k): v for k, v in references.items()}
    tok = tokenize if tokenizer == "python" else java_tokenize
    gts = tok({k: [str(c) for c in references[k]] for k in ids})
    res = tok({k: [str(predictions[k])] for k in ids})
    return gts, res


def bleu_cider(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of tokenized inputs (pycocoevalcap's scorers; BLEU's printout muted)."""
    require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not gts:
        return {**{k: float("nan") for k in BLEU_KEYS}, "cider": float("nan")}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(dict(gts), dict(res))
    cider, _ = Cider().compute_score(dict(gts), dict(res))
    return {**{k: float(v) for k, v in zip(BLEU_KEYS, bleu)}, "cider": float(cider)}


def java_missing() -> str | None:
    """Why a Java metric cannot run (no ``java`` on PATH), or None."""
    return None if shutil.which("java") else "no Java runtime (java not on PATH)"


def meteor_score(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> tuple[float | None, str | None]:
    """(METEOR, None), or (None, why it could not run)."""
    reason = java_missing()
    if reason is not None:
        return None, reason
    if not gts:
        return None, "no images"
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(dict(gts), dict(res))
        finally:
            process = scorer.meteor_p
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdin.close()
            process.stdout.close()
            process.stderr.close()
        return float(score), None
    except Exception as exn:  # noqa: BLE001 - a Java metric that cannot run is reported, not fatal
        return None, f"METEOR did not run: {type(exn).__name__}: {exn}"


def spice_missing(package: Path) -> str | None:
    """Why SPICE cannot run here (no Java, or the CoreNLP models pycocoevalcap downloads absent)."""
    reason = java_missing()
    if reason is not None:
        return reason
    lib = package / "spice" / "lib"
    absent = [name for name in SPICE_MODELS if not (lib / name).is_file()]
    if absent:
        return (f"Stanford CoreNLP models absent ({', '.join(absent)} in {lib}); pycocoevalcap downloads them "
                "on first use, which needs network: run `python -c \"from pycocoevalcap.spice.spice import "
                "Spice; Spice()\"` once online")
    return None


def spice_score(gts: Mapping[str, list[str]], res: Mapping[str, list[str]]) -> tuple[float | None, str | None]:
    """(SPICE, None), or (None, why it could not run). Never starts pycocoevalcap's download."""
    reason = spice_missing(require_pycocoevalcap())
    if reason is not None:
        return None, reason
    if not gts:
        return None, "no images"
    try:
        from pycocoevalcap.spice.spice import Spice

        with contextlib.redirect_stdout(io.StringIO()):
            score, _ = Spice().compute_score(dict(gts), dict(res))
        return float(score), None
    except Exception as exn:  # noqa: BLE001 - reported in the result
        return None, f"SPICE did not run: {type(exn).__name__}: {exn}"


def caption_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
                    java_metrics: bool = True, tokenizer: str = "auto") -> dict[str, Any]:
    """Scores of ``predictions`` ({image id: caption}) against ``references`` ({image id: [caption, ...]}).

    Returns ``{"metrics": {bleu_1..bleu_4[, cider][, meteor][, spice]}, "metrics_skipped":
    {metric: "skipped: <reason>"}, "tokenizer": "ptb-java" | "ptb-python"}``; ``java_metrics=False`` skips METEOR and SPICE; CIDEr-D is
    skipped for a single image (its IDF weights are all 0 then).
    """
    require_pycocoevalcap()
    tokenizer = resolve_tokenizer(tokenizer)
    gts, res = tokenized_inputs(predictions, references, tokenizer)
    metrics: dict[str, Any] = bleu_cider(gts, res)
    skipped: dict[str, str] = {}
    if len(gts) < 2:  # CIDEr-D's IDF is over the images: with one, every n-gram's is log(1/1) = 0
        metrics.pop("cider")
        skipped["cider"] = (f"skipped: CIDEr-D needs at least 2 images (its IDF weights over {len(gts)} image "
                            "are all 0, so every caption would score 0)")
    for name, scorer in (("meteor", meteor_score), ("spice", spice_score)):
        if not java_metrics:
            skipped[name] = "skipped: not asked for (--no-java-metrics)"
            continue
        value, reason = scorer(gts, res)
        if value is None:
            log.info("%s skipped: %s", name, reason)
            skipped[name] = f"skipped: {reason}"
        else:
            metrics[name] = value
    return {"metrics": metrics, "metrics_skipped": skipped, "tokenizer": f"ptb-{tokenizer}"}

