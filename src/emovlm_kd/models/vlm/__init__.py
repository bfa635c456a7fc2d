"""Vision-language model families behind one adapter interface (see `base.VLMAdapter`).

A new family: one `VLMAdapter` subclass in a module here, added to `ADAPTERS`.
"""

from __future__ import annotations

from emovlm_kd.models.vlm.base import VisualTokens, VLMAdapter
from emovlm_kd.models.vlm.idefics3 import Idefics3Adapter, SmolVLMAdapter
from emovlm_kd.models.vlm.llava import LlavaAdapter, LlavaOnevisionAdapter
from emovlm_kd.models.vlm.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    adapter.family: adapter
    for adapter in (
        Qwen2VLAdapter,
        Qwen2_5_VLAdapter,
        Qwen3VLAdapter,
        LlavaAdapter,
        LlavaOnevisionAdapter,
        SmolVLMAdapter,
        Idefics3Adapter,
    )
}


def get_adapter_class(family: str) -> type[VLMAdapter]:
    """The adapter class of a VLM family by name."""
    from emovlm_kd.errors import UserError

    if family not in ADAPTERS:
        raise UserError(f"unknown VLM family {family!r}; known families: {', '.join(ADAPTERS)}.")
    return ADAPTERS[family]


__all__ = ["ADAPTERS", "VLMAdapter", "VisualTokens", "get_adapter_class"]
