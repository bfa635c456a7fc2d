"""Distillation on augmented views: the same view of an image for the teacher and the VLM,
the same pixels on every run, cached under keys of their own."""

import random

import torch
from PIL import Image

from emovlm_kd.augment import distillation_view


def test_a_view_is_fixed_by_its_seed_and_differs_from_the_image():
    image = Image.linear_gradient("L").convert("RGB").resize((224, 224))
    first = distillation_view(image, random.Random("abc@view1"))
    again = distillation_view(image, random.Random("abc@view1"))
    other = distillation_view(image, random.Random("abc@view2"))
    assert first.size == image.size
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes() and first.tobytes() != image.tobytes()


def test_views_are_cached_apart_and_seen_alike_by_both_models(trained):
    """Each view's features and teacher logits are rows of their own, computed on the
    same augmented pixels; the distillation set stacks the image and its views."""
    from emovlm_kd.models.teacher import load_teacher
    from emovlm_kd.models.tuned import TunedVLM
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.caches import teacher_logits, view_images, view_keys, visual_features
    from emovlm_kd.stages.distill import distillation_set

    run = RunFolder.open(trained[0])
    assert run.config.distill.views == 1
    train = run.dataset.split("train")
    vlm = TunedVLM(run.load_tuned_vlm)
    plain, view = visual_features(run, vlm, train, 0), visual_features(run, vlm, train, 1)
    assert plain.shape == view.shape and not torch.allclose(plain, view)
    assert vlm._adapter is None  # both read from the cache the distill stage filled
    # The cached teacher row of view 1 is the teacher's answer on exactly those pixels.
    teacher, processor = load_teacher(str(run.stage_dir("teacher")), run.dataset.taxonomy.labels)
    cached = teacher_logits(run, teacher, processor, train[:2], 1)
    keys = view_keys(run, train[:2], 1)
    assert keys[0].endswith("@view1")
    pixels = processor(images=view_images(train[:2], keys, 1), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.allclose(teacher(pixel_values=pixels).logits, cached, atol=1e-4)
    features, targets, labels = distillation_set(run, vlm, teacher, processor)
    assert features.shape[0] == targets.shape[0] == labels.shape[0] == 2 * len(train)
    assert torch.equal(labels[: len(train)], labels[len(train):])
    assert run.stage_metrics("distill")["train_rows"] == 2 * len(train)
