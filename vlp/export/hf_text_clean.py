"""open_clip's text cleaning as a ``tokenizers`` normalizer, for the tokenizers of a transformers export.

vlp tokenizes a text the way open_clip does: first ``open_clip.tokenizer.basic_clean`` (ftfy's
``fix_text``, then ``html.unescape`` twice, stripped) and ``whitespace_clean`` (every run of
whitespace one space), lowercased for open_clip's BPE; then the tokenizer itself. A transformers
tokenizer runs only what its ``tokenizer.json`` holds, so an export puts that cleaning in front of
the tokenizer's own normalizer, built from ``tokenizers``' serializable normalizers, in open_clip's
order:

1. ftfy's ``unescape_html``: the HTML 4 named entities (with their ';'), ``&apos;`` and the
   numeric references of printable Latin-1 and common typographic characters (``&#39;``,
   ``&#039;``, ``&#x27;``, ``&#8217;`` ...); ``&amp;`` last, so that one pass undoes one level;
2. ftfy's ``fix_c1_controls``, ``fix_latin_ligatures``, ``fix_character_width``,
   ``uncurl_quotes`` and ``remove_control_chars`` from ftfy's own tables, then NFC;
3. ``html.unescape`` twice: the entities of double-escaped web text (``&amp;amp;``,
   ``&amp;quot;``) and the legacy forms without ';' (``&amp``, ``&lt``, ``&gt``, ``&quot``);
4. whitespace runs to one space, stripped; for open_clip's BPE, lowercase (a final capital sigma
   as Python's ``str.lower`` writes it).

Not reproduced (texts that need them may tokenize differently): ftfy's mojibake repair
(``fix_encoding``: 'cafÃ©' stays as it is), entities and numeric references outside the tables,
ftfy's rule that skips its own unescaping for a text containing '<'. ``vlp.export.hf_tokenizer``
checks the exported tokenizer against vlp's ids on probe texts before an export is written.
"""

from __future__ import annotations

import html.entities
from typing import Any, Dict, List, Tuple

_TYPOGRAPHIC = (8211, 8212, 8216, 8217, 8218, 8220, 8221, 8222, 8226, 8230, 8364, 8482)
_DOUBLE_ESCAPED = ("amp", "lt", "gt", "quot", "apos", "nbsp", "#39", "#039", "#34", "#x27")
_LEGACY = ("amp", "lt", "gt", "quot")


def _numeric_references() -> Dict[str, str]:
    """'&#N;' forms (decimal, three-digit zero-padded decimal, hex in both cases) of the characters covered."""
    refs: Dict[str, str] = {}
    for cp in [*range(32, 127), *range(160, 256), *_TYPOGRAPHIC]:
        char = chr(cp)
        for form in (f"&#{cp};", f"&#{cp:03d};", f"&#x{cp:x};", f"&#x{cp:X};"):
            refs[form] = char
    return refs


def _entity_table() -> Dict[str, str]:
    """ftfy's unescaping of one level: HTML 4 named entities, &apos; and the numeric references."""
    table = {f"&{name};": chr(cp) for name, cp in html.entities.name2codepoint.items()}
    table["&apos;"] = "'"
    table.update(_numeric_references())
    return table


def _replacements(table: Dict[str, str]) -> List[Tuple[str, str]]:
    """(pattern, replacement) in the order that unescapes one level: longer patterns before their
    prefixes, and every pattern that gives '&' after all the others."""
    return sorted(table.items(), key=lambda item: (item[1] == "&", -len(item[0]), item[0]))


def _double_escaped() -> Dict[str, str]:
    table = {f"&{name};": html.unescape(f"&{name};") for name in _DOUBLE_ESCAPED}
    table.update({f"&{name}": html.unescape(f"&{name};") for name in _LEGACY})
    return table


def _char_class(codepoints: List[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:04X}}}" for cp in sorted(codepoints)) + "]"


def _ftfy_steps() -> List[Any]:
    """ftfy.fix_text's character fixes after unescaping, from ftfy's own tables, then NFC."""
    from ftfy.chardata import CONTROL_CHARS, LIGATURES, WIDTH_MAP
    from tokenizers import Regex, normalizers

    steps: List[Any] = []
    for byte in range(0x80, 0xA0):  # fix_c1_controls: C1 controls read as windows-1252 (its 5 holes stay)
        try:
            steps.append(normalizers.Replace(chr(byte), bytes([byte]).decode("cp1252")))
        except UnicodeDecodeError:
            continue
    for table in (LIGATURES, WIDTH_MAP):
        steps += [normalizers.Replace(chr(cp), str(text)) for cp, text in sorted(table.items())]
    steps.append(normalizers.Replace(Regex("[\\x{201C}-\\x{201F}]"), '"'))  # ftfy's DOUBLE_QUOTE_RE
    steps.append(normalizers.Replace(Regex("[\\x{02BC}\\x{2018}-\\x{201B}]"), "'"))  # SINGLE_QUOTE_RE
    steps.append(normalizers.Replace(Regex(_char_class(list(CONTROL_CHARS))), ""))
    steps.append(normalizers.NFC())
    return steps


def open_clip_clean_normalizer(lowercase: bool, then: Any = None) -> Any:
    """A ``tokenizers`` normalizer doing open_clip's cleaning (lowercased for its BPE), followed by
    ``then`` (a tokenizer's own normalizer, or None)."""
    from tokenizers import Regex, normalizers

    steps: List[Any] = [normalizers.Replace(a, b) for a, b in _replacements(_entity_table())]
    steps += _ftfy_steps()
    for _ in range(2):
        steps += [normalizers.Replace(a, b) for a, b in _replacements(_double_escaped())]
    steps += [normalizers.Replace(Regex("\\s+"), " "), normalizers.Strip()]
    if lowercase:
        steps += [normalizers.Replace(Regex("(?<=\\p{L})\\x{03A3}(?!\\p{L})"), "\u03c2"), normalizers.Lowercase()]
    if then is not None:
        steps.append(then)
    return normalizers.Sequence(steps)
