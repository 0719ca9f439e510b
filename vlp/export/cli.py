"""``vlp-export``: write a trained model in a format other tools load, with its tokenizer.

    vlp-export --model runs/tiny --format open_clip --output exported/tiny-open_clip
    vlp-export --model runs/tiny --format safetensors --output exported/tiny.safetensors

An 'hf:DIR' or 'sentencepiece:FILE' tokenizer travels with the export: open_clip's folder holds it
as a Hugging Face tokenizer (open_clip.get_tokenizer('local-dir:DIR') gives the ids vlp trained
with), a safetensors file gets a folder NAME-text beside it. A tokenizer the format cannot express
is refused before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

FORMATS = ("open_clip", "safetensors")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vlp-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or checkpoint file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="directory (open_clip) or file (safetensors)")
    args = parser.parse_args(argv)

    from vlp.config import config_to_yaml
    from vlp.export.open_clip_format import export_open_clip, export_safetensors
    from vlp.interop.vlp_files import load_model_and_config

    try:
        model, cfg, source = load_model_and_config(args.model)
        if args.format == "open_clip":
            out = export_open_clip(model, Path(args.output), tokenizer=cfg.model.tokenizer)
            print(f"exported {source} -> {out} (open_clip.create_model_and_transforms('local-dir:{out}'), "
                  f"open_clip.get_tokenizer('local-dir:{out}'))")
        else:
            out = export_safetensors(model, Path(args.output), config_to_yaml(cfg))
            print(f"exported {source} -> {out}")
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # TokenizerExportError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
