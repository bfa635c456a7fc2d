"""Every stage end to end on the offline presets: train, resume, predict, evaluate."""

import json

import pytest
import torch
from fast_runs import assert_metrics_recount, fast_config, train_and_evaluate
from PIL import Image

from emovlm_kd.apps.cli import main
from emovlm_kd.config import load_config
from emovlm_kd.errors import UserError
from emovlm_kd.stages.registry import Stage
from emovlm_kd.stages.runner import train


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_run_folder_holds_every_artifact_unpickled(trained):
    run_dir, _, metrics = trained
    for stage in ("teacher", "instruct", "distill", "gate"):
        assert (run_dir / stage / "metrics.json").is_file()
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in (run_dir / "teacher").iterdir()}
    assert (run_dir / "instruct" / "model" / "model.safetensors").is_file()
    for stage in ("distill", "gate"):
        assert {p.name for p in (run_dir / stage).iterdir()} >= {"config.json", "model.safetensors"}
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "train.log").is_file()
    pickled = [p for p in run_dir.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle")]
    assert pickled == []
    teacher = json.loads((run_dir / "teacher" / "metrics.json").read_text())
    # The saved teacher, reloaded from its folder alone, gives the val accuracy recorded at training.
    from emovlm_kd.models.teacher import load_teacher
    from emovlm_kd.run_folder import RunFolder, load_rgb

    run = RunFolder.open(run_dir)
    val = run.dataset.split("val")
    model, processor = load_teacher(str(run_dir / "teacher"), run.dataset.taxonomy.labels)
    with torch.no_grad():
        pixels = processor(images=[load_rgb(sample.path) for sample in val], return_tensors="pt")["pixel_values"]
        predicted = model.eval()(pixel_values=pixels).logits.argmax(-1)
    assert (predicted == run.labels(val)).float().mean().item() == pytest.approx(teacher["val_accuracy"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics and metrics["images"] == 18
    assert_metrics_recount(metrics)
    assert metrics["teacher"]["accuracy"] == pytest.approx(teacher["test_accuracy"])


def test_finished_stages_are_not_redone(trained, monkeypatch):
    run_dir, config, metrics = trained
    monkeypatch.setattr(Stage, "train_function", lambda stage: pytest.fail(f"{stage.name} was redone"))
    _, again = train_and_evaluate(config, run_dir)
    assert again == metrics


def test_an_interrupted_stage_is_redone_alone(trained, monkeypatch):
    run_dir, config, metrics = trained
    import emovlm_kd.stages.registry as registry

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing metrics")

    # The gate's weights are written, then the process dies before its metrics.json.
    monkeypatch.setattr(registry, "write_json", crash)
    with pytest.raises(RuntimeError):
        train(config, run_dir, stages=("gate",), force=True)
    assert not (run_dir / "gate" / "metrics.json").exists()
    monkeypatch.undo()

    ran = []
    real = Stage.train_function
    monkeypatch.setattr(Stage, "train_function", lambda stage: ran.append(stage.name) or real(stage))
    _, again = train_and_evaluate(config, run_dir)
    assert ran == ["gate"]
    assert again == metrics  # same data, seed and config: the same numbers


def test_a_changed_config_needs_force(trained):
    run_dir, config, _ = trained
    changed = load_config(None, [f"{k}" for k in []])
    changed.__dict__.update(config.__dict__)
    changed.distill.depth = 2
    try:
        with pytest.raises(UserError, match="distill.depth"):
            train(changed, run_dir)
    finally:
        changed.distill.depth = config.distill.depth = 1


def test_predict_cli_formats_and_determinism(trained, sample_root, capsys, tmp_path):
    run_dir, _, _ = trained
    test_dir = sample_root / "test" / "joy"
    images = sorted(test_dir.iterdir())[:3]
    code, out, _ = cli(capsys, "predict", "--run", run_dir, "--format", "json", *images)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["image"] for row in rows] == [str(p) for p in images]
    labels = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    for row in rows:
        assert set(row) == {"image", "label", "probs", "vlm", "head", "explanation", "error"}
        assert row["error"] is None and row["explanation"] is None and row["label"] in labels
        for part in ("probs", "vlm", "head"):
            assert tuple(row[part]) == labels
            assert sum(row[part].values()) == pytest.approx(1, abs=1e-4)
        assert row["label"] == max(row["probs"], key=row["probs"].get)
    _, again, _ = cli(capsys, "predict", "--run", run_dir, "--format", "json", *images)
    assert again == out
    # Batch size does not change the answers.
    _, single, _ = cli(capsys, "predict", "--run", run_dir, "--format", "json", "--batch-size", "1", *images)
    for a, b in zip(rows, map(json.loads, single.splitlines())):
        assert a["label"] == b["label"]
        assert all(abs(a["probs"][k] - b["probs"][k]) < 1e-4 for k in labels)

    code, out, _ = cli(capsys, "predict", "--run", run_dir, "--format", "csv", images[0])
    header, line = out.strip().splitlines()
    assert header.startswith("image,label,error,explanation,probs_anger") and line.startswith(str(images[0]))
    code, out, _ = cli(capsys, "predict", "--run", run_dir, test_dir)
    assert code == 0 and len(out.strip().splitlines()) == len(list(test_dir.iterdir()))


def test_predict_reports_a_bad_file_and_goes_on(trained, sample_root, capsys, tmp_path):
    run_dir, _, _ = trained
    good = sorted((sample_root / "test" / "anger").iterdir())[0]
    (tmp_path / "broken.jpg").write_text("this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    code, out, err = cli(capsys, "predict", "--run", run_dir, "--format", "json",
                         tmp_path / "broken.jpg", good, tmp_path / "empty.png")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [row["error"] is None for row in rows] == [False, True, False]
    assert "broken.jpg" in rows[0]["error"] and rows[0]["label"] is None
    assert "2 of 3 images have no prediction" in err
    code, _, err = cli(capsys, "predict", "--run", run_dir, tmp_path / "missing.jpg")
    assert code == 1 and "does not exist" in err
    code, _, err = cli(capsys, "predict", "--run", tmp_path, good)
    assert code == 1 and "not a run folder" in err


def test_library_prediction_matches_the_cached_stage_path(trained, small_manifest):
    """One shared visual pass at predict time gives what the stages computed from caches."""
    from emovlm_kd import EmoVLMKD
    from emovlm_kd.models.gate import Gate
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.gate import gate_inputs

    run_dir, _, _ = trained
    model = EmoVLMKD.from_pretrained(run_dir)
    run = RunFolder.open(run_dir)
    samples = run.dataset.split("test")[:4]
    head_logits, vlm_probs = (t[:4] for t in gate_inputs(run, ("test",))["test"])
    with torch.no_grad():
        expected = Gate.from_pretrained(run_dir / "gate")(head_logits, vlm_probs).softmax(-1)
    predictions = list(model.predict_paths([s.path for s in samples], batch_size=4))
    got = torch.tensor([list(p.probs.values()) for p in predictions])
    assert torch.allclose(got, expected, atol=1e-4)
    explained = model.predict_images([Image.open(samples[0].path).convert("RGB")], explain=True)[0]
    assert isinstance(explained.explanation, str)


def test_a_run_predicts_without_its_training_data(trained, sample_root, tmp_path):
    """The labels are saved with the run: a copied run folder serves with no dataset at hand."""
    import shutil

    from emovlm_kd import EmoVLMKD

    run_dir, _, _ = trained
    assert json.loads((run_dir / "labels.json").read_text())["labels"] == [
        "anger", "disgust", "fear", "joy", "sadness", "surprise"]
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    config = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(config.replace(str(trained[1].data.root), str(tmp_path / "gone")))
    assert str(tmp_path / "gone") in (moved / "config.yaml").read_text()
    image = next((sample_root / "test").rglob("*.png"))
    prediction = next(EmoVLMKD.from_pretrained(moved).predict_paths([image]))
    assert prediction.error is None and prediction.label in prediction.probs


def test_cached_paths_never_load_the_vlm(trained, monkeypatch):
    """With every feature cached, the gate inputs (evaluation, ablations) need no VLM."""
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.caches import VISUAL_FINGERPRINT_FILE
    from emovlm_kd.stages.gate import gate_inputs

    run = RunFolder.open(trained[0])
    expected = gate_inputs(run, ("test",))["test"]  # fills any missing cache rows
    assert (trained[0] / "instruct" / VISUAL_FINGERPRINT_FILE).is_file()
    assert run.is_done("instruct")

    def refuse(run):
        raise AssertionError("the VLM was loaded")

    monkeypatch.setattr(RunFolder, "load_tuned_vlm", refuse)
    again = gate_inputs(run, ("test",))["test"]
    assert all(torch.equal(a, b) for a, b in zip(again, expected))


def test_evaluate_cli(trained, capsys, tmp_path):
    run_dir, _, metrics = trained
    # Outputs go to tmp_path: the shared run folder stays as it was.
    code, out, _ = cli(capsys, "evaluate", "--run", run_dir, "--json", "--no-report", "--out", tmp_path)
    assert code == 0 and json.loads(out) == metrics
    code, out, _ = cli(capsys, "evaluate", "--run", run_dir, "--no-report", "--out", tmp_path)
    assert "EmoVLM-KD (gated)" in out and "VLM alone" in out


def test_lora_instruct_stage_saves_an_adapter(small_manifest, tmp_path):
    from emovlm_kd.run_folder import RunFolder

    config = fast_config(small_manifest, tmp_path / "cache", "instruct.method=lora", "instruct.lr=1e-2")
    run = train(config, tmp_path / "run", stages=("instruct",))
    adapter_dir = tmp_path / "run" / "instruct" / "adapter"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "instruct" / "metrics.json").read_text())["method"] == "lora"
    tuned = RunFolder.open(tmp_path / "run").load_tuned_vlm()
    base = run.preset
    from emovlm_kd.models.registry import load_vlm

    original = load_vlm(base, seed=config.seed)
    name = next(n for n in original.model.state_dict() if "language_model" in n and "q_proj.weight" in n)
    assert not torch.equal(tuned.model.state_dict()[name], original.model.state_dict()[name])
    vision = next(n for n in original.model.state_dict() if "visual" in n)
    assert torch.equal(tuned.model.state_dict()[vision], original.model.state_dict()[vision])


