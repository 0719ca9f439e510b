"""The tokenizer of a transformers export: a ``transformers`` tokenizer that gives vlp's ids.

``AutoTokenizer`` / ``CLIPProcessor`` / ``SiglipProcessor`` load it from the export's folder:

- 'open_clip': open_clip's BPE (``open_clip.tokenizer.SimpleTokenizer``: the merges of
  ``bpe_simple_vocab_16e6.txt.gz`` in its wheel) as OpenAI's CLIP folders hold it: byte-level
  BPE with the ``</w>`` word suffix, ``<|startoftext|>`` 49406 and ``<|endoftext|>`` 49407 around
  each text, the vocabulary as ``vocab.json`` + ``merges.txt`` and the whole tokenizer as
  ``tokenizer.json``; padding with ``<|endoftext|>`` (CLIP: the text model pools at the first end
  token and is causal, so padding changes nothing) or, for SigLIP, with id 0 ('!') as vlp pads
  (its text model reads every position). Special tokens written in a text are tokenized as text
  (``split_special_tokens``), as open_clip does; only open_clip's own names '<start_of_text>' /
  '<end_of_text>' written in a text, which open_clip turns into the special ids, are not;
- 'hf:DIR': that tokenizer's own ``tokenizer.json``;
- 'sentencepiece:FILE': the SentencePiece model in vlp's id framing
  (``vlp.export.sentencepiece_hf.sentencepiece_as_hf``).

Each gets open_clip's text cleaning (``vlp.export.hf_text_clean``) in front of its normalizer, as
vlp cleans a text before tokenizing it, and ``tokenizer_class`` 'PreTrainedTokenizerFast', which
loads ``tokenizer.json`` as written (transformers' ``CLIPTokenizer`` would rebuild its own
normalizer from vocab.json/merges.txt, without ftfy's and HTML's cleaning).
:func:`check_hf_tokenizer` compares the saved tokenizer with vlp's on probe texts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from vlp.data.tokenizers import Tokenizer, parse_tokenizer_spec
from vlp.export.hf_text_clean import open_clip_clean_normalizer
from vlp.export.sentencepiece_hf import TokenizerExportError, sentencepiece_as_hf
from vlp.export.text_files import CHECK_TEXTS
from vlp.interop.consistency import tokenizer_eot_id

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
"""open_clip's word pattern (SimpleTokenizer.pat; case-insensitive there, on lowercased text)."""
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _open_clip_vocab() -> tuple:
    """(vocab {token: id}, merges ['a b', ...] by rank) exactly as open_clip's SimpleTokenizer holds them."""
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    names = {simple.sot_token_id: BOS, simple.eot_token_id: EOS}
    vocab = {names.get(i, token): i for token, i in simple.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    return vocab, merges


def open_clip_bpe_as_hf(context_length: int, pad_id: Optional[int], model_input_names: List[str]) -> Any:
    """open_clip's BPE as a transformers fast tokenizer (module docstring); ``pad_id`` None pads
    with ``<|endoftext|>``, else with the token of that id."""
    from tokenizers import AddedToken, Regex, Tokenizer as Backend, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _open_clip_vocab()
    backend = Backend(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], dropout=None,
                                 continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
                                 unk_token=EOS))
    backend.normalizer = open_clip_clean_normalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " "),
                                         decoders.Strip(" ", 0, 1)])
    backend.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                                AddedToken(EOS, special=True, normalized=False)])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    pad = EOS if pad_id is None else {i: t for t, i in vocab.items()}[pad_id]
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=pad, model_max_length=context_length, model_input_names=model_input_names,
                                   split_special_tokens=True)


def open_clip_bpe_files() -> Dict[str, bytes]:
    """vocab.json and merges.txt of open_clip's BPE, the files transformers' CLIPTokenizer reads."""
    vocab, merges = _open_clip_vocab()
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
            "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8")}


