"""Dotted command-line overrides: ``section.key=value``, with list items addressed by index.

``loss.terms.0.weight=0.5`` and ``loss.terms[0].weight=0.5`` address the same item; an index
one past the end (``loss.terms.1.name=siglip``) appends a new item with its defaults. Values are
read as YAML (numbers, lists, dicts), except where the target field is a string: there the text
stays as typed (``null`` and surrounding quotes aside), so ``train.precision=no`` is the string
'no' and not YAML 1.1's boolean false.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

INDEX_IN_KEY = re.compile(r"\[(\d+)\]")
"""A list index in a dotted key: the [0] of loss.terms[0].weight."""


def split_override(override: str) -> Tuple[str, str]:
    """('loss.terms.0.weight', '0.5') from 'loss.terms[0].weight=0.5'."""
    key, _, raw = override.partition("=")
    return INDEX_IN_KEY.sub(r".\1", key.strip()), raw


def display_key(parts: Sequence[str]) -> str:
    """The path as the user sees it in messages: loss.terms[0].weight."""
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def field_type(schema: type, parts: Sequence[str]) -> Any:
    """The declared type at a dotted path of the dataclass tree (Any once the path leaves it)."""
    tp: Any = schema
    for part in parts:
        tp = _unwrap_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return Any
            tp = hints[part]
        elif typing.get_origin(tp) in (list, List) and part.isdigit():
            tp = (typing.get_args(tp) or (Any,))[0]
        elif typing.get_origin(tp) in (dict, typing.Dict):
            tp = (typing.get_args(tp) or (Any, Any))[-1]
        else:
            return Any
    return _unwrap_optional(tp)


def parse_value(schema: type, parts: Sequence[str], raw: str) -> Any:
    """``raw`` read as YAML, or kept as text where the field is a string."""
    if field_type(schema, parts) is str:
        if raw.strip() in ("null", "~"):
            return None
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
        return raw[1:-1] if quoted else raw
    return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]  # OmegaConf's own YAML reading


def _grow_list(merged: DictConfig, schema: type, parts: List[str]) -> Optional[str]:
    """Append a default item where an index is one past a list's end; an error text where it is further."""
    for i, part in enumerate(parts):
        if not part.isdigit():
            continue
        node = OmegaConf.select(merged, ".".join(parts[:i]), throw_on_missing=False)
        if not isinstance(node, ListConfig):
            continue
        index = int(part)
        if index == len(node):
            item_type = field_type(schema, parts[: i + 1])
            node.append(OmegaConf.structured(item_type) if dataclasses.is_dataclass(item_type) else None)
        elif index > len(node):
            return (f"{display_key(parts[: i + 1])}: index out of range: the list has {len(node)} item(s); "
                    f"index {len(node)} appends one")
    return None


def apply_overrides(merged: DictConfig, schema: type, overrides: Sequence[str]) -> Optional[str]:
    """Apply each ``key=value`` to ``merged`` in order; an error text for the first bad one, else None.
    OmegaConf's own errors (unknown key, wrong type) propagate for the caller to explain."""
    for override in overrides:
        key, raw = split_override(override)
        parts = key.split(".")
        if not key or any(not p for p in parts):
            return f"malformed override {override!r}; expected section.key=value"
        problem = _grow_list(merged, schema, parts)
        if problem:
            return problem
        OmegaConf.update(merged, key, parse_value(schema, parts, raw), merge=True)
    return None
