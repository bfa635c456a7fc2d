"""LLaVA-style families: a vision tower, an MLP projector and a language model.

- LLaVA-1.5 (llava-hf/llava-1.5-*-hf): CLIP ViT-L/14 at 336 px, a fixed 576 image tokens,
  Vicuna's "USER: ... ASSISTANT:" format.
- LLaVA-OneVision (llava-hf/llava-onevision-qwen2-*-ov-hf): SigLIP, "anyres" tiling whose
  token count depends on the image's size (with a learned newline token after each row),
  a Qwen2 language model and its chat format.
"""

from __future__ import annotations

import functools
import math

from torch import nn

from emovlm_kd.models.vlm.base import VLMAdapter

IMAGE = "<image>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Tiny language and vision models for the offline presets (vocabulary: Qwen2's).
TINY_TEXT = {"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096}
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 56, "patch_size": 14}


# Towers trained on ImageNet-normalised pixels, unlike CLIP's own statistics (the default).
PIXEL_STATISTICS = {"dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


class LlavaAdapter(VLMAdapter):
    """LLaVA-1.5."""

    family = "llava"
    model_class_name = "LlavaForConditionalGeneration"
    image_processor_class_name = "LlavaImageProcessorPil"
    model_type = "llava"
    name_hints = ("llava",)
    image_token = IMAGE
    tiny_special_tokens = (IMAGE,)

    @classmethod
    def tiny_config(cls, **overrides):
        """A LLaVA-1.5 of ~10M parameters: CLIP 56 px (4x4 patches), a Llama text model.

        `text` and `vision` overrides may name other model types (a Qwen2 text model, a
        DINOv2 tower); `image_seq_length` is needed where the tower's input is not its
        config's `image_size`."""
        text = {**TINY_TEXT, "model_type": "llama", **overrides.pop("text", {})}
        vision = {**TINY_VISION, "model_type": "clip_vision_model", "projection_dim": 64, **overrides.pop("vision", {})}
        if vision["model_type"] != "clip_vision_model":
            vision.pop("projection_dim")
        # The 'default' strategy drops the class token: one image token per patch.
        patches = overrides.pop("image_seq_length", (vision["image_size"] // vision["patch_size"]) ** 2)
        return cls.model_class().config_class(
            **{"text_config": text, "vision_config": vision, "image_seq_length": patches,
               "tie_word_embeddings": True, **overrides})

    @classmethod
    def tiny_image_processor(cls, config, image_pixels=None):
        # A pixel budget fixes the square side (a tower whose position grid is larger than its input).
        side = math.isqrt(image_pixels[1]) if image_pixels else config.vision_config.image_size
        mean, std = PIXEL_STATISTICS.get(config.vision_config.model_type, (None, None))
        return cls.image_processor_class()(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                           **({"image_mean": mean, "image_std": std} if mean else {}))

    def vision_modules(self):
        return {"vision_tower": self.model.model.vision_tower, "projector": self.model.model.multi_modal_projector}

    @property
    def pooled_width(self) -> int:
        return self.model.config.vision_config.hidden_size

    def visual_tokens(self, inputs):
        """The vision tower's pass; the head pools the tower's own tokens, the ones the
        projector reads (the tower is the visual encoder, the projector a connector).

        The projector of the offline presets is random, and squeezes the tower's width into
        the small language model's: the pretrained features reach the head whole only from here."""
        visual = super().visual_tokens(inputs)
        config = self.model.config
        selected = visual.encoder_output.hidden_states[config.vision_feature_layer]  # [B, T(+1), D_enc]
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]  # the class token is dropped, as for the projector
        visual.encoder_tokens = list(selected)
        return visual

    @property
    def end_of_turn(self) -> str:
        # Vicuna closes the assistant's turn with the tokenizer's end-of-sequence token.
        return self.tokenizer.eos_token

    def prompt_text(self, prompt, image_text):
        return f"{self.system_prompt} USER: {image_text}\n{prompt} ASSISTANT:"

    def image_texts(self, processed):
        # Every image is resized and cropped to one square: always the same token count.
        return [IMAGE * self.model.config.image_seq_length] * len(processed["pixel_values"])


class LlavaOnevisionAdapter(LlavaAdapter):
    """LLaVA-OneVision (single-image 'anyres' tiling)."""

    family = "llava_onevision"
    model_class_name = "LlavaOnevisionForConditionalGeneration"
    image_processor_class_name = "LlavaOnevisionImageProcessorPil"
    model_type = "llava_onevision"
    name_hints = ("llava-onevision", "llava_onevision")
    image_input_keys = ("pixel_values", "image_sizes")
    end_of_turn = IM_END
    # The base tile plus up to 2x2 tiles at 56 px.
    tiny_grid_pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]

    @classmethod
    def tiny_config(cls, **overrides):
        """A LLaVA-OneVision of ~10M parameters: SigLIP 56 px tiles, a Qwen2 text model."""
        text = dict(TINY_TEXT, model_type="qwen2", **overrides.pop("text", {}))
        vision = dict(TINY_VISION, model_type="siglip_vision_model", **overrides.pop("vision", {}))
        return cls.model_class().config_class(text_config=text, vision_config=vision, image_grid_pinpoints=cls.tiny_grid_pinpoints,
                                    vision_feature_layer=-1, tie_word_embeddings=True, **overrides)

    @classmethod
    def tiny_image_processor(cls, config, image_pixels=None):
        side = config.vision_config.image_size
        return cls.image_processor_class()(size={"height": side, "width": side},
                                           image_grid_pinpoints=config.image_grid_pinpoints)

    # Tiled images: each tile's tower tokens are pooled by the projector's arrangement, so the
    # head reads the merged tokens, as for Qwen2-VL.
    visual_tokens = VLMAdapter.visual_tokens
    pooled_width = VLMAdapter.pooled_width

    def vision_modules(self):
        base = self.model.model
        # The newline embedding closes each row of tiles' tokens: part of the visual tokens.
        return dict(super().vision_modules(), image_newline=nn.ParameterDict({"weight": base.image_newline}))

    def prompt_text(self, prompt, image_text):
        return (
            f"{IM_START}system\n{self.system_prompt}{IM_END}\n"
            f"{IM_START}user\n{image_text}\n{prompt}{IM_END}\n"
            f"{IM_START}assistant\n"
        )

    def image_texts(self, processed):
        # The token count of a tiled image is the processor's arithmetic; it is reused, not redone.
        return [self._placeholders.replace_image_token(processed, index) for index in range(len(processed["image_sizes"]))]

    @functools.cached_property
    def _placeholders(self):
        from transformers import LlavaOnevisionProcessor
        from transformers.processing_utils import ProcessorMixin

        class ImageOnlyProcessor(LlavaOnevisionProcessor):
            # LLaVA-OneVision's processor less its video processor, which needs torchvision:
            # an image processor and a tokenizer are its only attributes.
            def __init__(self, image_processor, tokenizer, config):
                self.num_image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
                self.vision_feature_select_strategy = config.vision_feature_select_strategy
                self.vision_aspect_ratio = config.vision_aspect_ratio
                self.image_token = IMAGE
                ProcessorMixin.__init__(self, image_processor, tokenizer)

        return ImageOnlyProcessor(self.image_processor, self.tokenizer, self.model.config)
