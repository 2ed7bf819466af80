"""Placing copies in OUT atomically: a temporary file beside the target, then a rename."""
import errno
import os
import shutil
from pathlib import Path

from .errors import FacesortError

TMP_PREFIX = ".facesort-tmp-"


def destinations(labels):
    """The OUT folders a photo goes to: one per label, or neither."""
    return list(labels) or ["neither"]


def target_path(out_dir, folder, rel_path):
    """OUT/folder/<path relative to INPUT>: keeping the relative path means same-named files never collide."""
    return Path(out_dir) / folder / rel_path


def place_copy(source, target):
    """Copy `source` to `target` so that `target` is either absent, the old file, or the whole new file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_PREFIX}{os.getpid()}-{target.name}"[:255])
    try:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FacesortError(f"disk full while writing {target}: stopped; photos sorted so far are kept") from None
        raise


def remove_copy(target):
    """Remove a copy we placed earlier (reclassified or pruned), and its folders once empty."""
    Path(target).unlink(missing_ok=True)
    for parent in Path(target).parents:
        try:
            parent.rmdir()
        except OSError:
            break


def sweep_temporary_files(out_dir):
    """Delete temporary files a killed run left behind; returns how many."""
    count = 0
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if name.startswith(TMP_PREFIX) or (name.startswith(".") and ".tmp" in name):
                os.unlink(os.path.join(folder, name))
                count += 1
    return count


def check_writable(out_dir):
    """Fail before any work when OUT cannot be created or written."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(out_dir) / f"{TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FacesortError(f"cannot write to output folder {out_dir}: {e.strerror}") from None
