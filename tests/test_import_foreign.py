"""Fine-tuning a foreign checkpoint: ``model.arch`` names its folder ('hf:DIR', 'local-dir:DIR')
and ``model.init_from`` its weights; the model built computes the source library's features."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tiny_arch import TINY_ARCH
from vlp.config import load_config
from vlp.errors import ConfigError
from vlp.models.factory import build_model


def _transformers_folder(folder: Path) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 8, "hidden_act": "quick_gelu", "bos_token_id": 62,
            "eos_token_id": 2, "pad_token_id": 63, "projection_dim": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 8, "hidden_act": "quick_gelu", "projection_dim": 16}
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(folder)
    return model


def test_a_transformers_clip_folder_is_the_arch_and_the_weights(tmp_path: Path) -> None:
    theirs = _transformers_folder(tmp_path / "hf")
    cfg = load_config("configs/tiny.yaml", [f"model.arch=hf:{tmp_path / 'hf'}", f"model.init_from={tmp_path / 'hf'}"])
    ours = build_model(cfg.model).eval()
    assert ours.quick_gelu
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[62, 5, 9, 63, 0, 0, 0, 0], [62, 7, 11, 12, 13, 63, 0, 0]])
    with torch.no_grad():
        got_image, got_text = ours.encode_image(images), ours.encode_text(ids)
        want_image = F.normalize(theirs.get_image_features(pixel_values=images).pooler_output, dim=-1)
        want_text = F.normalize(theirs.get_text_features(input_ids=ids).pooler_output, dim=-1)
    assert (got_image - want_image).abs().max().item() < 1e-5
    assert (got_text - want_text).abs().max().item() < 1e-5


def test_an_open_clip_local_dir_is_the_arch_and_the_weights(tmp_path: Path) -> None:
    from vlp.export.open_clip_format import export_open_clip
    from vlp.models.dual_encoder import DualEncoder

    torch.manual_seed(2)
    source = DualEncoder({**TINY_ARCH, "quick_gelu": True})
    export_open_clip(source, tmp_path / "oc")
    theirs, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    cfg = load_config("configs/tiny.yaml", [f"model.arch=local-dir:{tmp_path / 'oc'}",
                                            f"model.init_from={tmp_path / 'oc'}"])
    ours = build_model(cfg.model)
    want = {f"image_tower.{k}" if k.startswith("visual.") else
            ("logit_head." + k if k.startswith("logit_") else "text_tower." + k): v for k, v in theirs.state_dict().items()}
    got = ours.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert ours.quick_gelu


def test_a_missing_folder_arch_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.arch: 'hf:.*nowhere': .*nowhere/config.json not found"):
        load_config("configs/tiny.yaml", [f"model.arch=hf:{tmp_path / 'nowhere'}"])
