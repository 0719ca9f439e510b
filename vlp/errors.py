"""The error types every layer shares: a config the user must fix, a model that does not match
the checkpoint it loads. Each message says what to change."""

from __future__ import annotations

from typing import Any, Sequence


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message says what to change."""


class ModelMismatchError(ValueError):
    """A checkpoint and the model/tokenizer built to evaluate it disagree; ``.problems`` lists how."""

    def __init__(self, spec: Any, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{spec}: the checkpoint does not match the model built to evaluate it:\n{lines}\n"
                         "fix the model config / tokenizer, or pass --allow-mismatch to evaluate anyway "
                         "(the problems are then recorded with the results)")
