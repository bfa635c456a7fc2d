"""The Qwen families' own image preprocessing gives the image processor's output exactly."""

import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from emovlm_kd.models.registry import load_vlm, offline_preset_for
from emovlm_kd.models.vlm.base import VLMAdapter

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def random_images(seed: int, sizes) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes]


# Up- and downscaled, square and elongated, one already at a multiple of the merged patch.
SIZES = [(37, 29), (640, 480), (123, 901), (448, 448), (1000, 230), (56, 56)]


def processors(adapter):
    """The preset's own processor, and the published Qwen2-VL-7B-Instruct settings (a pixel
    budget of 3,136 to 12,845,056) with the family's patch sizes."""
    own = adapter.image_processor
    published = type(own)(min_pixels=3136, max_pixels=12845056, patch_size=own.patch_size,
                          merge_size=own.merge_size, image_mean=own.image_mean, image_std=own.image_std)
    return {"preset": own, "published": published}


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_rgb_images_give_the_image_processors_pixel_values_exactly(family, monkeypatch):
    adapter = load_vlm(offline_preset_for(family), seed=0)
    images = random_images(1, SIZES)
    for name, processor in processors(adapter).items():
        adapter.image_processor = processor
        expected = VLMAdapter.process_images(adapter, images)
        with monkeypatch.context() as patch:  # ours must not hand the batch to the processor
            patch.setattr(VLMAdapter, "process_images", lambda *_: pytest.fail("the processor ran"))
            ours = adapter.process_images(images)
        assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"]), name
        assert ours["pixel_values"].dtype == expected["pixel_values"].dtype == torch.float32
        assert torch.equal(ours["pixel_values"], expected["pixel_values"]), name


def test_images_the_processor_would_convert_go_to_it(monkeypatch):
    adapter = load_vlm(offline_preset_for("qwen2_vl"), seed=0)
    rgb = random_images(2, [(64, 48)])[0]
    transparent = rgb.convert("RGBA")
    transparent.putpixel((0, 0), (10, 20, 30, 0))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    processor_ran = []
    original = VLMAdapter.process_images
    monkeypatch.setattr(VLMAdapter, "process_images", lambda self, images: processor_ran.append(1) or original(self, images))
    for batch in ([rgb, transparent], [rgb.convert("L")], [palette]):
        processor_ran.clear()
        ours = adapter.process_images(batch)
        assert processor_ran == [1]
        assert torch.equal(ours["pixel_values"], original(adapter, batch)["pixel_values"])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists on POSIX only")
def test_a_forked_process_preprocesses_with_threads_of_its_own():
    """As a DataLoader worker forked after the parent has preprocessed: the parent's thread
    pool object is copied into the child without its threads, which would hang forever."""
    adapter = load_vlm(offline_preset_for("qwen2_vl"), seed=0)
    images = random_images(3, SIZES[:3])
    expected = adapter.process_images(images)["pixel_values"]  # the parent's threads exist now
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: preprocess, report, and leave without pytest's teardown
        try:
            torch.set_num_threads(1)  # as in a DataLoader worker: GNU OpenMP's pool does not survive a fork either
            same = torch.equal(adapter.process_images(images)["pixel_values"], expected)
            os.write(writer, b"same" if same else b"different")
        finally:
            os._exit(0)
    os.close(writer)
    deadline = time.monotonic() + 30
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the forked process hung preprocessing its images")
        time.sleep(0.05)
    assert os.read(reader, 16) == b"same"
