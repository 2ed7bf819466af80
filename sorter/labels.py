"""Labels from folder names: the nearest folder named male, female or neither.

These functions are pickled by reference into exported learners, so they live here (an importable module) and
their names must not change.
"""
from pathlib import Path

VOCAB = ("female", "male")
LABEL_FOLDERS = ("female", "male", "neither")


def folder_label(path):
    """The nearest parent folder of `path` that names a label (case-insensitive), or None."""
    for parent in Path(path).parents:
        name = parent.name.lower()
        if name in LABEL_FOLDERS:
            return name
    return None


def label_set(path):
    """The multi-label target of a training image: [] for `neither`, else its one label (DataBlock get_y)."""
    label = folder_label(path)
    return [] if label in (None, "neither") else [label]


def labels_text(labels):
    """How a label set is written in reports and folder names: 'female;male', 'male', or 'neither'."""
    return ";".join(sorted(labels)) or "neither"


def labelled_images(images):
    """Split `images` into those under a label folder and the count of those under none."""
    labelled = [Path(p) for p in images if folder_label(p) is not None]
    return labelled, len(images) - len(labelled)
