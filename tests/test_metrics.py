"""The pure metric functions, on cases small enough to count by hand."""

import pytest
import torch

from emovlm_kd.metrics import (
    classification_report,
    complementarity,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    reliability_bins,
)


def test_confusion_rows_are_truth_and_columns_predictions():
    predicted = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    assert confusion_matrix(predicted, labels, 3).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_per_class_precision_recall_and_macro_f1():
    names = ("a", "b", "c", "d")
    probs = torch.eye(4)[[0, 1, 1, 2, 2, 2]]  # predictions 0 1 1 2 2 2; class d never occurs
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    report = classification_report(probs, labels, names)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert report["per_class"]["b"]["precision"] == 0.5 and report["per_class"]["b"]["recall"] == 0.5
    assert report["per_class"]["c"]["precision"] == pytest.approx(2 / 3) and report["per_class"]["c"]["recall"] == 1.0
    # d is neither true nor predicted anywhere: left out of the macro average.
    assert report["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8) / 3)
    assert report["macro_f1"] == macro_f1(torch.tensor(report["confusion_matrix"]))


def test_calibration_bins_and_ece():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), and exactly 2/3 on a bin's upper edge.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [2 / 3, 1 / 3]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    bins = reliability_bins(probs, labels, bins=3)
    assert [row["count"] for row in bins] == [0, 2, 2]
    assert bins[1]["confidence"] == pytest.approx((0.6 + 2 / 3) / 2) and bins[1]["accuracy"] == 1.0
    assert bins[2]["confidence"] == pytest.approx(0.9) and bins[2]["accuracy"] == 0.5
    expected = (2 * abs((0.6 + 2 / 3) / 2 - 1.0) + 2 * abs(0.9 - 0.5)) / 4
    assert expected_calibration_error(bins) == pytest.approx(expected)


def test_complementarity_oracle_and_gap_recovered():
    vlm = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0], dtype=torch.bool)
    teacher = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    fused = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    result = complementarity(vlm, teacher, fused)
    assert result["counts"] == {"both_right": 2, "only_first_right": 2, "only_second_right": 2, "both_wrong": 2}
    assert result["oracle"] == 0.75 and result["best_single"] == 0.5 and result["fused_accuracy"] == 0.625
    assert result["gap_recovered"] == pytest.approx(0.5)
    assert result["fused_right"] == {"both_right": 2, "only_first_right": 2, "only_second_right": 1, "both_wrong": 0}
    assert complementarity(vlm, vlm, vlm)["gap_recovered"] is None


def test_bootstrap_intervals_cover_the_observed_score_and_narrow_with_more_images():
    from emovlm_kd.metrics import bootstrap_index, bootstrap_intervals

    generator = torch.Generator().manual_seed(0)
    for images, width_below in ((100, 0.25), (2000, 0.06)):
        labels = torch.randint(4, (images,), generator=generator)
        right = torch.rand(images, generator=generator) < 0.7
        predicted = torch.where(right, labels, (labels + 1) % 4)
        intervals = bootstrap_intervals(predicted, labels, 4, bootstrap_index(images))
        accuracy = float(right.double().mean())
        low, high = intervals["accuracy"]
        assert low < accuracy < high and high - low < width_below
        assert intervals["macro_f1"][0] < intervals["macro_f1"][1]
    # Seeded: the same call gives the same interval.
    assert bootstrap_intervals(predicted, labels, 4, bootstrap_index(images)) == intervals


def test_paired_bootstrap_sees_a_small_consistent_gain_that_unpaired_intervals_miss():
    from emovlm_kd.metrics import bootstrap_index, bootstrap_intervals, paired_bootstrap

    generator = torch.Generator().manual_seed(1)
    images = 300
    labels = torch.randint(3, (images,), generator=generator)
    baseline = torch.where(torch.rand(images, generator=generator) < 0.6, labels, (labels + 1) % 3)
    better = baseline.clone()
    fixed = ((baseline != labels).nonzero()[:, 0])[:15]  # right on 15 more images, wrong on none
    better[fixed] = labels[fixed]
    index = bootstrap_index(images)
    paired = paired_bootstrap(better, baseline, labels, 3, index)["accuracy"]
    assert paired["difference"] == pytest.approx(15 / images)
    assert paired["ci95"][0] > 0 and paired["p_not_better"] < 0.01
    # Each model's own interval overlaps the other's: only pairing shows the gain.
    assert bootstrap_intervals(baseline, labels, 3, index)["accuracy"][1] > bootstrap_intervals(better, labels, 3, index)["accuracy"][0]
    # And a model compared with itself is no better.
    same = paired_bootstrap(baseline, baseline, labels, 3, index)["accuracy"]
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_not_better"] == 1.0


def test_the_report_says_in_words_when_the_fusion_is_below_the_better_model():
    from emovlm_kd.apps.report.evaluation import gap_in_words

    right = torch.tensor([True, True, True, False, False])
    other = torch.tensor([True, False, False, True, False])
    below = complementarity(right, other, torch.tensor([True, False, False, False, False]))
    assert below["gap_recovered"] < -1  # the ratio that printed as "-1800%"
    text = gap_in_words(below)
    assert text.startswith("none: EmoVLM-KD is 40.0 points below") and "%" not in text
    above = complementarity(right, other, torch.tensor([True, True, True, True, False]))
    assert gap_in_words(above) == "100.00%"
    # The line `evaluate` prints says it the same way.
    from emovlm_kd.apps.report.tables import format_complementarity

    line = format_complementarity({"complementarity": {"vlm_head": dict(below, first="vlm", second="head")}})
    assert line.endswith("the gate recovers: none: EmoVLM-KD is 40.0 points below the better single model")
