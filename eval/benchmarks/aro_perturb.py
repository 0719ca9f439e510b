"""ARO's four word-order perturbations (Yuksekgonul et al. 2023, ``dataset_zoo/perturbations.py``).

The ARO repo tags words with spaCy (nouns: NN*, adjectives: JJ*) and tokenizes with nltk. Neither
is available here, so tagging is lexical: adjectives are the attribute words of
``vlp.text.lexicon`` (colours, sizes, materials, other attributes) and nouns are the
remaining alphabetic "content" words, i.e. those that are not determiners, relation words,
linking verbs, phrase breaks, pronouns, ``-ly`` adverbs or ``-ing`` verbs (``ING_NOUNS`` excepted).
This approximates the tagger; shuffled captions therefore differ from ARO's released ones.

Randomness is seeded per caption (``seed`` and the caption's index), so a caption's perturbations
do not depend on which other captions are evaluated.
"""

from __future__ import annotations

import random
import re
from typing import Callable

from vlp.text.lexicon import (
    ATTRIBUTE_CATEGORIES,
    DETERMINERS,
    ING_NOUNS,
    LINKING_VERBS,
    PHRASE_BREAKS,
    RELATIONS,
)

ADJECTIVES = frozenset().union(*ATTRIBUTE_CATEGORIES.values())
PRONOUNS = frozenset("i you he she it we they me him us them who what someone something people".split())
AUXILIARIES = frozenset("has have had do does did can could will would not no".split())
FUNCTION_WORDS = frozenset(DETERMINERS | LINKING_VERBS | PHRASE_BREAKS | PRONOUNS | AUXILIARIES).union(
    *(relation.split() for relation in RELATIONS)
)
_TOKEN = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    """Words and single punctuation marks (a stand-in for ``nltk.word_tokenize``)."""
    return _TOKEN.findall(caption)


def is_adjective(token: str) -> bool:
    """An attribute word of the lexicon (case-insensitive)."""
    return token.lower() in ADJECTIVES


def is_noun(token: str) -> bool:
    """A content word that is neither a lexicon adjective, a function word, an adverb nor an -ing verb."""
    word = token.lower()
    if not word.isalpha() or word in FUNCTION_WORDS or word in ADJECTIVES or word.endswith("ly"):
        return False
    return not (word.endswith("ing") and word not in ING_NOUNS)


def _shuffle_positions(tokens: list[str], positions: list[int], rng: random.Random) -> None:
    values = [tokens[i] for i in positions]
    rng.shuffle(values)
    for i, value in zip(positions, values):
        tokens[i] = value


def shuffle_nouns_and_adjectives(caption: str, rng: random.Random) -> str:
    """Permute the nouns among themselves and the adjectives among themselves."""
    tokens = tokenize(caption)
    _shuffle_positions(tokens, [i for i, t in enumerate(tokens) if is_noun(t)], rng)
    _shuffle_positions(tokens, [i for i, t in enumerate(tokens) if is_adjective(t)], rng)
    return " ".join(tokens)


def shuffle_all_but_nouns_and_adjectives(caption: str, rng: random.Random) -> str:
    """Permute every token that is neither a noun nor an adjective; those stay in place."""
    tokens = tokenize(caption)
    _shuffle_positions(tokens, [i for i, t in enumerate(tokens) if not (is_noun(t) or is_adjective(t))], rng)
    return " ".join(tokens)


def trigrams(tokens: list[str]) -> list[list[str]]:
    """Consecutive groups of three tokens (the last may be shorter)."""
    return [tokens[i : i + 3] for i in range(0, len(tokens), 3)]


def shuffle_within_trigrams(caption: str, rng: random.Random) -> str:
    """Keep the trigrams in order and permute the tokens inside each."""
    groups = trigrams(tokenize(caption))
    for group in groups:
        rng.shuffle(group)
    return " ".join(" ".join(group) for group in groups)


def shuffle_trigrams(caption: str, rng: random.Random) -> str:
    """Permute the order of the trigrams, keeping each trigram intact."""
    groups = trigrams(tokenize(caption))
    rng.shuffle(groups)
    return " ".join(" ".join(group) for group in groups)


#: ARO's order of perturbations (``COCO_Order`` / ``Flickr30k_Order``)
PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "shuffle_nouns_and_adj": shuffle_nouns_and_adjectives,
    "shuffle_allbut_nouns_and_adj": shuffle_all_but_nouns_and_adjectives,
    "shuffle_within_trigrams": shuffle_within_trigrams,
    "shuffle_trigrams": shuffle_trigrams,
}


def pre_caption(caption: str, max_words: int = 30) -> str:
    """BLIP/ARO caption cleaning: lower-case, drop ``.!"()*#:;~``, squeeze spaces, keep ``max_words``."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def order_options(caption: str, index: int, seed: int = 1, max_words: int = 30) -> list[str]:
    """[true caption, its four perturbations], each cleaned with :func:`pre_caption` as ARO does."""
    rng = random.Random(f"{seed}:{index}")
    return [pre_caption(caption, max_words)] + [
        pre_caption(perturb(caption, rng), max_words) for perturb in PERTURBATIONS.values()
    ]
