"""Caption generation: a tiny CoCa overfits 8 captions until greedy decoding returns them; the
searches agree where they must (beam 1 = greedy = top-k 1), sampling is reproducible and stays
in its allowed set, the penalties change what a self-repeating model emits, bad configs fail."""

from __future__ import annotations

from typing import List, Sequence

import pytest
import torch

from tiny_arch import TINY_ARCH
from vlp.errors import ConfigError
from vlp.losses.captioning import caption_loss
from vlp.losses.contrastive import clip_loss
from vlp.models.dual_encoder import DualEncoder
from vlp.models.heads.generation import (GenerationConfig, apply_repetition_penalty, beam_search, caption_head,
                                         decode_text, filter_logits, generate_captions, generate_ids,
                                         greedy_or_sample, special_ids)

WORDS = [f"w{i}" for i in range(1, 62)]
CAPTIONS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10", "w11 w2 w12", "w13 w14 w3 w15", "w16 w17", "w18 w1 w19"]


class WordTokenizer:
    """One id per word (1..61), start 62, end 63, pad 0: the tiny arch's 64-row vocabulary."""

    sot_id, eot_id, pad_id = 62, 63, 0

    def __call__(self, texts: Sequence[str], context_length: int = 8) -> torch.Tensor:
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + [WORDS.index(w) + 1 for w in text.split()] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(WORDS[i - 1] for i in ids if 0 < i <= len(WORDS))


@pytest.fixture(scope="module")
def overfit():
    """(model, images) after training a tiny CoCa on the 8 captions until greedy returns each."""
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}})
    images = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    text = WordTokenizer()(CAPTIONS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(1, 1201):
        model.train()
        out = model(images, text)
        loss = clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"])
        loss = loss + 2.0 * caption_loss(out["caption_logits"], out["caption_labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 and generate_captions(model, images, WordTokenizer(), GenerationConfig()) == CAPTIONS:
            break
    return model, images


def test_a_tiny_coca_overfits_eight_captions_until_greedy_returns_each(overfit):
    model, images = overfit
    model.train()
    assert generate_captions(model, images, WordTokenizer(), GenerationConfig()) == CAPTIONS
    assert model.training  # the mode is put back
    ids = generate_ids(model, images, sot_id=62, eot_id=63, config=GenerationConfig(strategy="beam", beams=3))
    assert [WordTokenizer().decode(row) for row in ids] == CAPTIONS


def _score(model, images, rows: List[List[int]], penalty: float = 1.0) -> List[float]:
    """The beam score of each caption (end token included): sum log-probability / length ** penalty."""
    head = caption_head(model)
    with torch.no_grad():
        memory = head.encode_image_memory(images)
        scores = []
        for i, row in enumerate(rows):
            ids = torch.tensor([[62, *row, 63]])
            logits = head.decode(memory[i:i + 1], head.text_tower.token_states(ids[:, :-1]))[0].double()
            logprob = logits.log_softmax(-1).gather(1, ids[0, 1:, None]).sum()
            scores.append(float(logprob) / len(ids[0, 1:]) ** penalty)
    return scores


def test_beam_one_is_greedy_and_wider_beams_score_at_least_as_well():
    torch.manual_seed(3)
    model = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 4}}).eval()
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    greedy = generate_ids(model, images, sot_id=62, eot_id=63, config=GenerationConfig())
    beam1 = generate_ids(model, images, sot_id=62, eot_id=63, config=GenerationConfig(strategy="beam", beams=1))
    top1 = generate_ids(model, images, sot_id=62, eot_id=63, config=GenerationConfig(strategy="top_k", top_k=1, seed=5))
    assert beam1 == greedy == top1
    # the same search from the head's logits gives each caption's score: the wider beam's is never lower
    head = caption_head(model)
    with torch.no_grad():
        memory = head.encode_image_memory(images)

        def next_logits(ids, rows):
            return head.next_token_logits(memory[rows], ids)

        cpu = torch.device("cpu")
        narrow = beam_search(next_logits, 6, 62, 63, GenerationConfig(strategy="beam", beams=1), cpu, 7)
        wide = beam_search(next_logits, 6, 62, 63, GenerationConfig(strategy="beam", beams=4), cpu, 7)
    assert narrow[0] == greedy
    assert all(w >= g - 1e-12 for w, g in zip(wide[1], narrow[1])) and wide[1] != narrow[1]
    ended = [i for i, row in enumerate(greedy) if len(row) < 7]
    assert _score(model, images[ended], [greedy[i] for i in ended]) == pytest.approx([narrow[1][i] for i in ended])


def _fixed(table: torch.Tensor):
    """next_logits giving the row of ``table`` for the last token of each prefix (a hand-built model)."""
    return lambda ids, rows: table[ids[:, -1]].clone()


