"""Walking a folder for photos: every file once, never into OUT, symlinks only when asked."""
import os
from dataclasses import dataclass
from pathlib import Path

from .images import looks_like_image


@dataclass(frozen=True)
class Found:
    """A file under the input folder; `status` and `reason` say why it is reported without being read."""

    path: Path
    rel: str  # relative to the input folder, with / separators: the name used in reports and in OUT
    status: str = ""  # "" to sort it, "error" or "skipped"
    reason: str = ""


def walk_photos(root, exclude=(), follow_links=False):
    """Yield a `Found` for every candidate photo under `root`, in a stable (sorted) order.

    Folders in `exclude` (OUT inside INPUT) are not entered. Symlinks are skipped unless `follow_links`; when
    followed, each real file and folder is visited once, so loops and duplicates cannot happen.
    """
    root = Path(root)
    excluded = {os.path.realpath(p) for p in exclude}
    seen = set()
    yield from _walk(root, root, excluded, follow_links, seen)


def _walk(root, folder, excluded, follow_links, seen):
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name.encode("utf-8", "surrogateescape"))
    except OSError as e:
        yield Found(folder, _rel(root, folder) + "/", "error", f"cannot list folder: {e.strerror}")
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink() and not follow_links:
            yield Found(path, _rel(root, path), "skipped", "symbolic link (not followed without --follow-links)")
            continue
        try:
            real = os.path.realpath(path)
            stat = os.stat(path)
        except OSError:
            yield Found(path, _rel(root, path), "error", "broken symbolic link or vanished file")
            continue
        if real in excluded or (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        if entry.is_dir():
            yield from _walk(root, path, excluded, follow_links, seen)
        elif entry.is_file() and looks_like_image(path):
            yield Found(path, _rel(root, path))


def _rel(root, path):
    return Path(os.path.relpath(path, root)).as_posix()


def image_files(root):
    """All photo files under `root` for training and evaluation, sorted; links are followed (each file once)."""
    return [found.path for found in walk_photos(root, follow_links=True) if not found.status]
