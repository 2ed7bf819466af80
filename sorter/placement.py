"""Placing copies in OUT atomically: a temporary file beside the target, then a rename."""
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import FacesortError

TMP_PREFIX = ".facesort-tmp-"
REPORT_TMP = re.compile(r"\..+\.tmp\d+")  # report.write_report's temporary name
REPORT_FOLDERS = (".", "reports")  # where runs write reports inside OUT


def destinations(labels):
    """The OUT folders a photo goes to: one per label, or neither."""
    return list(labels) or ["neither"]


def target_path(out_dir, folder, rel_path):
    """OUT/folder/<path relative to INPUT>: keeping the relative path means same-named files never collide."""
    return Path(out_dir) / folder / rel_path


def place_copy(source, target):
    """Copy `source` to `target` so that `target` is either absent, the old file, or the whole new file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)  # a short name: the target's may be 255 bytes
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FacesortError(f"disk full while writing {target}: stopped; photos sorted so far are kept") from None
        raise


def remove_copy(out_dir, folder, rel_path):
    """Remove a copy placed earlier (reclassified or pruned), and the folders it leaves empty, up to OUT."""
    target = target_path(out_dir, folder, rel_path)
    target.unlink(missing_ok=True)
    for parent in target.parents:
        if parent == Path(out_dir):
            break
        try:
            parent.rmdir()
        except OSError:
            break


def sweep_temporary_files(out_dir):
    """Delete the temporary files a killed run left behind; returns how many."""
    count = 0
    for folder, _, files in os.walk(out_dir):
        in_report_folder = os.path.relpath(folder, out_dir) in REPORT_FOLDERS
        for name in files:
            if name.startswith(TMP_PREFIX) or (in_report_folder and REPORT_TMP.fullmatch(name)):
                os.unlink(os.path.join(folder, name))
                count += 1
    return count


def check_folders(input_dir, out_dir):
    """Fail before any work (and before OUT is created) when INPUT cannot be read or is OUT itself."""
    if not Path(input_dir).is_dir():
        raise FacesortError(f"input folder not found: {input_dir}")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise FacesortError(f"cannot read input folder: {input_dir}")
    if os.path.realpath(input_dir) == os.path.realpath(out_dir):
        raise FacesortError("the output folder must not be the input folder")


def check_writable(out_dir):
    """Fail before any work when OUT cannot be created or written."""
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(out_dir) / f"{TMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FacesortError(f"cannot write to output folder {out_dir}: {e.strerror}") from None
