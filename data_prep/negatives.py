"""NegCLIP-style hard-negative captions without a tagger model.

A perturbation is a permutation of a caption's tokens, so every negative keeps the caption's
words (same multiset, up to the capital of the first word) and differs from it in order:

- ``swap_attributes``: two attributes of different objects trade places ("a red cube and a blue
  ball" -> "a blue cube and a red ball"), same category (colour, size, material) first;
- ``swap_objects``: the noun phrases around a relation trade places ("a dog on a sofa" -> "a sofa
  on a dog", "a man is riding a horse" -> "a horse is riding a man");
- ``shuffle_words``, ``shuffle_trigrams``, ``shuffle_within_trigrams``: the word-order
  perturbations of Yuksekgonul et al. (ARO / NegCLIP), seeded and never equal to the original.

Attributes and relations come from word lists (vlp/text/lexicon.py) and noun phrases
from determiners and phrase breaks. Anything with ``perturb(caption, rng) -> [(text, type)]``
is a :class:`CaptionPerturber`: a part-of-speech tagger can replace :class:`LexiconPerturber`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

from vlp.text import lexicon as lex

Negative = Tuple[str, str]  # (text, type)

LEXICON_TYPES = ("swap_attributes", "swap_objects")
SHUFFLE_TYPES = ("shuffle_words", "shuffle_trigrams", "shuffle_within_trigrams")

_TOKEN_RE = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
_NO_SPACE_BEFORE = set(",.;:!?)]}'’%")
_NO_SPACE_AFTER = set("([{")


def tokenize(caption: str) -> List[str]:
    """Words (with inner hyphens/apostrophes) and single punctuation marks."""
    return _TOKEN_RE.findall(caption)


def detokenize(tokens: Sequence[str]) -> str:
    out = ""
    for i, tok in enumerate(tokens):
        if i and tok not in _NO_SPACE_BEFORE and tokens[i - 1] not in _NO_SPACE_AFTER:
            out += " "
        out += tok
    return out


def is_word(token: str) -> bool:
    return token[:1].isalnum() or token[:1] == "_"


def words_of(caption: str) -> List[str]:
    """The lower-cased words of a caption (what every perturbation preserves as a multiset)."""
    return [t.lower() for t in tokenize(caption) if is_word(t)]


def apply_permutation(tokens: Sequence[str], perm: Sequence[int]) -> str:
    """``tokens`` reordered as ``perm`` (new position -> old index), keeping sentence case: when the
    first word moves, the new first word takes its capital and it loses its own."""
    new = [tokens[i] for i in perm]
    first = tokens[0]
    sentence_case = first[:1].isupper() and (len(first) == 1 or first[1:] == first[1:].lower()) and first != "I"
    if sentence_case and perm[0] != 0:
        new[0] = new[0][:1].upper() + new[0][1:]
        moved = list(perm).index(0)
        new[moved] = first[:1].lower() + first[1:]
    return detokenize(new)


class CaptionPerturber(Protocol):
    """Something that proposes negatives for a caption; ``rng`` is the only source of randomness."""

    def perturb(self, caption: str, rng: random.Random) -> List[Negative]:
        ...


def _category(word: str) -> Optional[str]:
    for name, words in lex.ATTRIBUTE_CATEGORIES.items():
        if word in words:
            return name
    return None


def _is_verb(word: str) -> bool:
    return word in lex.LINKING_VERBS or (word.endswith("ing") and len(word) > 4 and word not in lex.ING_NOUNS)


@dataclass
class LexiconPerturber:
    """Attribute and relation swaps found with word lists (see the module docstring)."""

    relations: Sequence[str] = lex.RELATIONS
    _relations: List[List[str]] = field(init=False, repr=False)
    _relation_words: frozenset = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._relations = sorted((r.split() for r in self.relations), key=len, reverse=True)
        self._relation_words = frozenset(w for r in self._relations if len(r) == 1 for w in r)

    def perturb(self, caption: str, rng: random.Random) -> List[Negative]:
        tokens = tokenize(caption)
        lower = [t.lower() for t in tokens]
        out = [(apply_permutation(tokens, p), "swap_attributes") for p in self._attribute_swaps(lower)]
        out += [(apply_permutation(tokens, p), "swap_objects") for p in self._object_swaps(lower)]
        return out

    # -- attributes ------------------------------------------------------------------
    def _attribute_runs(self, lower: List[str]) -> List[List[int]]:
        """Runs of consecutive attribute words followed by a head word (one run per object)."""
        runs: List[List[int]] = []
        i = 0
        while i < len(lower):
            if _category(lower[i]) is None:
                i += 1
                continue
            run = [i]
            while i + 1 < len(lower) and _category(lower[i + 1]) is not None:
                i += 1
                run.append(i)
            head = i + 1
            if head < len(lower) and is_word(lower[head]) and lower[head] not in lex.PHRASE_BREAKS \
                    and lower[head] not in self._relation_words and not _is_verb(lower[head]):
                runs.append(run)
            i += 1
        return runs

    def _attribute_swaps(self, lower: List[str]) -> List[List[int]]:
        runs = self._attribute_runs(lower)
        perms: List[List[int]] = []
        for a in range(len(runs)):
            for b in range(a + 1, len(runs)):
                pairs = []
                for i in runs[a]:
                    for j in runs[b]:
                        if _category(lower[i]) == _category(lower[j]) and lower[i] != lower[j]:
                            pairs.append((i, j))
                if not pairs and lower[runs[a][-1]] != lower[runs[b][-1]]:
                    pairs.append((runs[a][-1], runs[b][-1]))  # different categories: swap the last ones
                for i, j in pairs:
                    perm = list(range(len(lower)))
                    perm[i], perm[j] = j, i
                    perms.append(perm)
        return perms

    # -- objects around a relation ---------------------------------------------------
    def _match_relation(self, lower: List[str], i: int) -> int:
        """End (exclusive) of the longest relation phrase starting at ``i``, or ``i``."""
        for rel in self._relations:
            if lower[i : i + len(rel)] == rel:
                return i + len(rel)
        return i

    def _stops_phrase(self, word: str) -> bool:
        return (not is_word(word) or word in lex.PHRASE_BREAKS or word in self._relation_words
                or _is_verb(word))

    def _left_phrase(self, lower: List[str], end: int) -> Optional[int]:
        """Start of the noun phrase ending just before ``end`` (through its determiner), or None."""
        start = end
        while start > 0:
            word = lower[start - 1]
            if word in lex.DETERMINERS:
                start -= 1
                break
            if self._stops_phrase(word):
                break
            start -= 1
        content = [w for w in lower[start:end] if w not in lex.DETERMINERS]
        return start if content else None

    def _right_phrase(self, lower: List[str], start: int) -> Optional[int]:
        """End (exclusive) of the noun phrase starting at ``start``, or None."""
        end = start
        if end < len(lower) and lower[end] in lex.DETERMINERS:
            end += 1
        while (end < len(lower) and not self._stops_phrase(lower[end]) and lower[end] not in lex.DETERMINERS
               and self._match_relation(lower, end) == end):
            end += 1
        content = [w for w in lower[start:end] if w not in lex.DETERMINERS]
        return end if content else None

    def _object_swaps(self, lower: List[str]) -> List[List[int]]:
        perms: List[List[int]] = []
        i = 0
        while i < len(lower):
            rel_end = self._match_relation(lower, i)
            if rel_end == i:
                i += 1
                continue
            rel_start = i
            while rel_start > 0 and lower[rel_start - 1] in lex.LINKING_VERBS:
                rel_start -= 1
            left = self._left_phrase(lower, rel_start)
            right = self._right_phrase(lower, rel_end)
            if left is not None and right is not None:
                idx = list(range(len(lower)))
                # phrase B, then the (linking verbs +) relation, then phrase A
                perms.append(idx[:left] + idx[rel_end:right] + idx[rel_start:rel_end] + idx[left:rel_start]
                             + idx[right:])
            i = rel_end
        return perms


@dataclass
class WordOrderPerturber:
    """Seeded word-order shuffles; punctuation stays in place, results always differ from the caption."""

    types: Sequence[str] = SHUFFLE_TYPES
    tries: int = 10

    def perturb(self, caption: str, rng: random.Random) -> List[Negative]:
        tokens = tokenize(caption)
        positions = [i for i, t in enumerate(tokens) if is_word(t)]
        if len(positions) < 2:
            return []
        original = detokenize(tokens).lower()
        out: List[Negative] = []
        for kind in self.types:
            for _ in range(self.tries):
                order = self._shuffle(kind, positions, rng)
                if order is None:
                    break
                perm = list(range(len(tokens)))
                for slot, source in zip(positions, order):
                    perm[slot] = source
                text = apply_permutation(tokens, perm)
                if text.lower() != original:
                    out.append((text, kind))
                    break
        return out

    @staticmethod
    def _shuffle(kind: str, positions: List[int], rng: random.Random) -> Optional[List[int]]:
        """A new order of the word positions, or None when ``kind`` cannot apply."""
        chunks = [positions[k : k + 3] for k in range(0, len(positions), 3)]
        if kind == "shuffle_words":
            order = list(positions)
            rng.shuffle(order)
            return order
        if kind == "shuffle_trigrams":
            if len(chunks) < 2:
                return None
            rng.shuffle(chunks)
            return [p for c in chunks for p in c]
        if kind == "shuffle_within_trigrams":
            if max(len(c) for c in chunks) < 2 or len(chunks) < 2:
                return None  # one trigram: the same as shuffle_words
            for c in chunks:
                rng.shuffle(c)
            return [p for c in chunks for p in c]
        raise ValueError(f"unknown shuffle type {kind!r}; valid: {', '.join(SHUFFLE_TYPES)}")


@dataclass
class NegativeGenerator:
    """Up to ``per_caption`` distinct negatives per caption from ``perturbers``, taken round-robin
    over perturbation types in the order they are first proposed (lexicon swaps before shuffles)."""

    per_caption: int = 3
    perturbers: Sequence[CaptionPerturber] = field(
        default_factory=lambda: (LexiconPerturber(), WordOrderPerturber()))

    def __call__(self, caption: str, rng: random.Random) -> Tuple[List[str], List[str]]:
        original = detokenize(tokenize(caption)).lower()
        by_type: Dict[str, List[str]] = {}
        seen = {original}
        for perturber in self.perturbers:
            for text, kind in perturber.perturb(caption, rng):
                if text.lower() not in seen:
                    seen.add(text.lower())
                    by_type.setdefault(kind, []).append(text)
        texts: List[str] = []
        types: List[str] = []
        depth = 0
        while len(texts) < self.per_caption and any(len(v) > depth for v in by_type.values()):
            for kind, candidates in by_type.items():
                if depth < len(candidates) and len(texts) < self.per_caption:
                    texts.append(candidates[depth])
                    types.append(kind)
            depth += 1
        return texts, types


def sample_rng(seed: int, key: str) -> random.Random:
    """The generator of one sample: depends only on the seed and the sample key (not on order)."""
    return random.Random(f"{seed}:{key}")
