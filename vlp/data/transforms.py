"""Image transforms for training (random resized crop, optional jitter) and evaluation.

The training transform is built for the loader's hot path: the crop is a view of the decoded pixels
(no copy) and the resize is torch's antialiased bicubic on uint8 (channels-last, vectorised; the
same filter as Pillow's bicubic ``resize``, within 2 of 255 levels, about 4x faster).
``crop_resize`` hands the result to the batch as uint8; the training loader ships uint8 batches (4x
fewer bytes through shared memory and to the device) and ``normalize_on_device`` turns a whole batch
to normalised floats on the training device at the start of the step. ``normalize_batch`` does the
same on CPU, in a loader worker, for consumers that want floats from the loader.
``draft_size`` tells the decoder how far a JPEG may be shrunk at decode time (DCT scaling) while the
smallest crop still keeps the target size. Crop boxes follow torchvision's RandomResizedCrop
algorithm and jitter ColorJitter's (brightness and contrast factors, in random order), both drawn
from the ``random.Random`` a call passes (the training loader seeds one per sample and view, so a
sample's augmentation depends on nothing but the sample), else from the transform's own ``rng``.
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import image_transform
from PIL import Image
from torchvision.transforms import functional as TF

ImageTransform = Callable[[Image.Image], torch.Tensor]

_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class TrainTransform:
    """RGB, random resized crop (bicubic, antialiased) over ``resize_scale`` of the area and aspect
    ratios 3/4..4/3, optional brightness/contrast jitter, CLIP normalisation. No horizontal flip:
    captions say left/right. ``crop_resize`` gives uint8 [3, S, S] (what the training loader batches);
    calling it gives the normalised float tensor [3, S, S]. Random draws come from the ``rng`` a call
    passes, else from ``rng`` given here, else from Python's ``random`` module."""

    def __init__(self, image_size: int, resize_scale: Sequence[float] = (0.85, 1.0), color_jitter: float = 0.0,
                 mean: Sequence[float] = OPENAI_DATASET_MEAN, std: Sequence[float] = OPENAI_DATASET_STD,
                 rng: random.Random | None = None) -> None:
        self.image_size = int(image_size)
        self.scale = (float(resize_scale[0]), float(resize_scale[1]))
        self.rng = rng  # None: the random module (not kept here: a module does not pickle into spawned workers)
        self.jitter = float(color_jitter)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # the smallest crop (area scale[0], ratio 3/4) must keep image_size pixels on its short side
        self.draft_size = math.ceil(self.image_size / math.sqrt(self.scale[0] * _RATIO[0]))

    def crop_box(self, width: int, height: int, rng: random.Random | None = None) -> Tuple[int, int, int, int]:
        """(left, top, w, h) of a random crop: torchvision's RandomResizedCrop.get_params algorithm."""
        rng = rng or self.rng or random
        area, log_ratio = width * height, (math.log(_RATIO[0]), math.log(_RATIO[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        ratio = width / height  # fallback: the largest centred crop within the ratio bounds
        w, h = (width, int(round(width / _RATIO[0]))) if ratio < _RATIO[0] else \
            (int(round(height * _RATIO[1])), height) if ratio > _RATIO[1] else (width, height)
        return (width - w) // 2, (height - h) // 2, w, h

    def resize_box(self, image: Image.Image, box: Tuple[int, int, int, int]) -> torch.Tensor:
        """uint8 [3, S, S]: the (left, top, w, h) box of ``image`` resized to S x S (bicubic, antialiased)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        left, top, w, h = box
        crop = _pixels(image)[top:top + h, left:left + w].permute(2, 0, 1).unsqueeze(0)  # a view, channels-last
        return F.interpolate(crop, size=(self.image_size, self.image_size), mode="bicubic", antialias=True)[0, :3]

    def color_jitter(self, pixels: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        """uint8 [3, S, S] with ColorJitter's brightness and contrast change: factors uniform in
        [max(0, 1 - j), 1 + j], applied in random order (torchvision's functional ops)."""
        rng = rng or self.rng or random
        brightness_first = rng.random() < 0.5
        low = max(0.0, 1.0 - self.jitter)
        brightness, contrast = rng.uniform(low, 1.0 + self.jitter), rng.uniform(low, 1.0 + self.jitter)
        if brightness_first:
            return TF.adjust_contrast(TF.adjust_brightness(pixels, brightness), contrast)
        return TF.adjust_brightness(TF.adjust_contrast(pixels, contrast), brightness)

    def crop_resize(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """The augmented image as uint8 [3, S, S], ready for ``normalize_batch``; its crop box (and
        jitter) drawn from ``rng`` (default: the transform's)."""
        rng = rng or self.rng or random
        out = self.resize_box(image, self.crop_box(*image.size, rng=rng))
        return self.color_jitter(out, rng) if self.jitter > 0 else out

    def normalize_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> normalised float32 [B, 3, S, S] (contiguous). In a loader worker the
        result is written straight into shared memory, as torch's default_collate does, so handing
        it to the training process costs no extra copy."""
        scale, shift = _affine(self.mean, self.std, torch.device("cpu"))
        out = shared_batch_tensor(batch.shape, torch.float32)
        return out.copy_(batch).mul_(scale).add_(shift)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return self.normalize_batch(self.crop_resize(image, rng).unsqueeze(0))[0]


@functools.lru_cache(maxsize=16)
def _affine(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [1, C, 1, 1] float32 on ``device`` with (x / 255 - mean) / std == x * scale + shift;
    computed on CPU (the same bits wherever they are used), cached per device."""
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0 * scale
    return scale.to(device), shift.to(device)


def normalize_on_device(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images [B, C, H, W] (or [C, H, W]) -> (x / 255 - mean) / std as ``dtype``, computed in
    float32 on the images' device: the same values as ``TrainTransform.normalize_batch`` on CPU.
    Floating-point images are taken as already normalised and only cast to ``dtype``."""
    if images.is_floating_point():
        return images.to(dtype)
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_on_device: expected uint8 or floating-point images, got {images.dtype}")
    scale, shift = _affine(tuple(float(m) for m in mean), tuple(float(s) for s in std), images.device)
    if images.dim() == 3:
        scale, shift = scale[0], shift[0]
    out = images.to(torch.float32).mul_(scale).add_(shift)
    return out if dtype == torch.float32 else out.to(dtype)


def shared_batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor, in shared memory when called in a DataLoader worker."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return proto.new(storage).resize_(*shape)


# Pillow keeps RGB as 4 bytes a pixel: exporting them as RGBX is a plain copy (about 2x faster than packing
# to RGB), and torch's vectorised uint8 resize works on 4 channels natively (3 are widened to 4 inside it).
_RGBX = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _pixels(image: Image.Image) -> torch.Tensor:
    """uint8 [H, W, C] pixels of an RGB image: C = 4 (RGB + padding) where torch's uint8 resize is
    vectorised, else 3. Read-only (it wraps bytes): nothing writes to it."""
    width, height = image.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if _RGBX:
            return torch.from_numpy(np.frombuffer(image.tobytes("raw", "RGBX"), np.uint8).reshape(height, width, 4))
        return torch.from_numpy(np.asarray(image))


def train_transform(image_size: int, resize_scale: Sequence[float] = (0.85, 1.0),
                    color_jitter: float = 0.0) -> TrainTransform:
    """The training transform (see ``TrainTransform``)."""
    return TrainTransform(image_size, resize_scale, color_jitter)


def eval_transform(image_size: int) -> ImageTransform:
    """open_clip's evaluation transform: shortest-side bicubic resize, centre crop, normalise."""
    return image_transform(image_size, is_train=False)


def draft_size_of(transform: object) -> Optional[int]:
    """The smallest short side a JPEG may be decoded at for ``transform``; None: full size."""
    size = getattr(transform, "draft_size", None)
    return int(size) if size else None
