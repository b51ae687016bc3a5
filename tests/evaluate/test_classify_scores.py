"""Accuracy, macro-F1 and the confusion matrix against scikit-learn's."""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from gptforge.evaluate.classify import format_scores, scores


def test_scores_equal_scikit_learns():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3, 5):
        labels, predicted = rng.integers(0, n_classes, 50), rng.integers(0, n_classes, 50)
        predicted[:3] = 0  # and a class nobody predicts, sometimes
        ours = scores(labels, predicted, n_classes)
        classes = list(range(n_classes))
        assert ours["accuracy"] == accuracy_score(labels, predicted)
        assert np.isclose(ours["macro_f1"], f1_score(labels, predicted, labels=classes, average="macro",
                                                     zero_division=0))
        assert ours["confusion"] == confusion_matrix(labels, predicted, labels=classes).tolist()


def test_a_class_absent_from_both_counts_zero():
    ours = scores(np.array([0, 0, 1]), np.array([0, 0, 1]), 3)
    assert ours["accuracy"] == 1.0 and np.isclose(ours["macro_f1"], 2 / 3)
    assert "macro-F1: 0.6667" in format_scores({"examples": 3, "classes": ["a", "b", "c"], **ours})
