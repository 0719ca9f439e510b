"""Checks that a checkpoint and the model and tokenizer built to evaluate it agree.

Known sources of wrong published numbers: GELU vs QuickGELU, a tokenizer that does not fit the
text tower's context or vocabulary, and an end-of-text id that argmax pooling cannot find.
``check_model_consistency`` lists the problems; ``finish_loading`` refuses a model that has any
(``ModelMismatchError``) unless the caller allows it, and then records them on the model.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from vlp.errors import ModelMismatchError
from vlp.interop.loaded import LoadedModel

log = logging.getLogger(__name__)

PROBE_TEXTS = ("", "a photo of a cat.", "A PHOTO OF 2 DOGS, 3 birds & 1 zebra!?",
               "naïve café déjà vu 東京 Ωμέγα 🙂👍 ~`|^{}[]<>", "zzzz qqqq xxxx " * 40)
Declaration = Tuple[str, bool]  # (where it was read, quick_gelu)


def _act(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


# ---------------------------------------------------------------- tokenizer facts

def tokenizer_id_count(tokenizer: Any) -> Optional[int]:
    """The number of ids a tokenizer object can emit, where it says (ours, open_clip's, transformers');
    not ``vlp.data.tokenizers.tokenizer_vocab_size``, the embedding rows a tokenizer spec needs."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip.tokenizer.HFTokenizer wraps one
    if inner is not None and hasattr(inner, "__len__"):
        return len(inner)
    size = getattr(tokenizer, "vocab_size", None)
    if isinstance(size, int):
        return size
    if hasattr(tokenizer, "encoder"):
        return len(tokenizer.encoder)
    return None