def test_teacher_stage_takes_any_transformers_classifier(small_manifest, tmp_path):
    """A named model (here a small ViT in a local folder) replaces the preset's teacher."""
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    vit_dir = tmp_path / "vit"
    config = ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    ViTForImageClassification(config).save_pretrained(vit_dir)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(vit_dir)
    run_config = fast_config(small_manifest, tmp_path / "cache", f"teacher.model={vit_dir}")
    train(run_config, tmp_path / "run", stages=("teacher",))
    saved = json.loads((tmp_path / "run" / "teacher" / "config.json").read_text())
    assert saved["model_type"] == "vit" and len(saved["id2label"]) == 6
    assert saved["id2label"]["3"] == "joy"


def test_another_head_reuses_every_cached_feature(trained, tmp_path, monkeypatch):
    """A new depth retrains head and gate from the caches: no image is encoded again."""
    import shutil

    from emovlm_kd.cache import TensorCache

    run_dir, config, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = load_config(run_dir / "config.yaml", ["distill.depth=2"])
    def add(self, rows):
        if rows:
            pytest.fail(f"{len(rows)} rows recomputed")

    monkeypatch.setattr(TensorCache, "add", add)
    _, metrics = train_and_evaluate(config, copy, stages=("distill",), force=True)
    head_config = json.loads((copy / "distill" / "config.json").read_text())
    assert head_config["depth"] == 2
    assert json.loads((copy / "gate" / "metrics.json").read_text())  # the gate was retrained on the new head
    assert metrics["emovlm_kd"]["accuracy"] >= 0


