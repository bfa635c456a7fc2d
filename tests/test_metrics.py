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
