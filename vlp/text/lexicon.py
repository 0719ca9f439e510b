"""Word lists shared by the hard-negative miner (data_prep.negatives) and the ARO order perturbations (eval).

Lower-case single words, except RELATIONS which may be phrases ("in front of"). A word's
category decides which attributes swap with which: colours with colours first, then any two
attributes of different objects.
"""

from __future__ import annotations

COLORS = frozenset("""
red orange yellow green blue purple violet pink brown black white gray grey beige cyan magenta
teal turquoise navy maroon gold golden silver tan cream olive lime indigo crimson
""".split())

SIZES = frozenset("""
small large big tiny huge little giant short tall long wide narrow thin thick medium
""".split())

MATERIALS = frozenset("""
wooden wood metal metallic plastic glass stone brick leather paper rubber ceramic cotton wool
woolen steel iron concrete marble
""".split())

OTHER_ATTRIBUTES = frozenset("""
striped spotted dotted checkered plaid shiny matte dark light bright pale old new young empty
full open closed wet dry dirty clean round square rectangular triangular square-shaped
""".split())

ATTRIBUTE_CATEGORIES = {"color": COLORS, "size": SIZES, "material": MATERIALS, "other": OTHER_ATTRIBUTES}

SPATIAL_RELATIONS = (
    "on top of", "in front of", "to the left of", "to the right of", "next to", "on the left of",
    "on the right of", "left of", "right of", "close to", "in the middle of", "inside of",
    "on", "in", "under", "underneath", "beneath", "above", "below", "over", "behind", "beside",
    "near", "inside", "atop", "against", "by", "between", "around", "across",
)

ACTION_RELATIONS = (
    "holding", "riding", "eating", "wearing", "carrying", "pulling", "pushing", "chasing",
    "watching", "feeding", "hugging", "touching", "throwing", "catching", "kicking", "hitting",
    "looking at", "playing with", "sitting on", "standing on", "lying on", "leaning on",
    "walking on", "hanging from", "covered in", "covered by", "filled with", "surrounded by",
)

# all relation phrases, longest first so that "on top of" wins over "on"
RELATIONS = tuple(sorted(set(SPATIAL_RELATIONS + ACTION_RELATIONS), key=lambda r: (-len(r.split()), r)))

DETERMINERS = frozenset("""
a an the this these those his her its their my your our some two three four five six
several many each every one another
""".split())

# verbs and auxiliaries that may stand between a subject and its relation ("a dog is sitting on")
LINKING_VERBS = frozenset("""
is are was were be being been sits sit sitting stands stand standing lies lie lying lays laying
rests resting placed located positioned seen shown appears appear hangs hanging
""".split())

# words that end a noun phrase (besides relations, determiners and punctuation)
PHRASE_BREAKS = frozenset("""
and or but with while who which that where as of to for from at than then there here
""".split())

# common nouns ending in -ing, which the '-ing is a verb' rule must not treat as verbs
ING_NOUNS = frozenset("""
building ceiling painting clothing ring string thing king wing evening morning spring swing
pudding railing sibling ping-pong awning bedding icing frosting stuffing topping
""".split())
