"""`emovlm-kd ablate`: sweeps on cached tensors that leave the run as it was."""

import hashlib
import json

from test_pipeline import cli

from emovlm_kd.analysis.ablation import plan


def fingerprint(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_plan_varies_one_axis_at_a_time_or_crosses_them():
    base = {"depth": 1, "alpha": 0.5, "temperature": 2.0, "gate": "concat_linear"}
    values = {"depth": [1, 2, 3], "gate": ["concat_linear", "mixture"]}
    alone = plan(base, values)
    assert [(s["axis"], s["depth"], s["gate"]) for s in alone] == [
        ("depth", 1, "concat_linear"),
        ("depth", 2, "concat_linear"),
        ("depth", 3, "concat_linear"),
        ("gate", 1, "concat_linear"),
        ("gate", 1, "mixture"),
    ]
    assert all(s["alpha"] == 0.5 and s["temperature"] == 2.0 for s in alone)
    assert len(plan(base, values, grid=True)) == 6


def test_ablate_writes_table_and_plot_and_leaves_the_run_alone(trained, tmp_path, capsys):
    run_dir = trained[0]
    before = fingerprint(run_dir)
    code, out, _ = cli(
        capsys,
        "ablate",
        "--run",
        run_dir,
        "--depth",
        "1,2",
        "--alpha",
        "0.5,1",
        "--gate",
        "dynamic,mixture",  # the run's own variant (the demo's) and another
        "--out",
        tmp_path,
    )
    assert code == 0 and "EmoVLM-KD test" in out
    assert fingerprint(run_dir) == before
    for name in ("ablations.json", "ablations.md", "ablations.png"):
        assert (tmp_path / name).stat().st_size > 100
    rows = json.loads((tmp_path / "ablations.json").read_text())["rows"]
    assert [row["axis"] for row in rows] == ["depth", "depth", "alpha", "alpha", "gate", "gate"]
    # The run's own setting, retrained from the same caches and seed, gives the run's numbers.
    own = [row for row in rows if row["run_setting"]]
    assert len(own) == 3
    distill = json.loads((run_dir / "distill" / "metrics.json").read_text())
    gate = json.loads((run_dir / "gate" / "metrics.json").read_text())
    for row in own:
        assert row["head_test"] == distill["test_accuracy"] and row["fused_test"] == gate["test_accuracy"]
    assert "(ablations.png)" in (tmp_path / "ablations.md").read_text()


def test_ablate_refuses_bad_values_in_one_sentence(trained, tmp_path, capsys):
    for flag, value, message in (
        ("--depth", "0,9", "whole numbers from 1 to 5"),
        ("--alpha", "half", "not a comma-separated list of numbers"),
        ("--gate", "attention", "one of concat_linear"),
    ):
        code, _, err = cli(capsys, "ablate", "--run", trained[0], flag, value, "--out", tmp_path)
        assert code == 2 and message in err and err.count("\n") == 1