def test_annotations_add_the_observation_and_inference_tasks(small_manifest, tmp_path):
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.instruct import build_examples

    lines = [json.loads(line) for line in small_manifest.read_text().splitlines()]
    train_rows = [row for row in lines if row["split"] == "train"]
    records = [
        {"image": row["image"], "label": row["label"], "key_elements": "A round yellow face.",
         "reasoning": "The mouth and eyes shape the mood."}
        for row in train_rows[:5]
    ]
    records[0]["reasoning"] = f"It is plainly {train_rows[0]['label']}."  # leaks its label: flagged
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    config = fast_config(small_manifest, tmp_path / "cache", f"instruct.annotations={annotations}")
    run = RunFolder.create(config, tmp_path / "run")
    examples, summary = build_examples(run)
    assert summary == {"classification": len(train_rows), "observation": 4, "inference": 4,
                       "flagged_excluded": 1, "annotated_train_images": 4}
    tasks = [example.task for example in examples]
    assert tasks.count("observation") == tasks.count("inference") == 4
    assert {e.answer for e in examples if e.task == "observation"} == {"A round yellow face."}


def test_instruct_views_add_classification_examples_on_the_distillation_views(small_manifest, tmp_path):
    """instruct.views=2: each training image's classification task also on its views 1 and 2,
    the same seeded pixels distillation uses (so a view is the same image in both stages)."""
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.caches import view_images, view_keys
    from emovlm_kd.stages.instruct import build_examples

    config = fast_config(small_manifest, tmp_path / "cache", "instruct.annotations=none", "instruct.views=2")
    run = RunFolder.create(config, tmp_path / "run")
    train = run.dataset.split("train")
    examples, summary = build_examples(run)
    assert summary["classification"] == 3 * len(train) and summary["classification_views"] == 2 * len(train)
    views = [e for e in examples if e.view == 2]
    assert [e.image for e in views] == [s.path for s in train]
    assert all(e.task == "classification" and e.answer == f"{{'emotion': '{s.label}'}}" for e, s in zip(views, train))
    expected = view_images(train[:1], view_keys(run, train[:1], 2), 2)[0]
    assert views[0].load().tobytes() == expected.tobytes()
    assert views[0].load().tobytes() != examples[0].load().tobytes()  # a view is not the image itself


