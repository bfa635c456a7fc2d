"""The caches of per-image values shared by the stages, evaluation and benchmarks.

- visual features: the frozen VLM's mean-pooled visual tokens [N, D] (the head's input);
- teacher logits [N, K];
- VLM class log-likelihoods [N, K] of the tuned VLM, by exact answer scoring.
Each is computed once per image and model, then read from the cache.

Visual features and teacher logits can also be taken on augmented views of an image
(`view` >= 1; view 0 is the image itself): view v of an image is always the same pixels
(seeded by the image's content hash and v), so both models see the same view, and a
view's row is cached under its own key like an image's.
"""

from __future__ import annotations

import random

import torch

from emovlm_kd import distributed
from emovlm_kd.augment import distillation_view
from emovlm_kd.cache import TensorCache, file_fingerprint, fingerprint
from emovlm_kd.data.datasets import Sample
from emovlm_kd.io import read_json, write_json
from emovlm_kd.models.tuned import TunedVLM
from emovlm_kd.prompts import classification_answer, classification_prompt
from emovlm_kd.run_folder import RunFolder, load_rgb

VISUAL_FINGERPRINT_FILE = "visual_fingerprint.json"


def view_keys(run: RunFolder, samples: list[Sample], view: int) -> list[str]:
    """Cache keys of view `view` of each sample (its content hash alone for view 0)."""
    keys = run.image_keys(samples)
    return keys if view == 0 else [f"{key}@view{view}" for key in keys]


def view_images(samples: list[Sample], keys: list[str], view: int) -> list:
    """View `view` of each sample's image: the image itself for 0, else a seeded augmentation."""
    images = [load_rgb(sample.path) for sample in samples]
    if view == 0:
        return images
    return [distillation_view(image, random.Random(key)) for image, key in zip(images, keys)]


def visual_features(run: RunFolder, vlm: TunedVLM, samples: list[Sample], view: int = 0) -> torch.Tensor:
    """[N, D] pooled visual tokens of the (frozen) visual encoder, on view `view` of each image."""
    cache = TensorCache(run.cache_root, "visual", visual_fingerprint(run, vlm))
    keys = view_keys(run, samples, view)
    items = list(zip(samples, keys))

    @torch.no_grad()
    def compute(batch: list[tuple[Sample, str]]) -> torch.Tensor:
        adapter = vlm()
        inputs = adapter.encode_images(view_images([s for s, _ in batch], [k for _, k in batch], view))
        return adapter.visual_tokens(inputs).pooled().cpu()

    description = "visual features" + (f" (view {view})" if view else "")
    return cache.fill(keys, items, compute, run.config.batch_size, description)


def split_features(run: RunFolder, vlm: TunedVLM | None = None, splits: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Cached pooled visual features of the tuned VLM, for every non-empty split (or `splits`).

    The head reads exactly the visual tokens the tuned VLM computes at inference, so an
    adapter whose tuning touches the vision side (a projector, say) stays consistent.
    """
    vlm = vlm or TunedVLM(run.load_tuned_vlm)  # loaded only if a cache misses rows
    return {
        split: visual_features(run, vlm, samples)
        for split, samples in run.dataset.splits.items()
        if samples and (splits is None or split in splits)
    }


def visual_fingerprint(run: RunFolder, vlm: TunedVLM) -> str:
    """The visual-feature cache key: a hash of the visual encoder's weights and the image
    processor's settings. Hashing needs the model loaded, so the key is kept in the instruct
    stage's folder (replaced whole when that stage is redone) and read from there next time."""
    saved = run.stage_dir("instruct") / VISUAL_FINGERPRINT_FILE
    try:
        return str(read_json(saved)["fingerprint"])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    adapter = vlm()
    key = fingerprint(
        {
            f"{name}.{key}": value
            for name, module in adapter.fingerprint_modules().items()
            for key, value in module.state_dict().items()
        },
        family=adapter.family,
        processor=adapter.image_processor.to_dict(),
        # What is pooled: rows cached when LLaVA's head read the projector's output differ.
        pooled="visual-encoder tokens",
    )
    if distributed.is_main():
        write_json(saved, {"fingerprint": key})
    return key


def teacher_logits(run: RunFolder, model, processor, samples: list[Sample], view: int = 0) -> torch.Tensor:
    """[N, K] logits of the fine-tuned teacher (eval mode, eval preprocessing) on view `view`."""
    teacher_dir = run.stage_dir("teacher")
    key = file_fingerprint(teacher_dir / "model.safetensors", processor=processor.to_dict())
    cache = TensorCache(run.cache_root, "teacher", key)
    model.eval()
    device = distributed.device()
    keys = view_keys(run, samples, view)

    @torch.no_grad()
    def compute(batch: list[tuple[Sample, str]]) -> torch.Tensor:
        # On this process's GPU where there is one (a teacher loads on the CPU): on the CPU
        # a ViT-B/16-384 managed 6 images/s beside an H200.
        model.to(device)
        images = view_images([s for s, _ in batch], [k for _, k in batch], view)
        pixels = processor(images=images, return_tensors="pt")
        return model(pixel_values=pixels["pixel_values"].to(device)).logits.float().cpu()

    description = "teacher logits" + (f" (view {view})" if view else "")
    return cache.fill(keys, list(zip(samples, keys)), compute, run.config.batch_size, description)


def vlm_scores(run: RunFolder, vlm: TunedVLM, samples: list[Sample]) -> torch.Tensor:
    """[N, K] log-likelihood of each label (its answer's tokens) under the tuned VLM, up to a per-image
    constant (the answers' shared opening), which a softmax over labels removes."""
    taxonomy = run.dataset.taxonomy
    prompt = classification_prompt(taxonomy)
    answers = [classification_answer(label) for label in taxonomy.labels]
    weights = sorted(run.stage_dir("instruct").glob("**/*.safetensors"))
    key = file_fingerprint(
        *weights, base=run.preset.vlm, seed=run.config.seed, prompt=prompt, answers=answers, scoring="label-tokens"
    )
    cache = TensorCache(run.cache_root, "vlm_scores", key)

    def compute(batch: list[Sample]) -> torch.Tensor:
        adapter = vlm()
        inputs = adapter.encode([load_rgb(sample.path) for sample in batch], [prompt] * len(batch))
        return adapter.answer_logprobs(inputs, answers, include_shared=False).float().cpu()

    return cache.fill(run.image_keys(samples), samples, compute, run.config.batch_size, "VLM label scores")
