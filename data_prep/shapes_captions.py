"""Scene sampling, description and captions for the synthetic shapes set.

A scene is one object, or two objects linked by a spatial relation
(``objects[0] <relation> objects[1]``). Captions are rendered from a :class:`CaptionSpec`
(which objects, in which order, with or without sizes / position words, which prefix), so
compositional negatives are built by editing the spec, not by editing text, and can be
checked to describe a different scene than the image. Positions are fractions of the
image side (y grows downwards); the two objects of a pair lie in opposite halves along the
relation axis, so they never overlap and the relation is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}
# Caption prefixes; the zero-shot templates below reuse the same wording so they transfer.
PREFIXES: tuple[str, ...] = ("", "a photo of ", "an image of ", "a drawing of ", "a picture of ")
# Position words for one-object captions, by (column, row) third of the image (y grows down).
POSITION_WORDS: dict[tuple[int, int], str] = {
    (0, 0): "in the top left",
    (1, 0): "at the top",
    (2, 0): "in the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "in the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "in the bottom right",
}
# Zero-shot classes: colour x shape, class index = colour_index * len(SHAPES) + shape_index.
CLASSNAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a {c}.",
    "an image of a {c}.",
    "a drawing of a {c}.",
    "a picture of a {c}.",
    "a small {c}.",
    "a large {c}.",
)
NEGATIVE_TYPES: tuple[str, ...] = ("swap_attribute", "swap_relation", "shuffle_words")

# Object radius (half the bounding-box side) as a fraction of the image side.
RADIUS: dict[str, float] = {"small": 0.15, "large": 0.22}
RADIUS_JITTER = 0.05  # relative; positions keep clear of the largest jittered radius
PAIR_GAP = 0.04  # clearance between the two objects of a pair, fraction of the side
PAIR_OFFSET = 0.12  # max offset across the relation axis, so the relation is unambiguous


def class_index(colour: str, shape: str) -> int:
    """Zero-shot class index of a (colour, shape) pair."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


@dataclass(frozen=True)
class Obj:
    """One object: attributes plus centre position as fractions of the image side."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def to_json(self) -> dict[str, Any]:
        """JSON form with positions rounded to 4 decimals."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "x": round(self.x, 4),
            "y": round(self.y, 4),
        }


@dataclass(frozen=True)
class Scene:
    """One or two objects; for two, ``relation`` holds ``objects[0] <relation> objects[1]``."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    def to_json(self, caption: str) -> dict[str, Any]:
        """The training sample's ``json`` field."""
        return {
            "objects": [o.to_json() for o in self.objects],
            "relation": self.relation,
            "caption": caption,
        }


def max_radius(size: str) -> float:
    """Largest radius an object of ``size`` can be drawn with."""
    return RADIUS[size] * (1 + RADIUS_JITTER)


