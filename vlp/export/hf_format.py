"""Export to transformers: a folder that ``CLIPModel`` / ``SiglipModel`` and their processors load offline.

    model = transformers.CLIPModel.from_pretrained(DIR, local_files_only=True)
    processor = transformers.CLIPProcessor.from_pretrained(DIR, local_files_only=True)

The folder holds what ``save_pretrained`` writes: ``config.json``, ``model.safetensors``, the
tokenizer (``vlp.export.hf_tokenizer``: vlp's ids, open_clip's text cleaning included) and
``preprocessor_config.json`` (a ``CLIPImageProcessor`` doing vlp's eval transform: shortest side
resized to the image size, bicubic, centre crop, OpenAI's mean and std).

Which class (``vlp.export.hf_layout``): ``CLIPModel`` for open_clip's ViT and causal text
transformer, ``SiglipModel`` for open_clip's SigLIP towers (timm ViT with an attention probe,
bidirectional text pooled at the last position). Anything else (a ResNet or other timm image
tower, an attentional pooler, an HF text tower, layer scale, heads such as 'caption') raises
``UnsupportedExport`` naming the part, before anything is written.

Config: each tower's sizes, ``hidden_act`` ('quick_gelu', 'gelu' or 'gelu_pytorch_tanh') and
``layer_norm_eps`` read from the built modules; ``projection_dim`` = the embedding width. The
text model's pooling: open_clip's argmax pooling is transformers' ``eos_token_id`` 2 (its switch
to argmax, as in OpenAI's configs: exact for every input), pooling at an end id X is
``eos_token_id`` X; ``bos_token_id`` / ``pad_token_id`` are the tokenizer's.

The logit bias: SiglipModel holds it (0 for SigLIP towers trained without one). A CLIP-layout
model trained with the sigmoid loss (``model.init_logit_bias``, e.g. configs/siglip_tiny.yaml)
keeps it in ``config.json`` as ``vlp_export.logit_bias``: CLIPModel has no bias parameter and
SiglipModel no class token, causal mask or projection matrices, so neither holds the towers and
the bias together. The embeddings and ``logit_scale`` are the model's; ``logits_per_image`` lack
the constant bias, which changes no softmax and no ranking; ``sigmoid(logits_per_image +
logit_bias)`` is the pair probability the model was trained for. ``model.init_from`` reads the
bias back (``vlp.models.init_sources``).

Checked before the folder is put in place (``vlp.export.staging``): the tokenizer gives vlp's ids
on probe texts, and the saved model's features equal the model's on probe texts and images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F

from vlp.data.tokenizers import build_tokenizer
from vlp.export.hf_layout import HFLayout, hf_layout
from vlp.export.hf_tokenizer import check_hf_tokenizer, hf_export_tokenizer, save_hf_tokenizer
from vlp.export.sentencepiece_hf import TokenizerExportError
from vlp.export.staging import check_replaceable, save_safetensors_atomic, staged_dir
from vlp.export.text_files import CHECK_TEXTS
from vlp.interop.consistency import tokenizer_eot_id
from vlp.models.dual_encoder import DualEncoder
from vlp.models.hf_clip_arch import ARGMAX_EOS_ID
from vlp.models.hf_clip_state import hf_clip_state_from_open_clip
from vlp.models.hf_siglip_state import hf_siglip_state_from_open_clip
from vlp.models.init_sources import VLP_EXPORT_KEY
from vlp.models.open_clip_layout import to_open_clip_state

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
PARITY_ATOL = 1e-3
"""Largest difference allowed between the saved model's normalised features and ours (float32):
a wrong mapping differs by order 1, kernel differences by about 1e-6."""
BIAS_NOTE = ("CLIPModel has no logit bias: logits_per_image lack it (a constant: softmax and rankings unchanged); "
             "sigmoid(logits_per_image + logit_bias) is the pair probability the model was trained for")


def export_hf(model: DualEncoder, cfg: Any, out_dir: Path) -> Path:
    """Write ``model`` (tokenizer ``cfg.model.tokenizer``, a ``vlp.config.Config``) as a transformers
    CLIPModel or SiglipModel folder with its processor files at ``out_dir``; returns the folder.
    UnsupportedExport / TokenizerExportError / FileExistsError before anything is written."""
    out_dir = Path(out_dir)
    layout = hf_layout(model)
    check_replaceable(out_dir, HF_CONFIG)
    spec = str(cfg.model.tokenizer)
    context = model.context_length
    siglip = layout.kind == "siglip"
    ours = build_tokenizer(spec, context)
    probe_ids = ours(list(CHECK_TEXTS))
    _check_tokenizer_fits(probe_ids, tokenizer_eot_id(ours), layout, spec, context)
    tokenizer, files = hf_export_tokenizer(spec, ours, context, siglip=siglip)
    config = hf_config(layout, model, tokenizer)
    state = hf_state(model, layout)
    _check_state(config, state, layout.kind)
    with staged_dir(out_dir) as stage:
        config.save_pretrained(str(stage))
        save_safetensors_atomic(state, stage / HF_WEIGHTS, {"format": "pt"})
        save_hf_tokenizer(tokenizer, files, stage)
        eval_image_processor(model.image_size).save_pretrained(str(stage))
        check_hf_tokenizer(stage, ours, spec, context, whole_rows=siglip)
        check_parity(stage, model, layout.kind, probe_ids)
    return out_dir


def _check_tokenizer_fits(ids: torch.Tensor, eot: int, layout: HFLayout, spec: str, context: int) -> None:
    """The tokenizer's ids fit the text tower's rows and positions, and its end id is where the tower pools."""
    rows, positions = layout.text["vocab_size"], layout.text["max_position_embeddings"]
    if int(ids.max()) >= rows:
        raise TokenizerExportError(f"{spec}: the tokenizer emits id {int(ids.max())}, beyond the text tower's {rows} "
                                   "token rows: the export could not encode its own tokenizer's texts")
    if context > positions or (layout.kind == "siglip" and context != positions):
        raise TokenizerExportError(f"{spec}: texts of {context} tokens for a text tower of {positions} positions")
    if layout.text_pool == "eos" and eot != layout.pool_eos_id:
        raise TokenizerExportError(f"{spec}: the tokenizer ends texts with id {eot} but the text tower pools at "
                                   f"id {layout.pool_eos_id}")


def hf_config(layout: HFLayout, model: DualEncoder, tokenizer: Any) -> Any:
    """The transformers CLIPConfig / SiglipConfig of ``layout`` with the tokenizer's special ids."""
    from transformers import CLIPConfig, SiglipConfig

    text = dict(layout.text, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    bias = model.logit_head.logit_bias
    if layout.kind == "siglip":
        config = SiglipConfig(text_config=dict(text, eos_token_id=tokenizer.eos_token_id),
                              vision_config=dict(layout.vision))
        config.architectures = ["SiglipModel"]
    else:
        eos = ARGMAX_EOS_ID if layout.text_pool == "argmax" else layout.pool_eos_id
        config = CLIPConfig(text_config=dict(text, eos_token_id=eos), vision_config=dict(layout.vision),
                            projection_dim=layout.embed_dim)
        config.architectures = ["CLIPModel"]
        if bias is not None:
            setattr(config, VLP_EXPORT_KEY, {"logit_bias": float(bias.detach()), "note": BIAS_NOTE})
    config.dtype = next(model.parameters()).dtype
    return config


def hf_state(model: DualEncoder, layout: HFLayout) -> Dict[str, torch.Tensor]:
    """The model's weights under the transformers class's names (every tensor's values unchanged)."""
    state = to_open_clip_state(model)
    want = "text." if layout.kind == "siglip" else ""
    moved: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("visual.") and key not in ("logit_scale", "logit_bias"):
            key = want + key[len(layout.text_prefix):]
        moved[key] = value
    if layout.kind == "siglip":
        return hf_siglip_state_from_open_clip(moved)
    moved.pop("logit_bias", None)  # in config.json (hf_config)
    return hf_clip_state_from_open_clip(moved)


def _model_class(kind: str) -> Any:
    from transformers import CLIPModel, SiglipModel

    return SiglipModel if kind == "siglip" else CLIPModel


def _check_state(config: Any, state: Mapping[str, torch.Tensor], kind: str) -> None:
    """The converted weights are exactly the transformers model's parameters (names and shapes)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _model_class(kind)(config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        wrong = sorted(set(expected) ^ set(got)) + sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ValueError(f"the converted weights do not fit transformers' {_model_class(kind).__name__}: {wrong[:6]}")


def eval_image_processor(image_size: int) -> Any:
    """A CLIPImageProcessor doing vlp's eval transform (``vlp.data.transforms.eval_transform``)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(do_resize=True, size={"shortest_edge": int(image_size)}, resample=3,  # PIL bicubic
                              do_center_crop=True, crop_size={"height": int(image_size), "width": int(image_size)},
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=list(OPENAI_DATASET_MEAN), image_std=list(OPENAI_DATASET_STD),
                              do_convert_rgb=True)


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_parity(folder: Path, model: DualEncoder, kind: str, ids: torch.Tensor) -> None:
    """The saved model's normalised features equal ``model``'s on ``ids`` and two random images
    (float32 models; others are not compared); ValueError otherwise."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return
    hf = _model_class(kind).from_pretrained(str(folder), local_files_only=True).eval()
    device = next(model.parameters()).device
    images = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = [model.encode_image(images.to(device)).cpu(), model.encode_text(ids.to(device)).cpu()]
            theirs = [F.normalize(_features(hf.get_image_features(pixel_values=images)), dim=-1),
                      F.normalize(_features(hf.get_text_features(input_ids=ids)), dim=-1)]
    finally:
        model.train(was)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    if diff > PARITY_ATOL:
        raise ValueError(f"the exported {type(hf).__name__}'s features differ from the model's by {diff:.3g}")
