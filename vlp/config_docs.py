"""Every config key with its type, default and one-line doc, read from the dataclasses themselves.

The doc of a field is the string literal right under it in ``vlp/config.py`` (the convention of
that file), so ``train.py --help`` and the code can never disagree.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Tuple

from vlp.config_overrides import field_type


@lru_cache(maxsize=None)
def field_docs(cls: type) -> Dict[str, str]:
    """{field name: the string literal that follows its annotation in the class body}."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: Dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(tp: Any) -> str:
    """A short readable name: int, float, Optional[str], List[float], ..."""
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = ", ".join(type_name(a) for a in args)
        return f"Optional[{inner}]" if len(args) < len(typing.get_args(tp)) else f"Union[{inner}]"
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin)).capitalize()}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _default_text(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return "{...}"
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return "[" + ", ".join("{" + ", ".join(f"{k}: {v!r}" for k, v in dataclasses.asdict(item).items()) + "}"
                               for item in value) + "]"
    return "null" if value is None else repr(value)


def iter_keys(schema: Any, prefix: str = "") -> Iterator[Tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every leaf of the dataclass instance ``schema``;
    fields of list items appear under ``key[N].field``."""
    hints = typing.get_type_hints(type(schema))
    docs = field_docs(type(schema))
    for f in dataclasses.fields(schema):
        key, value = f"{prefix}{f.name}", getattr(schema, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, key + ".")
            continue
        yield key, type_name(hints[f.name]), _default_text(value), docs.get(f.name, "")
        item_type = field_type(type(schema), [f.name, "0"])
        if dataclasses.is_dataclass(item_type):
            yield from iter_keys(item_type(), key + "[N].")


def describe_config(config: Any) -> str:
    """The text of ``train.py --help``'s key list: one block per section."""
    lines: List[str] = []
    section = None
    for key, tp, default, doc in iter_keys(config):
        head = key.split(".", 1)[0]
        if head != section:
            section = head
            lines.append(f"\n{head}:")
        lines.append(f"  {key} ({tp}, default {default})")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines).lstrip("\n")
