"""Vision-language model families behind one adapter interface (see `base.VLMAdapter`)."""

from emovlm_kd.models.vlm.base import VLMAdapter, get_adapter_class

__all__ = ["VLMAdapter", "get_adapter_class"]
