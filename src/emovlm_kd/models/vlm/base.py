"""The interface every VLM family implements; the stages only ever talk to this.

Adding a family means writing one subclass and registering it in `ADAPTERS`; no stage
changes. An adapter owns the model, its tokenizer and its image processor, and knows the
family's chat format, where its visual encoder is, and how to score answers exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image

SYSTEM_PROMPT = "You are an AI visual assistant, and you are seeing a single image."


@dataclass
class VisualTokens:
    """The visual encoder's output for a batch, computed once and shared by head and VLM.

    `per_image[i]` is [tokens_i, D]: the merged visual tokens the language model reads.
    `encoder_output` is the family's own object to hand back to the language model.
    """

    per_image: list[torch.Tensor]
    encoder_output: object

    def pooled(self) -> torch.Tensor:
        # [B, D]: mean over each image's visual tokens, the head's input.
        return torch.stack([tokens.float().mean(dim=0) for tokens in self.per_image])


class VLMAdapter(ABC):
    """One VLM family: chat prompt with an image, visual features, exact label scoring,
    generation, and the LoRA target modules."""

    family: ClassVar[str]
    # Attention projections of the language model only; the vision tower stays untouched.
    lora_target_modules: ClassVar[tuple[str, ...]]

    def __init__(self, model, tokenizer, image_processor, system_prompt: str = SYSTEM_PROMPT):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt

    @classmethod
    @abstractmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: torch.dtype, quantize_4bit: bool = False):
        """Load a hub model id or a local folder."""

    @classmethod
    @abstractmethod
    def tiny(cls, seed: int = 0, **overrides):
        """A small randomly initialised model with the family's real tokenizer, offline."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        """Width of the visual tokens the head reads (D)."""
        return self.model.config.get_text_config().hidden_size

    @abstractmethod
    def encode_images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Visual-encoder inputs alone (for caching features without a prompt)."""

    @abstractmethod
    def encode(
        self, images: list[Image.Image], prompts: list[str], answers: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of (image, prompt[, answer]); left-padded.

        With answers, `labels` hold the answer tokens (and the end-of-turn token) and -100
        everywhere else: system, prompt, image and padding tokens carry no loss.
        """

    @abstractmethod
    def visual_tokens(self, inputs: dict[str, torch.Tensor]) -> VisualTokens:
        """Run the visual encoder once on the images of `encode` or `encode_images` inputs."""

    @abstractmethod
    def answer_logprobs(
        self,
        inputs: dict[str, torch.Tensor],
        answers: list[str],
        visual: VisualTokens | None = None,
        include_shared: bool = True,
    ) -> torch.Tensor:
        """[B, K] log-likelihood of every token of each answer given each prompt.

        The prompt and image are encoded once per image; the K continuations reuse its KV
        cache. With `include_shared=False` the tokens all answers start with are left out:
        a per-image constant, so a softmax over the K answers is unchanged, for less work.
        """

    @abstractmethod
    def generate(
        self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 48, visual: VisualTokens | None = None
    ) -> list[str]:
        """Greedy (deterministic) answers to the prompts of `inputs`."""

    def fingerprint_modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose weights decide the visual features (for cache keys)."""
        return {"visual": self.model.model.visual}


def get_adapter_class(family: str) -> type[VLMAdapter]:
    """The adapter class of a VLM family by name."""
    from emovlm_kd.errors import UserError
    from emovlm_kd.models.vlm.qwen2_vl import Qwen2VLAdapter

    adapters = {cls.family: cls for cls in (Qwen2VLAdapter,)}
    if family not in adapters:
        raise UserError(f"unknown VLM family {family!r}; known families: {', '.join(adapters)}.")
    return adapters[family]
