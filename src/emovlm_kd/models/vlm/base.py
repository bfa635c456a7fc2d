"""The interface every VLM family implements; the stages only ever talk to this.

Adding a family means writing one `VLMAdapter` subclass in a module of this package and
listing it in `emovlm_kd.models.vlm.ADAPTERS` (plus, if wanted, presets in
`emovlm_kd.models.registry`); no stage changes. An adapter owns the model, its tokenizer
and its image processor.

What the stages use (written once, here):
- `encode_images(images)` / `encode(images, prompts, answers=None)`: model inputs, left-padded,
  with answer-only `labels` when answers are given;
- `visual_tokens(inputs)` -> `VisualTokens`: one visual-encoder pass; `.pooled()` is the head's input;
- `answer_logprobs(inputs, answers, visual=None, include_shared=True)` and `scored_answer_ids`:
  exact label scoring, the prompt's KV cache reused by all K answers;
- `generate(inputs)`: greedy answers;
- `vision_modules()` (frozen while tuning), `lora_targets()` (what LoRA tunes),
  `fingerprint_modules()` (cache keys of the visual features);
- `from_pretrained(name)` and `tiny(seed)`: a hub model or folder, or an offline tiny one.

What a family supplies (class attributes, and the methods marked "family hook"): its
transformers classes by name (`model_class_name`; `image_processor_class_name`, a PIL image
processor, so no torchvision), its tiny config and image processor, its chat format
(`prompt_text`, `image_texts`, `end_of_turn`, `answer_text`), how images are processed and
which processed inputs its visual encoder and language model read, the modules that make
visual tokens, and, for multimodal rope, its positions. The README's "Adding a VLM family"
walks through them.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(special_tokens: tuple[str, ...] = ()):
    """Qwen2's real tokenizer plus `special_tokens`, for the tiny models: built once per
    process (that takes seconds) and shared, read-only, by every model that uses it."""
    from emovlm_kd.models.tokenizers import qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    if special_tokens:
        tokenizer.add_tokens(list(special_tokens), special_tokens=True)
    return tokenizer


def nf4_quantization():
    """QLoRA as in the paper: NF4 base weights, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


