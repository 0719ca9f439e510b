"""Export of the two encoders to ONNX, checked with onnxruntime before the folder is put in place.

The folder holds:

- ``image_encoder.onnx``: ``pixel_values`` float32 [batch, 3, S, S] (normalised as the eval transform
  gives them) -> ``image_embeds`` [batch, D], L2-normalised as ``DualEncoder.encode_image``;
- ``text_encoder.onnx``: ``input_ids`` int64 [batch, length], 1 <= length <= context_length ->
  ``text_embeds`` [batch, D], L2-normalised as ``DualEncoder.encode_text`` of the same ids padded
  to the context (``vlp.export.onnx_graphs``);
- ``tokenizer/``: for an 'hf:DIR' or 'sentencepiece:FILE' tokenizer, its Hugging Face files
  (``open_clip.tokenizer.HFTokenizer('tokenizer', context_length=N)`` gives vlp's ids; checked here);
  open_clip's BPE needs none (``open_clip.get_tokenizer('ViT-B-32', context_length=N)``);
- ``vlp_onnx.json``: opset, the graphs' input and output names and shapes, the preprocessing,
  context length, tokenizer, logit scale and bias, the heads left out, and the parity check: the
  largest absolute difference between onnxruntime's embeddings and the PyTorch model's on a small
  random batch (``vlp.export.onnx_parity``), with onnxruntime's version.

The graphs come from ``torch.onnx.export(..., dynamo=True)`` with a dynamic batch (and length)
over export-only modules that run open_clip's own forwards on the model's parameters. A tower the
exporter cannot trace, or onnxruntime cannot load, is refused (UnsupportedExport naming it); a
difference above ``atol`` raises OnnxParityError. Either way nothing is put in place: the folder is
built hidden beside ``out_dir`` and renamed when everything passed (``vlp.export.staging``).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from vlp.data.tokenizers import build_tokenizer, parse_tokenizer_spec
from vlp.export.onnx_graphs import ImageEncoderGraph, TextEncoderGraph, length_semantics
from vlp.export.onnx_parity import image_parity, probe_ids, probe_images, session, text_parity
from vlp.export.sentencepiece_hf import TokenizerExportError
from vlp.export.staging import UnsupportedExport, check_replaceable, staged_dir
from vlp.export.text_files import CHECK_TEXTS, open_clip_text_files
from vlp.models.dual_encoder import DualEncoder
from vlp.utils.atomic import write_json_atomic

MARKER = "vlp_onnx.json"
IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
EXTERNAL_DATA_BYTES = 1 << 30
"""Weights above this go to a ``.onnx.data`` file beside the graph (protobuf caps one file at 2 GiB)."""

if TYPE_CHECKING:
    from vlp.config import Config


class OnnxParityError(ValueError):
    """onnxruntime's embeddings differ from the PyTorch model's by more than the export's ``atol``."""


def export_onnx(model: DualEncoder, cfg: Config, out_dir: Path, *, opset: int | None = None,
                atol: float = 1e-4) -> Path:
    """Write the encoders of ``model`` (float32, on the CPU) and the tokenizer of ``cfg.model.tokenizer``
    to ``out_dir`` as described in the module docstring; returns ``out_dir``. ``opset``: the ONNX
    opset (None: the exporter's default). Raises before anything is put in place: FileExistsError
    (``out_dir`` holds something else), TokenizerExportError, UnsupportedExport (naming the tower),
    OnnxParityError (a difference above ``atol``)."""
    runtime_version = _runtime_version()
    out_dir = Path(out_dir)
    check_replaceable(out_dir, MARKER)
    _check_float32_cpu(model)
    spec = str(cfg.model.tokenizer)
    context = model.context_length
    tokenizer_files = open_clip_text_files(spec, context, {})  # the tokenizer's files only (no HF tower config)
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with staged_dir(out_dir) as stage:
            if tokenizer_files:
                (stage / TOKENIZER_DIR).mkdir()
                for name, data in tokenizer_files.items():
                    (stage / TOKENIZER_DIR / name).write_bytes(data)
            tokenizer = _tokenizer_entry(spec, stage, context)  # checked before the slower graph export
            batch = torch.export.Dim("batch", min=1)
            length = torch.export.Dim("length", min=1, max=context)
            _export_graph(ImageEncoderGraph(model.image_tower).eval(), "the image tower", model.image_tower,
                          (probe_images(2, model.image_size),), "pixel_values", "image_embeds", {0: batch},
                          stage / IMAGE_FILE, opset)
            _export_graph(TextEncoderGraph(model.text_tower).eval(), "the text tower", model.text_tower,
                          (probe_ids(model.text_tower, 2, context),), "input_ids", "text_embeds",
                          {0: batch, 1: length}, stage / TEXT_FILE, opset)
            parity = _parity(model, stage, atol)
            write_json_atomic(stage / MARKER, _metadata(model, stage, parity, tokenizer, runtime_version),
                              sort_keys=False)
    finally:
        for module, training in flags:
            module.training = training
    return out_dir


