"""Checkpoints written before the model had named parts (open_clip's names under 'clip.',
parameters in open_clip's order) still load for eval, export and resume, and give the same model."""

import open_clip
import pytest
import torch

from tiny_arch import TINY_ARCH
from vlp.checkpoints import save_atomic
from vlp.config import OptimConfig, config_to_yaml, load_config
from vlp.interop.load import load_eval_model
from vlp.interop.vlp_files import load_model
from vlp.models.dual_encoder import DualEncoder
from vlp.models.factory import load_weights
from vlp.models.open_clip_layout import to_open_clip_key
from vlp.train.optim import build_optimizer
from vlp.train.resume import load_states


def _old_state(seed=0, **kwargs):
    """What DualEncoder.state_dict() wrote before the model had named parts: the wrapped open_clip CLIP's, under 'clip.'."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**TINY_ARCH, **kwargs)
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)
    return clip, {f"clip.{k}": v for k, v in clip.state_dict().items()}


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 16, 16, generator=g), torch.randint(1, 64, (3, 8), generator=g)


def _same_embeddings(model, clip, **kwargs):
    """open_clip's embeddings (up to the rounding of vlp's exact fast paths), and bitwise those of
    the DualEncoder that the same seed builds today."""
    images, texts = _inputs()
    clip.eval()
    torch.manual_seed(0)
    today = DualEncoder(TINY_ARCH, **kwargs).eval()
    with torch.no_grad():
        today.logit_head.logit_scale.fill_(2.5)
        torch.testing.assert_close(model.encode_image(images), clip.encode_image(images, normalize=True), atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode_text(texts), clip.encode_text(texts, normalize=True), atol=1e-6, rtol=0)
        assert torch.equal(model.encode_image(images), today.encode_image(images))
        assert torch.equal(model.encode_text(texts), today.encode_text(texts))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), today.state_dict().values()))


def test_old_state_dict_loads_and_gives_the_same_model():
    clip, old = _old_state(init_logit_bias=-10.0)
    model = DualEncoder(TINY_ARCH, init_logit_bias=0.0).eval()
    load_weights(model, old)
    assert model.logit_head.logit_scale.item() == 2.5 and model.logit_head.logit_bias.item() == -10.0
    _same_embeddings(model, clip, init_logit_bias=-10.0)
    load_weights(model, {"model": old})  # as a checkpoint dict
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(DualEncoder(TINY_ARCH), old)  # the bias has nowhere to go


def test_old_checkpoint_in_a_run_dir_loads_for_eval(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    cfg.model.arch = TINY_ARCH
    clip, old = _old_state()
    save_atomic({"model": old, "step": 1, "config": config_to_yaml(cfg)}, tmp_path / "run" / "checkpoints" / "final.pt")
    _same_embeddings(load_model(tmp_path / "run").model, clip)
    loaded = load_eval_model(tmp_path / "run", allow_mismatch=True)  # TINY_ARCH's 64 token rows: too few for open_clip's BPE
    assert loaded.warnings and all(w.startswith("vocabulary:") for w in loaded.warnings)
    _same_embeddings(loaded.model, clip)


def test_old_checkpoint_resumes_with_each_parameters_optimizer_state(tmp_path):
    """Before the model had named parts, the optimizer numbered the parameters in open_clip's order (logit_scale
    first); resuming renumbers them, so each parameter gets its own Adam moments back."""
    reference, old_model = _old_state()[0], torch.nn.Module()
    old_model.clip = reference  # what the model was: open_clip's CLIP under .clip, its parameters in its order
    old_optimizer = build_optimizer(old_model, OptimConfig())
    images, texts = _inputs()
    image_emb, text_emb, scale = reference(images, texts)[:3]
    (image_emb @ text_emb.T * scale).sum().backward()
    old_optimizer.step()
    old = {"model": old_model.state_dict(), "optimizer": old_optimizer.state_dict()}
    old_params = dict(old_model.named_parameters())

    model = DualEncoder(TINY_ARCH)
    optimizer = build_optimizer(model, OptimConfig())
    load_states(tmp_path / "final.pt", old, model=model, optimizer=optimizer)
    for name, param in model.named_parameters():
        then = old_params["clip." + to_open_clip_key(name)]
        assert torch.equal(param, then), name
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[param][moment], old_optimizer.state[then][moment]), name
    # a checkpoint of today's layout loads as it is
    fresh = DualEncoder(TINY_ARCH)
    fresh_optimizer = build_optimizer(fresh, OptimConfig())
    load_states(tmp_path / "final.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                model=fresh, optimizer=fresh_optimizer)
    for (name, param), (_, other) in zip(fresh.named_parameters(), model.named_parameters()):
        assert torch.equal(fresh_optimizer.state[param]["exp_avg"], optimizer.state[other]["exp_avg"]), name
