"""Measuring a model on a labelled folder: predictions for every image, then metrics, per folder and per threshold.

Face-aware by default, as `facesort run` sorts: the figure is what a user of `run` gets. An image in which no face
is found has no probabilities (NaN), so it is predicted `neither` at every threshold, exactly as `run` places it.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FacesortError
from .faces import FaceFinder
from .groups import fairness, format_fairness, image_key
from .inference import BATCH_SIZE
from .labels import VOCAB, folder_label, label_set
from .metrics import OUTCOMES, label_metrics
from .prediction import predict_sources
from .training import find_training_images

SWEEP = tuple(round(t / 10, 1) for t in range(1, 10))  # 0.1 ... 0.9
CHUNK = 256  # images decoded and held in memory at a time


@dataclass
class Scored:
    """One labelled image and what the model made of it."""

    path: Path
    rel: str  # relative to DATA_DIR, / separated
    target: np.ndarray  # booleans over VOCAB
    probs: np.ndarray  # over VOCAB; NaN when no face was found (face-aware) or the image is unreadable
    faces: int | None = None
    error: str = ""

    @property
    def label(self):
        return folder_label(self.path)


def classify_labelled(data_dir, classifier, whole_image=False, batch_size=BATCH_SIZE, log=print, finder=None):
    """Every labelled image under `data_dir` with its probabilities, in path order; unreadable ones carry an error."""
    data_dir = Path(data_dir)
    paths = find_training_images(data_dir, log)
    finder = None if whole_image else finder or FaceFinder(device=classifier.device)
    scored = []
    for start in range(0, len(paths), CHUNK):
        chunk = [(path, path) for path in paths[start:start + CHUNK]]
        scored += [_scored(data_dir, result) for result in
                   predict_sources(classifier, chunk, whole_image, batch_size, finder)]
        log(f"classified {len(scored)}/{len(paths)}")
    return scored


def _scored(data_dir, result):
    path = Path(result["path"])
    return Scored(path, path.relative_to(data_dir).as_posix(), np.array([label in label_set(path) for label in VOCAB]),
                  np.array([result["probs"].get(label, np.nan) for label in VOCAB]), result["faces"], result["error"])


def evaluate(scored, threshold, group_depth=2, groups=None):
    """All numbers `facesort evaluate` reports, JSON-ready: metrics at `threshold`, per folder, per threshold, and
    `fairness` per group of people (women vs men, and a `sorter.groups.Groups` CSV's groups when given)."""
    readable = [s for s in scored if not s.error]
    if not readable:
        raise FacesortError("none of the labelled images could be read")
    probs = np.array([s.probs for s in readable])
    targets = np.array([s.target for s in readable])
    result = label_metrics(probs, targets, threshold)
    result["unreadable"] = len(scored) - len(readable)
    result["no_face"] = sum(s.faces == 0 for s in readable)
    result["faces_missed"] = sum(s.faces == 0 for s in readable if s.target.any())  # male/female, no face found
    result["groups"] = _groups(readable, probs, targets, threshold, group_depth)
    result["sweep"] = sweep(probs, targets, threshold)
    right = ((probs >= threshold) == targets).all(axis=1)  # a NaN (no face) is below every threshold: neither
    result["fairness"] = fairness([(image_key(s.rel), s.label, ok) for s, ok in zip(readable, right)], groups)
    return result


def group_of(rel, depth):
    """The folder an image is counted under: its first `depth` folders (e.g. the data source and label)."""
    return "/".join(rel.split("/")[:-1][:depth]) or "."


def _groups(readable, probs, targets, threshold, depth):
    names = np.array([group_of(s.rel, depth) for s in readable])
    groups = {}
    for name in sorted(set(names)):
        rows = names == name
        metrics = label_metrics(probs[rows], targets[rows], threshold)
        groups[name] = {key: metrics[key] for key in ("images", "exact_match", "accuracy_multi", "predicted")}
        groups[name]["no_face"] = sum(s.faces == 0 for s, row in zip(readable, rows) if row)
    return groups


def sweep(probs, targets, threshold):
    """Exact match, accuracy_multi and per-label precision/recall at 0.1 ... 0.9 and at `threshold` (marked)."""
    rows = []
    for t in sorted(set(SWEEP) | {float(threshold)}):
        metrics = label_metrics(probs, targets, t)
        row = {"threshold": t, "in_use": t == float(threshold), "exact_match": metrics["exact_match"],
               "accuracy_multi": metrics["accuracy_multi"]}
        for label in VOCAB:
            row[f"{label}_precision"] = metrics[label]["precision"]
            row[f"{label}_recall"] = metrics[label]["recall"]
        rows.append(row)
    return rows


def format_text(result):
    """The evaluation as plain text tables, for a terminal or a log."""
    lines = [f"{result['images']} images ({result['unreadable']} unreadable, not counted), "
             f"threshold {result['threshold']}"]
    if result["faces_missed"]:
        faces = result["female"]["support"] + result["male"]["support"]
        lines.append(f"no face found in {result['faces_missed']} of {faces} male/female images: they count as "
                     "neither (on tight face crops, --whole-image measures the classifier itself)")
    lines += [f"exact_match {result['exact_match']:.4f}  accuracy_multi {result['accuracy_multi']:.4f}", "",
              f"{'label':<8}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    for label in VOCAB:
        m = result[label]
        lines.append(f"{label:<8}{m['precision']:>10.4f}{m['recall']:>8.4f}{m['f1']:>8.4f}{m['support']:>9}")
    lines += ["", "outcomes (rows: truth, columns: prediction)", f"{'':<9}" + "".join(f"{o:>9}" for o in OUTCOMES)]
    for truth in OUTCOMES:
        lines.append(f"{truth:<9}" + "".join(f"{result['confusion'][truth][o]:>9}" for o in OUTCOMES))
    width = max(len("folder"), *(len(name) for name in result["groups"]))
    lines += ["", f"{'folder':<{width}}{'images':>8}{'exact':>8}{'acc_multi':>10}{'no_face':>9}  predicted"]
    for name, g in result["groups"].items():
        predicted = " ".join(f"{k}={v}" for k, v in g["predicted"].items() if v)
        lines.append(f"{name:<{width}}{g['images']:>8}{g['exact_match']:>8.4f}{g['accuracy_multi']:>10.4f}"
                     f"{g['no_face']:>9}  {predicted}")
    lines += ["", "per group of people (exact match)", *format_fairness(result["fairness"])]
    lines += ["", "threshold sweep (* = threshold in use)",
              f"{'thresh':>7}{'exact':>8}{'acc_multi':>10}" + "".join(f"{l + '_prec':>13}{l + '_rec':>12}" for l in VOCAB)]
    for row in result["sweep"]:
        lines.append(f"{row['threshold']:>6}{'*' if row['in_use'] else ' '}{row['exact_match']:>8.4f}"
                     f"{row['accuracy_multi']:>10.4f}" + "".join(
                         f"{row[f'{l}_precision']:>13.4f}{row[f'{l}_recall']:>12.4f}" for l in VOCAB))
    return "\n".join(lines)


def plot(result, path):
    """A PNG with the threshold sweep (left) and the outcome confusion matrix at the threshold in use (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    xs = [row["threshold"] for row in result["sweep"]]
    for key, style in (("exact_match", "k-"), ("accuracy_multi", "k--"), ("female_precision", "r-"),
                       ("female_recall", "r:"), ("male_precision", "b-"), ("male_recall", "b:")):
        left.plot(xs, [row[key] for row in result["sweep"]], style, label=key)
    left.axvline(result["threshold"], color="grey", linestyle="-.", label=f"in use ({result['threshold']:g})")
    left.set(xlabel="threshold", ylabel="score", ylim=(0, 1.02), title="threshold sweep")
    left.legend(loc="lower center", fontsize=8)
    matrix = np.array([[result["confusion"][t][p] for p in OUTCOMES] for t in OUTCOMES])
    right.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        right.text(j, i, str(count), ha="center", va="center",
                   color="white" if count > matrix.max() / 2 else "black")
    right.set(xticks=range(len(OUTCOMES)), yticks=range(len(OUTCOMES)), xticklabels=OUTCOMES, yticklabels=OUTCOMES,
              xlabel="prediction", ylabel="truth",
              title=f"outcomes at {result['threshold']:g} (exact match {result['exact_match']:.3f})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
