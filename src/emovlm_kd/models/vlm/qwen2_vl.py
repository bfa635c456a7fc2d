"""The Qwen VL families: Qwen2-VL (the paper's), Qwen2.5-VL and Qwen3-VL.

All three share the chat format, the image processor (a pixel budget, 2x2 patch merging) and
multimodal rope; they differ in the vision tower (window attention in 2.5, deepstack
features in 3) and in the text model's config.
"""

from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from emovlm_kd.models.vlm.base import VLMAdapter

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


def _patch_convolution_as_matmul(convolution: torch.nn.Conv3d, patches: torch.Tensor) -> torch.Tensor:
    """The patch embedding's Conv3d on pre-cut patches [N, C, T, P, P], each exactly one
    kernel: one matrix product, [N, D, 1, 1, 1] as the convolution gives it. torch's CPU
    Conv3d took 0.13 s for the 8 images of a `bench` batch, several times the product."""
    if patches.shape[2:] != convolution.weight.shape[2:]:
        return type(convolution).forward(convolution, patches)
    weight = convolution.weight.flatten(1)  # [D, C * T * P * P]
    return F.linear(patches.flatten(1), weight, convolution.bias)[..., None, None, None]


def _vision_attention_by_length(attention: torch.nn.Module, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                                max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
    """The Qwen vision towers' attention with one call for each run of consecutive images
    (Qwen2.5-VL: windows) of one length, batched over them: a whole `bench` batch, or a
    folder from one camera, in one call. transformers makes one call per image outside
    flash attention: 32 blocks x 32 images made 1,024 calls, each with its own split and
    copy, in one 7B batch on an H200. The projections and the rotary embedding are
    transformers' own; attention other than torch's sdpa goes to transformers' forward."""
    if attention.config._attn_implementation != "sdpa":
        return type(attention).forward(attention, hidden_states, cu_seqlens=cu_seqlens,
                                       position_embeddings=position_embeddings, max_seqlen=max_seqlen, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    tokens, heads = hidden_states.shape[0], attention.num_heads
    query, key, value = attention.qkv(hidden_states).reshape(tokens, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)
    outputs, start = [], 0
    for length, run in itertools.groupby(cu_seqlens.diff().tolist()):
        count = len(list(run))
        if length == 0:  # an empty window holds no tokens
            continue
        end = start + count * length
        # [images of this run, heads, length, head width]
        states = [state[start:end].reshape(count, length, heads, -1).transpose(1, 2) for state in (query, key, value)]
        output, _ = sdpa_attention_forward(attention, *states, attention_mask=None, scaling=attention.scaling,
                                           dropout=attention.attention_dropout if attention.training else 0.0,
                                           is_causal=False, **kwargs)
        outputs.append(output.reshape(end - start, -1))
        start = end
    return attention.proj(torch.cat(outputs))


@functools.cache
def _pixel_values_table(rescale_factor: float | None, mean: tuple | None, std: tuple | None) -> np.ndarray:
    """[3, 256] float32: what the image processor turns each 8-bit level of each channel into,
    by its own operations in its own precisions (levels * factor in float64, then float32;
    (x - mean) / std in float32), so a lookup gives exactly its pixel values."""
    levels = np.arange(256, dtype=np.uint8)
    values = levels.astype(np.float32) if rescale_factor is None else (levels.astype(np.float64) * rescale_factor).astype(np.float32)
    values = np.broadcast_to(values, (3, 256))
    if mean is not None:
        values = (values - np.array(mean, np.float32)[:, None]) / np.array(std, np.float32)[:, None]
    return np.ascontiguousarray(values, dtype=np.float32)


def _patches_into(block: np.ndarray, levels: np.ndarray, table: np.ndarray, patch: int, merge: int) -> None:
    """Write one image's 8-bit [H, W, C] levels into `block` [N, C, T, P, P] as the Qwen image
    processor lays out its pixel values: merged blocks of patches, patches row by row inside
    each, every frame of the temporal patch the same image."""
    grid_h, grid_w = levels.shape[0] // patch, levels.shape[1] // patch
    # -> (h / merge, w / merge, merge, merge, C, P, P), still 8-bit.
    levels = levels.reshape(grid_h // merge, merge, patch, grid_w // merge, merge, patch, 3)
    levels = levels.transpose(0, 3, 1, 4, 6, 2, 5).reshape(grid_h * grid_w, 3, patch, patch)
    frame = np.empty(levels.shape, np.float32)
    for channel in range(3):
        np.take(table[channel], levels[:, channel], out=frame[:, channel], mode="clip")
    for time_step in range(block.shape[2]):
        block[:, :, time_step] = frame


def _map_over_images(function, count: int) -> None:
    """`function(index)` for each image of a batch, side by side in threads (PIL's resize and
    numpy's lookups release the GIL); one by one inside a DataLoader worker, where the
    workers are the parallelism."""
    if count == 1 or torch.utils.data.get_worker_info() is not None:
        for index in range(count):
            function(index)
    else:
        list(_image_threads(os.getpid()).map(function, range(count)))


@functools.cache
def _image_threads(process_id: int) -> ThreadPoolExecutor:
    # One pool per process: a forked child inherits the pool object but none of its threads.
    # The cores this process may use, shared with the other processes a launcher started on
    # this machine (one per GPU), at most 8.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(8, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return ThreadPoolExecutor(threads, thread_name_prefix="emovlm-kd-images")


def _as_channels(value) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3


class Qwen2VLAdapter(VLMAdapter):
    family = "qwen2_vl"
    model_class_name = "Qwen2VLForConditionalGeneration"
    image_processor_class_name = "Qwen2VLImageProcessorPil"
    model_type = "qwen2_vl"
    name_hints = ("qwen2-vl", "qwen2_vl")
    image_token = IMAGE_PAD
    image_input_keys = ("pixel_values", "image_grid_thw")
    scoring_input_keys = ("image_grid_thw", "mm_token_type_ids")
    end_of_turn = IM_END
    # The tiny model: text 128 wide x 2 layers; head_dim 32 -> 16 rotary frequencies split
    # over (time, height, width).
    tiny_text = {
        "vocab_size": 151936,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    }
    tiny_vision = {"depth": 2, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2}
    # The vision config's key for the width of the merged tokens (= the text width).
    vision_output_key = "hidden_size"
    # The tiny image processor's pixel budget (min, max): at most 8 x 8 merged tokens.
    tiny_image_pixels = (112 * 112, 224 * 224)

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        # Called as a module still, so hooks (e.g. ZeRO-3 gathering its weight) see it.
        convolution = model.model.visual.patch_embed.proj
        convolution.forward = functools.partial(_patch_convolution_as_matmul, convolution)
        for block in model.model.visual.blocks:
            block.attn.forward = functools.partial(_vision_attention_by_length, block.attn)

    @classmethod
    def tiny_config(cls, **overrides):
        """A Qwen VL of ~20M parameters (most in the 151,936-row embedding)."""
        text = dict(cls.tiny_text, **overrides.pop("text", {}))
        vision = dict(cls.tiny_vision, **overrides.pop("vision", {}))
        vision[cls.vision_output_key] = text["hidden_size"]
        config_class = cls.model_class().config_class
        return config_class(text_config=text, vision_config=vision, **{"tie_word_embeddings": True, **overrides})

    @classmethod
    def tiny_image_processor(cls, config, image_pixels=None):
        min_pixels, max_pixels = image_pixels or cls.tiny_image_pixels
        vision = config.vision_config
        return cls.image_processor_class()(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
        )

    def vision_modules(self):
        return {"visual": self.model.model.visual}

    # ---- image preprocessing ------------------------------------------------------------

    def process_images(self, images):
        """The image processor's output, bit for bit, made faster for plain RGB images: each is
        resized as the processor resizes it (PIL, its filter, its `smart_resize` size), cut
        into patches while still 8-bit, and normalized by a lookup table of the processor's
        own values, the images of a batch in parallel threads. Images the processor would
        convert first (other modes, transparency) go to it."""
        processor = self.image_processor
        plain = all(image.mode == "RGB" and "transparency" not in image.info for image in images)
        if not (plain and processor.do_resize and processor.size.shortest_edge and processor.size.longest_edge):
            return super().process_images(images)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        patch, merge, temporal = processor.patch_size, processor.merge_size, processor.temporal_patch_size
        table = _pixel_values_table(
            processor.rescale_factor if processor.do_rescale else None,
            _as_channels(processor.image_mean) if processor.do_normalize else None,
            _as_channels(processor.image_std) if processor.do_normalize else None,
        )
        sizes = [smart_resize(image.height, image.width, factor=patch * merge, min_pixels=processor.size.shortest_edge,
                              max_pixels=processor.size.longest_edge) for image in images]
        grids = torch.tensor([[1, height // patch, width // patch] for height, width in sizes])
        # [sum of patches, C, T, P, P], flattened at the end: each image's patches in the
        # processor's order, written by one thread per image.
        counts = grids.prod(dim=1).tolist()
        pixel_values = np.empty((sum(counts), 3, temporal, patch, patch), np.float32)
        blocks = np.split(pixel_values, np.cumsum(counts)[:-1])

        def write(index: int) -> None:
            height, width = sizes[index]
            image = images[index]
            if image.size != (width, height):
                image = image.resize((width, height), resample=processor.resample)
            _patches_into(blocks[index], np.asarray(image), table, patch, merge)

        _map_over_images(write, len(images))
        return {"pixel_values": torch.from_numpy(pixel_values.reshape(len(pixel_values), -1)), "image_grid_thw": grids}

    # ---- chat format --------------------------------------------------------------------

    def prompt_text(self, prompt, image_text):
        return (
            f"{IM_START}system\n{self.system_prompt}{IM_END}\n"
            f"{IM_START}user\n{image_text}{prompt}{IM_END}\n"
            f"{IM_START}assistant\n"
        )

    def image_texts(self, processed):
        # [B, 3] (t, h, w) in patches; each merge x merge block of patches is one token.
        merge = self.image_processor.merge_size**2
        return [f"{VISION_START}{IMAGE_PAD * (int(grid.prod()) // merge)}{VISION_END}" for grid in processed["image_grid_thw"]]

    def token_inputs(self, input_ids):
        # 1 marks image tokens: multimodal rope gives them 2-D positions.
        return {"mm_token_type_ids": (input_ids == self.model.config.image_token_id).int()}

    # ---- multimodal rope ----------------------------------------------------------------

    def prompt_positions(self, inputs):
        # [3, B, T] positions; the next one differs from the token count (image tokens
        # advance it by their grid, not one by one), so it is read off the rope index.
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        return positions, positions.amax(dim=(0, 2)) + 1

    def continuation_positions(self, start, offsets):
        # Text after the image: the same position on all three axes.
        return super().continuation_positions(start, offsets).expand(3, -1, -1)


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: window attention in the vision tower, SwiGLU vision MLPs."""

    family = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"
    model_type = "qwen2_5_vl"
    name_hints = ("qwen2.5-vl", "qwen2_5_vl")
    tiny_text = dict(
        Qwen2VLAdapter.tiny_text,
        hidden_size=64,
        intermediate_size=128,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    # A 112 px window is 2x2 merged tokens; the last block attends over the whole image.
    tiny_vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
                   "window_size": 112, "fullatt_block_indexes": [1]}
    vision_output_key = "out_hidden_size"
    # At most 4 x 4 merged tokens: the window attention is slow on a CPU.
    tiny_image_pixels = (56 * 56, 112 * 112)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: 16 px patches, learned position embeddings and deepstack visual features
    added to the first text layers (the pooled head input stays the merged tokens)."""

    family = "qwen3_vl"
    model_class_name = "Qwen3VLForConditionalGeneration"
    model_type = "qwen3_vl"
    name_hints = ("qwen3-vl", "qwen3_vl")
    tiny_text = dict(
        Qwen2VLAdapter.tiny_text,
        hidden_size=64,
        intermediate_size=128,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3],
                         "mrope_interleaved": True},
    )
    tiny_vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "patch_size": 16,
                   "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    vision_output_key = "out_hidden_size"
    tiny_image_pixels = (64 * 64, 128 * 128)

    def last_layer_feeds_only_the_head(self) -> bool:
        # Deepstack features are added to all visual positions after each of the first layers.
        text, vision = self.model.config.text_config, self.model.config.vision_config
        return len(vision.deepstack_visual_indexes) < text.num_hidden_layers

