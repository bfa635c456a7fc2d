"""`emovlm-kd evaluate` and `compare` on the trained run: files written, numbers recounted."""

import json
import math
import shutil

import pytest
from test_pipeline import cli

MODELS = ("teacher", "vlm", "head", "emovlm_kd")


def read_predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_evaluate_writes_metrics_predictions_and_report(evaluated, trained):
    out, printed = evaluated
    for name in ("metrics.json", "predictions.jsonl", "report.html", "report.md", "efficiency.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 18 and metrics["preset"] == "tiny"
    assert metrics["labels"] == ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    for model in MODELS:
        assert set(metrics[model]) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "reliability"}
        # The same numbers as the test-set table `train` recorded.
        assert metrics[model]["accuracy"] == pytest.approx(trained[2][model]["accuracy"])
    assert set(metrics["complementarity"]) == {"vlm_teacher", "vlm_head"}
    assert len(read_predictions(out)) == 18
    for row in ("teacher", "VLM alone", "head alone", "EmoVLM-KD (gated)", "oracle", f"wrote {out / 'report.html'}"):
        assert row in printed
    markdown = (out / "report.md").read_text()
    for plot in ("confusion", "reliability", "per_class", "training", "complementarity"):
        assert f"(plots/{plot}.png)" in markdown and (out / "plots" / f"{plot}.png").stat().st_size > 1000


def recount(records, model, labels, bins=15):
    """Accuracy, per-class precision/recall, confusion, macro-F1 and ECE, by plain counting."""
    index = {label: k for k, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    binned = [[0, 0.0, 0] for _ in range(bins)]  # count, summed confidence, right
    for record in records:
        probs = record[model]["probs"]
        predicted = record[model]["label"]
        assert predicted == max(labels, key=lambda label: probs[label])
        assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-4)
        confusion[index[record["label"]]][index[predicted]] += 1
        confidence = probs[predicted]
        slot = min(max(math.ceil(confidence * bins) - 1, 0), bins - 1)
        binned[slot][0] += 1
        binned[slot][1] += confidence
        binned[slot][2] += predicted == record["label"]
    n = len(records)
    per_class, f1s = {}, []
    for k, label in enumerate(labels):
        right = confusion[k][k]
        predicted = sum(row[k] for row in confusion)
        actual = sum(confusion[k])
        per_class[label] = (right / predicted if predicted else 0.0, right / actual if actual else 0.0)
        if predicted + actual:
            f1s.append(2 * right / (predicted + actual))
    ece = sum(abs(total / count - right / count) * count for count, total, right in binned if count) / n
    return {
        "accuracy": sum(confusion[k][k] for k in range(len(labels))) / n,
        "macro_f1": sum(f1s) / len(f1s),
        "confusion": confusion,
        "per_class": per_class,
        "ece": ece,
    }


def test_metrics_file_is_recounted_from_the_predictions(evaluated):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    records = read_predictions(out)
    labels = metrics["labels"]
    for model in MODELS:
        counted = recount(records, model, labels)
        saved = metrics[model]
        assert saved["accuracy"] == pytest.approx(counted["accuracy"])
        assert saved["macro_f1"] == pytest.approx(counted["macro_f1"])
        assert saved["confusion_matrix"] == counted["confusion"]
        assert saved["ece"] == pytest.approx(counted["ece"], abs=1e-6)
        for label, (precision, recall) in counted["per_class"].items():
            assert saved["per_class"][label]["precision"] == pytest.approx(precision)
            assert saved["per_class"][label]["recall"] == pytest.approx(recall)
    pair = metrics["complementarity"]["vlm_teacher"]
    vlm_right = [r["vlm"]["label"] == r["label"] for r in records]
    teacher_right = [r["teacher"]["label"] == r["label"] for r in records]
    assert pair["counts"]["both_right"] == sum(v and t for v, t in zip(vlm_right, teacher_right))
    assert pair["counts"]["both_wrong"] == sum(not (v or t) for v, t in zip(vlm_right, teacher_right))
    assert pair["oracle"] == pytest.approx(sum(v or t for v, t in zip(vlm_right, teacher_right)) / len(records))


def class_folders(small_manifest, tmp_path, split="test"):
    """A plain ROOT/<class>/<image> copy of one split of the small manifest."""
    root = tmp_path / "other"
    copied = 0
    for line in small_manifest.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            source = small_manifest.parent / record["image"]
            target = root / record["label"].capitalize() / source.name  # 'Joy': names are normalised
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            copied += 1
    return root, copied


def test_evaluate_on_another_dataset_folder(trained, evaluated, small_manifest, tmp_path, capsys):
    root, copied = class_folders(small_manifest, tmp_path)
    code, out, _ = cli(
        capsys,
        "evaluate",
        "--run",
        trained[0],
        "--data",
        root,
        "--split",
        "all",
        "--no-report",
        "--out",
        tmp_path / "eval",
    )
    assert code == 0 and f"all split, {copied} images" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == copied and metrics["data_root"] == str(root) and metrics["dataset"] is None
    assert not (tmp_path / "eval" / "report.html").exists()
    # The same images as the run's own test split, in other folders: the same predictions.
    own = {record["image"].rsplit("/", 1)[1]: record for record in read_predictions(evaluated[0])}
    for record in read_predictions(tmp_path / "eval"):
        twin = own[record["image"].rsplit("/", 1)[1]]
        assert record["label"] == twin["label"]
        for model in MODELS:
            assert record[model]["probs"] == pytest.approx(twin[model]["probs"], abs=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "{missing}"], "is not a run folder"),
        (["--run", "{run}", "--dataset", "fi"], "--dataset names the folder given with --data"),
        (["--run", "{run}", "--data", "{missing}"], "does not exist"),
        (["--run", "{run}", "--data", "{tmp}/other", "--dataset", "flickr"], "uses taxonomy sentiment2"),
    ],
)
def test_evaluate_refuses_bad_input_in_one_sentence(trained, tmp_path, capsys, argv, message):
    fill = {"missing": tmp_path / "nowhere", "run": trained[0], "tmp": tmp_path}
    (tmp_path / "other").mkdir()
    code, out, err = cli(capsys, "evaluate", *[a.format(**fill) for a in argv], "--out", tmp_path / "eval")
    assert code != 0 and message in err and err.count("\n") == 1


def test_compare_puts_the_paper_beside_our_numbers(evaluated, capsys):
    out, _ = evaluated
    code, printed, _ = cli(capsys, "compare", out / "metrics.json", "--dataset", "fi")
    assert code == 0
    assert "79.51%" in printed and "71.19%" in printed and "68.86%" in printed
    assert "'tiny' models, not the paper's" in printed
    code, printed, _ = cli(capsys, "compare", out, "--dataset", "emotion6")
    assert code == 0 and "73.91%" in printed


def test_compare_reads_the_dataset_from_the_file_or_asks(evaluated, tmp_path, capsys):
    out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    (tmp_path / "flickr.json").write_text(json.dumps(dict(metrics, dataset="flickr")))
    code, printed, _ = cli(capsys, "compare", tmp_path / "flickr.json")
    assert code == 0 and "dataset flickr" in printed and "88.90%" in printed
    code, _, err = cli(capsys, "compare", out / "metrics.json")
    assert code == 1 and "pass --dataset NAME" in err
    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = cli(capsys, "compare", tmp_path / "broken.json", "--dataset", "fi")
    assert code == 1 and "is not a JSON file" in err
    code, _, err = cli(capsys, "compare", out / "metrics.json", "--dataset", "imagenet")
    assert code == 1 and "unknown dataset 'imagenet'" in err
