"""`facesort run`: sort a folder of photos into OUT/male, OUT/female and OUT/neither, incrementally.

The order of work keeps OUT consistent at every moment: copies are placed atomically, then recorded in the state
database, then the cumulative report is rewritten from that record.
"""
import os
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .archs import sha256_of
from .discover import walk_photos
from .errors import FacesortError, Interrupted
from .faces import DETECT_SIDE, FaceFinder
from .images import ImageError, load_image
from .labels import labels_text
from .prediction import predict_images
from .placement import (check_writable, destinations, place_copy, remove_copy, sweep_temporary_files,
                        target_path)
from .report import display_path, write_report
from .state import OutputLock, State

CUMULATIVE_REPORT = "facesort-report.csv"


@dataclass
class RunOptions:
    batch_size: int = 64
    chunk_size: int = 128
    dry_run: bool = False
    report: Path | None = None
    whole_image: bool = False
    verify: bool = False
    rescan: bool = False
    prune: bool = False
    reclassify: bool = False
    follow_links: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class RunSummary:
    counts: Counter
    report: Path
    cumulative: Path | None

    @property
    def exit_code(self):
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
    """Sort INPUT into OUT; returns a RunSummary. Raises FacesortError for fatal problems, Interrupted on signal."""
    opts, events = opts or RunOptions(), events or Quiet()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    check_folders(input_dir, out_dir)
    check_writable(out_dir)
    with OutputLock(out_dir):
        swept = sweep_temporary_files(out_dir)
        if swept:
            events.log(f"removed {swept} temporary files left by an interrupted run")
        state = State(out_dir)
        try:
            return _sort_locked(input_dir, out_dir, classifier, opts, events, should_stop, state)
        finally:
            state.close()


def check_folders(input_dir, out_dir):
    if not input_dir.is_dir():
        raise FacesortError(f"input folder not found: {input_dir}")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise FacesortError(f"cannot read input folder: {input_dir}")
    if os.path.realpath(input_dir) == os.path.realpath(out_dir):
        raise FacesortError("the output folder must not be the input folder")


def _sort_locked(input_dir, out_dir, classifier, opts, events, should_stop, state):
    known = state.all()
    counts, rows, jobs, seen = Counter(), [], [], set()
    for found in walk_photos(input_dir, exclude=[out_dir], follow_links=opts.follow_links):
        seen.add(found.rel)
        if found.status:
            counts["failed" if found.status == "error" else "skipped"] += 1
            rows.append(_row(found.rel, found.status, error=found.reason))
            continue
        job = _plan(found, known.get(found.rel), classifier, opts, counts)
        if job:
            jobs.append(job)
    rows += _handle_deleted(out_dir, state, known, seen, opts, counts)
    if counts["outdated"]:
        events.log(f"{counts['outdated']} photos were sorted by another model or threshold "
                   "(--reclassify sorts them again)")
    events.log(f"{len(jobs)} photos to classify, {counts['unchanged']} unchanged")
    cumulative = None if opts.dry_run else out_dir / CUMULATIVE_REPORT
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report = Path(opts.report) if opts.report else out_dir / "reports" / f"facesort-run-{stamp}.csv"
    events.start(len(jobs))
    try:
        for job_rows in _classify_chunks(jobs, classifier, opts, events, should_stop):
            rows += job_rows
            _commit(job_rows, out_dir, state, classifier, opts, counts)
            if cumulative:
                write_report(cumulative, _cumulative_rows(state))
            events.advance(len(job_rows))
    finally:
        write_report(report, rows)
    return RunSummary(counts, report, cumulative)


