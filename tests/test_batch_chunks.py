"""A large batch on a CPU runs in equal chunks sized to the cache, with the predictions the
whole batch gets."""

import pytest
import torch
from PIL import Image

from emovlm_kd.labels import EMOTION6
from emovlm_kd.models.configs import GateConfig, HeadConfig
from emovlm_kd.models.gate import Gate
from emovlm_kd.models.head import DistillHead
from emovlm_kd.pipeline import EmoVLMKD, last_level_cache_bytes


@pytest.fixture(scope="module")
def pipeline(tiny_adapter):
    torch.manual_seed(0)
    head = DistillHead(HeadConfig(input_dim=tiny_adapter.pooled_width, num_labels=len(EMOTION6)))
    return EmoVLMKD(tiny_adapter, head, Gate(GateConfig(num_labels=len(EMOTION6))), EMOTION6)


def images() -> list[Image.Image]:
    # Different sizes, so each chunk pads to its own length.
    sizes = [(224, 224), (160, 96), (64, 300), (200, 120), (96, 96)]
    return [Image.linear_gradient("L").convert("RGB").resize(size).rotate(30 * i) for i, size in enumerate(sizes)]


def cache_for_two(pipeline, largest: Image.Image, monkeypatch) -> int:
    """Give the pipeline a cache that holds the MLP activations of two images of the largest
    one's length (in tokens, which it returns): chunks of 2."""
    tokens = pipeline.adapter.encode([largest], [pipeline.prompt])["input_ids"].shape[1]
    width = pipeline.adapter.model.config.get_text_config().intermediate_size
    monkeypatch.setattr(pipeline, "cpu_cache_bytes", 2 * 3 * tokens * width * 4 + 1)
    return tokens


def test_chunks_predict_what_the_whole_batch_predicts(pipeline, monkeypatch):
    batch = images()
    monkeypatch.setattr(pipeline, "cpu_cache_bytes", None)
    assert pipeline.chunk_size(batch) == len(batch)
    whole = pipeline.predict_images(batch)

    cache_for_two(pipeline, batch[0], monkeypatch)
    assert pipeline.chunk_size(batch) == 2
    adapter = pipeline.adapter
    language_model = getattr(adapter.model.model, adapter.language_model_name)
    calls = []
    # The passes with images (a chunk's shared opening runs alone before, on its token ids).
    hook = language_model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["inputs_embeds"].shape[0]) if "inputs_embeds" in kwargs else None,
        with_kwargs=True)
    try:
        chunked = pipeline.predict_images(batch)
    finally:
        hook.remove()
    assert calls == [1, 2, 2]  # equal chunks: no single image left to run alone at the end
    for alone, together in zip(chunked, whole):
        assert alone.label == together.label
        for part in ("probs", "vlm", "head"):
            assert getattr(alone, part) == pytest.approx(getattr(together, part), abs=1e-5)


def test_the_cache_size_is_read_from_the_system():
    assert last_level_cache_bytes() >= 2**20


def test_sizing_the_chunks_encodes_each_image_size_once(pipeline, monkeypatch):
    batch = images()
    adapter = pipeline.adapter
    tokens = cache_for_two(pipeline, batch[0], monkeypatch)
    monkeypatch.setattr(pipeline, "_prompt_lengths", {})
    encoded = []
    encode = adapter.encode
    monkeypatch.setattr(adapter, "encode", lambda images, prompts, *rest: encoded.append(len(images)) or encode(images, prompts, *rest))

    pipeline.predict_images(batch)
    assert encoded == [1, 1, 2, 2]  # the largest image's length, then the three chunks
    assert pipeline._prompt_lengths == {batch[0].size: tokens}

    # Another image of the largest size: its length is known, only the chunks are encoded.
    encoded.clear()
    same_size = [batch[1], batch[0].rotate(90)] + batch[2:]
    pipeline.predict_images(same_size)
    assert encoded == [1, 2, 2]
