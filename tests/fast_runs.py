"""Small runs for tests: sample subsets, a fast config on the plumbing preset, train then evaluate."""

import json
from pathlib import Path


def subset_manifest(sample_root: Path, name: str, per_split: dict[str, int]) -> Path:
    """A JSONL manifest over the first `per_split[split]` sample images per class and split."""
    taken: dict[tuple[str, str], int] = {}
    lines = []
    for line in (sample_root / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = (record["split"], record["label"])
        if taken.get(key, 0) < per_split[record["split"]]:
            taken[key] = taken.get(key, 0) + 1
            lines.append(json.dumps({k: record[k] for k in ("image", "label", "split")}))
    manifest = sample_root / name
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


FAST = ["preset=tiny", "instruct.annotations=none", "teacher.epochs=1", "instruct.epochs=1", "distill.epochs=3",
        "distill.views=1", "instruct.views=0", "gate.epochs=3", "batch_size=8"]


def fast_config(manifest: Path, cache: Path, *overrides):
    """The demo config on `manifest` with the plumbing preset `tiny`, classification-only
    tuning and a few epochs: every stage in seconds."""
    from importlib import resources

    from emovlm_kd.config import load_config

    with resources.as_file(resources.files("emovlm_kd") / "configs" / "demo.yaml") as path:
        return load_config(path, [f"data.root={manifest}", f"cache_dir={cache}", *FAST, *overrides])


def train_and_evaluate(config, out: Path, **options):
    """`emovlm-kd train` as a function: the stages, then the test metrics of a finished run."""
    from emovlm_kd.analysis.evaluation import evaluate_finished_run
    from emovlm_kd.stages.runner import train

    run = train(config, out, **options)
    return run, evaluate_finished_run(run)


def assert_metrics_recount(metrics: dict) -> None:
    """Each model's accuracy and macro-F1 agree with its own confusion matrix over every
    image, and its interval holds the score: numbers a broken scorer could not fake."""
    for model in ("teacher", "vlm", "head", "emovlm_kd"):
        report = metrics[model]
        confusion = report["confusion_matrix"]
        assert sum(map(sum, confusion)) == metrics["images"]
        right = sum(confusion[k][k] for k in range(len(confusion)))
        assert report["accuracy"] == right / metrics["images"]
        low, high = report["ci95"]["accuracy"]
        assert low <= report["accuracy"] <= high
        f1 = [report["per_class"][label]["f1"] for label in metrics["labels"]]
        present = [k for k, row in enumerate(confusion) if sum(row) or sum(r[k] for r in confusion)]
        assert abs(report["macro_f1"] - sum(f1[k] for k in present) / len(present)) < 1e-9
