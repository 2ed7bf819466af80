"""Who is in each labelled photo (age band, race, source…, from a metadata CSV) and how right a model is per group.

A model that is right on average can still fail women, older people or one skin tone: `facesort evaluate
--groups CSV` and `facesort train --groups CSV` report exact-match accuracy for every group, the worst group, and
the gap between women's and men's error.

The CSV has a `file` column, a path relative to the folder it describes (as `../shared/data/*/metadata.csv`), and
any other columns; a column is a grouping when it takes between 2 and MAX_VALUES values (so not sizes or dates).
"""
import csv
from collections import defaultdict
from pathlib import PurePosixPath

from .errors import FacesortError

MAX_VALUES = 20
MIN_IMAGES = 20  # a group smaller than this is reported but not named the worst: its figure is mostly noise
UTK_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Other"}  # UTKFace's race codes


def utk_age_race(name):
    """(age, race) from a UTKFace file name `age_gender_race_datetime`, e.g. 25_1_3_20170104.jpg.chip.jpg; None
    for any other name."""
    parts = name.split("_")
    if len(parts) < 4 or not parts[0].isdigit() or parts[2] not in UTK_RACES:
        return None
    return int(parts[0]), UTK_RACES[parts[2]]


def image_key(rel_path):
    """An image's name with its folders joined by `_` and no suffix: how `facesort train --crop-faces` names crops,
    so a crop and the photo it came from have the same key (`faces-utk/male/1.jpg` → `faces-utk_male_1`)."""
    return "_".join(PurePosixPath(rel_path).with_suffix("").parts)


class Groups:
    """The grouping columns of a metadata CSV, looked up by image key."""

    def __init__(self, rows):
        self.rows = {image_key(row.pop("file")): row for row in rows}
        values = defaultdict(set)
        for row in self.rows.values():
            for column, value in row.items():
                values[column].add(value)
        self.columns = [c for c, v in values.items() if 2 <= len(v) <= MAX_VALUES]

    @classmethod
    def read(cls, csv_path):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise FacesortError(f"cannot read groups file {csv_path}: {e.strerror}") from None
        if not rows or "file" not in rows[0]:
            raise FacesortError(f"groups file {csv_path} has no `file` column (paths of the images it describes)")
        return cls(rows)

    def of(self, key):
        """The group values of an image: its key, or the longest tail of it after an `_` (the CSV may describe a
        subfolder of the data: `female/1` in `faces-utk-more/metadata.csv` is `faces-utk-more_female_1`)."""
        row = self.rows.get(key)
        start = key.find("_")
        while row is None and start >= 0:
            row = self.rows.get(key[start + 1:])
            start = key.find("_", start + 1)
        return {column: row.get(column, "") for column in self.columns} if row else {}


def fairness(records, groups=None):
    """Per-group accuracy from (key, truth label, right?) records: women vs men always, CSV groups when given.

    JSON-ready: {"groups": {"gender=female": {"images", "accuracy"}, ...}, "worst_group", "worst_accuracy",
    "error_gap_women_men"} (women's error minus men's, in points of accuracy)."""
    tallies = defaultdict(lambda: [0, 0])
    for key, truth, right in records:
        names = [f"gender={truth}"] + [f"{c}={v}" for c, v in (groups.of(key) if groups else {}).items() if v]
        for name in names:
            tallies[name][0] += 1
            tallies[name][1] += bool(right)
    table = {name: {"images": n, "accuracy": ok / n} for name, (n, ok) in sorted(tallies.items())}
    sized = {name: row for name, row in table.items() if row["images"] >= MIN_IMAGES}
    worst = min(sized, key=lambda name: sized[name]["accuracy"]) if sized else None
    women, men = table.get("gender=female"), table.get("gender=male")
    gap = 100 * (men["accuracy"] - women["accuracy"]) if women and men else None
    return {"groups": table, "worst_group": worst, "worst_accuracy": sized[worst]["accuracy"] if worst else None,
            "error_gap_women_men": gap}


def format_fairness(result):
    """The text lines `facesort evaluate` and `train` print for `fairness`."""
    lines = [f"{'group':<32} {'images':>7} {'accuracy':>9}"]
    lines += [f"{name:<32} {row['images']:>7} {row['accuracy']:>9.1%}" for name, row in result["groups"].items()]
    if result["worst_group"]:
        lines.append(f"worst group: {result['worst_group']} {result['worst_accuracy']:.1%}")
    if result["error_gap_women_men"] is not None:
        lines.append(f"women's error minus men's: {result['error_gap_women_men']:+.1f} points")
    return lines
