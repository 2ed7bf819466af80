"""Measuring label-set predictions: exact match, per-label precision/recall, outcome tables, thresholds."""
import numpy as np

from .labels import VOCAB

OUTCOMES = ("neither", "female", "male", "both")
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.01), 2)


def outcome(labels_row):
    """The outcome name of one boolean row over VOCAB (female, male)."""
    female, male = bool(labels_row[0]), bool(labels_row[1])
    return "both" if female and male else "female" if female else "male" if male else "neither"


def exact_match(probs, targets, threshold):
    """Share of images whose whole label set is right."""
    preds = np.asarray(probs) >= threshold
    return float((preds == np.asarray(targets).astype(bool)).all(axis=1).mean())


def best_threshold(probs, targets):
    """The threshold with the best exact-match accuracy; ties go to the one nearest 0.5 (least surprising)."""
    scores = [(exact_match(probs, targets, t), -abs(t - 0.5), float(t)) for t in THRESHOLDS]
    return max(scores)[2]


def label_metrics(probs, targets, threshold):
    """Everything `train` and `evaluate` report about predictions at one threshold."""
    probs, targets = np.asarray(probs, dtype=float), np.asarray(targets).astype(bool)
    preds = probs >= threshold
    result = {
        "threshold": float(threshold),
        "images": int(len(targets)),
        "exact_match": exact_match(probs, targets, threshold),
        "accuracy_multi": float((preds == targets).mean()),
    }
    for i, label in enumerate(VOCAB):
        tp = int((preds[:, i] & targets[:, i]).sum())
        predicted, actual = int(preds[:, i].sum()), int(targets[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    result["predicted"] = {name: 0 for name in OUTCOMES}
    result["confusion"] = {truth: {pred: 0 for pred in OUTCOMES} for truth in OUTCOMES}
    for truth_row, pred_row in zip(targets, preds):
        result["predicted"][outcome(pred_row)] += 1
        result["confusion"][outcome(truth_row)][outcome(pred_row)] += 1
    return result
