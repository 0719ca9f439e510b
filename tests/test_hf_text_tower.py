"""HF text towers (open_clip's HFTextEncoder from a local transformers folder): the tokenizer's own
ids, special tokens and padding, and the pooled embedding transformers computes on its own.

Tiny BERT (WordPiece) and RoBERTa (byte-level BPE) models and tokenizers are built and saved in
temporary folders; nothing is downloaded. Their vocabularies are exactly the tokenizers' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlp.config import ModelConfig
from vlp.data.tokenizers import build_tokenizer
from vlp.models.towers.open_clip_text import hf_text_length
from vlp.models.factory import build_model, model_arch

CONTEXT = 12
WORDS = ("a an the photo of cat cats dog dogs red green blue cube ball cone ring left right above below next to "
         "two three playing in snow").split()
CAPTIONS = ["a photo of a cat", "two dogs playing in the snow", "a red cube left of a blue ball",
            "three green cones next to a ring", "the cat above the dog"]
TEXTS = ["a photo of a cat", "two dogs playing in the snow", "a red cube", "zebra",
         "a photo of two dogs playing in the snow next to a red cube above a blue ball", ""]


def save_tiny_bert(folder: Path, weights: bool = True) -> Path:
    """A BERT tokenizer (WordPiece over WORDS) and a 1-layer BertModel whose vocab_size is len(tokenizer)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##ing"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    (BertModel(config, add_pooling_layer=False) if weights else config).save_pretrained(folder)
    return folder