def test_beam_search_finds_what_greedy_misses_on_a_hand_built_model():
    # from the start (id 4): token 0 is likelier (0.6) than 1 (0.4); after 0 nothing is sure, after 1 the end (3) is
    table = torch.full((5, 5), -30.0)
    table[4, :2] = torch.tensor([0.6, 0.4]).log()
    table[0, :3] = torch.tensor([1 / 3, 1 / 3, 1 / 3]).log()
    table[1, 3], table[2, 3] = 0.0, 0.0
    config = GenerationConfig(strategy="beam", beams=2, max_length=4)
    greedy = greedy_or_sample(_fixed(table), 1, 4, 3, GenerationConfig(max_length=4), torch.device("cpu"), 4)
    ids, scores = beam_search(_fixed(table), 1, 4, 3, config, torch.device("cpu"), 4)
    assert greedy == [[0, 0, 0, 0]] and ids == [[1]]
    assert scores[0] == pytest.approx(torch.tensor(0.4).log().item() / 2, abs=1e-6)
    _, one = beam_search(_fixed(table), 1, 4, 3, GenerationConfig(strategy="beam", beams=1), torch.device("cpu"), 4)
    assert one[0] < scores[0]


def test_sampling_is_reproducible_and_stays_in_its_allowed_set():
    table = torch.full((8, 8), -30.0)
    table[:, :4] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()  # the end token (7) is never drawn
    cpu = torch.device("cpu")
    for strategy, allowed in (("top_p", {0, 1}), ("top_k", {0, 1, 2})):
        config = GenerationConfig(strategy=strategy, top_p=0.7, top_k=3, seed=11, max_length=20)
        first = greedy_or_sample(_fixed(table), 4, 6, 7, config, cpu, 20)
        assert first == greedy_or_sample(_fixed(table), 4, 6, 7, config, cpu, 20)
        emitted = {i for row in first for i in row}
        assert emitted == allowed, strategy  # every allowed id is drawn in 80 draws, no other
    config = GenerationConfig(strategy="top_p", top_p=0.7, seed=12, max_length=20)
    assert greedy_or_sample(_fixed(table), 4, 6, 7, config, cpu, 20) != first
    kept = filter_logits(table[:1], GenerationConfig(strategy="top_p", top_p=0.85))
    assert torch.isfinite(kept).tolist() == [[True, True, True, False, False, False, False, False]]


def test_penalties_change_what_a_self_repeating_model_emits():
    table = torch.zeros(10, 10)
    table[:, 5], table[:, 6], table[:, 7], table[:, 9] = 2.0, 1.5, 1.2, -5.0  # always 5, then 6, 7; 9 = end
    cpu = torch.device("cpu")

    def run(**options) -> List[int]:
        config = GenerationConfig(max_length=5, **options)
        return greedy_or_sample(_fixed(table), 1, 8, 9, config, cpu, 5)[0]

    assert run() == [5, 5, 5, 5, 5]
    assert run(no_repeat_ngram=2) == [5, 5, 6, 5, 7]  # no bigram twice
    assert run(no_repeat_ngram=1) == [5, 6, 7, 0, 1]  # no id twice
    assert run(repetition_penalty=2.0) == [5, 6, 7, 5, 5]  # 2.0 / 2 = 1.0 is still above the zeros
    beam = beam_search(_fixed(table), 1, 8, 9, GenerationConfig(strategy="beam", beams=2, no_repeat_ngram=2, max_length=5),
                       cpu, 5)[0][0]
    assert all(beam[i:i + 2] != beam[j:j + 2] for i in range(len(beam) - 2) for j in range(i + 1, len(beam) - 1))
    negative = apply_repetition_penalty(torch.tensor([[-1.0, 2.0, 3.0]]), torch.tensor([[0, 1]]), 2.0)
    assert negative.tolist() == [[-2.0, 1.0, 3.0]]


@pytest.mark.parametrize("field, value", [("strategy", "nucleus"), ("beams", 0), ("top_p", 0.0), ("top_p", 1.5),
                                          ("top_k", 0), ("max_length", 0), ("temperature", 0.0),
                                          ("repetition_penalty", -1.0), ("no_repeat_ngram", -1), ("seed", "x")])
def test_a_bad_config_names_its_field(field, value):
    with pytest.raises(ValueError, match=f"GenerationConfig.{field}: "):
        GenerationConfig(**{field: value})


def test_the_model_tokenizer_and_lengths_are_checked_and_bounded():
    model = DualEncoder(TINY_ARCH).eval()
    with pytest.raises(ConfigError, match=r"needs a captioning head \(model.heads.caption\), and the model has no heads"):
        generate_ids(model, torch.zeros(1, 3, 16, 16), sot_id=62, eot_id=63, config=GenerationConfig())
    torch.manual_seed(0)
    model = DualEncoder(TINY_ARCH, heads={"caption": {"n_queries": 2}}).eval()
    rows = generate_ids(model, torch.randn(2, 3, 16, 16), sot_id=62, eot_id=99, config=GenerationConfig(max_length=30))
    assert [len(r) for r in rows] == [7, 7]  # no end token: the 7 positions after the start of a context of 8
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    assert special_ids(bpe) == (49406, 49407, 0) and special_ids(WordTokenizer()) == (62, 63, 0)
    assert decode_text(bpe, [49406, *bpe.encode("a red dog"), 49407, 49406]) == "a red dog"
    with pytest.raises(ConfigError, match="has no start token id"):
        special_ids(type("NoStart", (), {"sot_id": None, "eot_id": 2, "pad_id": 0})())
