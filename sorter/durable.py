"""Replacing a small file whole and durably: after a crash, a kill or a power cut it holds the old content or the
new one, never a mix, and once the function returns, the new one. For records a user relies on: review.csv's
decisions, the undo log of a clean. Light on purpose (no torch): the review page and `clean` import it."""
import json
import os
from pathlib import Path


def replace_durably(tmp, path):
    """Rename the written and closed file `tmp` over `path`; its content and the rename are on disk on return."""
    _fsync(tmp, os.O_RDONLY)
    os.replace(tmp, path)
    _fsync(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY)


def write_json_durably(path, data):
    """`data` as indented JSON in `path`, replaced whole and durably."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    replace_durably(tmp, path)


def _fsync(path, flags):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
