"""The main job on the offline default, shortened: sample dataset, every stage, the table,
and the method's claims on the val split."""

import json

from emovlm_kd.apps.cli import main


def test_demo_trains_every_stage_and_the_fusion_works(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    code = main(["demo", "--out", str(out), "teacher.epochs=2", "instruct.epochs=1", "instruct.views=1", "distill.views=2",
                 "distill.epochs=20"])
    stdout, stderr = capsys.readouterr()
    assert code == 0 and "Traceback" not in stderr
    assert "sample dataset: 432 images" in stdout
    table = stdout[stdout.index("test split, 120 images"):]
    for row in ("teacher", "VLM alone", "head alone", "EmoVLM-KD (gated)", "EmoVLM-KD minus VLM alone"):
        assert row in table
    assert (tmp_path / "runs" / "sample" / "annotations.jsonl").is_file()

    # The claims, on val (the test split stays for the README's table).
    from emovlm_kd.analysis.evaluation import evaluate_run
    from emovlm_kd.run_folder import RunFolder

    run = RunFolder.open(out)
    val = evaluate_run(run, "val")
    accuracy = {model: val[model]["accuracy"] for model in ("teacher", "vlm", "head", "emovlm_kd")}
    assert accuracy["head"] >= accuracy["teacher"] - 0.15, accuracy
    assert accuracy["emovlm_kd"] >= max(accuracy["head"], accuracy["vlm"]) - 0.03, accuracy
    # The VLM learnt its tasks: the answer-token loss fell to a fraction of where it began.
    history = [row["loss"] for row in run.stage_metrics("instruct")["log_history"] if "loss" in row]
    assert history[-1] < 0.5 * history[0], history
    # The VLM learnt all three tasks: it was tuned on the sample's annotations.
    examples = run.stage_metrics("instruct")["examples"]
    assert examples["observation"] == examples["inference"] == 240
    assert examples["classification"] == 240 + examples["classification_views"] == 480  # and one view of each
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gate_trained_on"] == "val" and not metrics["gate_saw_these_images"]


def test_python_dash_m_and_help_list_every_group():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "emovlm_kd", "--help"], capture_output=True, text=True, check=True)
    for group in ("data", "train", "predict", "evaluate", "presets", "demo"):
        assert f"    {group} " in result.stdout
