"""A pure-Python stand-in for pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase``, then its punctuation list removed), so caption
metrics need no Java and give the same numbers on every machine.

It reproduces the Java tokenizer on ordinary captions (checked against it in
``tests/test_caption_metrics.py`` when a Java runtime is present): words split from punctuation
(a period stays on abbreviations and acronyms: ``mr.``, ``u.s.``, ``a.m.``), the PTB contractions
(``do n't``, ``ca n't``, ``cat 's``, ``i 'd 've``, ``can not``, ``gon na``), quotes to `` and '',
brackets to ``-lrb-`` ... (lowercased, so, as in pycocoevalcap, *not* removed), hyphenated words,
numbers (``3.5``, ``1,000``, ``10:30``, ``1/2``) and http(s) URLs kept whole, emoji dropped, ``$ 5.99``, ``5 %``, ``# 2``.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

#: pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS (the tokens it drops after tokenizing)
PUNCTUATIONS: tuple[str, ...] = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                                 ".", "?", "!", ",", ":", "-", "--", "...", ";")

#: abbreviations whose period the Java tokenizer keeps (any case); ``MASS_LIKE`` only capitalised
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st sq jr sr prof mt ave blvd rd inc corp co ltd jan feb mar apr jun jul aug sep sept "
    "oct nov dec mon tue wed thu fri gov gen col capt lt sgt rep sen rev ft vs etc bros ph dept univ "
    "assn est ct calif fla".split())
CAPITALISED_ABBREVIATIONS = frozenset({"Mass"})
BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
UNICODE = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
           "\u2014": " -- ", "\u2013": " -- ", "\u00a0": " ",
           "\u00ab": ' " ', "\u00bb": ' " ', "\u2039": ' " ', "\u203a": ' " ',  # guillemets: quotes, dropped
           "\u200b": " ", "\u200c": " ", "\u200d": " ", "\u2060": " ", "\ufeff": " ",  # zero-width: separate
           "\u00ad": ""}  # a soft hyphen is dropped
#: characters beyond the Basic Multilingual Plane (emoji, ...): the Java lexer cannot tokenize them
#: ("Untokenizable"), drops them and splits the word there
ASTRAL = re.compile("[\U00010000-\U0010FFFF]")
#: http(s) URLs, which the Java tokenizer keeps whole (without trailing punctuation)
URL = re.compile(r"(?i)https?://[^\s()\[\]{}\"<>]*[^\s()\[\]{}\"<>.,;:!?']")
WHOLE_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
               "wanna": ("wan", "na"), "lemme": ("lem", "me"), "gimme": ("gim", "me"),
               "'tis": ("'t", "is"), "'twas": ("'t", "was"), "y'all": ("y'", "all")}
CONTRACTION = re.compile(r"(?i)^(.*[a-z0-9])(n't|'s|'m|'d|'ll|'re|'ve)$")
ACRONYM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]?$")  # u.s / a.m / e.g (before the final period)
INTERNAL = re.compile(r'((?i:\'n\')(?=[a-z])|\.\.\.+|--+|[?!]+|[()\[\]{}";+=<>]|(?<!\d),|,(?!\d)|(?<!\d):|:(?!\d))')
LEADING = re.compile(r"^(\.\.\.+|--+|[-`$#]|')")
TRAILING = re.compile(r"(\.\.\.+|--+|[?!]+|[-,;:%$/'])$")


def _punct(token: str, opening: bool) -> str:
    """One punctuation token as the Java tokenizer writes it."""
    if token in BRACKETS:
        return BRACKETS[token]
    if token == '"':
        return "``" if opening else "''"
    if token.startswith("..."):
        return "..."
    if token.startswith("--"):
        return "--"
    return token


def _split_word(word: str) -> list[str]:
    """A piece without separating punctuation -> its PTB tokens (contractions split)."""
    if word.lower() in WHOLE_WORDS:
        cut = len(WHOLE_WORDS[word.lower()][0])
        return [word[:cut], word[cut:]]
    out: list[str] = []
    while True:
        match = CONTRACTION.match(word)
        if not match:
            break
        word, suffix = match.group(1), match.group(2)
        out.insert(0, suffix)
    return [word, *out] if word else out


def _keeps_period(stem: str) -> bool:
    """Whether ``stem + '.'`` is one token (an abbreviation or an acronym)."""
    if stem.endswith("."):
        return False
    return bool(ACRONYM.match(stem)) or stem.lower() in ABBREVIATIONS or stem in CAPITALISED_ABBREVIATIONS


def _peel(piece: str) -> list[str]:
    """Leading and trailing punctuation of one piece peeled off, the rest split into words."""
    front: list[str] = []
    back: list[str] = []
    while piece:
        lead = LEADING.match(piece)
        if lead is None or (lead.group(1) == "'" and _keeps_apostrophe(piece)):
            break
        token = lead.group(1)
        front.append("`" if token == "'" else _punct(token, True))
        piece = piece[len(token):]
    while piece:
        if piece.endswith(".") and not piece.endswith("...") and len(piece) > 1:
            if _keeps_period(piece[:-1]):
                break
            back.insert(0, ".")
            piece = piece[:-1]
            continue
        trail = TRAILING.search(piece)
        if trail is None or len(trail.group(1)) == len(piece) or _trailing_kept(piece):
            break
        token = trail.group(1)
        back.insert(0, _punct(token, False))
        piece = piece[: -len(token)]
    middle = _split_word(piece) if piece else []
    return front + middle + back


def _keeps_apostrophe(piece: str) -> bool:
    """A leading apostrophe that belongs to the word: '90s, 'n', 'tis, 'twas."""
    low = piece.lower()
    return bool(re.match(r"^'\d", low)) or low in ("'n'", "'tis", "'twas") or low.startswith(("'tis", "'twas"))


def _trailing_kept(piece: str) -> bool:
    """A trailing apostrophe that belongs to the word: 'n', y'."""
    return piece.lower() in ("'n'", "y'")


def ptb_tokens(text: str) -> list[str]:
    """The Java tokenizer's tokens of one line (not lowercased, punctuation kept)."""
    text = ASTRAL.sub(" ", text)
    for char, replacement in UNICODE.items():
        text = text.replace(char, replacement)
    tokens: list[str] = []
    for chunk in text.split():
        if chunk.lower() in ("'n'",):
            tokens.append(chunk)
            continue
        url = URL.search(chunk)
        if url is not None:
            tokens += ptb_tokens(chunk[:url.start()]) + [url.group(0)] + ptb_tokens(chunk[url.end():])
            continue
        at_start = True
        for part in INTERNAL.split(chunk):
            if not part:
                continue
            if INTERNAL.fullmatch(part):
                tokens.append(_punct(part, at_start))
            else:
                tokens.extend(_peel(part))
            at_start = False
    return tokens


def tokenize_caption(text: str) -> str:
    """One caption as pycocoevalcap's PTBTokenizer leaves it: lowercased PTB tokens, its
    punctuation list removed, joined by single spaces."""
    tokens = [t.lower() for t in ptb_tokens(text.replace("\n", " "))]
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """{id: [caption, ...]} -> {id: [tokenized caption, ...]} (same ids, same order)."""
    return {key: [tokenize_caption(c) for c in values] for key, values in captions.items()}


def java_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The same through pycocoevalcap's PTBTokenizer (needs ``java`` on PATH)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {key: list(tokenized.get(key, [])) for key in captions}