def _cleaned(tokenizer: Any, context_length: int, model_input_names: List[str], spec: str, sot: Optional[int],
             eot: Optional[int]) -> Any:
    """A copy of a transformers fast tokenizer with open_clip's whitespace cleaning before its normalizer,
    and the ids vlp frames a text with (``sot`` / ``eot``) as its bos / eos tokens where it names none."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerExportError(f"{spec}: a {type(tokenizer).__name__} has no tokenizers backend (tokenizer.json), "
                                   "which a transformers export needs to carry vlp's text cleaning; save the tokenizer "
                                   "as a fast tokenizer")
    backend = Backend.from_str(backend.to_str())
    backend.normalizer = open_clip_clean_normalizer(lowercase=False, then=backend.normalizer)
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    for name, framing in (("bos_token", sot), ("eos_token", eot)):  # BERT's [CLS] / [SEP]: where the tower pools
        if name not in specials and framing is not None:
            specials[name] = tokenizer.convert_ids_to_tokens(int(framing))
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=context_length,
                                   model_input_names=model_input_names,
                                   padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
                                   **specials)


def hf_export_tokenizer(spec: str, ours: Tokenizer, context_length: int, *,
                        siglip: bool) -> Tuple[Any, Dict[str, bytes]]:
    """(the transformers tokenizer for ``model.tokenizer`` = ``spec``, further files to write beside
    it by name); ``ours`` is vlp's tokenizer built from ``spec``. TokenizerExportError where it cannot be written."""
    kind, _ = parse_tokenizer_spec(spec)
    names = ["input_ids"] if siglip else ["input_ids", "attention_mask"]  # SigLIP's text model reads the padding
    if kind == "open_clip":
        return open_clip_bpe_as_hf(context_length, 0 if siglip else None, names), open_clip_bpe_files()
    source = ours.tokenizer if kind == "hf" else sentencepiece_as_hf(ours)  # type: ignore[attr-defined,arg-type]
    return _cleaned(source, context_length, names, spec, getattr(ours, "sot_id", None), tokenizer_eot_id(ours)), {}


def save_hf_tokenizer(tokenizer: Any, files: Dict[str, bytes], folder: Path) -> None:
    """``save_pretrained`` plus ``files``, with the tokenizer class that loads tokenizer.json as
    written (module docstring)."""
    tokenizer.save_pretrained(str(folder))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    config_path = folder / TOKENIZER_CONFIG
    config: Dict[str, Any] = json.loads(config_path.read_text())
    config["tokenizer_class"] = TOKENIZER_CLASS
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_hf_tokenizer(folder: Path, ours: Tokenizer, spec: str, context_length: int, whole_rows: bool) -> None:
    """transformers' AutoTokenizer for ``folder`` gives ``ours``'s ids on CHECK_TEXTS (padded to the
    context and truncated, as vlp tokenizes): up to and including each row's first end token, or
    whole rows (``whole_rows``: SigLIP reads the padding too); TokenizerExportError otherwise."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = list(CHECK_TEXTS)
    a = ours(texts)
    b = theirs(texts, padding="max_length", truncation=True, max_length=context_length,
               return_tensors="pt")["input_ids"].long()
    if a.shape != b.shape:
        raise TokenizerExportError(f"{spec}: transformers' tokenizer for the export gives {tuple(b.shape)} ids for "
                                   f"{len(texts)} texts, vlp {tuple(a.shape)}")
    eot = tokenizer_eot_id(ours)
    for text, x, y in zip(texts, a, b):
        at = (x == eot).nonzero()
        end = len(x) if whole_rows or not len(at) else int(at[0]) + 1
        if not torch.equal(x[:end], y[:end]):
            raise TokenizerExportError(f"{spec}: transformers cannot load this tokenizer with vlp's ids: for "
                                       f"{text[:40]!r} it gives {y.tolist()[:12]}..., vlp {x.tolist()[:12]}...")
