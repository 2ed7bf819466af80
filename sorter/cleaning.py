"""Applying the actions a user wrote into review.csv: relabel by moving, delete by moving into a trash folder.

Everything is planned and checked before anything moves, and the moves are all-or-nothing: a row that cannot be
done safely (unknown action, a path outside DATA_DIR, a file changed since the review, a name already taken)
refuses the whole clean. Nothing is ever deleted for good; an undo log lists every move so it can be reversed.
"""
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from .discover import TRASH_DIR
from .durable import write_json_durably
from .errors import FacesortError
from .hashing import sha256_of
from .labels import LABEL_FOLDERS, folder_label
from .report import read_rows

ACTIONS = ("delete",) + LABEL_FOLDERS
KEEP = ("", "keep")
REQUIRED = ("path", "action", "sha256", "data_dir")
UNDO_LOG = "undo.json"


@dataclass
class Move:
    action: str
    source: str  # relative to DATA_DIR, / separated
    target: str
    sha256: str


@dataclass
class Plan:
    data_dir: Path
    moves: list = field(default_factory=list)
    kept: int = 0
    refused: list = field(default_factory=list)  # one message per row that cannot be done
    # this clean's trash subfolder: one per clean, so files deleted twice under one name never collide
    stamp: str = field(default_factory=lambda: datetime.now().strftime("clean-%Y%m%d-%H%M%S-%f"))


def read_review(review_csv):
    """The rows of a review CSV and the one data folder they name; FacesortError when it is not one."""
    rows = read_rows(review_csv)
    missing = [name for name in REQUIRED if rows and name not in rows[0]]
    if missing:
        raise FacesortError(f"{review_csv} is not a facesort review CSV (missing columns: {', '.join(missing)})")
    data_dirs = {row["data_dir"] for row in rows}
    if len(data_dirs) > 1:
        raise FacesortError(f"{review_csv} mixes several data folders in its data_dir column: {sorted(data_dirs)}")
    return rows, Path(data_dirs.pop()) if data_dirs else Path(".")


def plan_clean(review_csv):
    """What `clean` would do with an edited review CSV; refusals are collected, not raised, to list them all."""
    rows, data_dir = read_review(review_csv)
    plan = Plan(data_dir)
    sources, targets = set(), set()
    for line, row in enumerate(rows, 2):  # line 1 is the header, as a spreadsheet numbers it
        action = row["action"].strip().lower()
        if action in KEEP:
            plan.kept += 1
            continue
        try:
            move = _plan_row(plan, row, action)
        except FacesortError as e:
            plan.refused.append(f"line {line}: {row['path']}: {e}")
            continue
        if move is None:
            plan.kept += 1
        elif move.source in sources or move.target in targets:
            plan.refused.append(f"line {line}: {row['path']}: another row already moves this file or to {move.target}")
        else:
            sources.add(move.source)
            targets.add(move.target)
            plan.moves.append(move)
    return plan


def _plan_row(plan, row, action):
    """The move one row asks for (None when its label is already right); FacesortError says why it cannot be."""
    data_dir = plan.data_dir
    if action not in ACTIONS:
        raise FacesortError(f"unknown action {action!r} (use delete, female, male, neither, or leave it empty)")
    rel = reviewed_file(data_dir, row)
    path = data_dir / rel
    if action == "delete":
        target = f"{TRASH_DIR}/{plan.stamp}/{rel}"
    elif action == folder_label(path):
        return None
    else:
        target = relabelled(data_dir, rel, action)
    if (data_dir / target).exists():
        raise FacesortError(f"{target} already exists: refusing to overwrite it")
    return Move(action, rel, target, row["sha256"].strip())


def reviewed_file(data_dir, row):
    """A review row's path relative to DATA_DIR, checked: inside it, still there, and unchanged since the review."""
    rel = inside(data_dir, row["path"])
    path = Path(data_dir) / rel
    if not path.is_file():
        raise FacesortError("file not found (moved or deleted since the review)")
    if sha256_of(path) != row["sha256"].strip():
        raise FacesortError("the file changed since the review (sha256 differs): review it again")
    return rel


