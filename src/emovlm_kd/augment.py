"""Image augmentations, each drawn from a `random.Random` so that a seed fixes the result.

- `train_augment`: the paper's teacher augmentation (random resized crop, flip);
- `distillation_view`: a view of a training image for distillation (crop, rotation,
  flip, colour), on which the teacher and the VLM both look at the same pixels.
"""

from __future__ import annotations

import random

from PIL import Image, ImageEnhance

# Distillation views keep most of the image (the emotion must stay visible) but move,
# turn and recolour it, so the head learns the teacher's answers on new pixels.
VIEW_CROP_SCALE = (0.55, 1.0)
VIEW_MAX_ROTATION_DEG = 20
VIEW_COLOUR_RANGE = (0.6, 1.4)


def random_resized_crop(image: Image.Image, size: int, rng: random.Random, scale=(0.08, 1.0)) -> Image.Image:
    """Inception-style crop: a random area and aspect ratio, resized to size x size."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        log_ratio = rng.uniform(-0.2876821, 0.2876821)  # aspect ratio in [3/4, 4/3]
        ratio = 2.718281828459045**log_ratio
        w = int(round((target * ratio) ** 0.5))
        h = int(round((target / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    return image.resize((size, size), Image.BICUBIC)


def train_augment(image: Image.Image, size: int, rng: random.Random, scale_min: float = 0.08) -> Image.Image:
    """The paper's teacher augmentation: random resized crop and horizontal flip."""
    image = random_resized_crop(image, size, rng, scale=(scale_min, 1.0))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def distillation_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """One augmented view of `image`, at its own size: crop, rotation, flip, colour."""
    width, height = image.size
    side = min(width, height)
    view = random_resized_crop(image, side, rng, scale=VIEW_CROP_SCALE)
    # Rotated about the centre; the corners it uncovers take the image's mean colour.
    fill = tuple(int(c) for c in view.resize((1, 1), Image.BILINEAR).getpixel((0, 0)))
    view = view.rotate(rng.uniform(-VIEW_MAX_ROTATION_DEG, VIEW_MAX_ROTATION_DEG), Image.BICUBIC, fillcolor=fill)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(rng.uniform(*VIEW_COLOUR_RANGE))
    return view
