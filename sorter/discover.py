"""Walking a folder for photos: every file once, never into OUT, symlinks only when asked."""
import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_SUFFIXES, looks_like_image

TRASH_DIR = ".facesort-trash"  # where `facesort clean` moves deleted images, inside DATA_DIR


@dataclass(frozen=True)
class Found:
    """A file under the input folder; `status` and `reason` say why it is reported without being read."""

    path: Path
    rel: str  # relative to the input folder, with / separators: the name used in reports and in OUT
    status: str = ""  # "" to sort it, "error" or "skipped"
    reason: str = ""
    stat: os.stat_result | None = None  # taken while listing: later changes to the file are detectable


def walk_photos(root, exclude=(), follow_links=False):
    """Yield a `Found` for every candidate photo under `root`, and for every file or folder that cannot be read.

    Folders in `exclude` (OUT inside INPUT) are not entered. Symlinks are reported as skipped unless
    `follow_links`; when followed they are walked after every real path, so a file reachable both ways keeps its
    real name, and each real file and folder is visited once (loops end, duplicates are reported as skipped).
    """
    yield from _Walk(Path(root), exclude, follow_links).run()


class _Walk:
    def __init__(self, root, exclude, follow_links):
        self.root, self.follow_links = root, follow_links
        self.excluded = {_key(os.stat(p)) for p in exclude if os.path.isdir(p)}
        self.seen = {}  # (st_dev, st_ino) -> the name it was first found under
        self.links = []  # symlinks met so far, walked once the real paths are done

    def run(self):
        with contextlib.suppress(OSError):  # an unreadable root is reported by folder()
            self.seen[_key(os.stat(self.root))] = "."
        yield from self.folder(self.root)
        while self.links:
            links, self.links = self.links, []
            for path in links:
                yield from self.entry(path, is_link=True)

    def folder(self, folder):
        try:
            entries = sorted(os.scandir(folder), key=lambda e: os.fsencode(e.name))
        except OSError as e:
            yield Found(folder, self.rel(folder) + "/", "error", f"cannot list folder: {e.strerror}")
            return
        for entry in entries:
            path = Path(entry.path)
            if not entry.is_symlink():
                yield from self.entry(path)
            elif self.follow_links:
                self.links.append(path)
            else:
                yield Found(path, self.rel(path), "skipped", "symbolic link (not followed without --follow-links)")

    def entry(self, path, is_link=False):
        rel = self.rel(path)
        try:
            st = os.stat(path)
        except OSError as e:
            yield Found(path, rel, "error", _stat_error(e, is_link))
            return
        key = _key(st)
        if key in self.excluded:
            return
        if stat.S_ISDIR(st.st_mode):
            if key in self.seen:
                yield Found(path, rel, "skipped", f"link to a folder already walked as {self.seen[key]}")
                return
            self.seen[key] = rel
            yield from self.folder(path)
        elif not stat.S_ISREG(st.st_mode):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield Found(path, rel, "error", "not a regular file (a device, pipe or socket)")
        elif looks_like_image(path):
            if key in self.seen:
                yield Found(path, rel, "skipped", f"same file as {self.seen[key]} (sorted once)")
                return
            self.seen[key] = rel
            yield Found(path, rel, stat=st)

    def rel(self, path):
        return _rel(self.root, path)


def _key(st):
    return st.st_dev, st.st_ino


def _stat_error(e, is_link):
    """Why an entry that was just listed cannot be looked at."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(e, FileNotFoundError):
        return "broken symbolic link: its target does not exist" if is_link else "file vanished while listing"
    return f"cannot read: {e.strerror}"


def _rel(root, path):
    return Path(os.path.relpath(path, root)).as_posix()


def image_files(root):
    """All photo files under `root` for training and evaluation, sorted; links are followed (each file once).

    The trash of `facesort clean` is skipped: what a user deleted must not come back as training data.
    """
    trash = Path(root) / TRASH_DIR
    return [found.path for found in walk_photos(root, exclude=[trash], follow_links=True) if not found.status]
