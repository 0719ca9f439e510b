"""Caption generation with a CoCa model (a DualEncoder with a ``caption`` head): greedy, beam search,
top-k and top-p sampling, with repetition penalty and n-gram blocking.

:func:`generate_ids` encodes each batch's images once (the head's pooled image memory) and then
decodes all captions of the batch together, one token per step, running the text tower and the
decoder on the prefix so far (open_clip's decoder keeps no cache). The search itself
(:func:`greedy_or_sample`, :func:`beam_search`) sees the model only as ``next_logits(ids, rows)``
-> [N, V]: the logits of the token after each prefix ``ids`` [N, t] for image ``rows`` [N].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from vlp.errors import ConfigError

NextLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
STRATEGIES = ("greedy", "beam", "top_k", "top_p")
SPECIAL_TEXTS = ("<start_of_text>", "<end_of_text>")


@dataclass
class GenerationConfig:
    """How captions are decoded (checked when built: a bad value is a ValueError naming the field)."""

    strategy: str = "greedy"        # "greedy" | "beam" | "top_k" | "top_p"
    max_length: int = 30            # tokens generated after the start token, end token included
    beams: int = 4                  # beam search width
    length_penalty: float = 1.0     # beam score = sum logprob / length ** length_penalty
    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0  # CTRL-style penalty on already generated ids (1.0 = off)
    no_repeat_ngram: int = 0        # forbid repeating an n-gram of this size (0 = off)
    seed: Optional[int] = None      # sampling generator seed

    def __post_init__(self) -> None:
        check_generation_config(self)


def check_generation_config(config: GenerationConfig) -> None:
    """ValueError naming the first field with a value the search cannot use."""
    def fail(name: str, rule: str) -> None:
        raise ValueError(f"GenerationConfig.{name}: {rule}, got {getattr(config, name)!r}")

    def integer(name: str, low: int) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(name, f"must be an integer >= {low}")

    if config.strategy not in STRATEGIES:
        fail("strategy", f"must be one of {', '.join(STRATEGIES)}")
    integer("max_length", 1)
    integer("beams", 1)
    integer("top_k", 1)
    integer("no_repeat_ngram", 0)
    if not 0.0 < float(config.top_p) <= 1.0:
        fail("top_p", "must be in (0, 1]")
    if not float(config.temperature) > 0.0:
        fail("temperature", "must be > 0")
    if not float(config.repetition_penalty) > 0.0:
        fail("repetition_penalty", "must be > 0 (1.0 = off)")
    if not isinstance(config.length_penalty, (int, float)) or isinstance(config.length_penalty, bool):
        fail("length_penalty", "must be a number")
    if config.seed is not None and (isinstance(config.seed, bool) or not isinstance(config.seed, int)):
        fail("seed", "must be an integer or None")


# ---------------------------------------------------------------- the model and the tokenizer

def caption_head(model: nn.Module) -> nn.Module:
    """The model's captioning head (found by type); ConfigError naming what is missing otherwise."""
    from vlp.models.heads.captioning import CaptionHead

    heads = getattr(model, "heads", None)
    if heads is None:
        raise ConfigError(f"caption generation needs a DualEncoder with a caption head; got {type(model).__name__}")
    for head in heads.values():
        if isinstance(head, CaptionHead):
            return head
    raise ConfigError(f"caption generation needs a captioning head (model.heads.caption), and the model has "
                      f"{'heads ' + ', '.join(heads) if len(heads) else 'no heads'}")


