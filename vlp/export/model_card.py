"""The model card of an export: ``README.md`` in the export folder (beside a safetensors file:
``NAME.README.md``) saying what the model is, what it was trained on and how far, how it
evaluated, and how to load the export in the library it targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from vlp.export.source import ExportSource
from vlp.utils.atomic import open_atomic

CARD_NAME = "README.md"


def card_path(fmt: str, out: Path) -> Path:
    """Where the card of an export at ``out`` goes."""
    return out.with_name(f"{out.stem}.{CARD_NAME}") if fmt == "safetensors" else out / CARD_NAME


def _count(module: Optional[nn.Module]) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _tower_line(cfg: Mapping[str, Any], keys: List[str]) -> str:
    return ", ".join(f"{k} {cfg[k]}" for k in keys if k in cfg)


def architecture_rows(source: ExportSource) -> List[List[str]]:
    model, arch = source.model, source.model.arch
    vision, text = arch.get("vision_cfg", {}), arch.get("text_cfg", {})
    rows = [
        ["image tower", f"{model.image_tower.describe()} ({_tower_line(vision, ['image_size', 'patch_size', 'layers', 'width', 'timm_model_name', 'attentional_pool'])})",
         _millions(_count(model.image_tower))],
        ["text tower", f"{model.text_tower.describe()} ({_tower_line(text, ['context_length', 'vocab_size', 'layers', 'width', 'heads', 'hf_model_name', 'embed_cls'])})",
         _millions(_count(model.text_tower))],
        ["embedding", f"{arch.get('embed_dim')} dims, {'QuickGELU' if model.quick_gelu else 'GELU'} activations, "
                      f"tokenizer {source.cfg.model.tokenizer}", ""],
        ["logit head", "logit scale" + (" and bias (sigmoid loss)" if model.logit_head.logit_bias is not None else ""),
         _millions(_count(model.logit_head))],
    ]
    for name, head in model.heads.items():
        rows.append([f"head `{name}`", type(head).__name__, _millions(_count(head))])
    rows.append(["**total**", "", f"**{_millions(_count(model))}**"])
    return rows


def _data_line(cfg: Any) -> str:
    data = cfg.data
    if data.sources:
        parts = [f"`{s.shards}` (weight {s.weight:g})" for s in data.sources]
        return "; ".join(parts) + (" drawn with replacement" if data.resampled else "")
    return f"`{data.train_shards}`" + (" (resampled)" if data.resampled else " (epochs)")


def training_lines(source: ExportSource) -> List[str]:
    cfg, summary = source.cfg, source.summary
    global_batch = summary.get("global_batch") or cfg.train.batch_size * cfg.train.accum_steps
    terms = ", ".join(f"{t.name} x {t.weight:g}" for t in cfg.loss.terms)
    lines = [f"- data: {_data_line(cfg)}",
             f"- samples seen: {source.samples_seen:,}" if source.samples_seen is not None else "- samples seen: not recorded",
             f"- steps: {source.step:,} of {cfg.train.steps:,}" if source.step is not None else f"- steps: {cfg.train.steps:,} planned",
             f"- global batch: {global_batch:,}" + (f" ({summary['world_size']} process{'es' if summary['world_size'] > 1 else ''})" if summary.get("world_size") else ""),
             f"- objective: {terms}",
             f"- optimizer: AdamW lr {cfg.optim.lr:g}, weight decay {cfg.optim.weight_decay:g}, "
             f"{cfg.optim.warmup_steps} warmup steps, {cfg.optim.schedule} schedule",
             f"- precision: {summary.get('precision', cfg.train.precision)}",
             f"- weights exported: {'the weight average (EMA, decay ' + str(cfg.train.ema_decay) + ')' if source.weights == 'ema' else source.weights}",
             f"- checkpoint: `{source.checkpoint.name}`"]
    return lines


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def eval_lines(source: ExportSource) -> List[str]:
    """The run's end-of-training evaluation as a table, when it evaluated the exported checkpoint."""
    results = source.eval_results
    if not results:
        return ["No evaluation results were found in the run directory (`eval_results.json`)."]
    final_step = source.summary.get("steps")
    if final_step is not None and source.step is not None and int(final_step) != source.step:
        return [f"The run's evaluation (`eval_results.json`) is of step {final_step}, not of this checkpoint "
                f"(step {source.step}); evaluate this export with `vlp-eval`."]
    lines = ["| task | dataset | metric | value |", "|---|---|---|---|"]
    for task, entry in sorted(results.items()):
        if not isinstance(entry, Mapping):
            continue
        for metric, value in sorted(entry.get("metrics", {}).items()):
            lines.append(f"| {task} | {entry.get('dataset', '')} | {metric} | {_value(value)} |")
    return lines


