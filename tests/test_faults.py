"""Faults of the output disk: full in the middle of a run, read-only or not writable from the start.

Disk full is tested for real on a small tmpfs mounted for the test (root only; elsewhere that test is skipped and
the injected one below still runs).
"""
import csv
import errno
import os
import subprocess
from pathlib import Path

import pytest
from conftest import make_photo, permission_bits_enforced

import sorter.placement
import sorter.sorting
from sorter.placement import TMP_PREFIX
from sorter.state import State

COMMENT = bytes(range(256)) * 250  # 64,000 bytes in each photo's JPEG comment: a few photos fill a small disk


def mount_tmpfs(folder, size, *options):
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                             str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own, unmounted after the test."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1m")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def big_photos(folder, count, start=0):
    labels = ["male", "female", "neither"]
    return [make_photo(folder / f"{labels[i % 3]}_{i}.jpg", labels[i % 3], seed=i, comment=COMMENT)
            for i in range(start, start + count)]


def copies(out):
    return {p.relative_to(out): p for folder in ("male", "female", "neither") for p in (out / folder).rglob("*")
            if p.is_file()}


def leftovers(out):
    return [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX) or ".tmp" in p.name]


def cumulative(out):
    with open(out / "facesort-report.csv", encoding="utf-8-sig", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_disk_full_stops_the_run_and_keeps_what_was_sorted(cli, colour_model, small_disk, tmp_path):
    photos, out = tmp_path / "photos", small_disk / "out"
    big_photos(photos, 3)
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    first = cumulative(out)
    big_photos(photos, 30, start=3)  # 30 x 64 kB more than the 1 MiB disk holds

    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image")
    assert_stopped_by_full_disk(result)
    assert leftovers(out) == []
    for rel, copy in copies(out).items():  # every copy is whole: none half-written
        assert copy.read_bytes() == (photos / rel.relative_to(rel.parts[0])).read_bytes(), rel
    assert cumulative(out) == first  # what was sorted before is still sorted and recorded
    assert listed_copies(first) <= set(copies(out))  # (the stopped chunk's whole copies wait for the next run)

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    assert len(cumulative(out)) == 33  # nothing lost
    assert set(copies(out)) == listed_copies(cumulative(out))  # nothing twice, nothing unrecorded


def listed_copies(rows):
    return {Path(folder) / path for path, row in rows.items() for folder in row["destinations"].split(";")}


def test_disk_full_injected(cli, colour_model, photos, tmp_path, monkeypatch):
    """The same stop where no file system can be mounted: the third copy fails with ENOSPC half-way through."""
    real_copy, calls = sorter.placement._copy, []

    def copy_until_full(src, fd, tmp):
        calls.append(tmp)
        if len(calls) == 3:
            os.write(fd, src.read(100))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(src, fd, tmp)

    monkeypatch.setattr(sorter.placement, "_copy", copy_until_full)
    out = tmp_path / "out"
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image")
    assert_stopped_by_full_disk(result)
    assert leftovers(out) == [] and not Path(calls[2]).exists()
    placed = copies(out)  # the copies before it, and those under way in the other copy threads: whole
    assert 2 <= len(placed) < len(list(photos.rglob("*.jpg")))
    for rel, copy in placed.items():
        assert copy.read_bytes() == (photos / rel.relative_to(rel.parts[0])).read_bytes(), rel


def test_copies_and_their_folders_reach_the_disk_before_the_record(cli, colour_model, photos, tmp_path,
                                                                   monkeypatch):
    """After a power cut the record never lists a copy that is empty or missing: each copy is fsync'ed before its
    rename, and its folders (new ones included) after, before its chunk is recorded."""
    events, real_fsync, real_replace, real_record = [], os.fsync, os.replace, State.record
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or
                        real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append(("rename", str(src), str(dst))) or
                        real_replace(src, dst))
    monkeypatch.setattr(State, "record", lambda state, rows=(), forget=(): events.append(
        ("record", {row["rel"] for row in rows})) or real_record(state, rows, forget))
    out = (tmp_path / "out").resolve()
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image", "--chunk-size", "2")
    assert result.exit_code == 0, result.output
    for folder_and_rel, copy in copies(out).items():
        rel = folder_and_rel.relative_to(folder_and_rel.parts[0]).as_posix()
        [(renamed, tmp)] = [(i, e[1]) for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(copy)]
        recorded = next(i for i, e in enumerate(events) if e[0] == "record" and rel in e[1])
        assert ("fsync", tmp) in events[:renamed], f"{copy} renamed before it was on disk"
        synced = {event[1] for event in events[renamed:recorded] if event[0] == "fsync"}
        assert {str(folder) for folder in copy.parents if folder.is_relative_to(out)} <= synced, copy


def assert_stopped_by_full_disk(result):
    """Exit 1 with a one-line error after the run's log lines; no traceback."""
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1].startswith("facesort: error: disk full while writing ")
    assert "Traceback" not in result.output


def test_read_only_output_file_system_is_refused_before_any_work(cli, colour_model, photos, tmp_path, monkeypatch):
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "1m", "ro")
    try:
        assert_refused_before_work(cli, colour_model, photos, disk / "out", monkeypatch, "Read-only file system")
        assert_refused_before_work(cli, colour_model, photos, disk, monkeypatch, "Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_output_without_write_permission_is_refused_before_any_work(cli, colour_model, photos, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    with permission_bits_enforced():
        assert_refused_before_work(cli, colour_model, photos, out, monkeypatch, "Permission denied")
        assert_refused_before_work(cli, colour_model, photos, out / "sub", monkeypatch, "Permission denied")
    assert list(out.iterdir()) == []


def assert_refused_before_work(cli, model, photos, out, monkeypatch, reason):
    """One line, exit 1, and neither a photo decoded nor the model loaded."""
    work = []
    monkeypatch.setattr(sorter.sorting, "load_image", lambda *a: work.append(a))
    monkeypatch.setattr("sorter.model.ModelFile.load", lambda *a: work.append(a))
    result = cli("run", photos, "--out", out, "--model", model, "--whole-image")
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("facesort: error: cannot write to output")
    assert reason in result.output and work == []
