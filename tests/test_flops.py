"""benchmarks/flops.py: training-step FLOP counts checked against hand-computed ones, and the
matmul peak's shape. (Counts only: no wall time is checked.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from flops import clip_step_flops, matmul_peak, training_flops  # noqa: E402


@pytest.mark.parametrize("input_grad", [True, False])
def test_linear_forward_backward(input_grad):
    """y = x W^T: forward 2*B*in*out; backward 2*B*in*out for dW and, when x needs it, as much for dx."""
    batch, fan_in, fan_out = 8, 12, 5
    layer = torch.nn.Linear(fan_in, fan_out)
    x = torch.randn(batch, fan_in, requires_grad=input_grad)
    counted = training_flops(lambda: layer(x).sum())
    assert counted["total"] == (6 if input_grad else 4) * batch * fan_in * fan_out
    assert set(counted["by_op"]) <= {"aten.addmm", "aten.mm"}


def test_two_matmuls_add_up():
    batch, a, b, c = 3, 7, 11, 4
    first, second = torch.nn.Linear(a, b, bias=False), torch.nn.Linear(b, c, bias=False)
    x = torch.randn(batch, a)  # the input needs no gradient: the first layer's backward is dW only
    counted = training_flops(lambda: second(first(x)).sum())
    assert counted["total"] == 4 * batch * a * b + 6 * batch * b * c


def _hand_count(arch: dict, batch: int) -> int:
    """A CLIP step by hand (matmuls and convolutions; forward x 3 where the input needs a gradient).

    Vision: patch convolution 2*P*(3*p*p)*d forward plus as much for its weight gradient (pixels
    need none); per layer, qkv + out + 4x MLP = 12 d^2 weights per token (24 N d^2 forward) and
    attention QK^T + AV = 4 N^2 d. Text alike over its context. Projections 2*width*E per sample;
    the loss's two logit matrices 2 * 2*B*B*E.
    """
    v, t, embed = arch["vision_cfg"], arch["text_cfg"], arch["embed_dim"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    tokens, width, layers = patches + 1, v["width"], v["layers"]
    context, text_width, text_layers = t["context_length"], t["width"], t["layers"]
    conv = 2 * 2 * batch * patches * 3 * v["patch_size"] ** 2 * width
    vision = 3 * layers * batch * (24 * tokens * width ** 2 + 4 * tokens ** 2 * width)
    text = 3 * text_layers * batch * (24 * context * text_width ** 2 + 4 * context ** 2 * text_width)
    projections = 3 * 2 * batch * (width + text_width) * embed
    loss = 3 * 2 * 2 * batch * batch * embed
    return conv + vision + text + projections + loss


ARCH = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 10, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("batch", [2, 5])
def test_clip_step_matches_hand_count(batch):
    counted = clip_step_flops(ARCH, batch)
    assert counted["total"] == _hand_count(ARCH, batch)
    assert counted["context_length"] == 10 and counted["image_size"] == [32, 32]


def test_clip_step_by_config_name_matches_hand_count():
    """ViT-B-32 by config name, counted on the meta device (no memory, no time)."""
    import open_clip

    arch = open_clip.get_model_config("ViT-B-32")
    assert clip_step_flops("ViT-B-32", 2)["total"] == _hand_count(arch, 2)


def test_matmul_peak_reports_a_rate():
    peak = matmul_peak(torch.float32, threads=1, sizes=(32, 64), repeats=1)
    assert peak["flop_per_s"] > 0 and peak["size"] in (32, 64) and peak["sizes_tried"][0] == 32
    assert peak["dtype"] == "float32" and peak["threads"] == 1 and peak["layout"] in ("nn", "nt", "tn")


def _hand_count_executed(arch: dict, batch: int, length: int) -> int:
    """What vlp's step executes: text up to ``length`` tokens; each tower's last block for one row
    per sample (keys and values over every token: 2 * 2 N d^2 forward; the query, output
    projection and MLP for one row: 2 d^2 + 2 d^2 + 16 d^2; attention for one query: 4 N d)."""
    v, t, embed = arch["vision_cfg"], arch["text_cfg"], arch["embed_dim"]
    patches = (v["image_size"] // v["patch_size"]) ** 2

    def tower(tokens: int, width: int, layers: int) -> int:
        full = (layers - 1) * (24 * tokens * width ** 2 + 4 * tokens ** 2 * width)
        last = 4 * tokens * width ** 2 + 20 * width ** 2 + 4 * tokens * width
        return 3 * batch * (full + last)

    patch_embed = 2 * 2 * batch * patches * 3 * v["patch_size"] ** 2 * v["width"]  # no gradient for pixels
    projections = 3 * 2 * batch * (v["width"] + t["width"]) * embed
    loss = 3 * 2 * 2 * batch * batch * embed
    return (patch_embed + tower(patches + 1, v["width"], v["layers"]) + tower(length, t["width"], t["layers"])
            + projections + loss)


@pytest.mark.parametrize("longest", [4, 10])
def test_executed_step_counts_the_trimmed_text_and_one_row_of_each_last_block(longest):
    """executed_step_flops counts vlp's own step: the text only up to the batch's longest caption
    (the context is 10), the last blocks for the class / end-of-text token alone."""
    from flops import executed_step_flops

    texts = torch.zeros(3, 10, dtype=torch.long)
    for row, length in enumerate([2, longest, 3]):
        texts[row, :length - 1] = torch.arange(1, length)
        texts[row, length - 1] = 99  # the end token: the largest id, where open_clip's CLIP pools
    counted = executed_step_flops(ARCH, texts, 32)
    assert counted["longest_caption"] == longest
    assert counted["total"] == _hand_count_executed(ARCH, 3, longest)
    assert counted["total"] < clip_step_flops(ARCH, 3)["total"]
