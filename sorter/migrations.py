"""Numbered changes to OUT/.facesort/state.sqlite, each applied once, in order, in a transaction of its own.

As in simonw/llm's migrations.py: a schema change is a new function at the end of this file, never an edit of an
old one, so every user's OUT upgrades in place on its next run. The migrations applied are recorded in the
database itself, and `PRAGMA user_version` counts them, so a facesort older than the database refuses it.
"""
from datetime import datetime

from .errors import FacesortError

MIGRATIONS = []
PRE_MIGRATIONS_VERSION = 1  # databases written before migrations existed: the schema m001_initial creates


def migration(function):
    MIGRATIONS.append(function)
    return function


def migrate(db, path):
    """Apply the migrations `db` has not had yet (the connection is in autocommit mode); returns their names."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "migrations" not in tables and version != PRE_MIGRATIONS_VERSION:
        raise FacesortError(f"{path} is not a facesort state database (schema {version}); "
                            "move it away to start OUT afresh")
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations")}
    unknown = done - {function.__name__ for function in MIGRATIONS}
    if unknown:
        raise FacesortError(f"{path} was written by a newer facesort (migration {min(unknown)}): upgrade facesort")
    applied = []
    for function in MIGRATIONS:
        if function.__name__ not in done:
            with db:  # commits, or rolls back when the migration fails: never half a migration
                db.execute("BEGIN")
                function(db)
                db.execute("INSERT INTO migrations VALUES (?, ?)",
                           (function.__name__, datetime.now().isoformat(timespec="seconds")))
                db.execute(f"PRAGMA user_version = {len(done) + len(applied) + 1}")
            applied.append(function.__name__)
    return applied


@migration
def m001_initial(db):
    """The photos, the journal of copies in flight, and which INPUT OUT was sorted from (facesort's schema 1:
    `IF NOT EXISTS` makes this a no-op on a database from before migrations)."""
    db.execute("""CREATE TABLE IF NOT EXISTS photos (
        rel BLOB PRIMARY KEY,     -- path relative to INPUT, as the file system's bytes
        size INTEGER, mtime_ns INTEGER, sha256 TEXT,
        model_sha256 TEXT, threshold REAL, mode TEXT,
        status TEXT, labels TEXT, probs TEXT, faces INTEGER,
        destinations TEXT, error TEXT, sorted_at TEXT)""")
    db.execute("CREATE TABLE IF NOT EXISTS pending (rel BLOB PRIMARY KEY, folders TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")


@migration
def m002_queue(db):
    """The photos a run set out to classify, each dropped as it is recorded: what a stopped --rescan or
    --reclassify leaves is classified by the next run, whatever its options."""
    db.execute("CREATE TABLE queue (rel BLOB PRIMARY KEY)")
