"""Loading a model for evaluation from any format the ecosystem writes, with mismatch checks.

``load_eval_model(spec)`` accepts, detected from the path (``vlp.interop.detect``):

- ``vlp``: a run directory or checkpoint file of ours, or a safetensors file from ``vlp.export``
  (``vlp_config`` in its metadata) (``vlp.interop.vlp_files``);
- ``open_clip_dir``: an open_clip local-dir (``open_clip_config.json`` + weights);
- ``open_clip_file``: an open_clip checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``; a state
  dict, possibly under ``state_dict`` with ``module.`` prefixes) plus its model config: an
  open_clip model name, a model-config JSON, or an ``open_clip_config.json`` beside the file
  (both: ``vlp.interop.open_clip_files``);
- ``hf_clip``: a local transformers CLIP directory (``config.json`` with model_type ``clip``)
  (``vlp.interop.hf_clip``).

Nothing is downloaded. Known sources of wrong published numbers (GELU vs QuickGELU, a tokenizer
that does not fit the text tower's context, vocabulary or end-of-text pooling) are checked by
``vlp.interop.consistency.check_model_consistency``; a load that finds any raises
``ModelMismatchError`` unless ``allow_mismatch=True``, which logs them and keeps them in
``LoadedModel.warnings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from vlp.interop.detect import detect
from vlp.interop.loaded import LoadedModel


def load_eval_model(spec: str | Path, device: str = "cpu", model_config: Optional[str | Path | Mapping] = None, *,
                    quick_gelu: Optional[bool] = None, pretrained_tag: Optional[str] = None,
                    allow_mismatch: bool = False) -> LoadedModel:
    """A model in any supported format (``vlp.interop.detect.FORMATS``) as a LoadedModel on
    ``device``, in eval mode.

    ``spec``: a local path; its format is detected. ``model_config`` (open_clip checkpoints only):
    an open_clip model name ('ViT-B-32', 'ViT-B-32-quickgelu'), a model-config JSON path
    ({embed_dim, vision_cfg, text_cfg, quick_gelu?} or {"model_cfg": ...}) or such a dict; it
    overrides an ``open_clip_config.json`` beside the weights, which is then only a declaration.
    ``quick_gelu``: force the evaluated activation (None: what the config says). ``pretrained_tag``:
    the open_clip tag the weights come from (e.g. 'openai'), whose metadata declares the activation.
    ``allow_mismatch``: evaluate despite the problems ``check_model_consistency`` finds (they are
    logged and stored in ``.warnings``) instead of raising ``ModelMismatchError``. ``.notes`` holds
    remarks such as 'activation: undeclared'.
    """
    path = Path(spec)
    kind, read = detect(path)
    if kind not in ("open_clip_file", "open_clip_dir") and (model_config is not None or pretrained_tag):
        raise ValueError(f"{path}: model_config / pretrained_tag apply to open_clip checkpoints only, not format {kind!r}")
    if kind == "vlp":
        from vlp.interop.vlp_files import load_vlp

        return load_vlp(path, device, quick_gelu, allow_mismatch)
    if kind == "hf_clip":
        from vlp.interop.hf_clip import load_hf_clip

        return load_hf_clip(path, device, quick_gelu, allow_mismatch)
    from vlp.interop.open_clip_files import load_open_clip

    return load_open_clip(path, kind, device, model_config, quick_gelu, pretrained_tag, allow_mismatch, read)
