"""review.csv as the record of decisions made on the review page: read, decided row by row, applied, undone.

Every decision is written to the CSV's `action` column at once, atomically and durably (a temporary file, fsync,
rename, fsync of the folder), so a killed server loses no decision it reported as saved, and `facesort clean`
and spreadsheet users read the same record. Rows are named by their number in the CSV and the sha256 the page
was shown: no path ever comes from the page, and a rewritten CSV cannot redirect a decision to another file.
Applying and undoing run the very functions `facesort clean --apply` and `clean --undo` run.
"""
import json
import os
import threading
from collections import Counter
from pathlib import Path

from .cleaning import ACTIONS, apply_plan, apply_undo, describe, inside, plan_clean, read_review, reviewed_file
from .discover import TRASH_DIR
from .durable import replace_durably
from .errors import FacesortError
from .hashing import sha256_of
from .report import write_report

CHOICES = ("keep",) + ACTIONS  # what the page may write; "" clears a decision (the CSV's own "keep")


class Refused(FacesortError):
    """A request the record will not carry out; `status` is the HTTP status that says why."""

    def __init__(self, message, status=409, details=()):
        super().__init__(message)
        self.status, self.details = status, list(details)


def disagrees(row):
    """Whether the model's labels differ from the folder's (an unreadable image counts as disagreeing)."""
    return row["predicted"].split(" (")[0] != row["label"]


class ReviewRecord:
    """The rows of one review.csv, kept in step with the file; every method is safe to call from any thread."""

    def __init__(self, csv_path):
        self.path = Path(csv_path).resolve()
        self.lock = threading.Lock()
        self._load()

    def _load(self):
        self.rows, self.data_dir = read_review(self.path)
        self.columns = list(self.rows[0]) if self.rows else []
        self._signature = self._stat()
        self._find_applied()

    def _stat(self):
        info = os.stat(self.path)
        return info.st_ino, info.st_size, info.st_mtime_ns

    def _find_applied(self):
        """The newest clean of this review that is not undone (applied here or by `clean`): its undo log, and
        {source: target} of its moves, relative to DATA_DIR."""
        self.applied, self.moved = None, {}
        for log_path in sorted(self.data_dir.glob(f"{TRASH_DIR}/clean-*/undo.json"), reverse=True):
            try:
                log = json.loads(log_path.read_text())
            except (OSError, ValueError):
                continue
            if log.get("review") == str(self.path) and not log.get("undone"):
                self.applied, self.moved = log_path, {move["source"]: move["target"] for move in log["moves"]}
                return

    def page(self, offset=0, limit=48, label="", disagree=False):
        """One page of the rows that pass the filters, as the page shows them, and how many pass."""
        with self.lock:
            self._follow_file()
            ids = [i for i, row in enumerate(self.rows)
                   if (not label or row["label"] == label) and (not disagree or disagrees(row))]
            return {"total": len(ids), "offset": offset, "summary": self._summary(),
                    "rows": [self._view(i) for i in ids[offset:offset + limit]]}

    def _view(self, row_id):
        row = self.rows[row_id]
        probs = {key[5:]: float(value) if value else None for key, value in row.items() if key.startswith("prob_")}
        return {"id": row_id, "rank": row.get("rank", ""), "path": row["path"], "label": row["label"],
                "predicted": row["predicted"], "probs": probs, "loss": row.get("loss", ""),
                "action": _action(row), "sha256": row["sha256"], "moved_to": self.moved.get(_rel(row))}

    def _summary(self):
        return {"decided": dict(Counter(_action(row) for row in self.rows)), "images": len(self.rows),
                "review": str(self.path), "data_dir": str(self.data_dir),
                "applied": str(self.applied) if self.applied else None}

    def decide(self, row_id, sha256, action):
        """Record one decision, checked first: the action, the row, the file still as reviewed, no clean applied."""
        if action not in ("",) + CHOICES:
            raise Refused(f"unknown action {action!r} (use {', '.join(CHOICES)}, or empty to clear)", 400)
        with self.lock:
            self._follow_file()
            row = self._row(row_id, sha256)
            if self.applied:
                raise Refused("a clean of this review is applied: undo it before changing decisions")
            try:
                reviewed_file(self.data_dir, row)
            except FacesortError as e:
                raise Refused(f"{row['path']}: {e}") from None
            row["action"] = action
            self._save()
            return self._view(row_id)

    def _row(self, row_id, sha256):
        if type(row_id) is not int or not 0 <= row_id < len(self.rows):
            raise Refused(f"no row {row_id!r} in this review", 404)
        if not isinstance(sha256, str):
            raise Refused("name the row by its id and the sha256 the page showed", 400)
        if self.rows[row_id]["sha256"] != sha256:
            raise Refused("review.csv was rewritten since the page loaded: reload the page")
        return self.rows[row_id]

    def file_of(self, row_id, sha256):
        """Where a row's image is now (moved by an applied clean or not), checked to be the reviewed file."""
        with self.lock:
            row = self._row(row_id, sha256)
            rel = self.moved.get(_rel(row)) or inside(self.data_dir, row["path"])
        path = self.data_dir / rel
        if not path.is_file() or sha256_of(path) != sha256:
            raise Refused(f"{row['path']}: not the file that was reviewed (changed, moved or deleted)")
        return path

    def _save(self):
        """Rewrite the CSV atomically and durably: once this returns, a crash or kill cannot lose the decision."""
        tmp = self.path.with_name(f".{self.path.name}.saving")
        replace_durably(write_report(tmp, self.rows, self.columns), self.path)
        self._signature = self._stat()

    def _follow_file(self):
        """Take up edits made to the CSV by something else (a spreadsheet, `clean`) since it was last read."""
        try:
            changed = self._stat() != self._signature
        except FileNotFoundError:
            raise Refused(f"{self.path} is gone: start the page again from a review", 410) from None
        if changed:
            self._load()
        else:
            self._find_applied()

    def plan(self):
        """What applying would do now: the lines `facesort clean` prints, and its refusals."""
        with self.lock:
            self._follow_file()
            plan = plan_clean(self.path)
        return plan, [describe(move) for move in plan.moves] + [
            f"{len(plan.moves)} to move, {plan.kept} kept, {len(plan.refused)} refused"]

    def apply(self):
        """`facesort clean REVIEW --apply`: every decision at once or none; returns its lines and undo log."""
        with self.lock:
            self._follow_file()
            if self.applied:
                raise Refused("a clean of this review is already applied: undo it first")
            plan = plan_clean(self.path)
            if plan.refused:
                raise Refused(f"{len(plan.refused)} rows refused: nothing changed", details=plan.refused)
            log_path = apply_plan(plan, self.path)
            self._find_applied()
        return {"done": [describe(move) for move in plan.moves], "undo_log": str(log_path) if log_path else None}

    def undo(self):
        """`facesort clean --undo LOG --apply` for the applied clean of this review; returns how many files moved back."""
        with self.lock:
            self._follow_file()
            if not self.applied:
                raise Refused("no clean of this review to undo")
            restored = apply_undo(self.applied)
            self._find_applied()
        return restored


def _action(row):
    return row["action"].strip().lower()


def _rel(row):
    """A row's path as an undo log records it."""
    return row["path"].replace("\\", "/")
