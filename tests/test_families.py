"""Every VLM family through every stage and prediction, on its offline tiny preset.

The stages and the pipeline know no family: what one family runs, every family runs. A tiny
ViT teacher keeps each run short; the teacher stage is the same code for any classifier.
The paper's family (Qwen2-VL) reuses the session's trained run rather than training twice.
"""

import pytest
import torch
from fast_runs import assert_metrics_recount, fast_config, train_and_evaluate

from emovlm_kd.models.registry import load_vlm, offline_preset_for
from emovlm_kd.models.vlm import ADAPTERS

LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    """A one-layer ViT at 32 px in a folder: a named transformers classifier, fast on a CPU."""
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("vit")
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", list(ADAPTERS))
def test_every_stage_and_prediction_on_each_family(family, request, tmp_path):
    from emovlm_kd import EmoVLMKD
    from emovlm_kd.run_folder import RunFolder

    preset = offline_preset_for(family)
    if preset.name == "tiny":
        run_dir, config, metrics = request.getfixturevalue("trained")
    else:
        small_manifest, vit_teacher = request.getfixturevalue("small_manifest"), request.getfixturevalue("vit_teacher")
        run_dir = tmp_path / "run"
        config = fast_config(small_manifest, tmp_path / "cache", f"preset={preset.name}",
                             f"teacher.model={vit_teacher}", "distill.epochs=1", "gate.epochs=1")
        _, metrics = train_and_evaluate(config, run_dir)
    assert RunFolder.open(run_dir).preset.family == family
    assert_metrics_recount(metrics)

    model = EmoVLMKD.from_pretrained(run_dir)
    assert model.adapter.family == family
    samples = RunFolder.open(run_dir).dataset.split("test")[:2]
    predictions = list(model.predict_paths([sample.path for sample in samples], batch_size=2))
    for prediction in predictions:
        assert prediction.error is None and prediction.label in LABELS
        for part in (prediction.probs, prediction.vlm, prediction.head):
            assert tuple(part) == LABELS and sum(part.values()) == pytest.approx(1, abs=1e-4)
    # The tuned language model is what scores; the frozen visual encoder is the base one.
    base = load_vlm(preset, seed=config.seed)
    for name, module in model.adapter.vision_modules().items():
        base_state = base.vision_modules()[name].state_dict()
        assert all(torch.equal(value, base_state[key]) for key, value in module.state_dict().items())