def special_ids(tokenizer: Any) -> Tuple[int, int, int]:
    """(start id, end id, pad id) of open_clip's SimpleTokenizer (``sot_token_id`` / ``eot_token_id``,
    pad 0) or of vlp's SentencePiece / Hugging Face tokenizers (``sot_id`` / ``eot_id`` / ``pad_id``)."""
    found = []
    for ours, open_clips in (("sot_id", "sot_token_id"), ("eot_id", "eot_token_id"), ("pad_id", "pad_token_id")):
        value = getattr(tokenizer, ours, None)
        value = getattr(tokenizer, open_clips, None) if value is None else value
        found.append(value)
    if found[2] is None and found[0] is not None and hasattr(tokenizer, "sot_token_id"):
        found[2] = 0  # open_clip's SimpleTokenizer pads with 0
    for name, value in zip(("start", "end", "pad"), found):
        if value is None:
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no {name} token id: a caption decoder "
                              "starts from a start token and stops at an end token")
    return int(found[0]), int(found[1]), int(found[2])


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """``tokenizer.decode`` of generated ids, without start / end tokens or their text
    (open_clip's BPE decode leaves '<start_of_text>' in), whitespace trimmed."""
    sot, eot, _ = special_ids(tokenizer)
    text = tokenizer.decode([int(i) for i in ids if int(i) not in (sot, eot)])
    for special in SPECIAL_TEXTS:
        text = text.replace(special, " ")
    return " ".join(text.split())


# ---------------------------------------------------------------- logits processing

def apply_repetition_penalty(logits: torch.Tensor, generated: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019, as transformers applies it): the logit of every id already in
    ``generated`` [N, t] divided by ``penalty`` where positive, multiplied by it where negative."""
    if penalty == 1.0 or generated.shape[1] == 0:
        return logits
    seen = logits.gather(1, generated)
    logits = logits.clone()
    logits.scatter_(1, generated, torch.where(seen > 0, seen / penalty, seen * penalty))
    return logits


def ban_repeated_ngrams(logits: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """-inf for each id that would complete an n-gram already in that row of ``generated`` [N, t]."""
    if n <= 0 or generated.shape[1] < n:
        return logits
    logits = logits.clone()
    rows = generated.tolist()
    for row, ids in enumerate(rows):
        prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
        banned = [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix]
        if banned:
            logits[row, banned] = float("-inf")
    return logits


def process_logits(logits: torch.Tensor, ids: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """The penalties of ``config`` on raw next-token logits [N, V], for prefixes ``ids`` [N, t] (start
    token first; the penalties look at the tokens after it)."""
    generated = ids[:, 1:]
    logits = apply_repetition_penalty(logits, generated, float(config.repetition_penalty))
    return ban_repeated_ngrams(logits, generated, int(config.no_repeat_ngram))


def filter_logits(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Logits of the tokens sampling may draw (the rest -inf), after the temperature: the ``top_k``
    largest for 'top_k'; for 'top_p', the fewest most probable whose probabilities sum to
    ``top_p`` or more (nucleus sampling; the most probable is always kept)."""
    logits = logits / float(config.temperature)
    if config.strategy == "top_k":
        k = min(int(config.top_k), logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    ordered, order = logits.sort(dim=-1, descending=True)
    before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)  # mass of the tokens ahead
    drop = before >= float(config.top_p)
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


# ---------------------------------------------------------------- the searches

