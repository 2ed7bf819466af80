"""`facesort run`: sort a folder of photos into OUT/male, OUT/female and OUT/neither, incrementally.

The order of work keeps OUT consistent whenever the process dies, SIGKILL included. For each chunk of photos:
the copies it may touch are journalled, the new copies are placed atomically, then the chunk is recorded in the
state database in one transaction. Copies the record no longer lists (a photo moved from male/ to female/, a
pruned photo, or a copy a killed run placed but never recorded) are removed only after the cumulative report has
been rewritten from the record: at the end of a run, or at the start of the next one.
"""
import contextlib
import functools
import os
import signal
import time
from collections import Counter, deque
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .hashing import sha256_of
from .discover import walk_photos
from .errors import FacesortError, InputMissing
from .faces import FaceFinder
from .images import ImageError, load_image
from .inference import BATCH_SIZE, ModelThreads, available_cpus, torch_threads
from .labels import labels_text
from .placement import (check_folders, check_writable, destinations, place_copy, remove_copy,
                        sweep_temporary_files, sync_folders, target_path)
from .prediction import decode_side, predict_images
from .report import display_path, write_report
from .state import OutputLock, State

CUMULATIVE_REPORT = "facesort-report.csv"
LOGGED_FAILURES = 20  # failures named in the log (and so in the nightly mail); the run's CSV has them all
NOT_RETRIED = " (unchanged since the last run: not retried)"
# chunks queued for the decoding threads, so they have work while this one is classified and placed (alone,
# within noise of 1; with COPY_THREADS, whole-image 12 MP photos sorted 18% faster: README)
DECODE_AHEAD = 2
# threads placing a chunk's copies: each waits on its fsync, so one at a time left the cores idle (12 MP photos,
# whole-image: 31 photos/s with copies, 41 without)
COPY_THREADS = 4
DETECT_BATCH = 16  # photos one decoding task decodes and detects: batched, MTCNN cost 30% less CPU per photo here
SURVEY_PROGRESS = 10_000  # files between the survey's progress lines (a rerun over 100,000 took 16 s here)


@dataclass
class RunOptions:
    batch_size: int = BATCH_SIZE
    chunk_size: int = 128  # photos per commit: a crash or a stop loses at most one chunk of work
    dry_run: bool = False
    report: Path | None = None
    whole_image: bool = False
    verify: bool = False
    rescan: bool = False
    retry_failed: bool = False
    prune: bool = False
    reclassify: bool = False
    follow_links: bool = False
    new_input: bool = False
    workers: int = field(default_factory=available_cpus)
    cluster: str | None = None  # a Ray cluster's address: its workers classify (sorter.cluster)

    @property
    def mode(self):
        return "whole-image" if self.whole_image else "face-aware"


@dataclass
class RunSummary:
    counts: Counter
    report: Path
    cumulative: Path | None
    stopped_by: int | None = None  # the signal that stopped the run early
    input_missing: bool = False  # INPUT holds none of the recorded photos: a drive not mounted?

    @property
    def exit_code(self):
        """Failures unchanged since the last run do not make exit 3: that run's exit 3 and mail named them."""
        if self.stopped_by:
            return 128 + self.stopped_by
        if self.input_missing:
            return InputMissing.exit_code
        return 3 if self.counts["failed"] else 0


class Quiet:
    """Events sink that ignores everything; the CLI passes one that draws progress or writes log lines."""

    def log(self, message):
        pass

    def start(self, total):
        pass

    def advance(self, n=1):
        pass


@dataclass
class Job:
    """A photo this run will classify, with why (new, changed, retried, reclassified, rescanned)."""

    path: Path
    rel: str
    reason: str
    stat: os.stat_result
    previous: dict | None


def sort_folder(input_dir, out_dir, classifier, opts=None, events=None, should_stop=lambda: None):
    """Sort INPUT into OUT; returns a RunSummary (stopped early when `should_stop()` returns a signal number).

    Raises FacesortError for fatal problems, OutputLocked (a FacesortError) when another run holds OUT.
    """
    opts, events = opts or RunOptions(), events or Quiet()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    check_folders(input_dir, out_dir, opts.report)
    with OutputLock(out_dir):
        check_writable(out_dir)
        state = State(out_dir)
        try:
            _check_same_input(state, input_dir, out_dir, opts)
            output = Output(out_dir, state, opts.dry_run)
            output.recover(events)
            return _sort(input_dir, output, classifier, opts, events, should_stop)
        finally:
            state.close()


