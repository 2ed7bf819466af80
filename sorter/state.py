"""What OUT already holds: a SQLite record of every sorted photo, and the lock that allows one run at a time.

Both live in OUT/.facesort/, so moving OUT as a whole keeps them. A row is written only after its copies exist,
so after any crash the record never describes a copy that is not there.
"""
import fcntl
import json
import os
import sqlite3
from pathlib import Path

from .errors import OutputLocked

STATE_DIR = ".facesort"

SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    rel BLOB PRIMARY KEY,     -- path relative to INPUT, as the file system's bytes
    size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    model_sha256 TEXT, threshold REAL,
    status TEXT, labels TEXT, probs TEXT, faces INTEGER,
    destinations TEXT, error TEXT, sorted_at TEXT
);
"""


class OutputLock:
    """An flock on OUT/.facesort/lock: the OS drops it when the process dies, so it never goes stale."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / STATE_DIR / "lock"
        self.file = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise OutputLocked(f"another facesort run is using {self.path.parent.parent}; try again later") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


class State:
    """The photos table: one row per photo under INPUT that a run has handled."""

    def __init__(self, out_dir):
        self.db = sqlite3.connect(Path(out_dir) / STATE_DIR / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def all(self):
        """Every recorded photo as {rel: row dict}."""
        cursor = self.db.execute("SELECT * FROM photos")
        names = [d[0] for d in cursor.description]
        return {os.fsdecode(row[0]): _decode(dict(zip(names, row))) for row in cursor}

    def record(self, rows):
        """Write a batch of photo rows in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO photos VALUES (:rel, :size, :mtime_ns, :sha256, :model_sha256, :threshold,"
                " :status, :labels, :probs, :faces, :destinations, :error, :sorted_at)",
                [_encode(row) for row in rows])

    def forget(self, rels):
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM photos WHERE rel = ?", [(os.fsencode(rel),) for rel in rels])

    def close(self):
        self.db.close()


def _encode(row):
    row = dict(row, rel=os.fsencode(row["rel"]), probs=json.dumps(row["probs"]),
               destinations=";".join(row["destinations"]))
    return row


def _decode(row):
    row["rel"] = os.fsdecode(row["rel"])
    row["probs"] = json.loads(row["probs"] or "{}")
    row["destinations"] = [d for d in (row["destinations"] or "").split(";") if d]
    return row