def loading_lines(fmt: str, out: Path, extra: Mapping[str, Any]) -> List[str]:
    """A few lines of code that load the export in its target library."""
    name = out.name
    if fmt == "open_clip":
        code = ["import open_clip", "",
                f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{name}')",
                f"tokenizer = open_clip.get_tokenizer('local-dir:{name}')",
                "features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)"]
        if extra.get("registry_name"):
            code.append(f"# the architecture is open_clip's {extra['registry_name']!r}, so this works too:")
            code.append(f"model, _, preprocess = open_clip.create_model_and_transforms("
                        f"{extra['registry_name']!r}, pretrained='{name}/open_clip_model.safetensors')")
    elif fmt == "hf":
        cls = extra.get("model_class", "CLIPModel")
        proc = cls.replace("Model", "Processor")
        code = [f"from transformers import {cls}, {proc}", "",
                f"model = {cls}.from_pretrained('{name}')",
                f"processor = {proc}.from_pretrained('{name}', backend='pil')  # PIL resizing: vlp's pixels exactly",
                "inputs = processor(text=['a photo of a cat'], images=image, return_tensors='pt', padding=True)",
                "outputs = model(**inputs)  # outputs.logits_per_image"]
    elif fmt == "onnx":
        code = ["import onnxruntime as ort", "",
                f"image_session = ort.InferenceSession('{name}/image_encoder.onnx')",
                f"text_session = ort.InferenceSession('{name}/text_encoder.onnx')",
                "image_embeds = image_session.run(None, {'pixel_values': pixels})[0]  # float32 [B, 3, H, W], normalised",
                "text_embeds = text_session.run(None, {'input_ids': ids})[0]  # int64 [B, L]",
                f"# preprocessing, tokenizer and the parity check: {name}/vlp_onnx.json"]
    else:
        code = ["# evaluate with vlp:", f"#   vlp-eval zeroshot --model {name} ...", "# fine-tune from it (config):",
                f"#   model.init_from: {name}", "from safetensors.torch import load_file", "",
                f"state = load_file('{name}')  # vlp's parameter names; the config is in the file's metadata"]
    return ["```python", *code, "```"]


def model_card(source: ExportSource, fmt: str, out: Path, extra: Optional[Mapping[str, Any]] = None) -> str:
    """The card's markdown text."""
    title = source.run_dir.name if source.run_dir is not None else source.checkpoint.stem
    rows = architecture_rows(source)
    lines = [f"# {title}", "",
             f"A CLIP-style dual encoder trained with vlp, exported to **{fmt}** by `vlp-export`.", "",
             "## Architecture", "", "| part | what | parameters |", "|---|---|---|",
             *[f"| {' | '.join(r)} |" for r in rows], "",
             "## Training", "", *training_lines(source), "",
             "## Evaluation", "", *eval_lines(source), "",
             "## Loading", "", *loading_lines(fmt, out, extra or {}), ""]
    notes = (extra or {}).get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def write_model_card(source: ExportSource, fmt: str, out: Path, extra: Optional[Mapping[str, Any]] = None) -> Path:
    path = card_path(fmt, out)
    with open_atomic(path, "w") as handle:
        handle.write(model_card(source, fmt, out, extra))
    return path
