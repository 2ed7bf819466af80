"""A labelled folder and the review.csv `facesort review --top 0` would write for it, made without a model.

The probabilities are set by hand (two images the model "disagrees" with come first), so the review page's tests
depend on no network's answers.
"""
from pathlib import Path

from conftest import make_photo
from sorter.hashing import sha256_of
from sorter.report import write_report
from sorter.review import COLUMNS

# (path under DATA_DIR, what the model says, prob_female, prob_male, loss), worst first
ROWS = [("web/female/female_0.jpg", "male", 0.02, 0.97, 3.1),
        ("web/male/male_1.jpg", "neither", 0.1, 0.2, 0.9),
        ("web/male/male_0.jpg", "male", 0.01, 0.95, 0.03),
        ("web/female/female_1.jpg", "female", 0.96, 0.02, 0.03),
        ("web/neither/neither_0.jpg", "neither", 0.03, 0.02, 0.02),
        ("web/neither/neither_1.jpg", "neither", 0.01, 0.01, 0.01)]


def reviewed_folder(root):
    """DATA (photos coloured as their folder says) and OUT/review.csv listing them all; returns (data, csv)."""
    data, out = Path(root) / "data", Path(root) / "review"
    rows = []
    for rank, (rel, predicted, female, male, loss) in enumerate(ROWS, 1):
        label = rel.split("/")[1]
        photo = make_photo(data / rel, label, seed=rank)
        rows.append({"rank": rank, "path": rel, "label": label, "predicted": predicted, "prob_female": female,
                     "prob_male": male, "loss": loss, "action": "", "sha256": sha256_of(photo),
                     "data_dir": str(data.resolve())})
    return data, write_report(out / "review.csv", rows, COLUMNS)
