"""facesort run from cron: incremental runs, one run at a time, crash safety, the nightly wrapper.

The crash tests run the real CLI in separate processes, forked from a server that has imported torch and fastai
once (multiprocessing's forkserver), so each costs a model load rather than a Python start. A process can be told
to freeze itself (SIGSTOP) just before or after the n-th call of some function; the test then sends it a real
SIGKILL or SIGTERM at exactly that point.
"""
import csv
import importlib
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import COLOURS, make_photo, tree_digest

from sorter import sorting
from sorter.placement import TMP_PREFIX
from sorter.state import State

ROOT = Path(__file__).resolve().parent.parent
LABEL_FOLDERS = ("female", "male", "neither")
CHUNK = 2  # photos per commit in the crash tests: 10 photos make 5 chunks


def make_input(root, per_label=3):
    """Photos of every label, one in a subfolder: 3 * per_label + 1 files."""
    for label in COLOURS:
        for i in range(per_label):
            make_photo(root / f"{label}_{i}.jpg", label, seed=300 + i)
    make_photo(root / "trip" / "female_0.jpg", "female", seed=400)
    return root


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def copies(out):
    """{(folder, relative path)} of every file in OUT's label folders.

    os.walk, not rglob: a run in progress may remove an emptied folder while this looks (walk skips it)."""
    found = set()
    for folder in LABEL_FOLDERS:
        for parent, _, files in os.walk(out / folder):
            for name in files:
                found.add((folder, Path(parent, name).relative_to(out / folder).as_posix()))
    return found


def listed(rows):
    return {(folder, rel) for rel, row in rows.items() for folder in row["destinations"].split(";") if folder}


def temporary_files(out):
    return [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX) or re.fullmatch(r"\..+\.tmp\d+", p.name)]


def assert_consistent(out, input_dir):
    """What must hold after any crash: whole copies only, and no record of a copy that is not there."""
    for folder, rel in copies(out):
        if not Path(rel).name.startswith(TMP_PREFIX):
            assert (out / folder / rel).read_bytes() == (input_dir / rel).read_bytes(), f"partial copy {folder}/{rel}"
    for rel, record in _state(out).items():
        for folder in record["destinations"]:
            assert (out / folder / rel).is_file(), f"state lists {folder}/{rel}, which is missing"
    if (out / "facesort-report.csv").exists():
        for folder, rel in listed(read_csv(out / "facesort-report.csv")):
            assert (out / folder / rel).is_file(), f"the cumulative report lists {folder}/{rel}, which is missing"


def assert_complete(out, input_dir, expected):
    """What must hold after a finished run: exactly the expected copies, no temporary files, report = OUT = state."""
    assert_consistent(out, input_dir)
    assert temporary_files(out) == []
    rows = read_csv(out / "facesort-report.csv")
    assert copies(out) == listed(rows) == expected
    assert {rel: row["destinations"] for rel, row in rows.items()} == {
        rel: ";".join(record["destinations"]) for rel, record in _state(out).items()}
    assert {row["status"] for row in rows.values()} == {"sorted"}


def _state(out):
    if not (out / ".facesort" / "state.sqlite").exists():
        return {}
    state = State(out)
    try:
        return state.all()
    finally:
        state.close()


@pytest.fixture
def sort(cli, colour_model):
    """`facesort run INPUT --out OUT --whole-image` with the colour model, in-process."""

    def invoke(input_dir, out, *args):
        return cli("run", input_dir, "--out", out, "--model", colour_model, "--whole-image", *args)

    return invoke


