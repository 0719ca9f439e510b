"""Text encoding for eval: length-sorted, padding-bounded batches give each text the embedding it
gets alone at full context, in input order."""

import random

import open_clip
import pytest
import torch
import torch.nn.functional as F

from eval.encoding.embed import encode_texts, length_batches, token_lengths
from vlp.interop.open_clip_files import OpenCLIPEncoder


def test_length_batches_on_hand_built_lengths():
    assert length_batches([], 4) == []
    assert length_batches([5] * 10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    # 4 ones then 10s: padding the ones to 10 would be 10x their tokens, so the tens start a batch
    assert length_batches([1, 1, 1, 1, 10, 10, 11], 100) == [slice(0, 4), slice(4, 7)]
    # 10, 10, 11: 3 x 11 = 33 <= 1.1 x 31; a fourth text of 13 would pad 52 > 1.1 x 44
    assert length_batches([10, 10, 11, 13], 100) == [slice(0, 3), slice(3, 4)]
    assert length_batches([7], 1) == [slice(0, 1)]
    with pytest.raises(ValueError, match="batch_size"):
        length_batches([3, 4], 0)


@pytest.mark.parametrize("seed", range(5))
def test_length_batches_cover_once_within_size_and_padding(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 77) for _ in range(rng.randint(1, 400)))
    batch_size = rng.choice([1, 3, 32, 256])
    batches = length_batches(lengths, batch_size)
    assert [i for b in batches for i in range(b.start, b.stop)] == list(range(len(lengths)))
    for b in batches:
        part = lengths[b]
        assert 0 < len(part) <= batch_size
        if len(part) > 1:
            assert len(part) * max(part) <= 1.1 * sum(part) + 1e-9


def test_encode_texts_equals_each_text_alone_in_input_order():
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1,
                                                    "head_width": 16},
                          text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                    "layers": 2}).eval()
    model = OpenCLIPEncoder(clip)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = random.Random(0)
    words = "a red square on the blue circle next to two small green triangles under one big cat".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(60)]
    assert len(set(token_lengths(tokenizer(texts)).tolist())) > 10  # many lengths: several batches
    with torch.no_grad():
        got = encode_texts(model, tokenizer, texts, batch_size=16)
        alone = torch.cat([F.normalize(clip.encode_text(tokenizer([t])), dim=-1) for t in texts])
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_token_lengths_count_up_to_the_last_non_padding_id():
    # RoBERTa-style rows padded with id 1 (0 is its start token): lengths 3, 5, 1
    tokens = torch.tensor([[0, 7, 2, 1, 1], [0, 7, 8, 9, 2], [0, 1, 1, 1, 1]])
    assert token_lengths(tokens, pad_id=1).tolist() == [3, 5, 1]
    assert token_lengths(torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0]])).tolist() == [2, 1]
