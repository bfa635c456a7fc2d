"""Qwen2-VL (the paper's VLM family)."""

from __future__ import annotations

import torch

from emovlm_kd.models.vlm.base import VisualTokens, VLMAdapter

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


class Qwen2VLAdapter(VLMAdapter):
    family = "qwen2_vl"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: torch.dtype, quantize_4bit: bool = False):
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        kwargs = {"dtype": dtype}
        if quantize_4bit:
            from transformers import BitsAndBytesConfig

            # QLoRA as in the paper: NF4 base weights, bf16 compute.
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            )
        model = Qwen2VLForConditionalGeneration.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path)
        return cls(model, tokenizer, image_processor)

    @classmethod
    def tiny_config(cls, **overrides):
        """A Qwen2-VL of ~20M parameters (most in the 151,936-row embedding)."""
        from transformers import Qwen2VLConfig

        text = {
            "vocab_size": 151936,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # head_dim 32 -> 16 rotary frequencies split over (time, height, width).
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        }
        vision = {"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 4, "mlp_ratio": 2}
        text.update(overrides.pop("text", {}))
        vision.update(overrides.pop("vision", {}))
        vision["hidden_size"] = text["hidden_size"]
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **overrides)

    @classmethod
    def tiny(cls, seed: int = 0, image_pixels: tuple[int, int] = (112 * 112, 224 * 224), **overrides):
        from transformers import Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        from emovlm_kd.models.tokenizers import qwen2_tokenizer

        config = cls.tiny_config(**overrides)
        # Seeded in a private generator scope so that building a preset never disturbs
        # the caller's random state, and the same seed always gives the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2VLForConditionalGeneration(config)
        model.eval()
        image_processor = Qwen2VLImageProcessorPil(min_pixels=image_pixels[0], max_pixels=image_pixels[1])
        return cls(model, qwen2_tokenizer(), image_processor)

    # ---- prompts and inputs -------------------------------------------------------------

    def _prompt_text(self, prompt: str, image_tokens: int) -> str:
        return (
            f"{IM_START}system\n{self.system_prompt}{IM_END}\n"
            f"{IM_START}user\n{VISION_START}{IMAGE_PAD * image_tokens}{VISION_END}{prompt}{IM_END}\n"
            f"{IM_START}assistant\n"
        )

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer, closed by the end-of-turn token."""
        return self.tokenizer(answer + IM_END, add_special_tokens=False).input_ids

    def scored_answer_ids(self, answers: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of each answer as scored, and how many leading tokens all share."""
        answer_ids = [self.tokenizer(answer, add_special_tokens=False).input_ids for answer in answers]
        if len({tuple(ids) for ids in answer_ids}) != len(answers):
            raise ValueError("answers must be distinct")
        shared = 0
        while all(len(ids) > shared + 1 for ids in answer_ids) and len({ids[shared] for ids in answer_ids}) == 1:
            shared += 1
        return answer_ids, shared

    def encode_images(self, images):
        processed = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}

    def encode(self, images, prompts, answers=None):
        processed = self.encode_images(images)
        grid = processed["image_grid_thw"]  # [B, 3] (t, h, w) in patches
        merge = self.image_processor.merge_size**2
        sequences, label_rows = [], []
        for index, prompt in enumerate(prompts):
            text = self._prompt_text(prompt, int(grid[index].prod()) // merge)
            prompt_ids = self.tokenizer(text, add_special_tokens=False).input_ids
            answer_ids = self.answer_ids(answers[index]) if answers is not None else []
            sequences.append(prompt_ids + answer_ids)
            label_rows.append([-100] * len(prompt_ids) + answer_ids)
        inputs = self._left_pad(sequences, label_rows if answers is not None else None)
        inputs["pixel_values"] = processed["pixel_values"]
        inputs["image_grid_thw"] = grid
        return inputs

    def _left_pad(self, sequences: list[list[int]], label_rows: list[list[int]] | None):
        # Left padding puts every prompt's last token in the same column, so that answer
        # continuations line up across the batch.
        length = max(len(ids) for ids in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
            if label_rows is not None:
                labels[row, length - len(ids) :] = torch.tensor(label_rows[row])
        image_token_id = self.model.config.image_token_id
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            # 1 marks image tokens: multimodal rope gives them 2-D positions.
            "mm_token_type_ids": (input_ids == image_token_id).int(),
        }
        if label_rows is not None:
            inputs["labels"] = labels
        return inputs

    def _to_device(self, inputs):
        device = self.device
        return {key: value.to(device) for key, value in inputs.items()}

    # ---- visual encoder ---------------------------------------------------------------

    def visual_tokens(self, inputs):
        inputs = self._to_device(inputs)
        output = self.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
        return VisualTokens(per_image=list(output.pooler_output), encoder_output=output)

    # ---- exact answer scoring -----------------------------------------------------------

    def _next_positions(self, inputs) -> torch.Tensor:
        # [B] rope position of the token after each prompt: multimodal rope makes it
        # differ from the token count, so it is read off the model's own rope index.
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        return positions, positions.amax(dim=(0, 2)) + 1

    @torch.no_grad()
    def answer_logprobs(self, inputs, answers, visual=None, include_shared=True):
        inputs = self._to_device({k: v for k, v in inputs.items() if k != "labels"})
        if visual is None:
            visual = self.visual_tokens(inputs)
        batch, num_answers = inputs["input_ids"].shape[0], len(answers)
        # Tokens every answer starts with ("{'", "emotion", "':", " '") are appended to the
        # prompt; the rest of each answer is scored from the prompt's KV cache.
        answer_ids, shared = self.scored_answer_ids(answers)
        prefix = torch.tensor(answer_ids[0][:shared], dtype=torch.long, device=self.device)
        input_ids = torch.cat([inputs["input_ids"], prefix.expand(batch, shared)], dim=1)
        attention_mask = torch.cat([inputs["attention_mask"], torch.ones_like(input_ids[:, :shared])], dim=1)
        mm_types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(input_ids[:, :shared])], dim=1)
        extended = dict(inputs, input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_types)
        positions, next_position = self._next_positions(extended)

        # The shared tokens' log-probability is the same for every answer: needed for exact
        # log-likelihoods, not for the answers' probabilities relative to each other.
        kept = shared + 1 if include_shared else 1
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            mm_token_type_ids=mm_types,
            image_grid_thw=inputs["image_grid_thw"],
            mm_encoder_outputs={"image": visual.encoder_output},
            use_cache=True,
            logits_to_keep=kept,
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
        feed = torch.full((num_answers, length), self.tokenizer.pad_token_id, dtype=torch.long)
        targets = torch.zeros((num_answers, length), dtype=torch.long)
        valid = torch.zeros((num_answers, length), dtype=torch.bool)
        for k, ids in enumerate(answer_ids):
            own = ids[shared:]
            feed[k, : len(own) - 1] = torch.tensor(own[:-1])
            targets[k, : len(own) - 1] = torch.tensor(own[1:])
            valid[k, : len(own) - 1] = True
        feed, targets, valid = (t.to(self.device).repeat(batch, 1) for t in (feed, targets, valid))

        cache = output.past_key_values
        cache.batch_repeat_interleave(num_answers)  # [B*K, ...]: row b*K+k is image b, answer k
        steps = torch.arange(length, device=self.device)
        # Right padding of the continuation is harmless: a causal model never lets a real
        # token see the padding after it, and padded positions are not scored.
        position_ids = (next_position.repeat_interleave(num_answers)[:, None] + steps).expand(3, -1, -1)
        hidden = self.model.model(
            input_ids=feed,
            attention_mask=torch.cat([attention_mask.repeat_interleave(num_answers, dim=0), torch.ones_like(feed)], dim=1),
            position_ids=position_ids,
            cache=cache,
            use_cache=False,
        ).last_hidden_state  # [B*K, L, H]
        # The vocabulary projection, the costly part, only where a token is scored.
        token_scores = self.model.lm_head(hidden[valid]).float().log_softmax(-1)  # [M, V]
        token_scores = token_scores.gather(-1, targets[valid][:, None])[:, 0]  # [M]
        rows = torch.arange(batch * num_answers, device=self.device)[:, None].expand_as(valid)[valid]
        tail_scores = torch.zeros(batch * num_answers, device=self.device).index_add_(0, rows, token_scores)
        return scores + tail_scores.view(batch, num_answers)

    # ---- generation -------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, inputs, max_new_tokens=48, visual=None):
        inputs = self._to_device({k: v for k, v in inputs.items() if k != "labels"})
        output = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.convert_tokens_to_ids(IM_END),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
