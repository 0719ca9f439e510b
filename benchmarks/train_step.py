"""Training-step throughput: vlp's DualEncoder + clip_loss against open_clip's CLIP + ClipLoss,
and with each head: vlp's CoCa (caption head, clip + 2 x caption) against open_clip's CoCa +
CoCaLoss on the same architecture and weights, and the prototype head (clip + prototype) against
vlp without a head.

Same architecture, same initial weights, same batch (real captions from the shapes dataset or a
caption list), same AdamW; measures forward + backward + optimizer step in one process, the two
alternating so machine noise hits both alike. vlp runs the text tower only up to the batch's last
end-of-text token (exact under the causal mask); open_clip always runs the full context.

    python benchmarks/train_step.py                      # tiny config, context 32, batch 128
    python benchmarks/train_step.py --context 77 --batch 64

    python benchmarks/train_step.py --no-heads           # only the plain CLIP pair

Last line: one JSON object with samples/s of every variant, the first-batch losses of each pair
(they must agree), ``ratio`` = vlp samples/s / open_clip samples/s for CLIP (above 1: vlp is
faster), ``coca_ratio`` the same for CoCa, and ``head_cost`` = samples/s with a head / without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import open_clip
import torch
from open_clip.loss import ClipLoss

from vlp.config import load_config
from vlp.data.tokenizers import build_tokenizer
from vlp.losses.contrastive import clip_loss
from vlp.models.dual_encoder import DualEncoder
from vlp.models.open_clip_layout import to_open_clip_state
from vlp.train.optim import build_optimizer

import train_step_heads

CAPTIONS = [
    "a small red circle left of a large blue square", "a photo of a green triangle.",
    "an image of a large yellow cross on the right", "a blue square above a red circle",
    "a picture of a small green cross", "a large red triangle below a yellow circle.",
]


def _step_fn(model, optimizer, loss_fn, images, texts):
    def step() -> float:
        loss = loss_fn(model, images, texts)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--context", type=int, default=None, help="text context length (default: the config's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-heads", action="store_true", help="skip the CoCa and prototype variants")
    args = parser.parse_args()

    overrides = [f"model.arch.text_cfg.context_length={args.context}"] if args.context else []
    cfg = load_config(args.config, overrides)
    torch.manual_seed(0)
    ours = DualEncoder(cfg.model.arch)
    custom = "custom_text" in ours.arch or ours.arch["text_cfg"].get("hf_model_name")
    anchor = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(
        **{k: ours.arch[k] for k in ("embed_dim", "vision_cfg", "text_cfg")}, quick_gelu=ours.quick_gelu)
    anchor.load_state_dict(to_open_clip_state(ours), strict=True)  # the same weights, in open_clip's layout
    tokenizer = build_tokenizer("open_clip", ours.context_length)
    texts = tokenizer([CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)])
    images = torch.randn(args.batch, 3, ours.image_size, ours.image_size, generator=torch.Generator().manual_seed(0))

    anchor_loss = ClipLoss()

    def anchor_objective(model, im, tx):
        image_features, text_features, logit_scale = model(im, tx)
        return anchor_loss(image_features, text_features, logit_scale)

    def our_objective(model, im, tx):
        out = model(im, tx)
        return clip_loss(out["image_emb"], out["text_emb"], out["logit_scale"])

    with torch.no_grad():
        first = {"vlp": our_objective(ours, images, texts).item(), "open_clip": anchor_objective(anchor, images, texts).item()}
    steps = {
        "vlp": _step_fn(ours, build_optimizer(ours, cfg.optim), our_objective, images, texts),
        "open_clip": _step_fn(anchor, build_optimizer(anchor, cfg.optim), anchor_objective, images, texts),
    }
    if not args.no_heads:
        variants = train_step_heads.head_variants(ours.arch, cfg.optim, images, texts)
        first.update({name: loss for name, (_, loss) in variants.items()})
        steps.update({name: _step_fn(*parts, images, texts) for name, (parts, _) in variants.items()})
    for fn in steps.values():  # warm-up
        fn(), fn()
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    per_s = {name: args.batch / statistics.median(t) for name, t in times.items()}
    caption_tokens = int(texts.argmax(dim=-1).max()) + 1
    print(f"vlp {per_s['vlp']:.1f} samples/s, open_clip {per_s['open_clip']:.1f} samples/s "
          f"(batch {args.batch}, context {ours.context_length}, longest caption {caption_tokens} tokens, "
          f"{torch.get_num_threads()} threads)")
    print(json.dumps({
        "benchmark": "train_step", "config": args.config, "batch": args.batch, "context": ours.context_length,
        "longest_caption_tokens": caption_tokens, "threads": torch.get_num_threads(),
        "vlp_samples_per_s": round(per_s["vlp"], 2), "open_clip_samples_per_s": round(per_s["open_clip"], 2),
        "first_loss": first, "ratio": round(per_s["vlp"] / per_s["open_clip"], 3),
        **({} if args.no_heads else train_step_heads.head_figures(per_s)),
    }))


if __name__ == "__main__":
    main()
