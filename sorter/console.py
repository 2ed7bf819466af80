"""What the user sees: rich progress and tables on a terminal, plain timestamped lines otherwise (cron)."""
import sys
import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table


def is_terminal():
    return sys.stdout.isatty()


class PlainEvents:
    """Line-oriented log for cron: a timestamp, no colour, a progress line at most every `every` seconds."""

    def __init__(self, stream=None, every=10.0):
        self.stream = stream or sys.stdout
        self.every, self.total, self.done, self.last = every, 0, 0, 0.0

    def log(self, message):
        print(f"{datetime.now().isoformat(timespec='seconds')} {message}", file=self.stream, flush=True)

    def start(self, total):
        self.total, self.done, self.last = total, 0, time.monotonic()

    def advance(self, n=1):
        self.done += n
        if time.monotonic() - self.last >= self.every or self.done == self.total:
            self.last = time.monotonic()
            self.log(f"progress {self.done}/{self.total}")


class RichEvents:
    """A progress bar on a terminal; log lines print above it."""

    def __init__(self, console=None):
        self.console = console or Console()
        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.task = None

    def log(self, message):
        self.console.print(message)

    def start(self, total):
        self.progress.start()
        self.task = self.progress.add_task("sorting", total=total)

    def advance(self, n=1):
        self.progress.advance(self.task, n)

    def close(self):
        self.progress.stop()


def make_events():
    return RichEvents() if is_terminal() else PlainEvents()


def print_table(title, rows):
    """A two-column table on a terminal, `key=value` lines otherwise (easy to grep in a cron log)."""
    if is_terminal():
        table = Table(title=title)
        table.add_column("")
        table.add_column("", justify="right")
        for key, value in rows:
            table.add_row(str(key), str(value))
        Console().print(table)
    else:
        for key, value in rows:
            print(f"{key}={value}", flush=True)
