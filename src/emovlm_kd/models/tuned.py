"""The instruction-tuned VLM as scoring, distillation and inference load it.

How it was tuned decides how it loads: a QLoRA adapter was trained against the 4-bit base,
so the base is loaded in 4 bits again and the adapter kept unmerged (merging into a bf16
base would score another model); LoRA and full tuning load the base as it was and merge the
adapter for speed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch

from emovlm_kd.errors import UserError
from emovlm_kd.models.registry import ModelPreset, load_vlm

METHODS = ("auto", "qlora", "lora", "full")


def resolve_method(method: str, preset_method: str) -> str:
    """The tuning method `method` (instruct.method) stands for with this preset on this machine."""
    if method not in METHODS:
        raise UserError(f"unknown instruct.method {method!r}; choose one of: {', '.join(METHODS)}.")
    if method == "auto":
        method = preset_method
    has_qlora = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if method == "auto":
        method = "qlora" if has_qlora else "lora"
    if method == "qlora" and not has_qlora:
        raise UserError("instruct.method=qlora needs a CUDA GPU and bitsandbytes; use instruct.method=lora.")
    return method


def tuned_loading(method: str | None) -> dict[str, bool]:
    """How to load a VLM tuned with `method` so that it is the model that was tuned."""
    return {"quantize_4bit": method == "qlora", "merge": method != "qlora"}


def load_tuned_vlm(preset: ModelPreset, instruct_dir: Path, method: str | None, seed: int,
                   dtype: torch.dtype | None = None):
    """The preset's VLM with the tuning saved in `instruct_dir` applied (see `tuned_loading`),
    in `dtype` where given (a 4-bit model keeps its own)."""
    loading = tuned_loading(method)
    if loading["quantize_4bit"]:
        resolve_method("qlora", preset.instruct_method)  # one sentence where no GPU or bitsandbytes
    # An offline preset's base weights come from its seed: drawn as in training (default
    # dtype) and cast afterwards, they are the trained model's whatever torch's initialisers
    # would draw in another dtype. A hub model's stored weights load in `dtype` directly.
    offline = preset.vlm_built_in_code
    adapter = load_vlm(preset, seed=seed, quantize_4bit=loading["quantize_4bit"], dtype=None if offline else dtype)
    if (instruct_dir / "adapter").is_dir():
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(adapter.model, instruct_dir / "adapter")
        # Unmerged: the base model with the LoRA layers injected in place (the family's
        # attribute paths stay as they are).
        adapter.model = tuned.merge_and_unload() if loading["merge"] else tuned.get_base_model()
    else:
        adapter.model = type(adapter.model).from_pretrained(instruct_dir / "model", dtype=adapter.model.dtype,
                                                            use_safetensors=True)
    if dtype is not None and not loading["quantize_4bit"]:
        adapter.model.to(dtype)
    adapter.model.eval()
    return adapter


class TunedVLM:
    """A tuned VLM loaded on the first call: code that may find everything in the caches
    (evaluation, ablations) then never loads a 7B model for nothing."""

    def __init__(self, load: Callable[[], object]):
        self._load = load
        self._adapter = None

    def __call__(self):
        if self._adapter is None:
            self._adapter = self._load()
        return self._adapter