def _runtime_version() -> str:
    """onnxruntime's version; ImportError naming the extra when the export's packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the ONNX export needs onnx, onnxruntime and onnxscript ({err}): "
                          "pip install 'vlp[export]'") from err
    return str(onnxruntime.__version__)


def _check_float32_cpu(model: nn.Module) -> None:
    odd = sorted({f"{p.dtype} on {p.device}" for p in model.parameters()
                  if p.dtype != torch.float32 or p.device.type != "cpu"})
    if odd:
        raise ValueError(f"the ONNX export needs the model in float32 on the CPU, it has parameters in {odd}: "
                         "export model.float().cpu()")


def _export_graph(graph: nn.Module, part: str, tower: nn.Module, example: Tuple[torch.Tensor, ...], input_name: str,
                  output_name: str, dynamic: Dict[int, Any], path: Path, opset: int | None) -> None:
    """``graph`` to ``path`` through the dynamo exporter and loaded once by onnxruntime;
    UnsupportedExport naming ``part`` when either fails."""
    external = sum(p.numel() * p.element_size() for p in tower.parameters()) > EXTERNAL_DATA_BYTES
    what = f"{part} ({_describe(tower)})"
    log = io.StringIO()  # the exporter prints its steps on stdout: kept out of the caller's output
    try:
        with contextlib.redirect_stdout(log):
            program = torch.onnx.export(graph, example, dynamo=True, input_names=[input_name],
                                        output_names=[output_name], dynamic_shapes={input_name: dynamic},
                                        opset_version=opset, verbose=False)
            program.save(str(path), external_data=external)
    except Exception as err:  # the exporter raises many types (torch.export, onnxscript, its own)
        raise UnsupportedExport(f"{what} cannot be exported to ONNX (torch.onnx.export, dynamo=True): "
                                f"{_reason(err)}") from err
    if opset is not None and _graph_io(path)[0] != opset:
        raise ValueError(f"--opset {opset}: the exporter wrote opset {_graph_io(path)[0]} for {part} (it cannot "
                         "convert to the requested one); choose opset 18 or later, or leave it to the exporter")
    try:
        session(path)
    except Exception as err:  # onnxruntime's own exception types
        raise UnsupportedExport(f"{what}: onnxruntime cannot load its exported graph: "
                                f"{_reason(err)}") from err


def _describe(tower: nn.Module) -> str:
    describe = getattr(tower, "describe", None)
    return str(describe()) if callable(describe) else type(tower).__name__


def _reason(err: BaseException) -> str:
    """The first lines of ``err``'s innermost cause (the exporter wraps what failed in its own errors)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return f"{type(err).__name__}: {' '.join(text.splitlines()[:3])[:600]}"


def _parity(model: DualEncoder, stage: Path, atol: float) -> Dict[str, Any]:
    """The parity entry of the metadata; OnnxParityError when a difference exceeds ``atol``."""
    image, text = image_parity(model, stage / IMAGE_FILE), text_parity(model, stage / TEXT_FILE)
    worst = max(row["max_abs_diff"] for row in image + text)
    if not worst <= atol:  # a NaN fails too
        bad = [f"{name} {row}" for name, rows in (("image", image), ("text", text)) for row in rows
               if not row["max_abs_diff"] <= atol]
        raise OnnxParityError(f"onnxruntime's embeddings differ from the PyTorch model's by {worst:.3g} > atol "
                              f"{atol:g}: {'; '.join(bad)}")
    return {"atol": atol, "max_abs_diff": worst, "image": image, "text": text,
            "reference": "DualEncoder.encode_image / encode_text in PyTorch (float32, CPU) on random inputs; "
                         "text rows shorter than context_length compared with the same ids padded to it",
            "runtime": "onnxruntime, CPUExecutionProvider, default graph optimisations"}


