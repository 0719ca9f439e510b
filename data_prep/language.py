"""Language identification of captions, for ingest's ``--languages`` filter (py3langid, whose
model ships inside its wheel: nothing is downloaded).

A caption passes when its most likely language among the identifier's 142 (normalised
probabilities) is one of ``languages`` and, with ``min_probability`` above 0, at least that
likely. A caption without any letter (digits, punctuation, emoji) has no language to find and is
not checked. Short captions are identified less reliably ('red cube' reads as Romanian at 0.09):
keep ``min_probability`` low for alt-text-like captions, or leave the filter off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, FrozenSet, Optional, Tuple

REASON = "language"
"""The skip / dropped-caption reason of a caption in another language."""
_IDENTIFIER: Any = None


def _identifier() -> Any:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError as err:
            raise ImportError("--languages needs py3langid: pip install -e '.[prep]'") from err
        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def supported_languages() -> FrozenSet[str]:
    return frozenset(_identifier().nb_classes)


def caption_language(text: str) -> Tuple[str, float]:
    """(ISO 639 code, probability in [0, 1]) of the most likely language of ``text``."""
    lang, prob = _identifier().classify(text)
    return str(lang), float(prob)


def parse_languages(spec: str) -> FrozenSet[str]:
    """'en,de' -> {'en', 'de'}; ValueError naming a code the identifier does not know."""
    codes = frozenset(c.strip().lower() for c in spec.split(",") if c.strip())
    unknown = sorted(codes - supported_languages())
    if unknown:
        raise ValueError(f"--languages: unknown language code(s) {unknown}; py3langid knows "
                         f"{', '.join(sorted(supported_languages()))}")
    return codes


@dataclass(frozen=True)
class LanguageFilter:
    languages: FrozenSet[str]
    min_probability: float = 0.0

    def check(self, text: str) -> Optional[str]:
        """None when ``text`` passes, else :data:`REASON`."""
        if not any(ch.isalpha() for ch in text):
            return None
        lang, prob = caption_language(text)
        return None if lang in self.languages and prob >= self.min_probability else REASON