class VLMAdapter(ABC):
    """One VLM family: chat prompt with an image, visual features, exact label scoring,
    generation, and the modules that are frozen and tuned."""

    family: ClassVar[str]
    # The family's transformers classes by name (imported on first use): the model, and its
    # PIL image processor, which needs no torchvision.
    model_class_name: ClassVar[str]
    image_processor_class_name: ClassVar[str]
    # `model_type` in the family's config.json, and fragments of hub ids that name the
    # family: how a model id or folder that is not a preset finds its adapter.
    model_type: ClassVar[str]
    name_hints: ClassVar[tuple[str, ...]] = ()
    # The placeholder token whose embeddings the visual tokens replace.
    image_token: ClassVar[str]
    # Special tokens the offline tiny tokenizer adds to Qwen2's (which it is built from).
    tiny_special_tokens: ClassVar[tuple[str, ...]] = ()
    # Attention projections of the language model only; the vision tower stays untouched.
    lora_target_modules: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # The language model's attribute inside the family's base model (`model.model.<name>`).
    language_model_name: ClassVar[str] = "language_model"
    # Outputs of the image processor that the visual encoder reads.
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # Inputs besides ids, mask and positions that the language model's forward reads.
    scoring_input_keys: ClassVar[tuple[str, ...]] = ()
    # The text that closes an assistant turn (a special token); a family may make it a property.
    end_of_turn: str

    def __init__(self, model, tokenizer, image_processor, system_prompt: str = SYSTEM_PROMPT):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt

    # ---- family hooks -----------------------------------------------------------------

    @classmethod
    @abstractmethod
    def tiny_config(cls, **overrides):
        """Family hook: a small config; `overrides` may hold `text` / `vision` dicts."""

    @classmethod
    @abstractmethod
    def tiny_image_processor(cls, config, image_pixels: tuple[int, int] | None = None):
        """Family hook: the image processor matching `tiny_config` (`image_pixels`, a
        (min, max) pixel budget, applies where the family resizes to a budget)."""

    @abstractmethod
    def prompt_text(self, prompt: str, image_text: str) -> str:
        """Family hook: the chat up to the answer: system message, a user turn holding the
        image placeholder `image_text` and `prompt`, then the start of the assistant turn."""

    @abstractmethod
    def image_texts(self, processed) -> list[str]:
        """Family hook: each image's expanded placeholder text, from `process_images` output."""

    @abstractmethod
    def vision_modules(self) -> dict[str, torch.nn.Module]:
        """Family hook: the modules that turn pixels into visual tokens (encoder first).

        They are never trained: the head's cached features and the VLM's image tokens must
        stay the ones the visual encoder made when they were computed.
        """

    def answer_text(self, answer: str) -> str:
        """Family hook: an answer as the assistant writes it after `prompt_text`."""
        return answer

    def token_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Family hook: extra inputs derived from the token ids (e.g. modality types)."""
        return {}

    def prompt_positions(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Family hook: rope positions of the prompt tokens, and [B] the position of the
        token after each prompt. Each left-padded prompt counts from 0 as if alone."""
        mask = inputs["attention_mask"]
        return (mask.cumsum(-1) - 1).clamp(min=0), mask.sum(-1)

    def continuation_positions(self, start: torch.Tensor, length: int) -> torch.Tensor:
        """Family hook: [N, L] positions of `length` tokens fed after positions `start` [N]."""
        return start[:, None] + torch.arange(length, device=start.device)

    # ---- building -----------------------------------------------------------------------

    @classmethod
    def model_class(cls):
        """The transformers `...ForConditionalGeneration` class of the family."""
        import transformers

        return getattr(transformers, cls.model_class_name)

    @classmethod
    def image_processor_class(cls):
        import transformers

        return getattr(transformers, cls.image_processor_class_name)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: torch.dtype, quantize_4bit: bool = False):
        """Load a hub model id or a local folder."""
        from transformers import AutoConfig, AutoTokenizer

        from emovlm_kd.errors import UserError

        model_type = AutoConfig.from_pretrained(name_or_path).model_type
        if model_type != cls.model_type:
            # Loading into another family's class would only warn and leave weights random.
            raise UserError(f"{name_or_path} is a {model_type!r} model, not a {cls.model_type!r} one; "
                            "give it by its id or folder alone, or choose a preset of its family.")
        kwargs = {"dtype": dtype}
        if quantize_4bit:
            kwargs["quantization_config"] = nf4_quantization()
        model = cls.model_class().from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = cls.image_processor_class().from_pretrained(name_or_path)
        return cls(model, tokenizer, image_processor)

    @classmethod
    def tiny(cls, seed: int = 0, image_pixels: tuple[int, int] | None = None, **overrides):
        """A small randomly initialised model with a real tokenizer, offline, in seconds.

        The tokenizer is Qwen2's, rebuilt from a registry package, plus the family's own
        special tokens.
        """
        tokenizer = tiny_tokenizer(cls.tiny_special_tokens)
        config = cls.tiny_config(**overrides)
        config.image_token_id = tokenizer.convert_tokens_to_ids(cls.image_token)
        # Seeded in a private generator scope so that building a preset never disturbs
        # the caller's random state, and the same seed always gives the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls.model_class()(config)
        model.eval()
        return cls(model, tokenizer, cls.tiny_image_processor(config, image_pixels))

    @classmethod
    def count_parameters(cls, config) -> int:
        """Parameters of a model with `config`, built on the meta device (no memory, no weights)."""
        with torch.device("meta"):
            model = cls.model_class()(config)
        return sum(parameter.numel() for parameter in model.parameters())

    # ---- what the stages use ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        """Width of the visual tokens the head reads (D)."""
        return self.model.config.get_text_config().hidden_size

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.end_of_turn)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_of_turn_id

    def fingerprint_modules(self) -> dict[str, torch.nn.Module]:
        """Modules whose weights decide the visual features (for cache keys)."""
        return self.vision_modules()

    def lora_targets(self) -> str:
        """peft's `target_modules` regex: the language model's attention projections only."""
        return rf".*{self.language_model_name}.*\.({'|'.join(self.lora_target_modules)})"

    def process_images(self, images: list[Image.Image]):
        """Family hook: the image processor's whole output (tensors and any layout information)."""
        return self.image_processor(images=list(images), return_tensors="pt")

    def encode_images(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Visual-encoder inputs alone (for caching features without a prompt)."""
        processed = self.process_images(images)
        return {key: processed[key] for key in self.image_input_keys}

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer, closed by the end-of-turn token."""
        return self.tokenizer(self.answer_text(answer) + self.end_of_turn, add_special_tokens=False).input_ids

    def scored_answer_ids(self, answers: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of each answer as scored, and how many leading tokens all share."""
        answer_ids = [self.tokenizer(self.answer_text(a), add_special_tokens=False).input_ids for a in answers]
        if len({tuple(ids) for ids in answer_ids}) != len(answers):
            raise ValueError("answers must be distinct")
        shared = 0
        while all(len(ids) > shared + 1 for ids in answer_ids) and len({ids[shared] for ids in answer_ids}) == 1:
            shared += 1
        return answer_ids, shared

    def encode(
        self, images: list[Image.Image], prompts: list[str], answers: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of (image, prompt[, answer]); left-padded.

        With answers, `labels` hold the answer tokens (and the end-of-turn token) and -100
        everywhere else: system, prompt, image and padding tokens carry no loss.
        """
        processed = self.process_images(images)
        image_texts = self.image_texts(processed)
        sequences, label_rows = [], []
        for index, prompt in enumerate(prompts):
            # The tokenizer's own specials (a BOS for Llama-style ones) open the prompt.
            prompt_ids = self.tokenizer(self.prompt_text(prompt, image_texts[index])).input_ids
            answer_ids = self.answer_ids(answers[index]) if answers is not None else []
            sequences.append(prompt_ids + answer_ids)
            label_rows.append([-100] * len(prompt_ids) + answer_ids)
        inputs = self._left_pad(sequences, label_rows if answers is not None else None)
        inputs.update(self.token_inputs(inputs["input_ids"]))
        inputs.update({key: processed[key] for key in self.image_input_keys})
        return inputs

    def _left_pad(self, sequences: list[list[int]], label_rows: list[list[int]] | None):
        # Left padding puts every prompt's last token in the same column, so that answer
        # continuations line up across the batch.
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            if label_rows is not None:
                labels[row, length - len(ids) :] = torch.tensor(label_rows[row])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if label_rows is not None:
            inputs["labels"] = labels
        return inputs

    def _to_device(self, inputs):
        device = self.device
        return {key: value.to(device) for key, value in inputs.items() if key != "labels"}

    def visual_tokens(self, inputs: dict[str, torch.Tensor]) -> VisualTokens:
        """Run the visual encoder once on the images of `encode` or `encode_images` inputs."""
        image_inputs = self._to_device({key: inputs[key] for key in self.image_input_keys})
        output = self.model.model.get_image_features(**image_inputs, return_dict=True)
        return VisualTokens(per_image=list(output.pooler_output), encoder_output=output)

    @torch.no_grad()
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
        inputs = self._to_device(inputs)
        if visual is None:
            visual = self.visual_tokens(inputs)
        batch, num_answers = inputs["input_ids"].shape[0], len(answers)
        # Tokens every answer starts with ("{'", "emotion", "':", " '") are appended to the
        # prompt; the rest of each answer is scored from the prompt's KV cache.
        answer_ids, shared = self.scored_answer_ids(answers)
        prefix = torch.tensor(answer_ids[0][:shared], dtype=torch.long, device=self.device)
        input_ids = torch.cat([inputs["input_ids"], prefix.expand(batch, shared)], dim=1)
        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(input_ids[:, :shared])], dim=1)
        extended = dict(inputs, input_ids=input_ids, attention_mask=attention_mask, **self.token_inputs(input_ids))
        positions, next_position = self.prompt_positions(extended)

        # The shared tokens' log-probability is the same for every answer: needed for exact
        # log-likelihoods, not for the answers' probabilities relative to each other.
        kept = shared + 1 if include_shared else 1
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            mm_encoder_outputs={"image": visual.encoder_output},
            use_cache=True,
            logits_to_keep=kept,
            **{key: extended[key] for key in self.scoring_input_keys},
        )
        # [B, kept, V]: predictions for the shared tokens (if kept), then each answer's first own token.
        logprobs = output.logits.float().log_softmax(-1)
        first_tokens = torch.tensor([ids[shared] for ids in answer_ids], device=self.device)
        scores = logprobs[:, -1, first_tokens]  # [B, K]
        if include_shared:
            shared_targets = prefix.expand(batch, shared)[..., None]
            scores = scores + logprobs[:, :shared].gather(-1, shared_targets).sum((1, 2))[:, None]

        length = max(len(ids) for ids in answer_ids) - shared - 1
        if length == 0:
            return scores
        # Feed each answer's own tokens but the last; they predict the answer's later tokens.
        feed = torch.full((num_answers, length), self.pad_token_id, dtype=torch.long)
        targets = torch.zeros((num_answers, length), dtype=torch.long)
        valid = torch.zeros((num_answers, length), dtype=torch.bool)
        for k, ids in enumerate(answer_ids):
            own = ids[shared:]
            feed[k, : len(own) - 1] = torch.tensor(own[:-1])
            targets[k, : len(own) - 1] = torch.tensor(own[1:])
            valid[k, : len(own) - 1] = True
        feed, targets, valid = (t.to(self.device).repeat(batch, 1) for t in (feed, targets, valid))

        cache = output.cache
        cache.batch_repeat_interleave(num_answers)  # [B*K, ...]: row b*K+k is image b, answer k
        # Right padding of the continuation is harmless: a causal model never lets a real
        # token see the padding after it, and padded positions are not scored.
        hidden = self.model.model(
            input_ids=feed,
            attention_mask=torch.cat([attention_mask.repeat_interleave(num_answers, dim=0), torch.ones_like(feed)], dim=1),
            position_ids=self.continuation_positions(next_position.repeat_interleave(num_answers), length),
            cache=cache,
            use_cache=False,
        ).last_hidden_state  # [B*K, L, H]
        # The vocabulary projection, the costly part, only where a token is scored.
        token_scores = self.model.lm_head(hidden[valid]).float().log_softmax(-1)  # [M, V]
        token_scores = token_scores.gather(-1, targets[valid][:, None])[:, 0]  # [M]
        rows = torch.arange(batch * num_answers, device=self.device)[:, None].expand_as(valid)[valid]
        tail_scores = torch.zeros(batch * num_answers, device=self.device).index_add_(0, rows, token_scores)
        return scores + tail_scores.view(batch, num_answers)

    @torch.no_grad()
    def generate(
        self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 48, visual: VisualTokens | None = None
    ) -> list[str]:
        """Greedy (deterministic) answers to the prompts of `inputs`.

        `visual` is accepted for symmetry with `answer_logprobs`; generation encodes the
        images itself (its first step needs them alongside the prompt).
        """
        inputs = self._to_device(inputs)
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.end_of_turn_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
