"""The fixed train / valid / test split of a labelled data folder, by a stable hash that keeps people together.

The same images are held out on every machine and run, so `facesort train --crop-faces` never trains on what
scripts/heldout.py tests with. Photos of one person must not straddle the split, or validation flatters the model:
faces-wild and faces-web number their files in runs of the same person (`woman_1000.jpg`, `face_12.jpg`), so a
file whose name ends in a number is hashed by its block of BLOCK numbers, not alone.
"""
import hashlib
import re
from pathlib import PurePosixPath

TEST_PCT = VALID_PCT = 10  # per cent of every folder held out for testing, and for validation
BLOCK = 100  # files numbered n and m share a split when n // BLOCK == m // BLOCK
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def split_key(rel_path):
    """What the hash is taken of: the path less its suffix, with a trailing file number replaced by its block."""
    stem = PurePosixPath(rel_path).with_suffix("")
    numbered = _NUMBERED.match(stem.name)
    if numbered:
        stem = stem.with_name(f"{numbered[1]}#{int(numbered[2]) // BLOCK}")
    return str(stem)


def split_of(rel_path):
    """'test', 'valid' or 'train' for an image, from its path under its data folder."""
    bucket = int(hashlib.sha256(split_key(rel_path).encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < TEST_PCT else "valid" if bucket < TEST_PCT + VALID_PCT else "train"