def _tokenizer_entry(spec: str, stage: Path, context: int) -> Dict[str, Any]:
    """How to tokenize for the text graph without vlp, checked against vlp's tokenizer on CHECK_TEXTS."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    kind, _ = parse_tokenizer_spec(spec)
    ours = build_tokenizer(spec, context)
    entry: Dict[str, Any] = {"vlp_spec": spec, "kind": kind, "context_length": context}
    if kind == "open_clip":
        theirs = open_clip.get_tokenizer("ViT-B-32", context_length=context)
        entry.update(files=None, load=f"open_clip.get_tokenizer('ViT-B-32', context_length={context})",
                     description="open_clip's BPE (SimpleTokenizer): [49406, tokens..., 49407, 0, ...]",
                     sot_id=49406, eot_id=49407, pad_id=0)
    else:
        theirs = HFTokenizer(str(stage / TOKENIZER_DIR), context_length=context, local_files_only=True)
        entry.update(files=TOKENIZER_DIR,
                     load=f"open_clip.tokenizer.HFTokenizer('{TOKENIZER_DIR}', context_length={context})",
                     description=("Hugging Face tokenizer files; open_clip's HFTokenizer cleans the text (ftfy, HTML "
                                  "unescape, whitespace runs made one space, stripped), truncates and pads with pad_id "
                                  "to context_length"),
                     sot_id=getattr(ours, "sot_id", None), eot_id=getattr(ours, "eot_id", None),
                     pad_id=getattr(ours, "pad_id", None))
        if kind == "sentencepiece":
            entry["description"] += " (converted from the SentencePiece model with vlp's id scheme: piece i is id i+1)"
    texts = list(CHECK_TEXTS)
    for text, a, b in zip(texts, ours(texts), theirs(texts)):
        if not torch.equal(a.long(), b.long()):
            raise TokenizerExportError(f"{spec}: the exported tokenizer ({entry['load']}) gives other ids than vlp's "
                                       f"for {text[:40]!r}: {b.tolist()[:12]}..., vlp {a.tolist()[:12]}...")
    return entry


def _graph_io(path: Path) -> Tuple[int, Dict[str, List[Dict[str, Any]]]]:
    """(the graph's ai.onnx opset, {'inputs' / 'outputs': [{name, dtype, shape}]}) read from the file."""
    import onnx

    graph_model = onnx.load(str(path), load_external_data=False)
    opset = next(int(o.version) for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))

    def describe(values: Any) -> List[Dict[str, Any]]:
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or int(d.dim_value) for d in v.type.tensor_type.shape.dim]} for v in values]

    return opset, {"inputs": describe(graph_model.graph.input), "outputs": describe(graph_model.graph.output)}


def _metadata(model: DualEncoder, stage: Path, parity: Dict[str, Any], tokenizer: Dict[str, Any],
              runtime_version: str) -> Dict[str, Any]:
    image_opset, image_io = _graph_io(stage / IMAGE_FILE)
    text_opset, text_io = _graph_io(stage / TEXT_FILE)
    text_io["inputs"][0]["max_length"] = model.context_length
    bias = model.logit_head.logit_bias
    pad_id = int(getattr(model.text_tower, "pad_id", 0))
    return {
        "format": "vlp-onnx", "format_version": FORMAT_VERSION,
        "opset": image_opset if image_opset == text_opset else {"image": image_opset, "text": text_opset},
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "onnxruntime": runtime_version,
        "image_encoder": {"file": IMAGE_FILE, **image_io, "l2_normalized": True},
        "text_encoder": {"file": TEXT_FILE, **text_io, "l2_normalized": True, "pad_id": pad_id,
                         "length": length_semantics(model.text_tower)},
        "files": sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()) + [MARKER],
        "embed_dim": int(text_io["outputs"][0]["shape"][-1]),
        "image_size": model.image_size,
        "preprocess": {"image_size": model.image_size, "convert": "RGB", "resize_mode": "shortest",
                       "interpolation": "bicubic", "crop": "center", "to_tensor": "pixels / 255, CHW",
                       "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                       "open_clip": f"open_clip.transform.image_transform({model.image_size}, is_train=False)"},
        "context_length": model.context_length,
        "tokenizer": tokenizer,
        "logit_scale": float(model.logit_head.scale().detach()),
        "logit_bias": None if bias is None else float(bias.detach()),
        "similarity": "logits = logit_scale * image_embeds @ text_embeds.T (+ logit_bias)",
        "heads_not_exported": sorted(model.heads),
        "quick_gelu": bool(getattr(model, "quick_gelu", False)),
        "arch": model.arch,
        "parity": parity,
    }
