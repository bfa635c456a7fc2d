"""The main job on the offline default, shortened: sample dataset, every stage, the table."""

import json

from emovlm_kd.apps.cli import main


def test_demo_builds_the_sample_trains_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    code = main(["demo", "--out", str(out), "teacher.epochs=0.25", "instruct.epochs=0.25",
                 "distill.epochs=2", "gate.epochs=2"])
    stdout, stderr = capsys.readouterr()
    assert code == 0 and "Traceback" not in stderr
    assert "sample dataset: 432 images" in stdout
    table = stdout[stdout.index("test split, 120 images"):]
    for row in ("teacher", "VLM alone", "head alone", "EmoVLM-KD (gated)"):
        assert row in table
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"teacher", "vlm", "head", "emovlm_kd"}
    assert (tmp_path / "runs" / "sample" / "manifest.jsonl").is_file()
    assert (tmp_path / "runs" / "cache").is_dir()


def test_python_dash_m_and_help_list_every_group():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "emovlm_kd", "--help"], capture_output=True, text=True, check=True)
    for group in ("data", "train", "predict", "evaluate", "presets", "demo"):
        assert f"    {group} " in result.stdout
