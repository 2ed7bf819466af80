"""CSV reports that open cleanly in spreadsheets: UTF-8 with BOM, proper quoting, no formula injection."""
import csv
import os
from pathlib import Path

COLUMNS = ("path", "status", "labels", "prob_female", "prob_male", "faces", "destinations", "error", "threshold",
           "model_sha256")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def display_path(rel):
    """A relative path as text: undecodable bytes in file names are shown as \\xNN instead of failing."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def safe_cell(value):
    """Neutralise text a spreadsheet would run as a formula by prefixing a quote (OWASP's advice)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_report(path, rows):
    """Write rows (dicts over COLUMNS) to `path` atomically; numbers stay numbers, text is neutralised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: safe_cell(value) for key, value in row.items()})
    os.replace(tmp, path)
    return path
