"""Published config values of hub models (their config.json), for counting parameters offline.

Only sizes are kept: the fields that decide every weight's shape. A model is built from
them on the meta device, so `emovlm-kd presets` can state a hub preset's size, and the
efficiency tables the paper's models' sizes and FLOPs, without a download. Each count was
checked against the size its model card states.
"""

from __future__ import annotations

import torch
from torch import nn

# Qwen2-VL's multimodal rope split (time, height, width) of a 128-wide attention head.
_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}

# Qwen/Qwen2-VL-7B-Instruct, the paper's VLM.
QWEN2_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rope_parameters": _QWEN_ROPE,
}
QWEN2_VL_7B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2_VL_7B = {"text_config": QWEN2_VL_7B_TEXT, "vision_config": QWEN2_VL_7B_VISION, "tie_word_embeddings": False}

QWEN2_VL_2B = {
    "text_config": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "rope_parameters": _QWEN_ROPE},
    "vision_config": dict(QWEN2_VL_7B_VISION, hidden_size=1536),
    "tie_word_embeddings": True,
}

QWEN2_5_VL_3B = {
    "text_config": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 2, "rope_parameters": _QWEN_ROPE},
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    "tie_word_embeddings": True,
}

# CLIP ViT-L/14 at 336 px + Vicuna-7B (Llama-2-7B's shapes, 32,064 tokens).
LLAVA_1_5_7B = {
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                      "projection_dim": 768},
    "tie_word_embeddings": False,
}

# google/vit-base-patch16-384 (ViT-B/16 at 384 px), the paper's teacher, less its head.
VIT_B16_384_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 384,
    "patch_size": 16,
}
PAPER_VLM_NAME = "Qwen2-VL-7B-Instruct"
PAPER_TEACHER_NAME = "ViT-B/16-384"


def paper_vlm(dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Qwen2-VL-7B-Instruct on the meta device: every parameter's shape, no memory, no download."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2VLForConditionalGeneration(Qwen2VLConfig(**QWEN2_VL_7B)).to(dtype)


def paper_teacher(num_labels: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """ViT-B/16-384 with a `num_labels`-way head, on the meta device."""
    from transformers import ViTConfig, ViTForImageClassification

    with torch.device("meta"):
        return ViTForImageClassification(ViTConfig(num_labels=num_labels, **VIT_B16_384_CONFIG)).to(dtype)
