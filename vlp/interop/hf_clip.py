"""A local transformers CLIP folder as an eval model: encoders, tokenizer and image transform."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlp.interop.consistency import (Declaration, activation_notes, check_model_consistency, finish_loading,
                                     name_declares_quick_gelu)
from vlp.interop.loaded import LoadedModel


def text_attention_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including each row's first ``eos_id``, 0 after (padding may reuse the eos id)."""
    is_eos = (ids == eos_id).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).long()


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output holds the projected features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFCLIPEncoder(nn.Module):
    """``transformers.CLIPModel`` behind encode_image / encode_text (projected, L2-normalised features);
    encode_text builds the attention mask from the first end-of-text token of each row."""

    def __init__(self, clip: nn.Module, eos_id: int) -> None:
        super().__init__()
        self.clip, self.eos_id = clip, int(eos_id)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(_features(self.clip.get_image_features(pixel_values=image)), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        mask = text_attention_mask(text, self.eos_id)
        length = max(int(mask.sum(dim=1).max().item()), 1) if mask.numel() else text.shape[1]
        text, mask = text[:, :length], mask[:, :length]  # exact: only padding after the longest text goes
        return F.normalize(_features(self.clip.get_text_features(input_ids=text, attention_mask=mask)), dim=-1)


class HFCLIPTokenizer:
    """A transformers tokenizer as list[str] -> LongTensor [B, context_length], padded to the context."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, int(context_length)
        self.eot_id = int(tokenizer.eos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: str | Sequence[str], context_length: Optional[int] = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        return self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                              max_length=int(context_length or self.context_length))["input_ids"].long()


class _Rescale:
    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float() * self.factor


def _to_rgb(image: Any) -> Any:
    return image.convert("RGB")


def hf_image_transform(cfg: Mapping[str, Any]) -> Callable:
    """torchvision transform for a CLIPImageProcessor's preprocessor_config.json: RGB, resize (shortest
    edge or height/width, its resample filter), centre crop, rescale, normalise."""
    from torchvision import transforms as T

    modes = {0: T.InterpolationMode.NEAREST, 1: T.InterpolationMode.LANCZOS, 2: T.InterpolationMode.BILINEAR,
             3: T.InterpolationMode.BICUBIC, 4: T.InterpolationMode.BOX, 5: T.InterpolationMode.HAMMING}
    steps: List[Callable] = [_to_rgb] if cfg.get("do_convert_rgb", True) else []
    if cfg.get("do_resize", True):
        size = cfg.get("size", {"shortest_edge": 224})
        size = {"shortest_edge": size} if isinstance(size, int) else size
        target = size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"])
        steps.append(T.Resize(target, interpolation=modes[int(cfg.get("resample", 3))]))
    if cfg.get("do_center_crop", True):
        crop = cfg.get("crop_size", {"height": 224, "width": 224})
        steps.append(T.CenterCrop((crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])))
    steps += [T.PILToTensor(), _Rescale(cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0)]
    if cfg.get("do_normalize", True):
        steps.append(T.Normalize(cfg.get("image_mean", (0.48145466, 0.4578275, 0.40821073)),
                                 cfg.get("image_std", (0.26862954, 0.26130258, 0.27577711))))
    return T.Compose(steps)


def load_hf_clip(path: Path, device: str, quick_gelu: Optional[bool], allow_mismatch: bool) -> LoadedModel:
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    preprocessor = path / "preprocessor_config.json"
    if not preprocessor.is_file():
        raise FileNotFoundError(f"{path}: transformers CLIP folder without {preprocessor.name}")
    raw = json.loads((path / "config.json").read_text())
    config = CLIPConfig.from_pretrained(str(path), local_files_only=True)
    declared: List[Declaration] = []
    for tower in ("text_config", "vision_config"):
        act = raw.get(tower, {}).get("hidden_act")
        if act is not None:
            declared.append((f"config.json {tower}.hidden_act={act!r}", act == "quick_gelu"))
        if quick_gelu is not None:
            setattr(getattr(config, tower), "hidden_act", "quick_gelu" if quick_gelu else "gelu")
    if name_declares_quick_gelu(path.name):
        declared.append((f"the folder name {path.name!r}", True))
    built_acts = {config.text_config.hidden_act, config.vision_config.hidden_act}
    built = next(iter(built_acts)) == "quick_gelu" if len(built_acts) == 1 else None
    model = CLIPModel.from_pretrained(str(path), config=config, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    positions = int(config.text_config.max_position_embeddings)
    context = hf_tok.model_max_length if 0 < hf_tok.model_max_length < 1_000_000 else positions
    tokenizer = HFCLIPTokenizer(hf_tok, context)
    eos = config.text_config.eos_token_id
    problems = check_model_consistency(
        tokenizer, declared_activation=declared, built_quick_gelu=built, model_context_length=positions,
        model_token_rows=int(model.text_model.embeddings.token_embedding.weight.shape[0]),
        text_pool="argmax" if eos == 2 else "eos", pool_eos_id=eos)
    loaded = LoadedModel(model=HFCLIPEncoder(model.to(device), tokenizer.eot_id), tokenizer=tokenizer,
                         image_transform=hf_image_transform(json.loads(preprocessor.read_text())), name=str(path))
    return finish_loading(loaded, path, problems, activation_notes(declared, built), allow_mismatch)