def inside(data_dir, path_text):
    """`path_text` as a path relative to DATA_DIR, refused when it leads outside it, into the trash, or via links."""
    rel = PurePosixPath(path_text.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FacesortError("path outside the data folder (it must be relative to it, without ..)")
    if rel.parts[0] == TRASH_DIR:
        raise FacesortError(f"path inside {TRASH_DIR}: use `facesort clean --undo` to restore files")
    real_root, real = os.path.realpath(data_dir), os.path.realpath(Path(data_dir) / rel)
    if os.path.commonpath([real_root, real]) != real_root:
        raise FacesortError("path outside the data folder (through a symbolic link)")
    return rel.as_posix()


def relabelled(data_dir, rel, label):
    """Where relabelling moves a file: the nearest label folder swapped for its sibling `label`, subfolders kept."""
    parts = rel.split("/")
    index = max((i for i, part in enumerate(parts[:-1]) if part.lower() in LABEL_FOLDERS), default=None)
    if index is None:
        raise FacesortError("not under a male/female/neither folder: nothing to relabel")
    parent = Path(data_dir, *parts[:index])
    existing = [p.name for p in parent.iterdir() if p.is_dir() and p.name.lower() == label] if parent.is_dir() else []
    return "/".join(parts[:index] + [existing[0] if existing else label] + parts[index + 1:])


def apply_plan(plan, review_csv):
    """Do every move of a plan with no refusals, or none; returns the undo log's path (None: nothing to move)."""
    if plan.refused:
        raise FacesortError(f"{len(plan.refused)} rows refused: nothing changed")
    if not plan.moves:
        return None
    log_path = plan.data_dir / TRASH_DIR / plan.stamp / UNDO_LOG
    log = {"data_dir": str(plan.data_dir), "review": str(Path(review_csv).resolve()),
           "applied": datetime.now().isoformat(timespec="seconds"), "undone": None,
           "moves": [vars(move) for move in plan.moves]}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_durably(log_path, log)  # first: a crash part-way still leaves a record of what may have moved
    try:
        move_all(plan.data_dir, [(m.source, m.target) for m in plan.moves])
    except FacesortError:
        log_path.unlink()
        raise
    return log_path


def move_all(data_dir, pairs):
    """Rename each (source, target) under data_dir; on any failure put back what moved and raise."""
    done = []
    try:
        for source, target in pairs:
            source_path, target_path = data_dir / source, data_dir / target
            if target_path.exists():
                raise FileExistsError(f"{target} appeared since the plan")
            target_path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source_path, target_path)
            done.append((source_path, target_path))
    except OSError as e:
        for source_path, target_path in reversed(done):
            os.rename(target_path, source_path)
        raise FacesortError(f"could not move {source} to {target} ({e}): every move was undone") from None


def plan_undo(log_path):
    """The moves that reverse an applied clean, checked like a clean: (data_dir, pairs, refusals)."""
    try:
        log = json.loads(Path(log_path).read_text())
        data_dir, moves = Path(log["data_dir"]), [Move(**m) for m in log["moves"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FacesortError(f"{log_path} is not a facesort undo log: {e}") from None
    if log.get("undone"):
        raise FacesortError(f"{log_path} was already undone on {log['undone']}")
    refused = []
    for move in moves:
        if not (data_dir / move.target).is_file():
            refused.append(f"{move.target}: not found (moved again since the clean?)")
        elif (data_dir / move.source).exists():
            refused.append(f"{move.source}: a file of that name exists again: refusing to overwrite it")
        elif sha256_of(data_dir / move.target) != move.sha256:
            refused.append(f"{move.target}: changed since the clean (sha256 differs)")
    return data_dir, [(m.target, m.source) for m in reversed(moves)], refused


def apply_undo(log_path):
    """Reverse an applied clean, all or nothing, and mark its log as undone."""
    data_dir, pairs, refused = plan_undo(log_path)
    if refused:
        raise FacesortError(f"{len(refused)} moves cannot be undone: nothing changed")
    move_all(data_dir, pairs)
    log = json.loads(Path(log_path).read_text())
    log["undone"] = datetime.now().isoformat(timespec="seconds")
    write_json_durably(log_path, log)
    return len(pairs)


def describe(move):
    """One line of the plan a user reads before --apply."""
    verb = "delete (to trash)" if move.action == "delete" else f"relabel as {move.action}"
    return f"{verb}: {move.source} -> {move.target}"
