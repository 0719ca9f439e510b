"""Captions of every image of an eval dataset, from a model with a CoCa caption head.

Generation itself is ``vlp.models.heads.generation`` (imported only here, when captions are
asked for, so eval runs without it); this module feeds it batches of an
:class:`~eval.datasets.base.EvalDataset` through the encoder's model, device, batch workers and
ranks (each rank captions its part; the parts are gathered in dataset order), and caches the
captions per (model, dataset content, generation settings) when they are deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from eval.datasets.base import EvalDataset
from eval.encoding.batching import batches, split_skipped
from eval.encoding.cache import digest_bytes
from eval.encoding.embed import eval_mode, model_dtype
from eval.encoding.encoder import Encoder, sample_id

STRATEGIES: tuple[str, ...] = ("greedy", "beam", "top_k", "top_p")
HEAD = "caption"


def generation_module() -> Any:
    """``vlp.models.heads.generation`` (ValueError naming it when it is not there)."""
    try:
        from vlp.models.heads import generation
    except ImportError as exn:
        raise ValueError(f"caption generation needs vlp.models.heads.generation (the CoCa caption head): {exn}") from exn
    return generation


def generation_config(values: Mapping[str, Any]) -> Any:
    """A ``GenerationConfig`` from ``values`` (its field names; None values keep the defaults)."""
    config_type = generation_module().GenerationConfig
    known = {f.name for f in fields(config_type)}
    unknown = sorted(k for k, v in values.items() if k not in known and v is not None)
    if unknown:
        raise ValueError(f"unknown generation setting(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return config_type(**{k: v for k, v in values.items() if k in known and v is not None})  # it checks itself


def deterministic(config: Any) -> bool:
    """Whether the same model and images always give the same captions (then they are cached)."""
    return config.strategy in ("greedy", "beam") or config.seed is not None


def caption_head_missing(model: torch.nn.Module) -> Optional[str]:
    """Why ``model`` cannot caption (it is not a vlp DualEncoder with ``model.heads.caption``), or None."""
    from vlp.models.dual_encoder import DualEncoder

    if not isinstance(model, DualEncoder):
        return (f"the model is a {type(model).__name__}, not a vlp DualEncoder with a caption head "
                f"(model.heads.{HEAD}): captioning needs a CoCa model of ours")
    if HEAD not in model.heads:
        heads = ", ".join(model.heads) or "none"
        return f"the model has no caption head (model.heads.{HEAD}; its heads: {heads}): train it with model.heads={{{HEAD}: {{}}}}"
    return None


def captioner(loaded: Any, config: Any, device: torch.device) -> Callable[[list[torch.Tensor]], list[str]]:
    """A function: transformed images -> their captions (``generate_captions`` on ``device``)."""
    generate = generation_module().generate_captions
    model = loaded.model

    def run(images: list[torch.Tensor]) -> list[str]:
        pixels = torch.stack(list(images)).to(device=device, dtype=model_dtype(model))
        return [str(c) for c in generate(model, pixels, loaded.tokenizer, config)]

    return run


def caption_items(items: Iterable[list[Any]], caption: Callable[[list[torch.Tensor]], list[str]],
                  wanted: Optional[set[str]] = None, on_batch: Callable[[int], None] | None = None,
                  ) -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
    """Caption batches of records (Skipped markers counted): ({sample id: (index, caption)},
    {sample id: why it was skipped}); only ids in ``wanted`` when given."""
    captions: dict[str, tuple[int, str]] = {}
    failed: dict[str, str] = {}
    for batch in items:
        good, skipped = split_skipped(batch)
        failed.update({sample_id(s): s.reason for s in skipped})
        good = [r for r in good if wanted is None or sample_id(r) in wanted]
        if good:
            for record, text in zip(good, caption([r.image for r in good])):
                captions[sample_id(record)] = (record.index, text)
        if on_batch is not None:
            on_batch(len(batch))
    return captions, failed


def _generate(encoder: Encoder, dataset: EvalDataset, records: list[Any], config: Any, batch_size: int,
              desc: str) -> tuple[dict[str, str], dict[str, str]]:
    """Captions of ``records`` (every rank captions its part; gathered): ({id: caption}, {id: reason})."""
    from tqdm import tqdm

    loaded = encoder.loaded
    state = (dataset.transform, dataset.decode_images)
    dataset.transform, dataset.decode_images = loaded.image_transform, True
    dataset.only_keys = {r.key for r in records}
    dataset.partition(encoder.runtime.rank, encoder.runtime.world)
    show = encoder.options.progress and encoder.runtime.is_main
    try:
        with eval_mode(loaded.model), tqdm(total=len(records), desc=desc, unit="img", disable=not show) as bar:
            items = batches(dataset, batch_size, encoder.options.num_workers)
            captions, failed = caption_items(items, captioner(loaded, config, encoder.device),
                                             {sample_id(r) for r in records},
                                             lambda n: bar.update(n * encoder.runtime.world))
    finally:
        dataset.transform, dataset.decode_images = state
        dataset.only_keys = None
        dataset.partition(0, 1)
    merged: dict[str, tuple[int, str]] = {}
    for part_captions, part_failed in encoder.runtime.gather((captions, failed)):
        merged.update(part_captions)
        failed.update(part_failed)
    ordered = sorted(merged.items(), key=lambda item: item[1][0])
    return {key: text for key, (_, text) in ordered}, failed


def caption_head_reason(encoder: Encoder) -> Optional[str]:
    """:func:`caption_head_missing` of the encoder's model, remembered in the cache per model
    (a warm run of a model without the head does not load it to find out again)."""
    key = digest_bytes("caption-head", encoder.model_key())
    cached = encoder.cache.load(key) if encoder.cache.enabled else None
    if cached is not None:
        return cached["reason"]
    reason = caption_head_missing(encoder.loaded.model)
    if encoder.cache.enabled and encoder.runtime.is_main:
        encoder.cache.save(key, {"reason": reason})
    return reason


def dataset_captions(encoder: Encoder, dataset: EvalDataset, config: Any, batch_size: int | None = None,
                     desc: str = "") -> tuple[list[Any], list[str], list[Any]]:
    """(records, their captions, Skipped markers) of every good record of ``dataset``, in
    dataset order; records carry ``image`` None (and, for retrieval sets, their ``captions``)."""
    from eval.datasets.records import Skipped

    meta = encoder.records(dataset)
    batch_size = int(batch_size or encoder.options.batch_size)
    settings = json.dumps(asdict(config), sort_keys=True, default=str)
    key = digest_bytes("captions", encoder.model_key(), encoder.content_digest(dataset), dataset.options_tag(), settings)
    use_cache = encoder.cache.enabled and deterministic(config)
    main_entry = encoder.cache.load(key) if use_cache and encoder.runtime.is_main else None
    entry = encoder.runtime.from_main(main_entry) if use_cache else None
    if entry is None:
        captions, failed = _generate(encoder, dataset, meta.records, config, batch_size,
                                     desc or f"captions {dataset.name}")
        entry = {"captions": captions, "failed": failed}
        if use_cache and encoder.runtime.is_main:
            encoder.cache.save(key, entry)
    good = [r for r in meta.records if sample_id(r) in entry["captions"]]
    bad = [Skipped(r.key, entry["failed"].get(sample_id(r), "no caption"), r.index)
           for r in meta.records if sample_id(r) not in entry["captions"]]
    return good, [entry["captions"][sample_id(r)] for r in good], meta.skipped + bad