def _check_same_input(state, input_dir, out_dir, opts):
    """One OUT per INPUT: photos are known by their path relative to INPUT, so another INPUT would overwrite them."""
    recorded, current = state.input_dir(), os.path.realpath(input_dir)
    if recorded and recorded != current and not opts.new_input:
        raise FacesortError(f"{out_dir} holds photos sorted from {recorded}, not {current}: use one output folder "
                            "per input folder, or pass --new-input if the input folder was moved")
    if not opts.dry_run and recorded != current:
        state.set_input_dir(current)


def _sort(input_dir, output, classifier, opts, events, should_stop):
    counts, known = Counter(), output.state.all()
    rows, jobs, seen, unreadable = _survey(input_dir, output, known, classifier, opts, counts, events)
    gone = _gone(known, seen)
    input_missing = bool(known) and len(gone) == len(known)
    rows += _handle_gone(output, known, gone, input_missing, opts, counts, events)
    output.plan(jobs, unreadable)
    _log_plan(jobs, counts, events)
    report = _run_report_path(output.out_dir, opts)
    events.start(len(jobs))
    done = 0
    try:
        for chunk_rows in _classify_chunks(jobs, classifier, opts, events):
            output.commit(chunk_rows, classifier, opts)
            rows += chunk_rows
            done += len(chunk_rows)
            _count_outcomes(chunk_rows, counts)
            events.advance(len(chunk_rows))
            if should_stop():
                break
    except BaseException:
        with contextlib.suppress(OSError):  # best effort: the error that stopped the run matters more
            write_report(report, rows)
        raise
    counts["remaining"] = len(jobs) - done
    write_report(report, rows)
    output.finish()
    _log_failures(rows, report, events)
    return RunSummary(counts, report, output.cumulative, should_stop(), input_missing)


def _survey(input_dir, output, known, classifier, opts, counts, events):
    """Walk INPUT: report rows for files not worth reading, jobs for the photos to classify, every name seen, and
    {rel: why} of the files that could not even be looked at. A long walk logs how far it got."""
    rows, jobs, seen, unreadable = [], [], set(), {}
    queued, unreadable_before = output.state.queued(), output.state.listing_failures()
    for found in walk_photos(input_dir, exclude=[output.out_dir], follow_links=opts.follow_links):
        seen.add(found.rel)
        if found.status == "error":
            unreadable[found.rel] = found.reason
            rows.append(_failure_row(found.rel, found.reason, unreadable_before.get(found.rel) == found.reason,
                                     counts))
        elif found.status:
            counts["skipped"] += 1
            rows.append(_row(found.rel, found.status, error=found.reason))
        else:
            previous = known.get(found.rel)
            reason = _plan(found, previous, found.rel in queued, classifier, opts, counts)
            if reason == "failed_unchanged":
                rows.append(_failure_row(found.rel, previous["error"], True, counts))
            elif reason:
                jobs.append(Job(found.path, found.rel, reason, found.stat, previous))
        if len(seen) % SURVEY_PROGRESS == 0:
            events.log(f"looked at {len(seen)} files so far, {len(jobs)} to classify")
    return rows, jobs, seen, unreadable


