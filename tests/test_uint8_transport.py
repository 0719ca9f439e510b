"""uint8 image transport: the training loader ships uint8 pixels, the training step normalises them
on its device, with the same values the float path of ``TrainTransform`` gave."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from test_data_pipeline import _good, _write_shards
from test_engine_faults import _cfg
from vlp.data import transforms
from vlp.data.pipeline import build_train_loader
from vlp.data.tokenizers import build_tokenizer
from vlp.data.transforms import TrainTransform, normalize_on_device, train_transform
from vlp.train import engine

TOK = build_tokenizer("open_clip", 12)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _photo(width=160, height=120, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


def test_normalize_on_device_equals_the_float_path_of_the_train_transform():
    image = _photo()
    for seed in range(4):
        float_path = TrainTransform(64, (0.5, 1.0), rng=random.Random(seed))(image)
        pixels = TrainTransform(64, (0.5, 1.0), rng=random.Random(seed)).crop_resize(image)  # same crop
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
        got = normalize_on_device(pixels.unsqueeze(0), MEAN, STD)[0]
        assert got.dtype == torch.float32 and got.shape == (3, 64, 64) and got.is_contiguous()
        assert (got - float_path).abs().max().item() <= 1e-6
        # the formula the float path always used, and torchvision's ToTensor + Normalize
        scale = 1.0 / (torch.tensor(STD).view(3, 1, 1) * 255.0)
        previous = pixels.float() * scale - torch.tensor(MEAN).view(3, 1, 1) * 255.0 * scale
        assert (got - previous).abs().max().item() <= 1e-6
        reference = T.Normalize(MEAN, STD)(T.ToTensor()(Image.fromarray(pixels.permute(1, 2, 0).numpy())))
        assert (got - reference).abs().max().item() <= 1e-6
    # [C, H, W] input, another dtype, floats taken as already normalised, a bad dtype refused
    assert torch.equal(normalize_on_device(pixels, MEAN, STD), got)
    half = normalize_on_device(pixels.unsqueeze(0), MEAN, STD, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.allclose(half[0].float(), got, atol=2e-2)
    assert normalize_on_device(got, MEAN, STD) is got
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(pixels.to(torch.int16), MEAN, STD)


def test_pixels_without_the_rgbx_fast_path_are_identical(monkeypatch):
    image = _photo(203, 151, seed=3)
    box = (11, 5, 170, 140)
    fast = TrainTransform(48).resize_box(image, box)
    monkeypatch.setattr(transforms, "_RGBX", not transforms._RGBX)
    other = TrainTransform(48).resize_box(image, box)
    assert fast.dtype == other.dtype == torch.uint8 and fast.shape == other.shape == (3, 48, 48)
    assert torch.equal(fast, other)
    want = np.asarray(image.crop((11, 5, 181, 145)).resize((48, 48), Image.BICUBIC)).astype(int)
    assert np.abs(fast.permute(1, 2, 0).numpy().astype(int) - want).max() <= 2  # Pillow's bicubic


def _batches(tmp_path, uint8_images, workers=0, image_views=1):
    # no global seeding needed: each crop is drawn from a generator seeded by (seed, epoch, key, view)
    loader = build_train_loader(str(tmp_path), 4, train_transform(16), TOK, workers=workers, shuffle_buffer=0,
                                epochs=1, uint8_images=uint8_images, image_views=image_views)
    return list(loader)


def test_loader_ships_uint8_batches_that_normalise_to_the_float_batches(tmp_path):
    _write_shards(tmp_path, [[_good(f"a{i}", caption=f"caption {i}") for i in range(6)],
                             [_good(f"b{i}", caption=f"other {i}") for i in range(6)]])
    shipped = _batches(tmp_path, uint8_images=True, image_views=2)
    assert [b["image"].shape for b in shipped] == [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 16, 16)]
    for b in shipped:
        assert b["image"].dtype == b["image_aug"].dtype == torch.uint8 and b["image"].is_contiguous()
        assert b["image_aug"].shape == b["image"].shape
    uint8 = _batches(tmp_path, uint8_images=True)
    floats = _batches(tmp_path, uint8_images=False)
    assert [b["key"] for b in uint8] == [b["key"] for b in floats]
    for u, f in zip(uint8, floats):
        assert f["image"].dtype == torch.float32
        assert (normalize_on_device(u["image"], MEAN, STD) - f["image"]).abs().max().item() <= 1e-6
        assert torch.equal(u["text"], f["text"])
    # from a worker process (through shared memory) too
    (worker_batch, *_) = _batches(tmp_path, uint8_images=True, workers=1)
    assert worker_batch["image"].dtype == torch.uint8 and worker_batch["image"].shape == (4, 3, 16, 16)


def test_training_step_gets_normalised_floats_from_uint8_batches(shapes_dir, tmp_path, monkeypatch):
    seen = []

    def recording(images, mean, std, dtype=torch.float32):
        out = normalize_on_device(images, mean, std, dtype)
        seen.append((images.dtype, tuple(images.shape), out.dtype, out.min().item(), out.max().item()))
        return out

    monkeypatch.setattr(engine, "normalize_on_device", recording)
    run = engine.train(_cfg(shapes_dir, tmp_path, "train.steps=2"))
    assert (run / "checkpoints/final.pt").exists()
    assert len(seen) == 2
    for in_dtype, shape, out_dtype, low, high in seen:
        assert in_dtype == torch.uint8 and shape == (8, 3, 32, 32) and out_dtype == torch.float32
        assert -1.8 < low < high < 2.2  # CLIP-normalised pixel values, not 0..255


def test_the_training_pipeline_pickles_for_spawned_workers():
    """A spawned loader worker (macOS's and Windows' default; torch.multiprocessing 'spawn') receives
    the pipeline pickled: nothing in it may hold a module (the transform once kept ``random`` itself)."""
    import pickle
    import random

    from vlp.data.transforms import TrainTransform

    transform = pickle.loads(pickle.dumps(TrainTransform(32)))
    assert transform.crop_box(64, 48, rng=random.Random(0)) == TrainTransform(32).crop_box(64, 48, rng=random.Random(0))
