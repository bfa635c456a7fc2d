"""The interface every VLM family implements; the stages only ever talk to this.

Adding a family means writing one `VLMAdapter` subclass in a module of this package and
listing it in `emovlm_kd.models.vlm.ADAPTERS` (plus, if wanted, presets in
`emovlm_kd.models.registry`); no stage changes. An adapter owns the model, its tokenizer
and its image processor.

What the stages use (written once, here):
- `encode_images(images)` / `encode(images, prompts, answers=None)`: model inputs, left-padded,
  with answer-only `labels` when answers are given;
- `encode_packed(images, prompts_per_image, answers_per_image)`: training inputs with each
  image's tasks in one sequence, the image once, each task seeing only itself;
- `visual_tokens(inputs)` -> `VisualTokens`: one visual-encoder pass; `.pooled()` is the head's input;
- `answer_logprobs(inputs, answers, visual=None, include_shared=True)` and `scored_answer_ids`:
  exact label scoring, the prompt and image encoded once for all K answers;
- `token_counts(inputs)`: how many text and visual tokens each encoded sequence holds;
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

import contextvars
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
    `encoder_tokens[i]` is [tokens_i, D_enc]: the visual encoder's own tokens, where a family
    sends them through a separate connector (LLaVA's projector) before the language model;
    None where the encoder's output is `per_image` itself (Qwen2-VL's merger is its last part).
    """

    per_image: list[torch.Tensor]
    encoder_output: object
    encoder_tokens: list[torch.Tensor] | None = None

    def pooled(self) -> torch.Tensor:
        # [B, D_enc or D]: mean over each image's visual-encoder tokens, the head's input.
        tokens = self.per_image if self.encoder_tokens is None else self.encoder_tokens
        return torch.stack([image.float().mean(dim=0) for image in tokens])


class _PackedAnswers:
    """Where each answer's tokens sit when all K answers follow one prompt side by side.

    After the prompt come the `shared` tokens every answer starts with, then, for each
    answer k, its own tokens but the last (`feed`), at `offsets` 0, 1, ... from the position
    after the shared ones. The scored positions are the last `kept` ones of the sequence:
    the shared tokens' predictions (optionally), the last shared token's (each answer's
    first own token), then each fed token's (the next token of its answer).
    """

    def __init__(self, answer_ids: list[list[int]], shared: int, device: torch.device):
        own = [ids[shared:] for ids in answer_ids]
        self.prefix = torch.tensor(answer_ids[0][:shared], dtype=torch.long, device=device)
        self.feed = torch.tensor([t for ids in own for t in ids[:-1]], dtype=torch.long, device=device)
        self.offsets = torch.tensor([i for ids in own for i in range(len(ids) - 1)], dtype=torch.long, device=device)
        self.owner = torch.tensor([k for k, ids in enumerate(own) for _ in ids[:-1]], dtype=torch.long, device=device)
        self.first = torch.tensor([ids[0] for ids in own], dtype=torch.long, device=device)
        self.next = torch.tensor([t for ids in own for t in ids[1:]], dtype=torch.long, device=device)

    def attention(self, prompt_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, Q, Q] True where a query may attend a key: causal over the (left-padded)
        prompt, and each fed token sees the prompt and the earlier tokens of its own answer."""
        batch = prompt_mask.shape[0]
        # The prompt is block 0 (its padding -1), answer k block k + 1.
        return block_attention(torch.cat([prompt_mask.long() - 1, (self.owner + 1).expand(batch, -1)], dim=1))


def block_attention(blocks: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] True where a query may attend a key, for sequences of blocks `blocks` [B, L]:
    block 0 is shared, -1 marks padding. Causal; each token sees the shared tokens and its own
    block's, so each block is computed as if it alone followed the shared ones."""
    length = blocks.shape[1]
    query, key = blocks[:, :, None], blocks[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=blocks.device).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))  # padding is never attended to ...
    # ... except by itself: a query with nothing to attend would give NaNs.
    return (allowed | torch.eye(length, dtype=torch.bool, device=blocks.device))[:, None]


# While exact label scoring runs on this thread: how many last positions it reads.
_SCORED_TAIL: contextvars.ContextVar[int | None] = contextvars.ContextVar("scored_tail", default=None)
# The children of a plain pre-norm decoder layer (Qwen2, Llama and the like).
_PRE_NORM_LAYER = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}


