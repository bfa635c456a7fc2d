"""Idefics3 and SmolVLM: a SigLIP encoder, pixel-shuffle connector and a Llama-style model.

An image is split into tiles (rows x cols) plus a downscaled global view; each tile
becomes `image_seq_len` tokens, framed by <fake_token_around_image> and a
<row_r_col_c> / <global-img> tag. SmolVLM is Idefics3's architecture, smaller, with the
ChatML-style opening <|im_start|>.
"""

from __future__ import annotations

from emovlm_kd.models.vlm.base import VLMAdapter

IMAGE, FAKE_AROUND_IMAGE, GLOBAL_IMAGE = "<image>", "<fake_token_around_image>", "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
# Tile tags of up to 6 x 6 tiles, as in the real tokenizers.
TILE_TAGS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))


class Idefics3Adapter(VLMAdapter):
    family = "idefics3"
    model_class_name = "Idefics3ForConditionalGeneration"
    image_processor_class_name = "Idefics3ImageProcessorPil"
    model_type = "idefics3"
    name_hints = ("idefics3",)
    image_token = IMAGE
    tiny_special_tokens = (FAKE_AROUND_IMAGE, IMAGE, GLOBAL_IMAGE, END_OF_UTTERANCE, *TILE_TAGS)
    language_model_name = "text_model"
    image_input_keys = ("pixel_values", "pixel_attention_mask")
    end_of_turn = END_OF_UTTERANCE
    # What opens a conversation: Idefics3's Llama-3 tokenizer adds its BOS by itself.
    conversation_start = ""

    @classmethod
    def tiny_config(cls, **overrides):
        """~10M parameters: 64 px tiles of 4x4 patches, shuffled 2x2 into 4 tokens per tile."""
        text = {"model_type": "llama", "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 4096, **overrides.pop("text", {})}
        vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "image_size": 64, "patch_size": 16, **overrides.pop("vision", {})}
        config_class = cls.model_class().config_class
        return config_class(text_config=text, vision_config=vision, scale_factor=2, tie_word_embeddings=True, **overrides)

    @classmethod
    def tiny_image_processor(cls, config, image_pixels=None):
        # Images are resized to at most 2 tiles a side, then cut into tiles of the encoder's size.
        tile = config.vision_config.image_size
        return cls.image_processor_class()(size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile})

    def vision_modules(self):
        return {"vision_model": self.model.model.vision_model, "connector": self.model.model.connector}

    def process_images(self, images):
        # One image per sample (a flat list would be one sample's several images), and the
        # tiling (rows, cols) that the placeholder text spells out.
        return self.image_processor(images=[[image] for image in images], return_tensors="pt", return_row_col_info=True)

    def prompt_text(self, prompt, image_text):
        return (
            f"{self.conversation_start}System: {self.system_prompt}{END_OF_UTTERANCE}\n"
            f"User:{image_text}{prompt}{END_OF_UTTERANCE}\nAssistant:"
        )

    def answer_text(self, answer):
        # The chat templates write "Assistant: <answer>".
        return " " + answer

    def image_texts(self, processed):
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        vision = self.model.config.vision_config
        tokens_per_tile = (vision.image_size // vision.patch_size) ** 2 // self.model.config.scale_factor**2
        # rows / cols: one list per sample, one entry per image (here one image per sample).
        return [
            get_image_prompt_string(rows[0], cols[0], tokens_per_tile, fake_token_around_image=FAKE_AROUND_IMAGE,
                                    image_token=IMAGE, global_image_token=GLOBAL_IMAGE)
            for rows, cols in zip(processed["rows"], processed["cols"])
        ]


class SmolVLMAdapter(Idefics3Adapter):
    family = "smolvlm"
    model_class_name = "SmolVLMForConditionalGeneration"
    image_processor_class_name = "SmolVLMImageProcessorPil"
    model_type = "smolvlm"
    name_hints = ("smolvlm",)
    conversation_start = "<|im_start|>"
