"""ONNX export of the encoders (vlp.export.onnx_format): onnxruntime gives our embeddings and
zero-shot predictions, the metadata holds what was measured, the tokenizer travels with the
graphs, and a graph that differs or a tower that cannot be traced leaves nothing in place.
Tiny random models, seeds fixed, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tiny_arch import TINY_ARCH  # noqa: E402
from vlp.config import Config, ModelConfig  # noqa: E402
from vlp.data.tokenizers import build_tokenizer  # noqa: E402
from vlp.export import onnx_graphs  # noqa: E402
from vlp.export.onnx_format import MARKER, OnnxParityError, export_onnx  # noqa: E402
from vlp.export.onnx_parity import image_parity, text_parity  # noqa: E402
from vlp.export.staging import UnsupportedExport  # noqa: E402
from vlp.models.factory import build_model  # noqa: E402

TEXTS = ["a red cube", "a green cone left of a blue ring", "zebra", "", "a cube &amp; a “ball”"]
COCA_ARCH = {"embed_dim": 16, "custom_text": True,
             "vision_cfg": {**TINY_ARCH["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 4,
                            "attn_pooler_heads": 2},
             "text_cfg": {**TINY_ARCH["text_cfg"], "embed_cls": True}}


def _model(arch=TINY_ARCH, seed: int = 0, **model_kwargs):
    cfg = Config()
    cfg.model = ModelConfig(arch=arch, **model_kwargs)
    torch.manual_seed(seed)
    return build_model(cfg.model).eval(), cfg


def _sessions(folder: Path):
    return tuple(ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
                 for name in ("image_encoder.onnx", "text_encoder.onnx"))


def _images(batch: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _onnx(sess, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _ids(ends, seed: int = 0) -> torch.Tensor:
    """Rows of TINY_ARCH ids (vocabulary 64): random ids below 63, the end token 63 (the largest:
    argmax pooling) at each row's position in ``ends``, padding 0 after it."""
    ids = torch.randint(1, 63, (len(ends), 8), generator=torch.Generator().manual_seed(seed))
    for row, end in enumerate(ends):
        ids[row, end], ids[row, end + 1:] = 63, 0
    return ids


