"""Export round trips: open_clip local-dir and safetensors give the same embeddings."""

import open_clip
import torch
from safetensors.torch import load_file

from tiny_arch import TINY_ARCH
from vlp.checkpoints import save_atomic
from vlp.config import config_to_yaml, load_config
from vlp.export.cli import main as export_main
from vlp.interop.vlp_files import load_model
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import load_weights


def _checkpoint(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = TINY_ARCH
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH)
    with torch.no_grad():
        model.clip.logit_scale.fill_(2.5)
    path = tmp_path / "run" / "checkpoints" / "final.pt"
    save_atomic({"model": model.state_dict(), "step": 1, "config": config_to_yaml(cfg)}, path)
    return model.eval(), tmp_path / "run"


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 16, 16, generator=g), torch.randint(1, 64, (3, 8), generator=g)


def test_open_clip_local_dir_round_trip(tmp_path):
    model, run = _checkpoint(tmp_path)
    assert export_main(["--model", str(run), "--format", "open_clip", "--output", str(tmp_path / "oc")]) == 0
    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    loaded.eval()
    images, texts = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images, normalize=True), model.encode_image(images), atol=1e-6)
        assert torch.allclose(loaded.encode_text(texts, normalize=True), model.encode_text(texts), atol=1e-6)
    assert loaded.logit_scale.item() == 2.5


def test_safetensors_round_trip_and_run_dir_loading(tmp_path):
    model, run = _checkpoint(tmp_path)
    out = tmp_path / "model.safetensors"
    assert export_main(["--model", str(run), "--format", "safetensors", "--output", str(out)]) == 0
    fresh = DualEncoder(TINY_ARCH).eval()
    load_weights(fresh, load_file(str(out)))
    images, texts = _inputs()
    again = load_model(run).model
    with torch.no_grad():
        for other in (fresh, again):
            assert torch.equal(other.encode_image(images), model.encode_image(images))
            assert torch.equal(other.encode_text(texts), model.encode_text(texts))
    from safetensors import safe_open

    with safe_open(str(out), "pt") as exported:  # the file names the layout of its tensor names
        assert exported.metadata()["vlp_state_layout"] == "parts-1"
        assert {key.split(".")[0] for key in exported.keys()} == {"image_tower", "text_tower", "logit_head"}


def test_open_clip_export_keeps_the_siglip_bias(tmp_path):
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, init_logit_bias=-10.0).eval()
    from vlp.export.open_clip_format import export_open_clip

    export_open_clip(model, tmp_path / "oc")
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    assert loaded.logit_bias.item() == -10.0
    images, texts = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(texts, normalize=True), model.encode_text(texts), atol=1e-6)


def test_open_clip_export_keeps_quick_gelu(tmp_path):
    from vlp.export.open_clip_format import export_open_clip

    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, quick_gelu=True).eval()
    export_open_clip(model, tmp_path / "oc")
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    loaded.eval()
    assert type(loaded.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    images, texts = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(texts, normalize=True), model.encode_text(texts), atol=1e-6)
        assert torch.allclose(loaded.encode_image(images, normalize=True), model.encode_image(images), atol=1e-6)


def test_arch_that_declares_quick_gelu_gets_it():
    plain = DualEncoder(TINY_ARCH)
    declared = DualEncoder({**TINY_ARCH, "quick_gelu": True})
    assert type(plain.clip.transformer.resblocks[0].mlp.gelu).__name__ == "GELU" and not plain.quick_gelu
    assert type(declared.clip.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU" and declared.quick_gelu