def _plan(found, previous, queued, classifier, opts, counts):
    """Why a photo needs classifying this run, or None; an unchanged photo is not even opened. A photo that
    failed is tried again only once it changed, and a photo a stopped run left queued is classified now."""
    stat, again = found.stat, opts.rescan or queued
    reason = None
    if previous is None:
        reason = "new"
    elif (previous["size"], previous["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
        reason = "changed"
    elif opts.verify and previous["sha256"] != sha256_of(found.path):
        reason = "changed"
    elif previous["status"] == "error":
        if not (again or opts.retry_failed):
            return "failed_unchanged"  # counted with its report row
        reason = "retried"
    elif (previous["model_sha256"], previous["threshold"], previous["mode"]) != (
            classifier.sha256, classifier.threshold, opts.mode):
        counts["outdated"] += not (opts.reclassify or again)
        reason = "reclassified" if opts.reclassify or again else None
    elif again:
        reason = "rescanned"
    counts[reason or "unchanged"] += 1
    return reason


def _failure_row(rel, error, unchanged, counts):
    """A file that failed: a failure unchanged since the last run is counted apart and not named in the log."""
    counts["failed_unchanged" if unchanged else "failed"] += 1
    return {**_row(rel, "error", error=error + (NOT_RETRIED if unchanged else "")), "_known": unchanged}


def _log_plan(jobs, counts, events):
    if counts["outdated"]:
        events.log(f"{counts['outdated']} photos were sorted by another model, threshold or mode "
                   "(--reclassify sorts them again)")
    if counts["failed_unchanged"]:
        events.log(f"{counts['failed_unchanged']} files failed before and are unchanged since: not retried "
                   "(--retry-failed tries them again)")
    events.log(f"{len(jobs)} photos to classify, {counts['unchanged']} unchanged")


def _log_failures(rows, report, events):
    """Name this run's failures in the log, where the nightly wrapper's mail finds them."""
    failed = [row for row in rows if row["status"] == "error" and not row.get("_known")]
    for row in failed[:LOGGED_FAILURES]:
        events.log("failed: " + _printable(f"{row['path']}: {row['error']}"))
    if len(failed) > LOGGED_FAILURES:
        events.log(f"failed: {len(failed) - LOGGED_FAILURES} more, listed in {report}")


def _printable(text):
    """Text fit for one log line (and a mail): newlines and control characters in file names escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _gone(known, seen):
    """Recorded photos not found in INPUT this run; those under a folder that could not be listed are not gone."""
    unlisted = tuple("" if rel == "./" else rel for rel in seen if rel.endswith("/"))
    return sorted(rel for rel in known if rel not in seen and not rel.startswith(unlisted))


def _handle_gone(output, known, gone, input_missing, opts, counts, events):
    """Photos gone from INPUT are reported; with --prune their copies and records go too, unless all are gone."""
    counts["deleted"] = len(gone)
    prune = opts.prune and not opts.dry_run and bool(gone) and not input_missing
    if input_missing:
        events.log(f"none of the {len(known)} recorded photos is in the input folder (not mounted?): their copies "
                   f"are kept{'; --prune ignored' if opts.prune else ''}")
    if prune:
        output.prune(gone, known)
        return [_row(rel, "pruned") for rel in gone]
    output.gone = set(gone)
    hint = "" if opts.prune else " (--prune removes them)"
    return [_row(rel, "deleted", error=f"gone from the input folder; copies kept{hint}") for rel in gone]


def _run_report_path(out_dir, opts):
    """This run's CSV: --report, or OUT/reports/facesort-run-DATE-TIME.csv (never an earlier run's)."""
    if opts.report:
        return Path(opts.report)
    stem = out_dir / "reports" / f"facesort-run-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = stem.with_name(stem.name + ".csv"), 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}.csv")
    return path


class Output:
    """OUT as a run changes it: copies, the state record and the cumulative report, always in a safe order."""

    def __init__(self, out_dir, state, dry_run):
        self.out_dir, self.state, self.dry_run = out_dir, state, dry_run
        self.cumulative = None if dry_run else out_dir / CUMULATIVE_REPORT
        self.gone = set()  # photos gone from INPUT whose copies are kept: the cumulative report says so

    def recover(self, events):
        """Clean up after a killed run: temporary files, and copies it placed but never recorded."""
        if self.dry_run:
            return
        swept, removed = sweep_temporary_files(self.out_dir), self._remove_stale()
        if swept or removed:
            events.log(f"cleaned up after an interrupted run: {swept} temporary files, {removed} unrecorded copies")

    def plan(self, jobs, unreadable):
        """Queue the photos this run will classify, so that a stopped run's work is not forgotten, and remember
        the files that could not be looked at, so that the next run tells a new failure from an old one."""
        if self.dry_run:
            return
        self.state.queue(job.rel for job in jobs)
        self.state.set_listing_failures(unreadable)

    def commit(self, rows, classifier, opts):
        """Journal the chunk's copies, place the new ones and sync them to disk, then record the chunk in one
        transaction."""
        if self.dry_run:
            return
        self.state.intend({row["_rel"]: _touched(row) for row in rows if row["status"] == "sorted"})
        with ThreadPoolExecutor(COPY_THREADS) as pool:
            futures = [pool.submit(self._place, row) for row in rows if row["status"] == "sorted"]
            wait(futures, return_when=FIRST_EXCEPTION)
            pool.shutdown(cancel_futures=True)  # after a full disk (FacesortError) no more copies are started
            for future in futures:
                if not future.cancelled():
                    future.result()
        sync_folders(self.out_dir, [target_path(self.out_dir, folder, row["_rel"]) for row in rows
                                    if row["status"] == "sorted" for folder in row["_destinations"]])
        self.state.record([_state_row(row, classifier, opts) for row in rows])

    def _place(self, row):
        """Place a photo's copies; one that vanished, changed since listing or cannot be copied becomes an error
        row (copies of it placed meanwhile are removed as unrecorded). A full disk stops the run (FacesortError)."""
        job = row["_job"]
        try:
            for folder in row["_destinations"]:
                row["_sha256"] = place_copy(job.path, target_path(self.out_dir, folder, job.rel), job.stat)
        except ImageError as e:
            row.update(status="error", error=str(e), destinations="")

    def prune(self, rels, known):
        self.state.intend({rel: known[rel]["destinations"] for rel in rels})
        self.state.record(forget=rels)

    def finish(self):
        """Rewrite the cumulative report from the record, then remove the copies the record no longer lists."""
        if self.dry_run:
            return
        self._write_cumulative()
        self._remove_stale(report_written=True)

    def _remove_stale(self, report_written=False):
        stale = [(folder, rel) for rel, (touched, recorded) in self.state.pending().items()
                 for folder in sorted(touched - recorded)
                 if target_path(self.out_dir, folder, rel).exists()]
        if stale and not report_written:
            self._write_cumulative()  # first, so the report never lists a copy that is gone
        for folder, rel in stale:
            remove_copy(self.out_dir, folder, rel)
        self.state.settled()
        return len(stale)

    def _write_cumulative(self):
        write_report(self.cumulative, _cumulative_rows(self.state.all(), self.gone))


def _touched(row):
    """The folders a sorted photo's copies may be placed in or removed from."""
    previous = row["_job"].previous
    return set(row["_destinations"]) | set(previous["destinations"] if previous else [])


def _classify_chunks(jobs, classifier, opts, events):
    """Yield the result rows of each chunk; the next DECODE_AHEAD chunks decode in threads while this one is
    classified and placed.
    With no jobs nothing is loaded: not torch, the face detector or the model (a night with nothing new)."""
    if not jobs:
        return
    if opts.cluster:
        from .cluster import classify_chunks

        yield from classify_chunks(jobs, classifier, opts, events)
        return
    events.log(f"device {classifier.describe_device()}")  # only here: naming it needs torch, as the model does
    # loaded before any thread detects faces: torch.fx's tracing, which fuses the model, patches every module call
    # while it runs, and an MTCNN network called meanwhile in a decoding thread failed (NameError, 1000 photos)
    classifier.load()
    finder = None if opts.whole_image else FaceFinder(device=classifier.device)
    min_side = decode_side(classifier, opts.whole_image)
    decode = functools.partial(_decode_async, min_side=min_side, device=classifier.device,
                               finder=finder if finder and finder.detects_while_decoding else None,
                               prepare=preparer(classifier, opts))
    chunks = [jobs[i:i + opts.chunk_size] for i in range(0, len(jobs), opts.chunk_size)]
    threads = ModelThreads()
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool, torch_threads(1):  # the model: threads.used
        ahead = deque(decode(pool, chunk) for chunk in chunks[:DECODE_AHEAD])
        try:
            for index, chunk in enumerate(chunks):
                done = [future.result() for future in ahead.popleft()]
                decoded = [item for items, _ in done for item in items]
                if index + DECODE_AHEAD < len(chunks):
                    ahead.append(decode(pool, chunks[index + DECODE_AHEAD]))
                threads.apply(classifier.learn.model, decoding=any(not f.done() for fs in ahead for f in fs))
                start = time.perf_counter()
                rows = _classify(chunk, decoded, classifier, finder, opts)
                classified = sum(not isinstance(item, ImageError) for item in decoded)
                threads.update(sum(cpu for _, cpu in done), time.perf_counter() - start, classified)
                yield rows
        finally:
            for future in (f for pending in ahead for f in pending):  # a stopped run waits for no chunk ahead
                future.cancel()


def preparer(classifier, opts):
    """What the decoding threads run on each image after decoding it: whole-image, the model's item transforms
    (`_classify` then takes the images as prepared); face-aware nothing, the crops being made after detection."""
    return classifier.prepare if opts.whole_image else None


def _decode_async(pool, chunk, min_side, finder, device, prepare):
    """Futures of (decoded photos, CPU seconds spent) for each DETECT_BATCH of the chunk."""
    return [pool.submit(_with_cpu_time, _decode_batch, [job.path for job in chunk[i:i + DETECT_BATCH]], min_side,
                        finder, device, prepare) for i in range(0, len(chunk), DETECT_BATCH)]


def _with_cpu_time(function, *args):
    """(function(*args), the CPU seconds this thread spent in it)."""
    start = time.thread_time()
    return function(*args), time.thread_time() - start


def _decode_batch(paths, min_side, finder, device="cpu", prepare=None):
    """`_decode` of several photos, whose faces are found together: MTCNN takes equal-size copies as one batch."""
    decoded = [_decode(path, min_side, device, prepare) for path in paths]
    if finder is not None:
        ok = [i for i, item in enumerate(decoded) if not isinstance(item, ImageError)]
        for i, faces in zip(ok, finder.find([decoded[i][0] for i in ok])):
            decoded[i] = (decoded[i][0], faces)
    return decoded


def _decode(path, min_side, device="cpu", prepare=None):
    """(image, None), or the ImageError; `_decode_batch` fills in the faces where the decoding threads detect them
    (on a CPU; a GPU detects a whole chunk at once in `_classify`). With `prepare` (whole-image), the image comes
    through the model's item transforms (`Classifier.prepare`), off the main thread."""
    try:
        image = load_image(path, min_side, device)
        return (prepare(image) if prepare else image), None
    except ImageError as e:
        return e


def _classify(chunk, decoded, classifier, finder, opts):
    ok = [i for i, item in enumerate(decoded) if not isinstance(item, ImageError)]
    images = [decoded[i][0] for i in ok]
    found = [decoded[i][1] for i in ok] if finder and finder.detects_while_decoding else None
    predictions = predict_images(classifier, images, opts.whole_image, opts.batch_size, finder, found,
                                 prepared=preparer(classifier, opts) is not None)  # by the decoding threads
    by_index = dict(zip(ok, predictions))
    rows = []
    for i, job in enumerate(chunk):
        if i in by_index:
            rows.append(_prediction_row(job, by_index[i], classifier, opts))
        else:
            rows.append(_row(job.rel, "error", error=str(decoded[i]), job=job))
    return rows


def _prediction_row(job, prediction, classifier, opts):
    return _row(job.rel, "dry-run" if opts.dry_run else "sorted", job=job, prediction=prediction,
                classifier=classifier, destinations=destinations(prediction.labels))


def _count_outcomes(rows, counts):
    for row in rows:
        if row["status"] == "error":
            counts["failed"] += 1
        else:
            counts["sorted"] += 1
            counts[row["labels"].replace("female;male", "both")] += 1


def _row(rel, status, error="", job=None, prediction=None, classifier=None, destinations=()):
    """One report row; the underscore keys carry data for placement and state, never written to CSV."""
    row = {"path": display_path(rel), "status": status, "error": error, "_job": job,
           "_destinations": list(destinations), "destinations": ";".join(destinations), "_rel": rel}
    if prediction is not None:
        row.update(labels=labels_text(prediction.labels), faces="" if prediction.faces is None else prediction.faces,
                   threshold=classifier.threshold, model_sha256=classifier.sha256, _probs=prediction.probs,
                   **{f"prob_{label}": round(p, 4) for label, p in prediction.probs.items()})
    return row


def _state_row(row, classifier, opts):
    """The record of a handled photo; one that failed keeps the copies (and verdict) an earlier run made."""
    job = row["_job"]
    handled = {"rel": job.rel, "size": job.stat.st_size, "mtime_ns": job.stat.st_mtime_ns, "status": row["status"],
               "error": row["error"], "sorted_at": datetime.now().isoformat(timespec="seconds")}
    if row["status"] == "error":
        kept = job.previous or {"model_sha256": classifier.sha256, "threshold": classifier.threshold,
                                "mode": opts.mode, "labels": "", "probs": {}, "faces": None, "destinations": []}
        return {**kept, **handled, "sha256": None}
    return {**handled, "sha256": row["_sha256"], "model_sha256": classifier.sha256, "threshold": classifier.threshold,
            "mode": opts.mode, "labels": row["labels"], "probs": row["_probs"],
            "faces": None if row["faces"] == "" else row["faces"], "destinations": row["_destinations"]}


def _cumulative_rows(records, gone):
    """The current classification of every photo OUT holds copies of, from the state record."""
    for rel, record in sorted(records.items()):
        status, error = record["status"], record["error"]
        if rel in gone:
            status, error = "deleted", "gone from the input folder; copies kept"
        yield {"path": display_path(rel), "status": status, "labels": record["labels"],
               "faces": "" if record["faces"] is None else record["faces"],
               "destinations": ";".join(record["destinations"]), "error": error,
               "threshold": record["threshold"], "model_sha256": record["model_sha256"],
               **{f"prob_{label}": round(p, 4) for label, p in record["probs"].items()}}


class StopOnSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current chunk; calling it returns the first signal.

    After the first signal SIGINT gets its previous handler back, so a second Ctrl-C stops at once (as safe as a
    kill); a repeated SIGTERM (a process group signalled twice) changes nothing.
    """

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum
        signal.signal(signal.SIGINT, self.previous[signal.SIGINT])

    def __call__(self):
        return self.signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