def test_instruct_leaves_each_picture_it_encoded_in_the_visual_feature_cache(small_manifest, tmp_path):
    """With reused visual tokens, instruct's tower pass on an image or view also fills the
    cache distillation reads, with the features distillation would compute itself."""
    import torch

    from emovlm_kd.cache import TensorCache
    from emovlm_kd.models.tuned import TunedVLM
    from emovlm_kd.stages.caches import view_images, view_keys, visual_fingerprint
    from emovlm_kd.stages.runner import train

    config = fast_config(small_manifest, tmp_path / "cache", "instruct.annotations=none", "instruct.views=1",
                         "instruct.reuse_visual_tokens=true", "instruct.epochs=1", "instruct.workers=0")
    run = train(config, tmp_path / "run", stages=("instruct",))
    samples = run.dataset.split("train")
    vlm = TunedVLM(run.load_tuned_vlm)
    rows = TensorCache(run.cache_root, "visual", visual_fingerprint(run, vlm)).rows()
    for view in (0, 1):
        keys = view_keys(run, samples, view)
        assert all(key in rows for key in keys)
        adapter = vlm()
        with torch.no_grad():
            fresh = adapter.visual_tokens(adapter.encode_images(view_images(samples[:3], keys[:3], view))).pooled()
        torch.testing.assert_close(torch.stack([rows[key] for key in keys[:3]]), fresh, atol=1e-4, rtol=1e-4)


def test_predict_explain_adds_one_sentence(trained, sample_root, capsys):
    run_dir, _, _ = trained
    image = sorted((sample_root / "test" / "fear").iterdir())[0]
    code, out, _ = cli(capsys, "predict", "--run", run_dir, "--format", "json", "--explain", image)
    row = json.loads(out)
    assert code == 0 and isinstance(row["explanation"], str)
    assert row["explanation"].count(". ") == 0


def test_a_head_of_another_width_than_the_vlm_pools_is_refused_in_one_sentence(trained, tmp_path):
    """A run whose head was trained on other features (a LLaVA run from before its head read
    the tower's tokens) is refused in one sentence, not failed on with a shape error."""
    import shutil

    from emovlm_kd import EmoVLMKD
    from emovlm_kd.models.configs import HeadConfig
    from emovlm_kd.models.head import DistillHead

    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    old = DistillHead.from_pretrained(copy / "distill")
    DistillHead(HeadConfig(input_dim=old.config.input_dim + 1, num_labels=old.config.num_labels)).save_pretrained(
        copy / "distill")
    with pytest.raises(UserError, match=r"reads \d+-wide visual features, .* --stage distill --force`\.$"):
        EmoVLMKD.from_pretrained(copy)
    # Evaluation and the gate stage read the head on cached features: the same sentence there.
    from emovlm_kd.run_folder import RunFolder
    from emovlm_kd.stages.gate import gate_inputs

    with pytest.raises(UserError, match=r"reads \d+-wide visual features, .* --stage distill --force`\.$"):
        gate_inputs(RunFolder.open(copy), ("test",))


def test_a_run_folder_keeps_its_config_once_a_stage_has_run(small_manifest, tmp_path, capsys):
    from emovlm_kd.run_folder import RunFolder

    config = fast_config(small_manifest, tmp_path / "cache")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    out = tmp_path / "run"
    # A first command that stops before any stage (a wrong data root) leaves its config behind...
    assert main(["train", "--config", str(config_file), "--out", str(out), f"data.root={tmp_path / 'typo'}"]) == 1
    assert "typo does not exist" in capsys.readouterr().err
    assert load_config(out / "config.yaml").data.root == str(tmp_path / "typo")
    # ... which does not lock the folder: nothing was trained with it, so the corrected command starts.
    run = RunFolder.create(config, out)
    assert load_config(out / "config.yaml").to_dict() == config.to_dict() == run.config.to_dict()
    # Once a stage has begun, a changed config is refused, naming what changed.
    (out / "teacher").mkdir()
    changed = fast_config(small_manifest, tmp_path / "cache", "seed=7", "distill.depth=2")
    with pytest.raises(UserError, match=r"was trained with a different config \((distill.depth, seed|seed, "
                                        r"distill.depth) changed\); use a new --out folder, or pass --force"):
        RunFolder.create(changed, out)
    assert load_config(out / "config.yaml").to_dict() == config.to_dict()
