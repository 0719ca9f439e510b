"""vlp.train.oom: an out-of-memory error in a training step becomes a message with the batch, the
memory the error reported, and the override lines that need less memory; other errors pass."""

from __future__ import annotations

import pytest
import torch

from vlp.config import load_config
from vlp.train.oom import TrainingOutOfMemory, explain_out_of_memory, is_out_of_memory, oom_advice

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)")
CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.25 GiB is free. Including non-PyTorch memory, this process has 77.93 GiB memory in use.")


def override_lines(message: str) -> list[str]:
    return [line.split("#")[0].strip() for line in message.splitlines() if line.startswith("  ")]


def test_a_cpu_allocation_failure_lists_what_would_fit() -> None:
    cfg = load_config(None, ["train.batch_size=256"])
    with pytest.raises(TrainingOutOfMemory) as caught:
        with explain_out_of_memory(cfg, world_size=1, step=3):
            raise RuntimeError(CPU_OOM)
    message = str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError) and str(caught.value.__cause__) == CPU_OOM
    assert message.splitlines()[0] == "out of memory in training step 3: CPU tried to allocate 3.00 GiB"
    assert ("with train.batch_size=256 per process x 1 process x train.accum_steps=1 = global batch 256, "
            "train.precision=fp32, model.grad_checkpointing=false.") in message
    assert override_lines(message) == [
        "train.batch_size=64 train.accum_steps=4",
        "loss.terms.0.options.chunked=true",
        "model.grad_checkpointing=true",
        "train.precision=bf16",
        "train.batch_size=128",
    ]
    assert "the same global batch of 256" in message
    assert "train.resume=false or a new train.run_name" in message
    assert message.splitlines()[-1] == f"(the error: {CPU_OOM})"


def test_a_cuda_oom_reports_the_device_memory_and_skips_what_is_set() -> None:
    cfg = load_config(None, ["train.batch_size=96", "train.accum_steps=2", "train.precision=bf16",
                             "model.grad_checkpointing=true", "loss.terms.0.options.chunked=true",
                             "loss.terms.1.name=siglip", "loss.terms.1.weight=0.5",
                             "model.init_logit_bias=-10", "model.init_logit_scale=2.302585"])
    err = torch.OutOfMemoryError(CUDA_OOM)
    assert is_out_of_memory(err)
    message = oom_advice(cfg, err, world_size=8, step=1200)
    assert message.splitlines()[0] == ("out of memory in training step 1200: CUDA tried to allocate 2.00 GiB "
                                       "(GPU 0: 79.19 GiB total, 1.25 GiB free)")
    assert "train.batch_size=96 per process x 8 processes x train.accum_steps=2 = global batch 1536" in message
    assert override_lines(message) == [
        "train.batch_size=24 train.accum_steps=8",  # split further, the same global batch
        "loss.terms.1.options.chunked=true",  # the siglip term; the clip term already is
        "train.precision=pure_bf16",
        "train.batch_size=48",
    ]
    assert "the same global batch of 1536" in message and "global batch (768)" in message


def test_an_odd_batch_of_one_leaves_only_what_applies() -> None:
    cfg = load_config(None, ["train.batch_size=1", "train.precision=pure_bf16", "model.grad_checkpointing=true",
                             "loss.terms.0.name=dcl"])
    message = oom_advice(cfg, RuntimeError("[enforce fail] not enough memory: you tried to allocate 1024 bytes"))
    assert message.splitlines()[0] == "out of memory in a training step: CPU tried to allocate 1.00 KiB"
    assert override_lines(message) == []
    assert "already uses every memory saving" in message
    odd = oom_advice(load_config(None, ["train.batch_size=6"]), RuntimeError(CPU_OOM))
    assert override_lines(odd)[0] == "train.batch_size=3 train.accum_steps=2"


def test_other_errors_pass_through_unchanged() -> None:
    cfg = load_config(None, [])
    original = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")
    with pytest.raises(RuntimeError) as caught:
        with explain_out_of_memory(cfg):
            raise original
    assert caught.value is original and not isinstance(caught.value, TrainingOutOfMemory)
    with pytest.raises(KeyError):
        with explain_out_of_memory(cfg):
            raise KeyError("image")
    with explain_out_of_memory(cfg):
        pass  # nothing raised, nothing changed
    assert not is_out_of_memory(ValueError("not enough memory"))  # only allocator errors (RuntimeError)


def test_a_real_cpu_allocation_failure_is_recognised() -> None:
    cfg = load_config(None, ["train.batch_size=8"])
    with pytest.raises(TrainingOutOfMemory, match=r"CPU tried to allocate 4.00 EiB"):
        with explain_out_of_memory(cfg):
            torch.empty(1 << 62, dtype=torch.uint8)  # 4 EiB: no machine has it