def _cut(ids: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """The ids cut after the batch's last non-pad position (what a caller may pass to save work)."""
    last = int(((ids != pad) * torch.arange(1, ids.shape[1] + 1)).max())
    return ids[:, :max(last, 1)]


def _assert_encoders_match(model, folder: Path, ids: torch.Tensor, image_size: int = 16) -> None:
    """onnxruntime's embeddings equal ours within 1e-4: images at batch 1 and 3, ids at batch 1 and
    all rows, at the full context and cut after the last non-pad position (against the same ids
    padded back)."""
    image_sess, text_sess = _sessions(folder)
    pad = int(model.text_tower.pad_id)
    with torch.no_grad():
        for batch in (1, 3):
            images = _images(batch, image_size)
            torch.testing.assert_close(_onnx(image_sess, images), model.encode_image(images), atol=1e-4, rtol=0)
        for rows in (ids[:1], ids):
            for x in (rows, _cut(rows, pad)):
                padded = F.pad(x, (0, model.context_length - x.shape[1]), value=pad)
                torch.testing.assert_close(_onnx(text_sess, x), model.encode_text(padded), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, cfg = _model()
    out = export_onnx(model, cfg, tmp_path_factory.mktemp("onnx") / "tiny")
    return model, out


def test_onnxruntime_gives_our_embeddings_and_zero_shot_predictions(tiny) -> None:
    model, out = tiny
    ids = _ids([2, 4, 1, 3, 0, 4])
    assert _cut(ids[:1]).shape[1] == 3 and _cut(ids).shape[1] == 5
    _assert_encoders_match(model, out, ids)

    # zero-shot: a random model maps every image near one direction, so the class prompts are four
    # whose scores against the mean image are close (else one class wins every image)
    image_sess, text_sess = _sessions(out)
    images = _images(8, seed=5)
    candidates = _ids([i % 7 + 1 for i in range(64)], seed=3)
    with torch.no_grad():
        image_emb, candidate_emb = model.encode_image(images), model.encode_text(candidates)
        prompts = candidates[(candidate_emb @ image_emb.mean(0)).argsort()[:4]]
        scores = image_emb @ model.encode_text(prompts).T
    ours = scores.argmax(dim=1)
    theirs = (_onnx(image_sess, images) @ _onnx(text_sess, _cut(prompts)).T).argmax(dim=1)
    assert torch.equal(ours, theirs)
    top2 = scores.topk(2, dim=1).values
    assert len(set(ours.tolist())) > 1 and float((top2[:, 0] - top2[:, 1]).min()) > 1e-4  # the comparison can tell


def test_metadata_holds_the_measured_difference_and_the_graphs_inputs(tiny) -> None:
    model, out = tiny
    meta = json.loads((out / MARKER).read_text())
    parity = meta["parity"]
    rows = parity["image"] + parity["text"]
    assert [r["batch"] for r in parity["image"]] == [1, 3]
    assert {(r["batch"], r["length"]) for r in parity["text"]} == {(1, 8), (1, 4), (4, 8), (4, 4)}
    assert parity["max_abs_diff"] == max(r["max_abs_diff"] for r in rows) <= 1e-4
    # measured, not made up: the same probes through the written graphs give the same numbers
    assert image_parity(model, out / "image_encoder.onnx") == parity["image"]
    assert text_parity(model, out / "text_encoder.onnx") == parity["text"]
    assert meta["onnxruntime"] == ort.__version__

    assert meta["image_encoder"]["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert meta["image_encoder"]["outputs"] == [{"name": "image_embeds", "dtype": "float32", "shape": ["batch", 16]}]
    assert meta["text_encoder"]["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"],
                                               "max_length": 8}]
    assert meta["text_encoder"]["outputs"] == [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", 16]}]
    image_sess, text_sess = _sessions(out)
    assert [(i.name, i.shape, i.type) for i in image_sess.get_inputs()] == [("pixel_values", ["batch", 3, 16, 16],
                                                                           "tensor(float)")]
    assert [(i.name, i.shape, i.type) for i in text_sess.get_inputs()] == [("input_ids", ["batch", "length"],
                                                                          "tensor(int64)")]
    assert meta["opset"] >= 18 and meta["context_length"] == 8 and meta["image_size"] == 16
    assert meta["preprocess"]["resize_mode"] == "shortest" and meta["preprocess"]["interpolation"] == "bicubic"
    assert meta["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert meta["tokenizer"]["load"] == "open_clip.get_tokenizer('ViT-B-32', context_length=8)"
    assert meta["logit_scale"] == pytest.approx(float(model.logit_head.scale().detach()))
    assert meta["logit_bias"] is None and meta["heads_not_exported"] == []
    assert sorted(p.name for p in out.iterdir()) == ["image_encoder.onnx", "text_encoder.onnx", MARKER]


@pytest.mark.parametrize("variant", ["quick_gelu", "siglip_bias"])
def test_quick_gelu_and_siglip_bias_models_export_and_match(variant: str, tmp_path: Path) -> None:
    kwargs = {"quick_gelu": True} if variant == "quick_gelu" else {"init_logit_scale": 2.302585, "init_logit_bias": -10.0}
    model, cfg = _model(seed=1, **kwargs)
    opset = 18 if variant == "siglip_bias" else None  # an opset asked for is the one written
    out = export_onnx(model, cfg, tmp_path / variant, opset=opset)
    ids = _ids([7, 2, 4, 1])
    _assert_encoders_match(model, out, ids)
    meta = json.loads((out / MARKER).read_text())
    if variant == "quick_gelu":
        assert meta["quick_gelu"] is True
        gelu, _ = _model(seed=1)  # same weights, GELU: the graph must carry QuickGELU to match above
        with torch.no_grad():
            assert (gelu.encode_text(ids) - model.encode_text(ids)).abs().max() > 1e-3
    else:
        assert meta["logit_bias"] == pytest.approx(-10.0) and meta["logit_scale"] == pytest.approx(10.0, rel=1e-5)
        assert meta["opset"] == 18


def test_a_sentencepiece_model_exports_with_its_tokenizer(tmp_path: Path) -> None:
    from open_clip.tokenizer import HFTokenizer

    from data_prep.tokenizer_train import train_sentencepiece

    captions = [f"a {c} {s} left of a {c2} ring" for c in ("red", "green", "blue") for s in ("cube", "ball", "cone")
                for c2 in ("red", "blue")]
    train_sentencepiece(captions * 3, tmp_path / "caps.model", vocab_size=40)
    spec = f"sentencepiece:{tmp_path / 'caps.model'}"
    model, cfg = _model(tokenizer=spec)
    out = export_onnx(model, cfg, tmp_path / "spm")
    ours = build_tokenizer(spec, model.context_length)(TEXTS)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    saved = HFTokenizer(str(out / "tokenizer"), context_length=model.context_length)(TEXTS)
    assert torch.equal(saved.long(), ours)
    meta = json.loads((out / MARKER).read_text())
    assert meta["tokenizer"]["files"] == "tokenizer" and meta["tokenizer"]["vlp_spec"] == spec
    assert meta["tokenizer"]["eot_id"] == model.vocab_size - 1  # vlp's framing: the end token is the largest id
    _assert_encoders_match(model, out, ours)


def test_an_hf_text_tower_exports_with_its_tokenizer(tmp_path: Path) -> None:
    from open_clip.tokenizer import HFTokenizer
    from test_hf_text_tower import hf_arch, save_tiny_bert

    folder = save_tiny_bert(tmp_path / "bert")
    model, cfg = _model(hf_arch(folder), tokenizer=f"hf:{folder}")
    out = export_onnx(model, cfg, tmp_path / "hf")
    ours = build_tokenizer(f"hf:{folder}", model.context_length)(TEXTS)
    saved = HFTokenizer(str(out / "tokenizer"), context_length=model.context_length)(TEXTS)
    assert torch.equal(saved.long(), ours)
    assert not (out / "tokenizer" / "config.json").exists()  # the tokenizer's files, not the tower's
    _assert_encoders_match(model, out, ours)


def test_a_coca_model_exports_its_encoders_and_records_the_head_left_out(tmp_path: Path) -> None:
    model, cfg = _model(COCA_ARCH, heads={"caption": {}})
    assert model.image_tower.tokens_pooled and type(model.text_tower).__name__ == "OpenCLIPCustomTextTower"
    out = export_onnx(model, cfg, tmp_path / "coca")
    meta = json.loads((out / MARKER).read_text())
    assert meta["heads_not_exported"] == ["caption"]
    assert "pads them" in meta["text_encoder"]["length"]
    _assert_encoders_match(model, out, _ids([2, 4, 1, 3]))  # shorter rows: CoCa's class token reads pos. context, as padded


def test_a_graph_that_differs_is_refused_and_nothing_is_put_in_place(tmp_path: Path, monkeypatch) -> None:
    model, cfg = _model()
    forward = onnx_graphs.ImageEncoderGraph.forward

    def scaled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return forward(self, pixel_values) * 1.001

    monkeypatch.setattr(onnx_graphs.ImageEncoderGraph, "forward", scaled)
    with pytest.raises(OnnxParityError, match="image"):
        export_onnx(model, cfg, tmp_path / "new")
    earlier = tmp_path / "earlier"  # an earlier export is kept as it was
    earlier.mkdir()
    (earlier / MARKER).write_text("{}")
    with pytest.raises(OnnxParityError):
        export_onnx(model, cfg, earlier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # no new folder, no staging folder left
    assert [p.name for p in earlier.iterdir()] == [MARKER] and (earlier / MARKER).read_text() == "{}"
    assert model.training is False  # the flags the model had are restored


def test_a_tower_that_cannot_be_traced_is_refused_by_name(tmp_path: Path) -> None:
    model, cfg = _model()
    visual = model.image_tower.visual
    forward = visual.forward
    visual.forward = lambda x: forward(x) if bool(x.mean() > 0) else -forward(x)  # a data-dependent branch
    model.train()
    with pytest.raises(UnsupportedExport, match="the image tower"):
        export_onnx(model, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    assert model.training and model.image_tower.training  # restored
