"""Metrics on hand-made predictions, worked out on paper."""

import numpy as np
import pytest

from device.preprocess import CLASSES
from training.metrics import confusion_matrix, report


def test_report_on_hand_made_predictions():
    # angry: 3 true, 2 right; disgust: 1 true, predicted as angry; fear: 2 true, both right,
    # plus one angry predicted as fear.
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 2, 0, 2, 2])
    r = report(y_true, y_pred)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    angry, disgust, fear = (r["per_class"][c] for c in ("angry", "disgust", "fear"))
    assert (angry["precision"], angry["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (disgust["precision"], disgust["recall"], disgust["f1"]) == (0.0, 0.0, 0.0)
    assert fear["precision"] == pytest.approx(2 / 3) and fear["recall"] == 1.0
    assert fear["f1"] == pytest.approx(0.8)
    # macro-F1 averages the classes that are true or predicted (angry, disgust, fear)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.0 + 0.8) / 3)
    assert angry["f1"] == pytest.approx(2 / 3)
    assert [r["per_class"][c]["support"] for c in CLASSES] == [3, 1, 2, 0, 0, 0, 0]
    # rows the true class, columns the predicted one, counted from the pairs above
    expected = [[0] * 7 for _ in range(7)]
    expected[0][0], expected[0][2] = 2, 1  # angry: two right, one called fear
    expected[1][0] = 1  # disgust called angry
    expected[2][2] = 2  # fear: both right
    assert r["confusion_matrix"] == expected


def test_macro_f1_counts_a_class_that_is_only_predicted():
    # two angry faces, one called happy: angry F1 2/3, happy F1 0 (a false positive), as scikit-learn
    r = report(np.array([0, 0]), np.array([0, 3]))
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(np.array([1, 1, 3]), np.array([1, 3, 3]))
    assert cm[1, 1] == 1 and cm[1, 3] == 1 and cm[3, 3] == 1 and cm.sum() == 3