def save_tiny_roberta(folder: Path, weights: bool = True) -> Path:
    """A RoBERTa tokenizer (byte-level BPE trained with `tokenizers`) and a 1-layer RobertaModel (pad id 1)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CAPTIONS * 4, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges)
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=16, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    torch.manual_seed(0)
    (RobertaModel(config, add_pooling_layer=False) if weights else config).save_pretrained(folder)
    return folder


def hf_arch(folder: Path, pretrained: bool = True, **text) -> dict:
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
            "text_cfg": {"hf_model_name": str(folder), "hf_model_pretrained": pretrained, "hf_proj_type": "mlp",
                         "hf_pooler_type": "mean_pooler", "context_length": CONTEXT, **text}}


@pytest.fixture(scope="module", params=["bert", "roberta"])
def hf_folder(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param)
    return save_tiny_bert(folder) if request.param == "bert" else save_tiny_roberta(folder)


def _hf_model(folder: Path):
    return build_model(ModelConfig(arch=hf_arch(folder), tokenizer=f"hf:{folder}")).eval()


def test_ids_are_the_tokenizers_own(hf_folder: Path) -> None:
    from open_clip.tokenizer import HFTokenizer as OpenCLIPHFTokenizer
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(hf_folder), local_files_only=True)
    expected = reference(TEXTS, padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
    ours = build_tokenizer(f"hf:{hf_folder}", CONTEXT)
    assert torch.equal(ours(TEXTS), expected["input_ids"])
    assert torch.equal(ours(TEXTS), OpenCLIPHFTokenizer(str(hf_folder), context_length=CONTEXT)(TEXTS))
    framing = (reference.cls_token_id, reference.sep_token_id)
    assert (ours.sot_id, ours.eot_id, ours.pad_id) == (*framing, reference.pad_token_id)
    assert ours.vocab_size == len(reference)
    row = ours(["a photo of a cat"])[0].tolist()
    assert row[0] == framing[0] and row[row.index(framing[1]) + 1:] == [reference.pad_token_id] * (CONTEXT - 1 - row.index(framing[1]))
    assert ours(TEXTS)[4, -1] == framing[1]  # truncated: the end token stays last


def test_pooled_embedding_equals_transformers_and_open_clip_on_their_own(hf_folder: Path) -> None:
    from open_clip.hf_model import HFTextEncoder
    from transformers import AutoModel, AutoTokenizer

    model = _hf_model(hf_folder)  # crashed with IndexError: the remapped end token was beyond the vocabulary
    assert model.vocab_size == len(AutoTokenizer.from_pretrained(str(hf_folder)))
    tokens = build_tokenizer(f"hf:{hf_folder}", CONTEXT)(TEXTS)
    with torch.no_grad():
        ours = model.encode_text(tokens, normalize=False)
        # transformers alone: the saved weights, the tokenizer's ids and mask, mean pooling, our projection
        encoded = AutoTokenizer.from_pretrained(str(hf_folder))(TEXTS, padding="max_length", truncation=True,
                                                                 max_length=CONTEXT, return_tensors="pt")
        hf = AutoModel.from_pretrained(str(hf_folder), add_pooling_layer=False).eval()
        mask = encoded["attention_mask"]
        hidden = hf(input_ids=encoded["input_ids"], attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(ours, model.clip.text.proj(pooled), atol=1e-6)
        # open_clip's HFTextEncoder alone, with our projection weights
        alone = HFTextEncoder(str(hf_folder), output_dim=16, proj_type="mlp", pooler_type="mean_pooler").eval()
        alone.proj.load_state_dict(model.clip.text.proj.state_dict())
        assert torch.allclose(ours, alone(encoded["input_ids"]), atol=1e-6)
        assert torch.allclose(model.encode_text(tokens), F.normalize(alone(encoded["input_ids"]), dim=-1), atol=1e-6)


def test_trimmed_padding_gives_the_full_context_features(hf_folder: Path) -> None:
    model = _hf_model(hf_folder).double()
    tokens = build_tokenizer(f"hf:{hf_folder}", CONTEXT)(["a photo of a cat", "a red cube", "zebra", ""])
    assert hf_text_length(model.clip, tokens) < CONTEXT  # the batch is cut after its longest text
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), F.normalize(model.clip.encode_text(tokens), dim=-1),
                              atol=1e-12)


def test_arch_keeps_the_hf_vocabulary(hf_folder: Path) -> None:
    cfg = ModelConfig(arch=hf_arch(hf_folder), tokenizer=f"hf:{hf_folder}")
    assert model_arch(cfg)["text_cfg"] == hf_arch(hf_folder)["text_cfg"]  # no vocab_size enlarged, no pooling set


def test_hf_tower_mistakes_are_clear_errors(tmp_path: Path) -> None:
    bert = save_tiny_bert(tmp_path / "bert", weights=False)
    with pytest.raises(ValueError, match="an HF text tower .* set model.tokenizer=hf:DIR"):
        model_arch(ModelConfig(arch=hf_arch(bert, pretrained=False)))
    with pytest.raises(FileNotFoundError, match="holds no weights .*hf_model_pretrained: false"):
        build_model(ModelConfig(arch=hf_arch(bert), tokenizer=f"hf:{bert}"))
    with pytest.raises(FileNotFoundError, match="bert-base-uncased is not a local folder .*never downloads"):
        build_model(ModelConfig(arch={**hf_arch(bert), "text_cfg": {"hf_model_name": "bert-base-uncased"}},
                                tokenizer=f"hf:{bert}"))
    with pytest.raises(ValueError, match="context_length=40 is more than the 16 positions"):
        model_arch(ModelConfig(arch=hf_arch(bert, pretrained=False, context_length=40), tokenizer=f"hf:{bert}"))
    other_pad = save_tiny_bert(tmp_path / "other-pad", weights=False)
    config = json.loads((other_pad / "config.json").read_text())
    (other_pad / "config.json").write_text(json.dumps({**config, "pad_token_id": 4}))
    with pytest.raises(ValueError, match="pads with id 0 but the HF text tower .* masks id 4"):
        model_arch(ModelConfig(arch=hf_arch(other_pad, pretrained=False), tokenizer=f"hf:{other_pad}"))
    model = build_model(ModelConfig(arch=hf_arch(bert, pretrained=False), tokenizer=f"hf:{bert}"))  # config only
    assert model.encode_text(build_tokenizer(f"hf:{bert}", CONTEXT)(TEXTS)).shape == (len(TEXTS), 16)
