"""The files an export carries besides its weights to encode text: the tokenizer and, for an HF
text tower, the transformers ``config.json`` the tower is built from.

- open_clip: ``open_clip.get_tokenizer('local-dir:DIR')`` builds ``HFTokenizer(DIR)`` when
  ``text_cfg.hf_tokenizer_name`` is set (any non-empty value: a local-dir always reads the tokenizer
  files from DIR itself), so an 'hf:DIR' tokenizer is saved into the export, and a
  'sentencepiece:FILE' one is converted to a Hugging Face tokenizer with the same ids
  (``vlp.export.sentencepiece_hf``). :func:`check_open_clip_tokenizer` compares open_clip's
  tokenizer with ours on probe texts before the export is put in place. open_clip's own BPE
  ('open_clip') needs no file.
- safetensors: the tokenizer files as vlp reads them (the SentencePiece model, the HF tokenizer
  folder), in a folder beside the file whose paths the metadata records
  (``vlp.interop.vlp_files.vlp_safetensors_config`` reads them back).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch

from vlp.data.tokenizers import Tokenizer, build_tokenizer, parse_tokenizer_spec
from vlp.export.sentencepiece_hf import TokenizerExportError, sentencepiece_as_hf
from vlp.interop.consistency import PROBE_TEXTS

CHECK_TEXTS = PROBE_TEXTS + ("a photo of a cat.", "  two  dogs\tplaying\nin the snow  ", "Tom &amp; Jerry &lt;3",
                             "“curly” ‘quotes’ — and dashes…", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "x")
HF_CONFIG = "config.json"


def _saved_files(tokenizer: Any) -> Dict[str, bytes]:
    """The files ``tokenizer.save_pretrained`` writes, by name."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def hf_tower_config(text_cfg: Mapping[str, Any]) -> Dict[str, bytes]:
    """{'config.json': bytes} of an HF text tower's folder; {} for open_clip's own tower."""
    name = text_cfg.get("hf_model_name")
    return {HF_CONFIG: (Path(str(name)) / HF_CONFIG).read_bytes()} if name else {}


def open_clip_text_files(spec: str, context_length: int, text_cfg: Mapping[str, Any]) -> Dict[str, bytes]:
    """The files open_clip's local-dir loading needs for tokenizer ``spec`` and tower ``text_cfg``,
    by name; TokenizerExportError (before anything is written) where open_clip cannot express it."""
    kind, _ = parse_tokenizer_spec(spec)
    files = hf_tower_config(text_cfg)
    if kind == "open_clip":
        return files
    ours = build_tokenizer(spec, context_length)
    saved = _saved_files(ours.tokenizer if kind == "hf" else sentencepiece_as_hf(ours))  # type: ignore[union-attr]
    clash = sorted(set(saved) & set(files))
    if clash:
        raise TokenizerExportError(f"{spec}: the tokenizer's files {clash} clash with the HF text tower's")
    return {**files, **saved}


def safetensors_text_files(spec: str, text_cfg: Mapping[str, Any], folder: str) -> Tuple[Dict[str, bytes], Dict[str, Any]]:
    """(files by path relative to the safetensors file's folder, config entries pointing at them:
    'tokenizer' and 'hf_model_name' where they change); nothing for 'open_clip' and no HF tower."""
    kind, path = parse_tokenizer_spec(spec)
    files = {f"{folder}/{name}": data for name, data in hf_tower_config(text_cfg).items()}
    entries: Dict[str, Any] = {"hf_model_name": folder} if files else {}
    if kind == "sentencepiece":
        name = Path(str(path)).name
        files[f"{folder}/{name}"] = Path(str(path)).read_bytes()
        entries["tokenizer"] = f"sentencepiece:{folder}/{name}"
    elif kind == "hf":
        ours = build_tokenizer(spec, 2)
        saved = _saved_files(ours.tokenizer)  # type: ignore[union-attr]
        clash = sorted(set(saved) & {HF_CONFIG}) if files else []
        if clash:
            raise TokenizerExportError(f"{spec}: the tokenizer's files {clash} clash with the HF text tower's")
        files.update({f"{folder}/{name}": data for name, data in saved.items()})
        entries["tokenizer"] = f"hf:{folder}"
    return files, entries


def check_open_clip_tokenizer(folder: Path, ours: Tokenizer, spec: str) -> None:
    """open_clip.get_tokenizer('local-dir:folder') gives ``ours``'s ids on CHECK_TEXTS, or TokenizerExportError."""
    import open_clip

    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")
    texts = list(CHECK_TEXTS)
    a, b = ours(texts), theirs(texts)
    if a.shape != b.shape:
        raise TokenizerExportError(f"{spec}: open_clip's tokenizer for the export gives {tuple(b.shape)} ids for "
                                   f"{len(texts)} texts, ours {tuple(a.shape)}")
    for text, x, y in zip(texts, a, b):
        if not torch.equal(x, y):
            raise TokenizerExportError(f"{spec}: open_clip cannot load this tokenizer with the same ids: for "
                                       f"{text[:40]!r} it gives {y.tolist()[:12]}..., vlp {x.tolist()[:12]}...")