def greedy_or_sample(next_logits: NextLogits, batch: int, sot_id: int, eot_id: int, config: GenerationConfig,
                     device: torch.device, max_length: int) -> List[List[int]]:
    """Greedy decoding ('greedy') or sampling ('top_k', 'top_p'), every row of the batch together;
    a row stops at its end token."""
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(config.seed))
    ids = torch.full((batch, 1), sot_id, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logits = process_logits(next_logits(ids, rows).float(), ids, config)
        if config.strategy == "greedy":
            token = logits.argmax(dim=-1)
        else:
            probs = filter_logits(logits, config).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(done, torch.full_like(token, eot_id), token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done = done | (token == eot_id)
        if bool(done.all()):
            break
    return [_until_end(row, eot_id) for row in ids[:, 1:].tolist()]


def _until_end(ids: List[int], eot_id: int) -> List[int]:
    return ids[: ids.index(eot_id)] if eot_id in ids else ids


def beam_search(next_logits: NextLogits, batch: int, sot_id: int, eot_id: int, config: GenerationConfig,
                device: torch.device, max_length: int) -> Tuple[List[List[int]], List[float]]:
    """(best ids per image, their scores): beam search of width ``beams``.

    Each step the ``k`` live beams of an image extend to their ``k`` best continuations among all
    ``k * V``; a continuation that is the end token becomes a finished caption and gives up its
    place, so the image keeps ``k`` minus its finished captions live (with one beam this is greedy
    decoding). At ``max_length`` the live beams count as finished. A caption's score is the sum of
    its token log-probabilities (end token included) / its length ** ``length_penalty``."""
    k = int(config.beams)
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    ids = torch.full((batch * k, 1), sot_id, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(batch)]
    for step in range(1, max_length + 1):
        live = torch.tensor([k - len(f) for f in finished], device=device)
        if not bool((live > 0).any()):
            break
        logprobs = process_logits(next_logits(ids, rows).double(), ids, config).log_softmax(dim=-1)
        vocab = logprobs.shape[-1]
        top, index = (scores[:, :, None] + logprobs.view(batch, k, vocab)).view(batch, -1).topk(k, dim=-1)
        source, token = index // vocab, index % vocab
        keep = (torch.arange(k, device=device)[None] < live[:, None]) & torch.isfinite(top)
        ids = torch.cat([ids.view(batch, k, -1).gather(1, source[:, :, None].expand(-1, -1, ids.shape[1])),
                         token[:, :, None]], dim=2).view(batch * k, -1)
        ended = keep & ((token == eot_id) | (step == max_length))
        for b, slot in ended.nonzero().tolist():
            length_norm = float(step) ** float(config.length_penalty)
            finished[b].append((float(top[b, slot]) / length_norm, ids[b * k + slot, 1:].tolist()))
        scores = torch.where(keep & ~ended, top, torch.full_like(top, float("-inf")))
        scores, order = scores.sort(dim=-1, descending=True)  # live beams first
        ids = ids.view(batch, k, -1).gather(1, order[:, :, None].expand(-1, -1, ids.shape[1])).view(batch * k, -1)
    best = [max(f, key=lambda hypothesis: hypothesis[0]) if f else (float("-inf"), []) for f in finished]
    return [_until_end(seq, eot_id) for _, seq in best], [score for score, _ in best]


# ---------------------------------------------------------------- the entry points

def generate_ids(model: nn.Module, images: torch.Tensor, *, sot_id: int, eot_id: int,
                 config: GenerationConfig) -> List[List[int]]:
    """Caption ids for normalised pixels ``images`` [B, 3, H, W]: per image, the ids after the start
    token up to and excluding the end token. At most ``min(config.max_length, context_length - 1)``
    tokens are generated (the text tower has no positions beyond its context). Runs without
    gradients and in eval mode (the model's mode is put back)."""
    check_generation_config(config)
    head = caption_head(model)
    max_length = min(int(config.max_length), int(head.text_tower.context_length) - 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            memory = head.encode_image_memory(images)
            cache: Dict[str, torch.Tensor] = {}

            def next_logits(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                if cache.get("rows") is not rows:
                    cache["rows"], cache["memory"] = rows, memory.index_select(0, rows)
                return head.next_token_logits(cache["memory"], ids)

            search = beam_search if config.strategy == "beam" else greedy_or_sample
            found = search(next_logits, images.shape[0], int(sot_id), int(eot_id), config, images.device, max_length)
    finally:
        model.train(was_training)
    return found[0] if config.strategy == "beam" else found


def generate_captions(model: nn.Module, images: torch.Tensor, tokenizer: Any,
                      config: GenerationConfig) -> List[str]:
    """Caption texts for ``images``: :func:`generate_ids` with the tokenizer's start / end ids
    (:func:`special_ids`), decoded by the tokenizer (:func:`decode_text`)."""
    sot_id, eot_id, _ = special_ids(tokenizer)
    ids = generate_ids(model, images, sot_id=sot_id, eot_id=eot_id, config=config)
    return [decode_text(tokenizer, row) for row in ids]