def tokenizer_eot_id(tokenizer: Callable[[List[str]], torch.Tensor]) -> int:
    """The tokenizer's end-of-text id: its attribute, else the token after the start of an empty text."""
    for attr in ("eot_token_id", "eot_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return int(tokenizer([""])[0, 1])


# ---------------------------------------------------------------- checks

def check_model_consistency(
    tokenizer: Optional[Callable[[List[str]], torch.Tensor]] = None,
    *,
    declared_activation: Sequence[Declaration] = (),
    built_quick_gelu: Optional[bool] = None,
    checkpoint_position_rows: Optional[int] = None,
    model_position_rows: Optional[int] = None,
    model_context_length: Optional[int] = None,
    checkpoint_token_rows: Optional[int] = None,
    model_token_rows: Optional[int] = None,
    text_pool: str = "argmax",
    pool_eos_id: Optional[int] = None,
    probe_texts: Sequence[str] = PROBE_TEXTS,
) -> List[str]:
    """Problems (one line each) between a checkpoint and the model/tokenizer built to evaluate it.

    - activation: every ``declared_activation`` (source, quick_gelu) must agree with each other and
      with ``built_quick_gelu`` (same parameters either way, so nothing else would notice);
    - context length: the checkpoint's text positional rows vs the built model's, and the width of
      the tokenizer's output vs ``model_context_length``;
    - vocabulary: the checkpoint's token-embedding rows vs the built model's, ids the tokenizer
      emits beyond the table, a tokenizer vocabulary larger than the table, or a table much larger
      (>10% + 128 rows) than the tokenizer's vocabulary;
    - end-of-text pooling: with ``text_pool='argmax'`` (open_clip's default text tower, legacy HF
      CLIP) the end-of-text id must be the largest id of every tokenized probe text; with
      ``text_pool='eos'`` every probe must contain ``pool_eos_id``. Other pool types are not checked.
    Arguments left None skip their check.
    """
    problems: List[str] = []
    kinds = {q for _, q in declared_activation}
    if len(kinds) > 1:
        said = ", ".join(f"{src}: {_act(q)}" for src, q in declared_activation)
        problems.append(f"activation: the checkpoint's declarations disagree ({said})")
    if built_quick_gelu is not None:
        for source, quick_gelu in declared_activation:
            if quick_gelu != built_quick_gelu:
                problems.append(f"activation: {source} declares {_act(quick_gelu)} but the model is built "
                                f"with {_act(built_quick_gelu)}")
    if None not in (checkpoint_position_rows, model_position_rows) and checkpoint_position_rows != model_position_rows:
        problems.append(f"context length: the checkpoint's text positional embedding has {checkpoint_position_rows} "
                        f"rows but the model config builds {model_position_rows} (open_clip would silently "
                        "interpolate it)")
    if None not in (checkpoint_token_rows, model_token_rows) and checkpoint_token_rows != model_token_rows:
        problems.append(f"vocabulary: the checkpoint's token embedding has {checkpoint_token_rows} rows but the "
                        f"model config builds {model_token_rows}")
    if tokenizer is None:
        return problems
    tokens = tokenizer(list(probe_texts))
    width = int(tokens.shape[1])
    if model_context_length is not None and width != model_context_length:
        problems.append(f"context length: the tokenizer emits {width} tokens per text but the text tower's "
                        f"context length is {model_context_length}")
    rows = checkpoint_token_rows if checkpoint_token_rows is not None else model_token_rows
    vocab = tokenizer_id_count(tokenizer)
    if rows is not None:
        top = int(tokens.max())
        if top >= rows:
            problems.append(f"vocabulary: the tokenizer emits id {top}, beyond the token embedding's {rows} rows")
        if vocab is not None and vocab > rows:
            problems.append(f"vocabulary: the tokenizer has {vocab} ids but the token embedding only {rows} rows")
        elif vocab is not None and rows > 1.1 * vocab + 128:
            problems.append(f"vocabulary: the token embedding has {rows} rows, far more than the tokenizer's "
                            f"{vocab} ids (a different tokenizer was trained with this checkpoint?)")
    if text_pool == "argmax":
        eot = tokenizer_eot_id(tokenizer)
        for text, row in zip(probe_texts, tokens):
            at_eot = (row == eot).nonzero()
            if len(at_eot) == 0 or int(row.argmax()) != int(at_eot[0]):
                problems.append(f"end-of-text pooling: the text tower pools at argmax(token id) but the tokenizer's "
                                f"end-of-text id {eot} is not the largest id of {text[:30]!r} (max {int(row.max())}), "
                                "so the wrong token is pooled")
                break
    elif text_pool == "eos" and pool_eos_id is not None:
        eot = tokenizer_eot_id(tokenizer)
        missing = [t for t, row in zip(probe_texts, tokens) if not bool((row == pool_eos_id).any())]
        if eot != pool_eos_id or missing:
            problems.append(f"end-of-text pooling: the text tower pools at the first id {pool_eos_id} but the "
                            f"tokenizer's end-of-text id is {eot}" + (f" and {missing[0][:30]!r} has no id {pool_eos_id} "
                            "(position 0 is pooled)" if missing else ""))
    return problems


def activation_notes(declared_activation: Sequence[Declaration], built_quick_gelu: Optional[bool]) -> List[str]:
    """'activation: undeclared ...' when the checkpoint states no activation (a note, not an error)."""
    if declared_activation or built_quick_gelu is None:
        return []
    return [f"activation: undeclared (the checkpoint states no activation; evaluating with {_act(built_quick_gelu)})"]


def name_declares_quick_gelu(name: str) -> bool:
    """Whether a file/model name says QuickGELU ('...-quickgelu', 'quick_gelu', 'quick-gelu')."""
    flat = name.lower().replace("_", "").replace("-", "")
    return "quickgelu" in flat and "noquickgelu" not in flat


def pretrained_tag_declarations(path: Optional[Path], model_name: Optional[str],
                                pretrained_tag: Optional[str]) -> List[Declaration]:
    """QuickGELU declared by open_clip's pretrained-tag metadata (offline): for an explicit
    ``model_name``/``pretrained_tag``, for a path inside an HF cache folder named after a tag's hub
    repo, or for a file whose name and sha256 match an OpenAI download URL."""
    from open_clip.pretrained import _PRETRAINED, get_pretrained_cfg

    found: List[Declaration] = []
    if model_name and pretrained_tag:
        cfg = get_pretrained_cfg(model_name, pretrained_tag)
        if cfg:
            found.append((f"open_clip pretrained tag {model_name}/{pretrained_tag}", bool(cfg.get("quick_gelu", False))))
    if path is None:
        return found
    parts = [p.lower() for p in path.resolve().parts]
    for model, tags in _PRETRAINED.items():
        for tag, cfg in tags.items():
            repo = cfg.get("hf_hub", "").strip("/")
            url = cfg.get("url", "")
            base = repo.split("/")[-1].lower()
            hit = bool(repo) and any(p == base or p.endswith("--" + base) for p in parts[:-1])  # HF cache: models--org--repo
            if not hit and "openaipublic" in url and path.name == url.rsplit("/", 1)[-1] and path.is_file():
                hit = _sha256(path) == url.split("/")[-2]
            if hit:
                found.append((f"open_clip pretrained tag {model}/{tag} (from the path)", bool(cfg.get("quick_gelu", False))))
                return found
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finish_loading(loaded: LoadedModel, spec: Any, problems: List[str], notes: List[str], allow_mismatch: bool) -> LoadedModel:
    for note in notes:
        log.info("%s: %s", spec, note)
    if problems and not allow_mismatch:
        raise ModelMismatchError(spec, problems)
    for problem in problems:
        log.warning("%s: evaluating despite mismatch: %s", spec, problem)
    loaded.warnings = list(problems)
    loaded.notes = list(notes)
    return loaded
