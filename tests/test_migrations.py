"""OUT/.facesort/state.sqlite upgrades in place: numbered migrations, each applied once, in order, all or nothing."""
import sqlite3

import pytest

from sorter import migrations
from sorter.errors import FacesortError
from sorter.state import State

# The schema as facesort wrote it before migrations existed (schema 1), and the way it created it.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    rel BLOB PRIMARY KEY,     -- path relative to INPUT, as the file system's bytes
    size INTEGER, mtime_ns INTEGER, sha256 TEXT,
    model_sha256 TEXT, threshold REAL, mode TEXT,
    status TEXT, labels TEXT, probs TEXT, faces INTEGER,
    destinations TEXT, error TEXT, sorted_at TEXT
);
CREATE TABLE IF NOT EXISTS pending (rel BLOB PRIMARY KEY, folders TEXT);  -- copies being placed or removed
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


def make_v1_out(out, input_dir, photo, sha256):
    """An OUT whose state a schema-1 facesort wrote after sorting `photo` (a path under `input_dir`) into male/."""
    db_path = out / ".facesort" / "state.sqlite"
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(f"BEGIN; {V1_SCHEMA} PRAGMA user_version=1; COMMIT;")
    st = photo.stat()
    db.execute("INSERT INTO photos VALUES (?, ?, ?, '', ?, 0.5, 'whole-image', 'sorted', 'male', '{}', NULL, "
               "'male', '', '2026-11-30T02:30:00')", (photo.name.encode(), st.st_size, st.st_mtime_ns, sha256))
    db.execute("INSERT INTO meta VALUES ('input', ?)", (str(input_dir.resolve()),))
    db.close()
    return db_path


def applied(db_path):
    db = sqlite3.connect(db_path)
    try:
        names = [row[0] for row in db.execute("SELECT name FROM migrations ORDER BY name")]
        return names, db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_v1_out_is_upgraded_in_place_and_its_record_kept(cli, colour_model, photos, tmp_path):
    from sorter.archs import sha256_of

    out = tmp_path / "out"
    db_path = make_v1_out(out, photos, photos / "male_0.jpg", sha256_of(colour_model))
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert "unchanged=1" in result.output and "new=6" in result.output, "the v1 record was not used"
    names = [f.__name__ for f in migrations.MIGRATIONS]
    assert names[:2] == ["m001_initial", "m002_queue"] and applied(db_path) == (names, len(names))


def test_a_second_open_applies_nothing(tmp_path):
    (tmp_path / ".facesort").mkdir()
    State(tmp_path).close()
    db_path = tmp_path / ".facesort" / "state.sqlite"
    db = sqlite3.connect(db_path, isolation_level=None)
    before = db.execute("SELECT * FROM migrations").fetchall()
    assert migrations.migrate(db, db_path) == []
    assert db.execute("SELECT * FROM migrations").fetchall() == before
    db.close()


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    (tmp_path / ".facesort").mkdir()
    State(tmp_path).close()
    db_path = tmp_path / ".facesort" / "state.sqlite"
    before = applied(db_path)

    def m999_half_done(db):
        db.execute("CREATE TABLE half (x)")
        db.execute("INSERT INTO nowhere VALUES (1)")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_half_done])
    with pytest.raises(FacesortError, match="no such table: nowhere"):
        State(tmp_path)
    assert applied(db_path) == before
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone() == (0,)
    db.close()


def test_a_database_from_a_newer_facesort_is_refused(tmp_path):
    (tmp_path / ".facesort").mkdir()
    State(tmp_path).close()
    db = sqlite3.connect(tmp_path / ".facesort" / "state.sqlite", isolation_level=None)
    db.execute("INSERT INTO migrations VALUES ('m999_future', '2027-01-01T00:00:00')")
    db.close()
    with pytest.raises(FacesortError, match=r"written by a newer facesort \(migration m999_future\)"):
        State(tmp_path)
