"""CSV reports that open cleanly in spreadsheets: UTF-8 with BOM, proper quoting, no formula injection."""
import csv
import io
import os
from pathlib import Path

from .errors import FacesortError, stopping_write_error

COLUMNS = ("path", "status", "labels", "prob_female", "prob_male", "faces", "destinations", "error", "threshold",
           "model_sha256")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def display_path(rel):
    """A relative path as text: undecodable bytes in file names are shown as \\xNN instead of failing."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def safe_cell(value):
    """Neutralise text a spreadsheet would run as a formula by prefixing a quote (OWASP's advice); a file name's
    undecodable bytes, wherever they appear, are written as \\xNN."""
    if isinstance(value, str):
        value = display_path(value)
        if value.startswith(FORMULA_STARTS):
            return "'" + value
    return value


def restore_cell(text):
    """Undo safe_cell on text read back from a CSV this module wrote."""
    if text.startswith("'") and text[1:].startswith(FORMULA_STARTS):
        return text[1:]
    return text


def write_report(path, rows, columns=COLUMNS):
    """Write rows (dicts over `columns`) to `path` atomically; numbers stay numbers, text is neutralised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: safe_cell(value) for key, value in row.items()})
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # never leave half a report behind (a full disk)
        raise stopping_write_error(e, path) or e from None
    return path


def read_rows(path):
    """The rows of a CSV written by write_report and perhaps saved again by a spreadsheet, cells restored.

    Spreadsheets in some locales save with `;` or tabs: the delimiter is taken from the header line.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise FacesortError(f"{path} is not UTF-8 text: save the spreadsheet as 'CSV UTF-8'") from None
    except OSError as e:
        raise FacesortError(f"cannot read {path}: {e.strerror}") from None
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    return [{key: restore_cell(value or "") for key, value in row.items() if key is not None} for row in reader]
