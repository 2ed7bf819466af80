"""What OUT already holds: a SQLite record of every sorted photo, and the lock that allows one run at a time.

Both live in OUT/.facesort/ and name photos by their path relative to INPUT, so moving OUT as a whole keeps them.
A photo's row is written only after its copies exist, and a copy is removed only once no row lists it: after any
crash the record never describes a copy that is not there. Work in flight is journalled (`pending`) before any copy
is placed, so the next run can remove the copies a killed run placed but never recorded; the photos a run set out
to classify are queued, so a stopped run's work is finished by the next one. The schema changes by migrations.
"""
import fcntl
import json
import os
import sqlite3
from pathlib import Path

from .errors import FacesortError, OutputLocked
from .migrations import migrate

STATE_DIR = ".facesort"
COLUMNS = ("rel", "size", "mtime_ns", "sha256", "model_sha256", "threshold", "mode", "status", "labels", "probs",
           "faces", "destinations", "error", "sorted_at")


class OutputLock:
    """An flock on OUT/.facesort/lock: the OS drops it when the process dies, so it never goes stale.

    Re-entrant within a process, so the CLI can take it before loading the model (a second run answers at once)
    and the library can still insist on it.
    """

    _held = {}  # lock file path -> [open file, depth]

    def __init__(self, out_dir):
        self.path = Path(os.path.realpath(out_dir)) / STATE_DIR / "lock"

    def __enter__(self):
        if self.path in self._held:
            self._held[self.path][1] += 1
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.path, "a+")
        except OSError as e:
            raise FacesortError(f"cannot write to output folder {self.path.parent.parent}: {e.strerror}") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise OutputLocked(f"another facesort run is using {self.path.parent.parent}; try again later") from None
        self._held[self.path] = [file, 1]
        return self

    def __exit__(self, *exc):
        held = self._held[self.path]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            held[0].close()  # closing the file releases the flock

    def held(self):
        return self.path in self._held


class State:
    """The photos table (one row per photo under INPUT a run has handled), the journal, and which INPUT it was."""

    def __init__(self, out_dir):
        path = Path(out_dir) / STATE_DIR / "state.sqlite"
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            migrate(self.db, path)
        except sqlite3.DatabaseError as e:
            raise FacesortError(f"cannot open {path}: {e} (move it away to start OUT afresh)") from None

    def all(self):
        """Every recorded photo as {rel: row dict}."""
        cursor = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM photos")
        return {os.fsdecode(row[0]): _decode(dict(zip(COLUMNS, row))) for row in cursor}

    def record(self, rows=(), forget=()):
        """In one transaction: write photo rows (and take them off the queue), drop the rows of photos in `forget`."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT OR REPLACE INTO photos VALUES ({', '.join(':' + c for c in COLUMNS)})",
                                [_encode(row) for row in rows])
            self.db.executemany("DELETE FROM queue WHERE rel = ?", [(os.fsencode(row["rel"]),) for row in rows])
            self.db.executemany("DELETE FROM photos WHERE rel = ?", [(os.fsencode(rel),) for rel in forget])

    def queued(self):
        """The photos an earlier run set out to classify and never recorded (it was stopped or killed)."""
        return {os.fsdecode(rel) for rel, in self.db.execute("SELECT rel FROM queue")}

    def queue(self, rels):
        """Replace the queue by the photos this run will classify, before any of them is."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM queue")
            self.db.executemany("INSERT INTO queue VALUES (?)", [(os.fsencode(rel),) for rel in rels])

    def intend(self, touched):
        """Journal {rel: folders} whose copies are about to be placed or removed; committed before any file moves."""
        with self.db:
            self.db.execute("BEGIN")
            for rel, folders in touched.items():
                key = os.fsencode(rel)
                row = self.db.execute("SELECT folders FROM pending WHERE rel = ?", (key,)).fetchone()
                merged = set(folders) | set(_split(row[0] if row else ""))
                self.db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?)", (key, ";".join(sorted(merged))))

    def pending(self):
        """Journalled work as {rel: (folders touched, folders the record lists now)}."""
        cursor = self.db.execute("SELECT pending.rel, pending.folders, photos.destinations FROM pending "
                                 "LEFT JOIN photos ON photos.rel = pending.rel")
        return {os.fsdecode(rel): (set(_split(touched)), set(_split(recorded))) for rel, touched, recorded in cursor}

    def settled(self):
        """Empty the journal: every copy it named now matches the record."""
        self.db.execute("DELETE FROM pending")

    def input_dir(self):
        return self._meta("input")

    def set_input_dir(self, path):
        self._set_meta("input", str(path))

    def listing_failures(self):
        """{rel: why} of the files the last run found but could not even look at (they are not in `photos`)."""
        return json.loads(self._meta("listing_failures") or "{}")

    def set_listing_failures(self, failures):
        self._set_meta("listing_failures", json.dumps(failures))

    def _meta(self, key):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key, value):
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self):
        self.db.close()


def _split(text):
    return [part for part in (text or "").split(";") if part]


def _encode(row):
    return dict(row, rel=os.fsencode(row["rel"]), probs=json.dumps(row["probs"]),
                destinations=";".join(row["destinations"]))


def _decode(row):
    row["rel"] = os.fsdecode(row["rel"])
    row["probs"] = json.loads(row["probs"] or "{}")
    row["destinations"] = _split(row["destinations"])
    return row