def _choice(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_single(
    rng: np.random.Generator, colour: str | None = None, shape: str | None = None
) -> Scene:
    """One object inside a random third-cell of the image (so position words are true)."""
    colour = colour or _choice(rng, COLOURS)
    shape = shape or _choice(rng, SHAPES)
    size = _choice(rng, SIZES)
    r = max_radius(size)
    col, row = int(rng.integers(3)), int(rng.integers(3))
    x = float(np.clip((col + 0.5) / 3 + rng.uniform(-0.06, 0.06), r, 1 - r))
    y = float(np.clip((row + 0.5) / 3 + rng.uniform(-0.06, 0.06), r, 1 - r))
    return Scene(objects=(Obj(shape, colour, size, x, y),))


def _pair_axis(
    rng: np.random.Generator, r_first: float, r_second: float, first_low: bool
) -> tuple[float, float]:
    """Coordinates along the relation axis: each object in its own half, clear of the other."""
    lo = (r_first, 0.5 - PAIR_GAP / 2 - r_first)
    hi = (0.5 + PAIR_GAP / 2 + r_second, 1 - r_second)
    if not first_low:
        lo = (r_second, 0.5 - PAIR_GAP / 2 - r_second)
        hi = (0.5 + PAIR_GAP / 2 + r_first, 1 - r_first)
    a = float(rng.uniform(*lo))
    b = float(rng.uniform(*hi))
    return (a, b) if first_low else (b, a)


def _cross_axis(rng: np.random.Generator, r_first: float, r_second: float) -> tuple[float, float]:
    """Coordinates across the relation axis: close to each other, inside the image."""
    r = max(r_first, r_second)
    a = float(rng.uniform(r, 1 - r))
    b = float(np.clip(a + rng.uniform(-PAIR_OFFSET, PAIR_OFFSET), r_second, 1 - r_second))
    return a, b


def sample_pair(rng: np.random.Generator, distinct_both: bool = False) -> Scene:
    """Two non-overlapping objects with a relation ``objects[0] <relation> objects[1]``.

    The objects always differ in colour or shape; with ``distinct_both`` in both.
    """
    while True:
        c0, c1 = _choice(rng, COLOURS), _choice(rng, COLOURS)
        s0, s1 = _choice(rng, SHAPES), _choice(rng, SHAPES)
        if (c0 != c1 and s0 != s1) if distinct_both else (c0 != c1 or s0 != s1):
            break
    z0, z1 = _choice(rng, SIZES), _choice(rng, SIZES)
    relation = _choice(rng, RELATIONS)
    r0, r1 = max_radius(z0), max_radius(z1)
    along = _pair_axis(rng, r0, r1, first_low=relation in ("left of", "above"))
    across = _cross_axis(rng, r0, r1)
    if relation in ("left of", "right of"):
        (x0, x1), (y0, y1) = along, across
    else:
        (y0, y1), (x0, x1) = along, across
    return Scene(objects=(Obj(s0, c0, z0, x0, y0), Obj(s1, c1, z1, x1, y1)), relation=relation)



def position_cell(x: float, y: float) -> tuple[int, int]:
    """(column, row) third of the image that holds the point (x, y)."""
    return min(int(x * 3), 2), min(int(y * 3), 2)


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption says: ``first`` [relation ``second``], detail flags and prefix."""

    first: Obj
    second: Obj | None = None
    relation: str | None = None
    with_size: bool = False
    with_position: bool = False
    prefix: str = ""
    period: bool = False


def noun_phrase(obj: Obj, with_size: bool) -> str:
    """'a small red circle' or 'a red circle'."""
    words = ["a"] + ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    return " ".join(words)


def render(spec: CaptionSpec) -> str:
    """Caption text of a spec."""
    text = noun_phrase(spec.first, spec.with_size)
    if spec.second is not None:
        text = f"{text} {spec.relation} {noun_phrase(spec.second, spec.with_size)}"
    elif spec.with_position:
        text = f"{text} {POSITION_WORDS[position_cell(spec.first.x, spec.first.y)]}"
    return spec.prefix + text + ("." if spec.period else "")


def signature(spec: CaptionSpec) -> tuple[Any, ...]:
    """Canonical form of the scene a spec describes (equal iff same described scene)."""

    def desc(o: Obj) -> tuple[str, str, str | None]:
        return (o.colour, o.shape, o.size if spec.with_size else None)

    if spec.second is None:
        cell = position_cell(spec.first.x, spec.first.y) if spec.with_position else None
        return (desc(spec.first), cell)
    a, rel, b = spec.first, spec.relation, spec.second
    if rel in ("right of", "below"):
        a, rel, b = b, INVERSE_RELATION[rel], a
    return (desc(a), rel, desc(b))


def scene_spec(scene: Scene, *, inverse: bool = False, **flags: Any) -> CaptionSpec:
    """Spec describing ``scene``; ``inverse`` states a pair with the inverse relation."""
    if len(scene.objects) == 1:
        return CaptionSpec(first=scene.objects[0], **flags)
    a, b = scene.objects
    assert scene.relation is not None
    if inverse:
        return CaptionSpec(first=b, second=a, relation=INVERSE_RELATION[scene.relation], **flags)
    return CaptionSpec(first=a, second=b, relation=scene.relation, **flags)


def sample_spec(scene: Scene, rng: np.random.Generator) -> CaptionSpec:
    """A randomly phrased true spec for ``scene``."""
    prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
    with_size = bool(rng.random() < 0.5)
    period = bool(rng.random() < 0.5)
    if len(scene.objects) == 1:
        with_position = bool(rng.random() < 0.4)
        return scene_spec(
            scene, with_size=with_size, with_position=with_position, prefix=prefix, period=period
        )
    inverse = bool(rng.random() < 0.5)
    return scene_spec(scene, inverse=inverse, with_size=with_size, prefix=prefix, period=period)


def sample_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One randomly phrased true caption."""
    return render(sample_spec(scene, rng))


def retrieval_captions(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` true captions whose wording differs beyond a trailing period."""
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(200 * count):
        text = sample_caption(scene, rng)
        core = text.rstrip(".")
        if core not in seen:
            seen.add(core)
            out.append(text)
            if len(out) == count:
                return out
    raise RuntimeError(f"could not phrase {count} distinct captions for {scene}")


def shuffle_words(caption: str, rng: np.random.Generator) -> str:
    """A seeded reordering of the caption's words that differs from the caption."""
    period = caption.endswith(".")
    words = caption.rstrip(".").split()
    if len(set(words)) < 2:
        raise ValueError(f"cannot reorder the words of {caption!r}")
    for _ in range(100):
        order = rng.permutation(len(words))
        text = " ".join(words[i] for i in order) + ("." if period else "")
        if text != caption:
            return text
    return " ".join(reversed(words)) + ("." if period else "")


def _swap_attribute(spec: CaptionSpec, attribute: str) -> CaptionSpec:
    """Exchange ``attribute`` ('colour' or 'size') between the two objects of a spec."""
    assert spec.second is not None
    a, b = spec.first, spec.second
    new_a = replace(a, **{attribute: getattr(b, attribute)})
    new_b = replace(b, **{attribute: getattr(a, attribute)})
    return replace(spec, first=new_a, second=new_b)


def compositional_item(scene: Scene, rng: np.random.Generator) -> dict[str, Any]:
    """True caption plus one negative of each type in :data:`NEGATIVE_TYPES`.

    ``scene`` must hold two objects that differ in colour and in shape, so that every swap
    describes a scene other than the image.
    """
    if len(scene.objects) != 2:
        raise ValueError("compositional items need two-object scenes")
    a, b = scene.objects
    if a.colour == b.colour or a.shape == b.shape:
        raise ValueError("compositional scenes need objects of different colours and shapes")
    spec = scene_spec(scene, inverse=bool(rng.random() < 0.5), with_size=bool(rng.random() < 0.5))
    caption = render(spec)
    sizes_differ = a.size != b.size
    if spec.with_size and sizes_differ and rng.random() < 0.5:
        attr_neg = _swap_attribute(spec, "size")
    else:
        attr_neg = _swap_attribute(spec, "colour")
    assert spec.second is not None
    rel_neg = replace(spec, first=spec.second, second=spec.first)
    true_sig = signature(spec)
    for neg in (attr_neg, rel_neg):
        if signature(neg) == true_sig:
            raise AssertionError(f"negative {render(neg)!r} describes the image like {caption!r}")
    negatives = [render(attr_neg), render(rel_neg), shuffle_words(caption, rng)]
    if any(n == caption for n in negatives):
        raise AssertionError(f"a negative equals the caption {caption!r}")
    return {"caption": caption, "negatives": negatives, "negative_types": list(NEGATIVE_TYPES)}


__all__ = [
    "CLASSNAMES",
    "COLOURS",
    "CaptionSpec",
    "INVERSE_RELATION",
    "NEGATIVE_TYPES",
    "Obj",
    "PAIR_GAP",
    "PAIR_OFFSET",
    "POSITION_WORDS",
    "PREFIXES",
    "RADIUS",
    "RADIUS_JITTER",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "TEMPLATES",
    "class_index",
    "compositional_item",
    "max_radius",
    "noun_phrase",
    "position_cell",
    "render",
    "retrieval_captions",
    "sample_caption",
    "sample_pair",
    "sample_single",
    "sample_spec",
    "scene_spec",
    "shuffle_words",
    "signature",
]