@pytest.fixture
def decodes(monkeypatch):
    """Count the photos decoded and the copies placed by in-process runs."""
    calls = {"decoded": 0, "copied": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(sorting, "load_image", counting("decoded", sorting.load_image))
    monkeypatch.setattr(sorting, "place_copy", counting("copied", sorting.place_copy))
    return calls


def summary(result):
    return dict(line.split("=", 1) for line in result.output.splitlines() if re.fullmatch(r"[a-z_]+=.*", line))


# --- incremental runs ---------------------------------------------------------------------------------------------

def test_second_run_decodes_nothing_then_picks_up_new_and_modified(sort, photos, tmp_path, decodes):
    out = tmp_path / "out"
    assert sort(photos, out).exit_code == 0
    assert decodes == {"decoded": 7, "copied": 7}
    before = {p: p.read_bytes() for p in out.rglob("*.jpg")}

    second = sort(photos, out)
    assert second.exit_code == 0, second.output
    assert decodes == {"decoded": 7, "copied": 7}, "an unchanged photo was decoded or copied again"
    assert summary(second)["unchanged"] == "7" and summary(second)["new"] == "0"
    assert read_csv(Path(summary(second)["report"])) == {}, "skipped photos are not repeated in the run's CSV"
    assert {p: p.read_bytes() for p in out.rglob("*.jpg")} == before

    make_photo(photos / "new" / "neither_9.jpg", "neither", seed=9)
    make_photo(photos / "male_1.jpg", "female", seed=9, size=(80, 60))  # same name, new content
    third = sort(photos, out)
    assert third.exit_code == 0, third.output
    assert decodes["decoded"] == 9
    assert (summary(third)["new"], summary(third)["changed"], summary(third)["unchanged"]) == ("1", "1", "6")
    run_rows = read_csv(Path(summary(third)["report"]))
    assert set(run_rows) == {"new/neither_9.jpg", "male_1.jpg"}
    assert_consistent(out, photos)
    assert copies(out) == listed(read_csv(out / "facesort-report.csv"))
    for folder in run_rows["male_1.jpg"]["destinations"].split(";"):
        assert (out / folder / "male_1.jpg").read_bytes() == (photos / "male_1.jpg").read_bytes()


def test_verify_detects_a_change_that_keeps_size_and_mtime(sort, photos, tmp_path, decodes):
    out = tmp_path / "out"
    sort(photos, out)
    target = photos / "female_0.jpg"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    middle = next(i for i in range(len(data) // 2, len(data)) if data[i] < 0xFE)
    data[middle] ^= 0x01  # inside the JPEG's entropy-coded data: same size, still decodes
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert summary(sort(photos, out))["changed"] == "0"
    result = sort(photos, out, "--verify")
    assert summary(result)["changed"] == "1" and decodes["decoded"] == 8
    dest = read_csv(out / "facesort-report.csv")["female_0.jpg"]["destinations"].split(";")[0]
    assert (out / dest / "female_0.jpg").read_bytes() == bytes(data)


def test_model_change_is_reported_and_reclassify_moves_copies(sort, photos, tmp_path, decodes):
    out = tmp_path / "out"
    sort(photos, out, "--threshold", "0")  # every photo in both female/ and male/
    assert copies(out) == {(folder, rel) for folder in ("female", "male") for rel in read_csv(out / "facesort-report.csv")}
    before = tree_digest(out / "male")

    outdated = sort(photos, out)
    assert summary(outdated)["outdated"] == "7" and summary(outdated)["sorted"] == "0"
    assert "--reclassify" in outdated.output and tree_digest(out / "male") == before

    result = sort(photos, out, "--reclassify")
    assert result.exit_code == 0 and summary(result)["reclassified"] == "7"
    assert decodes["decoded"] == 14
    rows = read_csv(out / "facesort-report.csv")
    assert copies(out) == listed(rows), "a reclassified photo kept a copy in its old folder"
    assert any(row["destinations"] != "female;male" for row in rows.values())


def test_photo_that_turns_corrupt_keeps_its_copies_and_fails_once_until_it_changes(sort, photos, tmp_path,
                                                                                  decodes):
    """A broken file fails (exit 3, named in the log) the night it changes; later nights, unchanged, it is not
    decoded again and does not make exit 3, so cron stops mailing about it; --retry-failed or a change retries it."""
    out = tmp_path / "out"
    sort(photos, out)
    good = (photos / "male_0.jpg").read_bytes()
    folder = read_csv(out / "facesort-report.csv")["male_0.jpg"]["destinations"]
    (photos / "male_0.jpg").write_bytes(good[: len(good) // 2])

    def assert_kept_as_error():
        row = read_csv(out / "facesort-report.csv")["male_0.jpg"]
        assert row["status"] == "error" and "truncated" in row["error"] and row["destinations"] == folder
        assert (out / folder / "male_0.jpg").read_bytes() == good, "the old copy is kept"
        assert _state(out)["male_0.jpg"]["status"] == "error"

    first = sort(photos, out)
    assert first.exit_code == 3 and (summary(first)["changed"], summary(first)["failed"]) == ("1", "1")
    assert "failed: male_0.jpg: corrupt or truncated image" in first.output
    assert_kept_as_error()

    decoded = decodes["decoded"]
    second = sort(photos, out)
    assert second.exit_code == 0, second.output
    assert [summary(second)[key] for key in ("failed", "failed_unchanged", "retried")] == ["0", "1", "0"]
    assert decodes["decoded"] == decoded and "failed: male_0.jpg" not in second.output
    row = read_csv(Path(summary(second)["report"]))["male_0.jpg"]
    assert row["status"] == "error" and row["error"].endswith("(unchanged since the last run: not retried)")
    assert_kept_as_error()

    retried = sort(photos, out, "--retry-failed")
    assert retried.exit_code == 3 and (summary(retried)["retried"], summary(retried)["failed"]) == ("1", "1")
    assert decodes["decoded"] == decoded + 1
    (photos / "male_0.jpg").write_bytes(good)
    assert sort(photos, out).exit_code == 0
    assert read_csv(out / "facesort-report.csv")["male_0.jpg"]["status"] == "sorted"


def test_a_file_that_cannot_be_looked_at_fails_once_until_its_error_changes(sort, photos, tmp_path):
    os.mkfifo(photos / "pipe.jpg")
    out = tmp_path / "out"
    first = sort(photos, out)
    assert first.exit_code == 3 and summary(first)["failed"] == "1"
    assert "failed: pipe.jpg: not a regular file" in first.output
    second = sort(photos, out)
    assert second.exit_code == 0 and (summary(second)["failed"], summary(second)["failed_unchanged"]) == ("0", "1")
    (photos / "pipe.jpg").unlink()
    (photos / "pipe.jpg").symlink_to("nowhere.jpg")
    third = sort(photos, out, "--follow-links")
    assert third.exit_code == 3 and "failed: pipe.jpg: broken symbolic link" in third.output


@pytest.mark.parametrize("before, options, reason", [((), ("--rescan",), "rescanned"),
                                                     (("--threshold", "0.4"), ("--reclassify",), "reclassified")])
def test_photos_a_stopped_rescan_left_are_classified_by_the_next_plain_run(sort, photos, tmp_path, monkeypatch,
                                                                          before, options, reason):
    out = tmp_path / "out"
    sort(photos, out, *before)
    real_classify = sorting._classify

    def sigterm_during_the_first_chunk(*a):
        monkeypatch.setattr(sorting, "_classify", real_classify)
        os.kill(os.getpid(), signal.SIGTERM)
        return real_classify(*a)

    monkeypatch.setattr(sorting, "_classify", sigterm_during_the_first_chunk)
    stopped = sort(photos, out, "--chunk-size", "2", *options)
    assert stopped.exit_code == 143, stopped.output
    assert "5 photos left for the next run" in stopped.output and summary(stopped)["remaining"] == "5"
    following = sort(photos, out)  # no option: it finishes the work
    assert following.exit_code == 0 and summary(following)[reason] == "5", following.output
    assert summary(sort(photos, out))[reason] == "0"
    assert_complete(out, photos, listed(read_csv(out / "facesort-report.csv")))


def test_deleted_photo_is_reported_and_pruned_only_when_asked(sort, photos, tmp_path):
    out = tmp_path / "out"
    sort(photos, out)
    folder = read_csv(out / "facesort-report.csv")["trip/male_0.jpg"]["destinations"]
    (photos / "trip" / "male_0.jpg").unlink()

    kept = sort(photos, out)
    assert kept.exit_code == 0 and summary(kept)["deleted"] == "1"
    assert read_csv(Path(summary(kept)["report"]))["trip/male_0.jpg"]["status"] == "deleted"
    assert read_csv(out / "facesort-report.csv")["trip/male_0.jpg"]["status"] == "deleted"
    assert (out / folder / "trip" / "male_0.jpg").exists()

    pruned = sort(photos, out, "--prune")
    assert read_csv(Path(summary(pruned)["report"]))["trip/male_0.jpg"]["status"] == "pruned"
    assert not (out / folder / "trip").exists() and "trip/male_0.jpg" not in read_csv(out / "facesort-report.csv")
    assert_complete(out, photos, listed(read_csv(out / "facesort-report.csv")))


@pytest.mark.parametrize("args", [(), ("--prune",)])
def test_an_unmounted_input_exits_5_and_keeps_every_copy(sort, photos, tmp_path, args):
    """Under cron an unmounted drive is an empty folder, or no folder: exit 5 makes the wrapper mail, whether or
    not --prune (which then removes nothing) is given."""
    out = tmp_path / "out"
    sort(photos, out)
    before = copies(out)
    (tmp_path / "elsewhere").mkdir()
    for path in photos.iterdir():  # same INPUT, nothing under it: like a drive that failed to mount
        path.rename(tmp_path / "elsewhere" / path.name)
    result = sort(photos, out, *args)
    assert result.exit_code == 5, result.output
    assert "none of the 7 recorded photos is in the input folder (not mounted?)" in result.output
    assert ("--prune ignored" in result.output) == bool(args)
    assert copies(out) == before
    photos.rmdir()
    missing = sort(photos, out, *args)
    assert (missing.exit_code, missing.output) == (5, f"facesort: error: input folder not found: {photos}\n")
    (tmp_path / "elsewhere").rename(photos)
    mounted = sort(photos, out, *args)
    assert mounted.exit_code == 0 and summary(mounted)["unchanged"] == "7"
    assert copies(out) == before


def test_moving_out_keeps_state(sort, photos, tmp_path, decodes):
    sort(photos, tmp_path / "out")
    (tmp_path / "out").rename(tmp_path / "moved")
    result = sort(photos, tmp_path / "moved")
    assert summary(result)["unchanged"] == "7" and decodes["decoded"] == 7


def test_another_input_into_the_same_out_is_refused(sort, photos, tmp_path):
    out = tmp_path / "out"
    sort(photos, out)
    other = make_input(tmp_path / "other")
    before = tree_digest(out)
    result = sort(other, out)
    assert result.exit_code == 1 and "one output folder per input folder" in result.output
    assert tree_digest(out) == before
    photos.rename(tmp_path / "photos-moved")
    assert sort(tmp_path / "photos-moved", out, "--new-input").exit_code == 0
    assert summary(sort(tmp_path / "photos-moved", out))["unchanged"] == "7"


# --- other processes: concurrent runs, SIGTERM, SIGKILL ------------------------------------------------------------

def _facesort_process(args, log, freeze_at):
    """Child body: the CLI's main() with stdout/stderr to `log`, frozen (SIGSTOP) at `freeze_at` if given."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
    if freeze_at:
        _freeze_at(*freeze_at)
    from sorter.cli import main
    main(args)


def _freeze_at(target, n, when="after", match=""):
    """Wrap `target` (dotted: module.attr or module.Class.attr) to SIGSTOP this process at its n-th call whose
    arguments mention `match`."""
    owner, attr = _resolve(target)
    original, calls = getattr(owner, attr), [0]

    def wrapper(*args, **kwargs):
        hit = match in repr(args)
        calls[0] += hit
        if hit and calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGSTOP)
        result = original(*args, **kwargs)
        if hit and calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGSTOP)
        return result

    setattr(owner, attr, wrapper)


def _resolve(target):
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ValueError(target)


def _wait_stopped(process, timeout=120):
    """Wait until the child froze itself; fail if it exited instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.exitcode is None, f"the run ended (exit {process.exitcode}) before its freeze point"
        with open(f"/proc/{process.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError("the run never reached its freeze point")


@pytest.fixture(scope="module")
def spawn(colour_model, tmp_path_factory):
    """Start `facesort run INPUT --out OUT` as a separate process: spawn(input, out, *args, freeze_at=None)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sorter.cli", "sorter.sorting", "sorter.inference", "fastai.vision.all"])
    logs = tmp_path_factory.mktemp("logs")

    def start(input_dir, out, *args, freeze_at=None):
        argv = ["run", str(input_dir), "--out", str(out), "--model", str(colour_model), "--whole-image",
                "--chunk-size", str(CHUNK), *map(str, args)]
        log = logs / f"{len(os.listdir(logs))}.log"
        process = context.Process(target=_facesort_process, args=(argv, log, freeze_at))
        process.start()
        process.log = log
        return process

    return start


@pytest.fixture(scope="module")
def expected(colour_model, tmp_path_factory):
    """The input the crash tests use, and the copies an uninterrupted run makes of it."""
    from click.testing import CliRunner

    from sorter.cli import main

    root = tmp_path_factory.mktemp("crash")
    input_dir, out = make_input(root / "in"), root / "out"
    result = CliRunner().invoke(main, ["run", str(input_dir), "--out", str(out), "--model", str(colour_model),
                                       "--whole-image", "--chunk-size", str(CHUNK)])
    assert result.exit_code == 0, result.output
    return input_dir, copies(out)


def fresh_input(expected, folder):
    """A copy of the crash tests' input (same bytes and mtimes) in `folder`."""
    return Path(shutil.copytree(expected[0], folder / "in"))  # copy2: same bytes and mtimes


def test_second_run_exits_4_and_changes_nothing(spawn, sort, expected, tmp_path):
    input_dir, out = fresh_input(expected, tmp_path), tmp_path / "out"
    first = spawn(input_dir, out, freeze_at=("sorter.state.State.record", 1))
    _wait_stopped(first)  # frozen mid-run, holding OUT
    before = tree_digest(out)
    second = sort(input_dir, out)
    assert second.exit_code == 4
    assert "another facesort run is using" in second.output
    assert tree_digest(out) == before, "the second run touched OUT"
    os.kill(first.pid, signal.SIGCONT)
    first.join(120)
    assert first.exitcode == 0, first.log.read_text()
    assert_complete(out, input_dir, expected[1])


def test_sigterm_stops_after_the_current_chunk_with_a_summary(spawn, sort, expected, tmp_path):
    input_dir, out = fresh_input(expected, tmp_path), tmp_path / "out"
    # Frozen as chunk 2 starts to classify, not at a chunk boundary: a signal sent to a stopped process is taken,
    # once it continues, by whichever of its threads runs first, so the main thread only sees it a moment later.
    process = spawn(input_dir, out, freeze_at=("sorter.sorting._classify", 2, "before"))
    _wait_stopped(process)
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGTERM)  # a process group signalled twice: still a clean stop
    os.kill(process.pid, signal.SIGCONT)
    process.join(120)
    log = process.log.read_text()
    assert process.exitcode == 143, log
    assert "stopped by SIGTERM after the current chunk; 6 photos left for the next run" in log
    lines = dict(line.split("=", 1) for line in log.splitlines() if re.fullmatch(r"[a-z_]+=.*", line))
    assert (lines["sorted"], lines["remaining"]) == ("4", "6")
    assert len(read_csv(Path(lines["report"]))) == 4 == len(read_csv(out / "facesort-report.csv"))
    assert "\x1b" not in log, "log lines carry no colour codes or progress bars"
    assert_consistent(out, input_dir)
    assert temporary_files(out) == []
    rerun = sort(input_dir, out)
    assert rerun.exit_code == 0 and summary(rerun)["new"] == "6"
    assert_complete(out, input_dir, expected[1])


KILL_POINTS = {
    "after 1 chunk": ("sorter.state.State.record", 1),
    "after 2 chunks": ("sorter.state.State.record", 2),
    "after 3 chunks": ("sorter.state.State.record", 3),
    "copies placed, chunk not recorded": ("sorter.state.State.record", 2, "before"),
    "temporary copy, not renamed": ("os.replace", 3, "before", TMP_PREFIX),
    "journal written, nothing placed": ("sorter.state.State.intend", 4),
    "cumulative report written, not renamed": ("os.replace", 1, "before", "facesort-report.csv"),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_any_point_then_rerun_completes_the_work(spawn, sort, expected, tmp_path, point):
    input_dir, out = fresh_input(expected, tmp_path), tmp_path / "out"
    process = spawn(input_dir, out, freeze_at=KILL_POINTS[point])
    _wait_stopped(process)
    process.kill()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    assert_consistent(out, input_dir)
    rerun = sort(input_dir, out)
    assert rerun.exit_code == 0, rerun.output
    assert_complete(out, input_dir, expected[1])


def test_sigkill_repeatedly_mid_run_then_rerun_completes_the_work(spawn, sort, expected, tmp_path):
    """Runs on one OUT, each killed a few copies after it started placing (or while it recovered from the last
    kill), at moments chosen by timing rather than by a freeze point, until one finishes. FACESORT_CRASH_ROUNDS
    repeats the whole scenario on a fresh OUT; a round whose first run finished before the test saw its copies (a
    loaded machine) is repeated too, until some run was killed mid-way."""
    rng, kills, n, rounds = random.Random(4), 0, 0, int(os.environ.get("FACESORT_CRASH_ROUNDS", "1"))
    while n < rounds or not kills:
        assert n < rounds + 5, f"no run was killed mid-way in {n} rounds"
        input_dir, out = fresh_input(expected, tmp_path / str(n)), tmp_path / str(n) / "out"
        for _ in range(30):
            process = spawn(input_dir, out)
            target = len(copies(out)) + rng.randint(1, 3)
            while process.exitcode is None and len(copies(out)) < target:
                time.sleep(0.002)
            process.kill()
            process.join(30)
            assert_consistent(out, input_dir)
            if process.exitcode == 0:
                break
            assert process.exitcode == -signal.SIGKILL
            kills += 1
        assert sort(input_dir, out).exit_code == 0
        assert_complete(out, input_dir, expected[1])
        n += 1
    print(f"{kills} runs killed mid-way in {n} rounds")


RECLASSIFY_KILL_POINTS = {
    "new copies placed, old ones kept": ("sorter.state.State.record", 2),
    "report rewritten, old copies half removed": ("sorter.sorting.remove_copy", 1),
}


@pytest.mark.parametrize("point", RECLASSIFY_KILL_POINTS)
def test_sigkill_while_copies_move_between_folders(spawn, sort, expected, tmp_path, point):
    input_dir, out = fresh_input(expected, tmp_path), tmp_path / "out"
    assert sort(input_dir, out, "--threshold", "0").exit_code == 0  # every photo in female/ and male/
    process = spawn(input_dir, out, "--reclassify", freeze_at=RECLASSIFY_KILL_POINTS[point])
    _wait_stopped(process)
    process.kill()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    assert_consistent(out, input_dir)
    assert sort(input_dir, out, "--reclassify").exit_code == 0
    assert_complete(out, input_dir, expected[1])


# --- the cron wrapper ----------------------------------------------------------------------------------------------

def this_facesort(folder):
    """An executable running this checkout's facesort with the Python running the tests."""
    facesort = folder / "facesort"
    facesort.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m sorter "$@"\n')
    facesort.chmod(0o755)
    return facesort


def test_nightly_wrapper_logs_plain_lines_names_failures_and_passes_the_exit_status(colour_model, photos, tmp_path):
    """The night a file breaks, the mail names it; a good night is silent; a missing INPUT mails exit 5. The
    runs write nothing in the working folder, INPUT or beside the model, and elsewhere only the caches that
    importing fastai makes (matplotlib's font list, torch's empty inductor folder)."""
    good = make_photo(photos / "broken\n.jpg", "male").read_bytes()  # a newline in its name: still one line
    (photos / "broken\n.jpg").write_bytes(good[: len(good) // 2])
    out, logs, home, scratch, cwd = (tmp_path / name for name in ("out", "logs", "home", "tmp", "cwd"))
    for folder in (home, scratch, cwd):
        folder.mkdir()
    facesort = tmp_path / "facesort"  # this checkout's facesort, with the Python running the tests
    facesort.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m sorter "$@"\n')
    facesort.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("XDG_", "MPL"))}
    env.update(FACESORT=str(facesort), FACESORT_LOG_DIR=str(logs), FACESORT_KEEP_LOGS="2", HOME=str(home),
               TMPDIR=str(scratch))
    untouched = {folder: tree_digest(folder) for folder in (photos, colour_model.parent)}

    def night():
        return subprocess.run([str(ROOT / "scripts" / "facesort-nightly"), str(photos), str(out), "--model",
                               str(colour_model), "--whole-image"], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=900)  # minutes on a loaded machine: 300 s ran out under load

    broken = night()
    assert broken.returncode == 3, broken.stderr
    assert "\nfailed: broken\\n.jpg: corrupt or truncated image" in broken.stderr
    [log] = logs.glob("facesort-*.log")
    text = log.read_text()
    assert "\x1b" not in text and "sorted=7" in text
    stamped = [line for line in text.splitlines() if "=" not in line.split(" ")[0]]
    assert stamped and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in stamped), text
    assert "exit 3" in text.splitlines()[-1]
    assert {folder: tree_digest(folder) for folder in untouched} == untouched
    assert list(cwd.iterdir()) == []
    assert all(p.relative_to(home).parts[:2] == (".cache", "matplotlib") for p in home.rglob("*") if p.is_file())
    assert all(p.name.startswith("torchinductor_") and not any(p.iterdir()) for p in scratch.iterdir())

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(out / ".facesort" / "lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        locked = night()
        assert locked.returncode == 4, locked.stderr
        assert "exit 4" in locked.stderr and "another facesort run" in locked.stderr
    finally:
        holder.communicate("")
    env["FACESORT"] = str(tmp_path / "good-night")  # exit 0, as the next night with only that failure, known
    Path(env["FACESORT"]).write_text("#!/bin/sh\necho sorted=0\n")
    Path(env["FACESORT"]).chmod(0o755)
    ok = night()
    assert ok.returncode == 0 and ok.stdout == ok.stderr == "", "a good night is silent for cron"
    env["FACESORT"] = str(facesort)
    photos.rename(tmp_path / "unmounted")
    missing = night()
    assert missing.returncode == 5 and "not mounted?" in missing.stderr.splitlines()[0]
    assert len(list(logs.glob("facesort-*.log"))) == 2, "only the newest FACESORT_KEEP_LOGS logs are kept"
