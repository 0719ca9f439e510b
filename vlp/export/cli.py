"""``vlp-export`` (also ``python -m vlp.export``): write a trained model in a format other tools
load, with its tokenizer, preprocessing and a model card.

    vlp-export --model runs/tiny --format open_clip   --output exported/tiny-open_clip
    vlp-export --model runs/tiny --format hf          --output exported/tiny-hf
    vlp-export --model runs/tiny --format onnx        --output exported/tiny-onnx
    vlp-export --model runs/tiny --format safetensors --output exported/tiny.safetensors

--model: a run directory, one checkpoint file of ours, or a vlp safetensors export. --checkpoint
picks a run's checkpoint: auto (final.pt, else the newest step file), final, newest (the most
steps done) or a file name such as step-00001000.pt. --weights: auto takes the weight average
when the run kept one (train.ema_decay), ema requires it, raw takes the trained weights.

Formats:
  open_clip    a local-dir: open_clip.create_model_and_transforms('local-dir:DIR') and
               open_clip.get_tokenizer('local-dir:DIR'); CoCa models as open_clip's CoCa;
               --pytorch-bin adds open_clip_pytorch_model.bin
  hf           transformers CLIPModel (SiglipModel where a SigLIP layout maps) with its processor
               files: from_pretrained(DIR)
  onnx         image_encoder.onnx and text_encoder.onnx (dynamic batch and text length), checked
               against this model with onnxruntime before they are put in place (needs the
               'export' extra: pip install -e '.[export]')
  safetensors  our weights with the resolved config in the metadata (for vlp-eval and model.init_from)

Training state (optimizer, scaler, random states) is never exported. A part the format has no
counterpart for, or a tokenizer it cannot express, is refused before anything is written; an
export appears whole or not at all. The model card is README.md in the export folder (beside a
safetensors file: NAME.README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

FORMATS = ("open_clip", "hf", "onnx", "safetensors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlp-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory, checkpoint file or vlp safetensors export")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="directory (open_clip, hf, onnx) or file (safetensors)")
    parser.add_argument("--checkpoint", default="auto",
                        help="auto | final | newest | a checkpoint file name of the run (default auto)")
    parser.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                        help="the weight average (ema) or the trained weights (raw); auto: ema when present")
    parser.add_argument("--pytorch-bin", action="store_true",
                        help="open_clip: also write open_clip_pytorch_model.bin")
    parser.add_argument("--opset", type=int, default=None, help="onnx: the ONNX opset (18 or higher; default the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="onnx: the largest difference from this model onnxruntime may give (default 1e-4)")
    parser.add_argument("--no-card", action="store_true", help="do not write the model card")
    return parser


def export(source: Any, fmt: str, out: Path, pytorch_bin: bool = False, opset: Optional[int] = None,
           atol: float = 1e-4) -> Tuple[Path, Dict[str, Any], str]:
    """Write ``source`` (an ExportSource) as ``fmt`` at ``out``: (the export's path, facts for the
    model card, the line telling how to load it)."""
    model, cfg = source.model, source.cfg
    if fmt == "open_clip":
        from vlp.export.open_clip_format import export_open_clip, registry_name

        written = export_open_clip(model, out, tokenizer=cfg.model.tokenizer, pytorch_bin=pytorch_bin)
        extra = {"registry_name": registry_name(model)}
        how = f"open_clip.create_model_and_transforms('local-dir:{written}'), open_clip.get_tokenizer('local-dir:{written}')"
    elif fmt == "hf":
        from vlp.export.hf_format import export_hf

        written = export_hf(model, cfg, out)
        config = json.loads((written / "config.json").read_text())
        extra = {"model_class": (config.get("architectures") or ["CLIPModel"])[0]}
        kept = config.get("vlp_export") or {}
        if "logit_bias" in kept:  # a CLIP-layout model trained with the sigmoid loss
            extra["notes"] = [f"logit bias {kept['logit_bias']:g} is kept in config.json (vlp_export): {kept['note']}"]
        how = f"transformers.{extra['model_class']}.from_pretrained('{written}')"
    elif fmt == "onnx":
        from vlp.export.onnx_format import export_onnx

        written = export_onnx(model, cfg, out, opset=opset, atol=atol)
        meta = json.loads((written / "vlp_onnx.json").read_text())
        parity = meta["parity"]
        notes = [f"checked at export with onnxruntime {meta['onnxruntime']} against this model in PyTorch: largest "
                 f"difference {parity['max_abs_diff']:.2e} (allowed {parity['atol']:g}); details in vlp_onnx.json"]
        if meta.get("heads_not_exported"):
            notes.append(f"the encoders only: the heads ({', '.join(meta['heads_not_exported'])}) are not exported")
        extra = {"notes": notes}
        how = f"onnxruntime.InferenceSession('{written}/image_encoder.onnx' / 'text_encoder.onnx')"
    else:
        from vlp.config import config_to_yaml
        from vlp.export.open_clip_format import export_safetensors

        written = export_safetensors(model, out, config_to_yaml(cfg))
        extra = {}
        how = f"vlp-eval ... --model {written}, or model.init_from={written}"
    return written, extra, how


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from vlp.export.model_card import write_model_card
    from vlp.export.source import load_export_source

    try:
        source = load_export_source(args.model, checkpoint=args.checkpoint, weights=args.weights)
        written, extra, how = export(source, args.format, Path(args.output), pytorch_bin=args.pytorch_bin,
                                     opset=args.opset, atol=args.atol)
        card = None if args.no_card else write_model_card(source, args.format, written, extra)
    except ImportError as err:
        if args.format != "onnx":
            raise
        print(f"error: {err} (the onnx format needs the 'export' extra: pip install -e '.[export]')", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # UnsupportedExport, TokenizerExportError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {source.checkpoint} ({source.weights} weights) -> {written}" + (f", card {card}" if card else ""))
    print(f"load it with {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
