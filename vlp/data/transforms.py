"""Image transforms for training (random resized crop, optional jitter) and evaluation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import image_transform
from PIL import Image
from torchvision import transforms as T

ImageTransform = Callable[[Image.Image], torch.Tensor]


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def train_transform(image_size: int, resize_scale: Sequence[float] = (0.85, 1.0),
                    color_jitter: float = 0.0) -> ImageTransform:
    """RGB, random resized crop (bicubic) over ``resize_scale`` of the area, optional
    brightness/contrast jitter, tensor, CLIP normalisation. No horizontal flip: captions say left/right."""
    steps = [
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(image_size, scale=tuple(resize_scale), interpolation=T.InterpolationMode.BICUBIC),
    ]
    if color_jitter > 0:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter))
    steps += [T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)]
    return T.Compose(steps)


def eval_transform(image_size: int) -> ImageTransform:
    """open_clip's evaluation transform: shortest-side bicubic resize, centre crop, normalise."""
    return image_transform(image_size, is_train=False)
