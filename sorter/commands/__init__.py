"""One module per `facesort` command; each parses options and calls the library."""
import functools
import os

import click

from ..device import DEVICES
from ..errors import FacesortError

COMMON_EXIT_CODES = {"0": "success", "1": "fatal error (one-line message, no traceback)", "2": "usage error"}
RUN_EXIT_CODES = {
    "3": "finished but some files failed (see the CSV report)",
    "4": "another run holds the output folder",
    "5": "INPUT missing, or none of its recorded photos in it (not mounted?)",
    "130/143": "stopped by SIGINT/SIGTERM after the current chunk",
}


def exit_codes(codes=None):
    """A --help epilog listing exit codes 0-2 (every command's) and the command's own `codes` {code: meaning}."""
    rows = {**COMMON_EXIT_CODES, **(codes or {})}
    return "\b\nExit codes:\n" + "\n".join(f"  {code:<9}{meaning}" for code, meaning in rows.items())


EXIT_CODES = exit_codes(RUN_EXIT_CODES)  # facesort run's, and so the whole tool's


def require_folder(path, what):
    """Fail at once, before slow imports and the model load, when a folder given as an argument is missing."""
    if not os.path.isdir(path):
        raise FacesortError(f"{what} not found: {path}")


def reports_errors(command):
    """Turn the library's FacesortError into a one-line message and its exit code (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FacesortError as e:
            click.echo(f"facesort: error: {e}", err=True)
            raise SystemExit(e.exit_code) from None

    return wrapper


model_option = click.option("--model", "model_path", type=click.Path(dir_okay=False),
                            help="Exported model (.pkl). Default: the bundled model.")
threshold_option = click.option("--threshold", type=click.FloatRange(0, 1),
                                help="Probability a label needs. Default: the model's calibrated threshold.")
# the default is sorter.inference.BATCH_SIZE (tests/test_inference.py checks), written here so --help stays light
batch_option = click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
                            help="Images per model batch.")
whole_image_option = click.option("--whole-image", is_flag=True,
                                  help="Classify the whole photo (the tutorial's way) instead of each face.")
device_option = click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES),
                             help="Where the networks run: auto is CUDA when torch sees a GPU, else the CPU.")