def _last_layer_forward(layer: torch.nn.Module, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """The language model's last decoder layer. While label scoring runs, only the scored
    tail leaves it: attention still reads every position (its keys and values), but the
    residual and the MLP go on for the tail only, the rest being discarded anyway.
    Otherwise the layer's own forward."""
    tail = _SCORED_TAIL.get()
    if tail is None:
        return type(layer).forward(layer, hidden_states, **kwargs)
    attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
    hidden_states = (hidden_states + attended)[:, -tail:]  # [B, L, D] -> [B, tail, D]
    return hidden_states + layer.mlp(layer.post_attention_layernorm(hidden_states))


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(special_tokens: tuple[str, ...] = ()):
    """Qwen2's real tokenizer plus `special_tokens`, for the tiny models: built once per
    process (that takes seconds) and shared, read-only, by every model that uses it."""
    from emovlm_kd.models.tokenizers import qwen2_tokenizer

    tokenizer = qwen2_tokenizer()
    if special_tokens:
        tokenizer.add_tokens(list(special_tokens), special_tokens=True)
    return tokenizer


def nf4_quantization(skip_modules: list[str]):
    """QLoRA as in the paper: NF4 base weights, bf16 compute; `skip_modules` stay unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=skip_modules,
    )


def attention_without_cudnn() -> None:
    """On a GPU, keep torch's attention off its cuDNN backend (flash and memory-efficient
    attention remain). cuDNN builds a graph for every new shape of query, key and mask, and
    our shapes change with almost every batch: packed instruction sequences, scored batches
    of mixed image sizes. On an H200 with the bench-7b preset, the first batch of 8 images at
    new sizes took 1.6 s with cuDNN (2.4 s the first time) and 0.27 s without; batches after
    it took 0.25 s either way. A process-wide setting of torch, so it is set where a VLM is made."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


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
        if tokenizer.pad_token is None:  # a few chat tokenizers have none: pad with end-of-turn
            tokenizer.pad_token = self.end_of_turn
        attention_without_cudnn()

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

    def continuation_positions(self, start: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Family hook: [B, L] positions of text tokens `offsets` [L] after positions `start` [B]."""
        return start[:, None] + offsets[None, :]

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

        model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False).model_type
        if model_type != cls.model_type:
            # Loading into another family's class would only warn and leave weights random.
            raise UserError(f"{name_or_path} is a {model_type!r} model, not a {cls.model_type!r} one; "
                            "give it by its id or folder alone, or choose a preset of its family.")
        kwargs = {"dtype": dtype}
        if quantize_4bit:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
            kwargs["quantization_config"] = nf4_quantization(cls.quantization_skip_modules(config))
        model = cls.model_class().from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        image_processor = cls.image_processor_class().from_pretrained(name_or_path)
        return cls(model, tokenizer, image_processor)

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        image_pixels: tuple[int, int] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **overrides,
    ):
        """A randomly initialised model with a real tokenizer, offline, in seconds.

        The tokenizer is Qwen2's, rebuilt from a registry package, plus the family's own
        special tokens. `device` and `dtype` build the weights where and how they will run
        (a 7B-sized benchmark model is built on the GPU in bf16, never in CPU memory).
        """
        tokenizer = tiny_tokenizer(cls.tiny_special_tokens)
        config = cls.tiny_config(**overrides)
        config.image_token_id = tokenizer.convert_tokens_to_ids(cls.image_token)
        previous_dtype = torch.get_default_dtype()
        # Seeded in a private generator scope so that building a preset never disturbs
        # the caller's random state, and the same seed always gives the same weights.
        with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
            torch.manual_seed(seed)
            torch.set_default_dtype(dtype or torch.float32)
            try:
                model = cls.model_class()(config)
            finally:
                torch.set_default_dtype(previous_dtype)
        model.eval()
        return cls(model, tokenizer, cls.tiny_image_processor(config, image_pixels))

    @classmethod
    def quantization_skip_modules(cls, config) -> list[str]:
        """Module names 4-bit loading must leave alone: the vision side (whose visual tokens the
        head reads and the tuned model was trained on) and the output projection.

        Built on the meta device, so the names come from the family's own `vision_modules`.
        """
        model = cls.meta_model(config)
        shell = cls.__new__(cls)  # an adapter around the meta model, only to ask it for modules
        shell.model = model
        names = {id(module): name for name, module in model.named_modules()}
        vision = [names[id(module)] for module in shell.vision_modules().values() if id(module) in names]
        return [*vision, "lm_head"]

    @classmethod
    def meta_model(cls, config):
        """The family's model with `config` on the meta device: every shape, no memory, no weights."""
        with torch.device("meta"):
            return cls.model_class()(config)

    # ---- what the stages use ------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        """Width of the language model, and of the visual tokens it reads (D)."""
        return self.model.config.get_text_config().hidden_size

    @property
    def pooled_width(self) -> int:
        """Width of `VisualTokens.pooled()`, the head's input."""
        return self.hidden_size

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.end_of_turn)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

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
        """Token ids of each answer as scored, and how many leading tokens all share.

        A label's score is the log-probability that the model writes its answer up to the
        closing tokens every answer ends with (`'}`): the probability of the label itself,
        as multiple-choice scoring usually defines it. The closing tokens are scored too
        where one answer's tokens would otherwise begin another's (labels 'sad' and
        'sadness'), since only they tell such answers apart.
        """
        answer_ids = [self.tokenizer(self.answer_text(a), add_special_tokens=False).input_ids for a in answers]
        if len({tuple(ids) for ids in answer_ids}) != len(answers):
            raise ValueError("answers must be distinct")
        closing = 0
        while all(len(ids) > closing + 1 for ids in answer_ids) and len({ids[-1 - closing] for ids in answer_ids}) == 1:
            closing += 1
        if closing:
            labels_only = [ids[:-closing] for ids in answer_ids]
            if not any(a != b and b[: len(a)] == a for a in labels_only for b in labels_only):
                answer_ids = labels_only
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
        rows = [self._sequence(image_texts[index], prompt, answers[index] if answers is not None else None)
                for index, prompt in enumerate(prompts)]
        inputs = self._left_pad([ids for ids, _ in rows], [labels for _, labels in rows] if answers is not None else None)
        inputs.update(self.token_inputs(inputs["input_ids"]))
        inputs.update({key: processed[key] for key in self.image_input_keys})
        return inputs

    def encode_packed(
        self, images: list[Image.Image], prompts_per_image: list[list[str]], answers_per_image: list[list[str]]
    ) -> dict[str, torch.Tensor]:
        """Training inputs holding each image's tasks (prompt and answer each) in one sequence; left-padded.

        The tasks of an image, tokenized as `encode` tokenizes them one by one, begin alike
        (system message, image, chat markup): that shared opening comes once, followed by each
        task's remaining tokens as a block of their own. `attention_mask` [B, 1, L, L] lets a
        block see the opening and itself only, and every token keeps the position (multimodal
        rope included) it has in its own sequence, so each task's loss and gradients are those
        of `encode`'s sequence while the image and the system prompt are encoded once.
        `labels` hold the answer tokens only; each block starts with a prompt token, so no
        target is predicted across blocks.
        """
        from emovlm_kd.errors import UserError

        processed = self.process_images(images)
        image_texts = self.image_texts(processed)
        owners = [image for image, prompts in enumerate(prompts_per_image) for _ in prompts]
        rows = [self._sequence(image_texts[image], prompt, answer)
                for image, (prompts, answers) in enumerate(zip(prompts_per_image, answers_per_image, strict=True))
                for prompt, answer in zip(prompts, answers, strict=True)]
        # The N tasks as `encode` batches them, each its own sequence; their positions come
        # from the family's hooks and are gathered, with ids and labels, into the packed rows.
        separate = self._left_pad([ids for ids, _ in rows], [labels for _, labels in rows])
        separate.update(self.token_inputs(separate["input_ids"]))
        # Image inputs the language model reads besides pixels have one row per image (Qwen's grids).
        separate.update({key: processed[key][owners] for key in self.image_input_keys if key in self.scoring_input_keys})
        positions, _ = self.prompt_positions(separate)  # [..., N, T]
        width = separate["input_ids"].shape[1]

        # Per image: where each packed token comes from (task, column of `separate`), and its block.
        sources, blocks = [], []
        first = 0
        for prompts in prompts_per_image:
            members = range(first, first + len(prompts))
            first += len(prompts)
            shared = self._shared_length([rows[n] for n in members])
            start = {n: width - len(rows[n][0]) for n in members}  # each task's first column, after its padding
            # The opening is read off the first task: every task has its tokens, at its positions.
            opening = positions[..., members[0], start[members[0]] : start[members[0]] + shared]
            assert all(torch.equal(positions[..., n, start[n] : start[n] + shared], opening) for n in members)
            source = [(members[0], start[members[0]] + column) for column in range(shared)]
            block = [0] * shared
            for number, n in enumerate(members, start=1):
                source += [(n, start[n] + column) for column in range(shared, len(rows[n][0]))]
                block += [number] * (len(rows[n][0]) - shared)
            sources.append(source)
            blocks.append(block)
        length = max(map(len, blocks))
        # [B, L] each, left-padded; padding reads task 0's first column (its ids and labels are
        # replaced, its positions never attended).
        task = torch.tensor([[0] * (length - len(source)) + [n for n, _ in source] for source in sources])
        column = torch.tensor([[0] * (length - len(source)) + [c for _, c in source] for source in sources])
        block = torch.tensor([[-1] * (length - len(row)) + row for row in blocks])
        real = block >= 0
        input_ids = separate["input_ids"][task, column].masked_fill(~real, self.pad_token_id)
        labels = separate["labels"][task, column].masked_fill(~real, -100)
        if (input_ids[block > 0] == self.image_token_id).any():
            raise UserError(f"the tasks of an image cannot be packed for {self.family}, whose chat puts the image "
                            "after the task's prompt; set instruct.pack_tasks=false.")
        # HF's loss predicts each label from the token before it: a block's first token must be no target.
        opens = block[:, 1:] != block[:, :-1]
        assert (labels[:, 1:][opens] == -100).all()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": self._attention_bias(block_attention(block)),
            "position_ids": positions[..., task, column],
            "labels": labels,
        }
        inputs.update(self.token_inputs(input_ids))
        inputs.update({key: processed[key] for key in self.image_input_keys})
        return inputs

    def _sequence(self, image_text: str, prompt: str, answer: str | None) -> tuple[list[int], list[int]]:
        """Token ids of one chat, prompt then answer (where given), and its labels: the answer's
        tokens, -100 before them."""
        # The tokenizer's own specials (a BOS for Llama-style ones) open the prompt.
        prompt_ids = self.tokenizer(self.prompt_text(prompt, image_text)).input_ids
        answer_ids = self.answer_ids(answer) if answer is not None else []
        return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids

    @staticmethod
    def _shared_length(rows: list[tuple[list[int], list[int]]]) -> int:
        """How many leading tokens the sequences `rows` (ids, labels) share, stopping short of
        the end of the shortest prompt: every block then starts with a prompt token."""
        prompt_lengths = [next(i for i, label in enumerate(labels) if label != -100) for _, labels in rows]
        shared = 0
        while shared < min(prompt_lengths) - 1 and len({ids[shared] for ids, _ in rows}) == 1:
            shared += 1
        return shared

    def _left_pad(self, sequences: list[list[int]], label_rows: list[list[int]] | None):
        # The tokenizer's own padding, on the left: every prompt's last token then sits in
        # the same column, so that the answers scored after it line up across the batch.
        inputs = dict(self.tokenizer.pad({"input_ids": sequences}, padding=True, padding_side="left",
                                         return_attention_mask=True, return_tensors="pt"))
        if label_rows is not None:
            length = inputs["input_ids"].shape[1]
            inputs["labels"] = torch.tensor([[-100] * (length - len(row)) + row for row in label_rows])
        return inputs

    def token_counts(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] text tokens and [B] visual tokens of each sequence of `encode` inputs, padding left out.

        Visual tokens are the image placeholders whose embeddings the visual encoder's tokens
        replace (every family spells each one as `image_token`); everything else is read
        from the vocabulary, chat markup, image delimiters and tile tags included, and is text.
        """
        real = inputs["attention_mask"].bool()
        visual = ((inputs["input_ids"] == self.image_token_id) & real).sum(-1)
        return real.sum(-1) - visual, visual

    def to_device(self, inputs):
        """Model inputs on the model's device (`labels` left out)."""
        device = self.device
        return {key: value.to(device) for key, value in inputs.items() if key != "labels"}

    def visual_tokens(self, inputs: dict[str, torch.Tensor]) -> VisualTokens:
        """Run the visual encoder once on the images of `encode` or `encode_images` inputs."""
        image_inputs = self.to_device({key: inputs[key] for key in self.image_input_keys})
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
        """[B, K] log-likelihood of each answer's scored tokens (`scored_answer_ids`: its
        label's tokens) given each prompt.

        One forward pass per batch: each prompt is followed by the tokens all answers
        start with, then by every answer's own tokens side by side, and an attention mask
        lets each answer see the prompt and itself only (as if it were alone). So the image
        and prompt are encoded once for all K answers, no KV cache is copied, and the
        vocabulary is projected only at the scored positions. With `include_shared=False`
        the shared opening is left out of the sum: a per-image constant, so a softmax over
        the K answers is unchanged, for less work.
        """
        if visual is None:
            inputs = self.to_device(inputs)
            visual = self.visual_tokens(inputs)
        else:  # the pixels were encoded already: not copied to the device again
            pixels_only = set(self.image_input_keys) - set(self.scoring_input_keys)
            inputs = self.to_device({key: value for key, value in inputs.items() if key not in pixels_only})
        batch = inputs["input_ids"].shape[0]
        answer_ids, shared = self.scored_answer_ids(answers)
        plan = _PackedAnswers(answer_ids, shared, self.device)

        # Prompt, then the shared opening ("{'", "emotion", "':", " '"): ordinary tokens.
        prefix = plan.prefix.expand(batch, shared)
        prompt_ids = torch.cat([inputs["input_ids"], prefix], dim=1)
        prompt_mask = torch.cat([inputs["attention_mask"], torch.ones_like(prefix)], dim=1)
        prompt = dict(inputs, input_ids=prompt_ids, attention_mask=prompt_mask, **self.token_inputs(prompt_ids))
        positions, next_position = self.prompt_positions(prompt)
        # Then each answer's own tokens but its last (they predict the answer's later tokens),
        # positioned as if each answer alone followed the prompt.
        input_ids = torch.cat([prompt_ids, plan.feed.expand(batch, -1)], dim=1)
        positions = torch.cat([positions, self.continuation_positions(next_position, plan.offsets)], dim=-1)
        kept = (shared if include_shared else 0) + 1 + plan.feed.numel()
        allowed = plan.attention(prompt_mask)  # [B, 1, L, L]
        starts = inputs["attention_mask"].shape[1] - inputs["attention_mask"].sum(-1)  # [B] left padding
        input_ids, positions, allowed, cache = self._opening_encoded_once(input_ids, positions, allowed, starts)
        full = dict(inputs, **self.token_inputs(input_ids))
        scored_tail = _SCORED_TAIL.set(kept if self._tail_only_last_layer() else None)
        try:
            output = self.model(
                input_ids=input_ids,
                attention_mask=self._attention_bias(allowed),
                position_ids=positions,
                mm_encoder_outputs={"image": visual.encoder_output},
                cache=cache,
                use_cache=cache is not None,
                logits_to_keep=kept,
                **{key: full[key] for key in self.scoring_input_keys},
            )
        finally:
            _SCORED_TAIL.reset(scored_tail)
        # [B, kept, V]: log-probabilities of the scored tokens only (log-softmax by logsumexp).
        logits = output.logits.float()
        normaliser = logits.logsumexp(-1)  # [B, kept]
        first = kept - 1 - plan.feed.numel()  # the position that predicts each answer's first own token
        scores = logits[:, first, plan.first] - normaliser[:, first, None]  # [B, K]
        if plan.feed.numel():
            later = logits[:, first + 1 :].gather(-1, plan.next.expand(batch, -1)[..., None])[..., 0]
            scores = scores.index_add(1, plan.owner, later - normaliser[:, first + 1 :])
        if include_shared:
            opening = logits[:, :first].gather(-1, prefix[..., None])[..., 0] - normaliser[:, :first]
            scores = scores + opening.sum(-1, keepdim=True)
        return scores

    def _opening_encoded_once(self, input_ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                              starts: torch.Tensor):
        """The opening every sequence of a batch shares (the system prompt, up to the image)
        run through the language model once, not once per sequence: its keys and values go
        into a cache repeated for each sequence, and the sequences, their positions ([..., B, L])
        and `allowed` ([B, 1, L, L]) lose its columns. Causal attention makes this exact: the
        opening sees nothing after it. Returns them with the cache (None: nothing shared).
        On the `bench` preset 24 of a prompt's ~330 tokens, at batch 8 about 3% of a prediction."""
        batch, length = input_ids.shape
        if batch < 2:
            return input_ids, positions, allowed, None
        rows = [ids[start:].tolist() for ids, start in zip(input_ids, starts.tolist())]
        # Text only: an image token, or the last token (it predicts), ends the opening.
        limit = min(row.index(self.image_token_id) if self.image_token_id in row else len(row) - 1 for row in rows)
        opening = 0
        while opening < limit and all(row[opening] == rows[0][opening] for row in rows):
            opening += 1
        if opening == 0:
            return input_ids, positions, allowed, None
        columns = torch.arange(length, device=input_ids.device)
        inside = (columns >= starts[:, None]) & (columns < starts[:, None] + opening)  # [B, L]
        # [B, opening] and [B, L - opening]: each row's opening columns, and the others in order.
        opening_columns = columns.expand(batch, -1)[inside].view(batch, opening)
        rest = columns.expand(batch, -1)[~inside].view(batch, length - opening)
        opening_positions = positions[..., 0:1, :].gather(-1, opening_columns[0:1].expand_as(positions[..., 0:1, :opening]))
        same = positions.gather(-1, opening_columns.expand_as(positions[..., :opening]))
        if not torch.equal(same, opening_positions.expand_as(same)):
            return input_ids, positions, allowed, None
        from transformers import DynamicCache

        language_model = getattr(self.model.model, self.language_model_name)
        cache = DynamicCache(config=self.model.config.get_text_config())
        language_model(input_ids=input_ids[0:1].gather(1, opening_columns[0:1]), position_ids=opening_positions,
                       cache=cache, use_cache=True)
        cache.batch_repeat_interleave(batch)
        keys = torch.cat([opening_columns, rest], dim=1)  # the cache's columns come first
        allowed = allowed.gather(2, rest[:, None, :, None].expand(-1, 1, -1, length))
        allowed = allowed.gather(3, keys[:, None, None, :].expand(-1, 1, length - opening, -1))
        return (input_ids.gather(1, rest), positions.gather(-1, rest.expand_as(positions[..., opening:])), allowed,
                cache)

    def _tail_only_last_layer(self) -> bool:
        """Whether the last decoder layer may stop at the scored positions; it is set up for
        that on first use. It may where it is a plain pre-norm layer (attention, then MLP)
        and nothing after it reads other positions (`last_layer_feeds_only_the_head`). On
        the `bench` preset's 8 layers that is about 7% of a prediction."""
        layer = getattr(self.model.model, self.language_model_name).layers[-1]
        if {name for name, _ in layer.named_children()} != _PRE_NORM_LAYER or not self.last_layer_feeds_only_the_head():
            return False
        if not isinstance(vars(layer).get("forward"), functools.partial):
            layer.forward = functools.partial(_last_layer_forward, layer)
        return True

    def last_layer_feeds_only_the_head(self) -> bool:
        """Family hook: False where the language model adds to the hidden states after its
        last layer, at positions other than the last (Qwen3-VL's deepstack features)."""
        return True

    def _attention_bias(self, allowed: torch.Tensor) -> torch.Tensor:
        """A boolean [B, 1, Q, Q] mask in the form the model's attention takes it."""
        implementation = self.model.config.get_text_config()._attn_implementation or "sdpa"
        if implementation == "sdpa":
            return allowed
        if implementation == "eager":
            dtype = self.model.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        from emovlm_kd.errors import UserError

        raise UserError(f"exact label scoring and packed tasks need 'sdpa' or 'eager' attention, not "
                        f"{implementation!r}; load the model with attn_implementation='sdpa'.")

    @torch.no_grad()
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int = 48) -> list[str]:
        """Greedy (deterministic) answers to the prompts of `inputs`."""
        inputs = self.to_device(inputs)
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.end_of_turn_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
