"""Model presets by name: which VLM, which teacher, at what size, online or offline.

A preset name, a Hugging Face model id or a local folder all work where a VLM is asked for.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.models.teacher import OFFLINE_EFFICIENTNET

OFFLINE_PREFIX = "offline:"


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str
    vlm: str  # hub id, local folder, or "offline:<tiny builder>"
    teacher: str  # hub id, local folder, or "offline:efficientnet-lite0"
    description: str
    # Training the whole VLM is allowed only where it is randomly initialised (offline presets).
    instruct_method: str = "auto"
    # The Qwen2-VL image processor's pixel budget (min, max); None keeps the model's own.
    image_pixels: tuple[int, int] | None = None
    tiny_overrides: dict = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.vlm.startswith(OFFLINE_PREFIX) and self.teacher.startswith(OFFLINE_PREFIX)


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            name="paper",
            family="qwen2_vl",
            vlm="Qwen/Qwen2-VL-7B-Instruct",
            teacher="google/vit-base-patch16-384",
            description="the paper's configuration: Qwen2-VL-7B-Instruct + ViT-B/16 at 384 px (GPU)",
        ),
        ModelPreset(
            name="qwen2-vl-2b",
            family="qwen2_vl",
            vlm="Qwen/Qwen2-VL-2B-Instruct",
            teacher="google/vit-base-patch16-384",
            description="Qwen2-VL-2B-Instruct + ViT-B/16 at 384 px, for a single smaller GPU",
        ),
        ModelPreset(
            name="tiny",
            family="qwen2_vl",
            vlm="offline:tiny-qwen2-vl",
            teacher=OFFLINE_EFFICIENTNET,
            description="offline: random ~20M Qwen2-VL with the real Qwen2 tokenizer + ImageNet EfficientNet-Lite0",
            instruct_method="full",
            image_pixels=(112 * 112, 224 * 224),
        ),
        ModelPreset(
            name="bench",
            family="qwen2_vl",
            vlm="offline:bench-qwen2-vl",
            teacher=OFFLINE_EFFICIENTNET,
            # 448 px gives 256 image tokens, about what Qwen2-VL makes of a typical FI photo.
            description="offline: random ~115M Qwen2-VL at 448 px for benchmarks, real Qwen2 tokenizer",
            instruct_method="full",
            image_pixels=(448 * 448, 448 * 448),
            tiny_overrides={
                "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8,
                         "num_attention_heads": 8, "num_key_value_heads": 4,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                             "mrope_section": [8, 12, 12]}},
                "vision": {"depth": 4, "embed_dim": 256, "num_heads": 4, "mlp_ratio": 4},
            },
        ),
    )
}


def list_presets(pattern: str = "*") -> list[ModelPreset]:
    """Presets whose name matches a shell-style wildcard, e.g. 'qwen2*'."""
    return [preset for name, preset in PRESETS.items() if fnmatch.fnmatch(name, pattern)]


def get_preset(name: str) -> ModelPreset:
    if name in PRESETS:
        return PRESETS[name]
    raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}.")


def resolve_vlm(name_or_path: str) -> ModelPreset:
    """A preset for a preset name, or an ad-hoc Qwen2-VL preset for a hub id or folder."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if name_or_path.startswith(OFFLINE_PREFIX):
        raise UserError(f"unknown offline model {name_or_path!r}; offline presets: "
                        f"{', '.join(p.name for p in PRESETS.values() if p.offline)}.")
    return ModelPreset(
        name=name_or_path,
        family="qwen2_vl",
        vlm=name_or_path,
        teacher=PRESETS["paper"].teacher,
        description=f"{name_or_path} (a model id or folder)",
    )


def default_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow there)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_vlm(preset: ModelPreset, *, seed: int = 0, quantize_4bit: bool = False, dtype=None):
    """The preset's VLM adapter: a hub model, a folder, or an offline randomly initialised one."""
    from emovlm_kd.models.vlm import get_adapter_class

    adapter_class = get_adapter_class(preset.family)
    if preset.vlm.startswith(OFFLINE_PREFIX):
        kwargs = {"image_pixels": preset.image_pixels} if preset.image_pixels else {}
        return adapter_class.tiny(seed=seed, **kwargs, **preset.tiny_overrides)
    try:
        return adapter_class.from_pretrained(
            preset.vlm, dtype=dtype or default_dtype(), quantize_4bit=quantize_4bit
        )
    except OSError as error:
        raise UserError(
            f"cannot load the VLM {preset.vlm!r} ({error.__class__.__name__}): with no network, "
            "use an offline preset such as 'tiny', or a local folder holding the model."
        ) from None