def _plan(found, previous, classifier, opts, counts):
    """Decide whether a photo needs classifying this run, counting why."""
    stat = os.stat(found.path)
    reason = None
    if previous is None:
        reason = "new"
    elif (previous["size"], previous["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
        reason = "changed"
    elif opts.verify and previous["sha256"] != sha256_of(found.path):
        reason = "changed"
    elif previous["status"] == "error":
        reason = "retried"
    elif (previous["model_sha256"], previous["threshold"]) != (classifier.sha256, classifier.threshold):
        counts["outdated"] += not (opts.reclassify or opts.rescan)
        reason = "reclassified" if opts.reclassify or opts.rescan else None
    elif opts.rescan:
        reason = "rescanned"
    if reason is None:
        counts["unchanged"] += 1
        return None
    counts[reason] += 1
    return Job(found.path, found.rel, reason, stat, previous)


def _handle_deleted(out_dir, state, known, seen, opts, counts):
    """Photos recorded before but gone from INPUT: reported; with --prune their copies and records go too."""
    rows = []
    for rel in sorted(set(known) - seen):
        counts["deleted"] += 1
        if opts.prune and not opts.dry_run:
            for folder in known[rel]["destinations"]:
                remove_copy(target_path(out_dir, folder, rel))
            state.forget([rel])
        rows.append(_row(rel, "pruned" if opts.prune else "deleted",
                         error="" if opts.prune else "gone from the input folder; copies kept (--prune removes them)"))
    return rows


def _classify_chunks(jobs, classifier, opts, events, should_stop):
    """Yield the result rows of each chunk; the next chunk decodes in threads while this one is classified."""
    finder = None if opts.whole_image else FaceFinder()
    min_side = classifier.size if opts.whole_image else DETECT_SIDE * 3 // 4
    chunks = [jobs[i:i + opts.chunk_size] for i in range(0, len(jobs), opts.chunk_size)]
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        pending = _decode_async(pool, chunks[0], min_side) if chunks else None
        for index, chunk in enumerate(chunks):
            decoded = [future.result() for future in pending]
            if index + 1 < len(chunks):
                pending = _decode_async(pool, chunks[index + 1], min_side)
            yield _classify(chunk, decoded, classifier, finder, opts)
            signum = should_stop()
            if signum:
                events.log(f"stopping after this batch (signal {signum})")
                raise Interrupted(signum)


def _decode_async(pool, chunk, min_side):
    return [pool.submit(_decode, job.path, min_side) for job in chunk]


def _decode(path, min_side):
    try:
        return load_image(path, min_side)
    except ImageError as e:
        return e


def _classify(chunk, decoded, classifier, finder, opts):
    ok = [i for i, image in enumerate(decoded) if not isinstance(image, ImageError)]
    images = [decoded[i] for i in ok]
    predictions = predict_images(classifier, images, opts.whole_image, opts.batch_size, finder)
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


def _commit(rows, out_dir, state, classifier, opts, counts):
    """Place the copies of a chunk, then record the chunk; on a fatal error record what was placed first."""
    done = []
    try:
        for row in rows:
            job = row.pop("_job")
            if row["status"] == "error":
                counts["failed"] += 1
            elif not opts.dry_run:
                _place(job, row, out_dir)
            done.append(_state_row(job, row, classifier))
            _count_outcome(row, counts)
    finally:
        if not opts.dry_run:
            state.record(done)


def _place(job, row, out_dir):
    for folder in row["_destinations"]:
        place_copy(job.path, target_path(out_dir, folder, job.rel))
    stale = set(job.previous["destinations"] if job.previous else []) - set(row["_destinations"])
    for folder in stale:
        remove_copy(target_path(out_dir, folder, job.rel))


def _count_outcome(row, counts):
    if row["status"] != "error":
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


def _state_row(job, row, classifier):
    """The record of a handled photo; a photo that failed keeps the copies an earlier run made."""
    faces = row.get("faces")
    kept = job.previous["destinations"] if job.previous and row["status"] == "error" else row["_destinations"]
    return {"rel": job.rel, "size": job.stat.st_size, "mtime_ns": job.stat.st_mtime_ns,
            "sha256": sha256_of(job.path) if row["status"] != "error" else None,
            "model_sha256": classifier.sha256, "threshold": classifier.threshold, "status": row["status"],
            "labels": row.get("labels", ""), "probs": row.get("_probs", {}), "faces": None if faces in ("", None) else faces,
            "destinations": kept, "error": row["error"],
            "sorted_at": datetime.now().isoformat(timespec="seconds")}


def _cumulative_rows(state):
    for rel, record in sorted(state.all().items()):
        yield {"path": display_path(rel), "status": record["status"], "labels": record["labels"],
               "faces": "" if record["faces"] is None else record["faces"],
               "destinations": ";".join(record["destinations"]), "error": record["error"],
               "threshold": record["threshold"], "model_sha256": record["model_sha256"],
               **{f"prob_{label}": round(p, 4) for label, p in record["probs"].items()}}


class StopOnSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current batch; calling it returns the signal."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __call__(self):
        return self.signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
