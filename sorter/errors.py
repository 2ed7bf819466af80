"""The library's own errors; the CLI turns them into one-line messages and exit codes."""
import errno


class FacesortError(Exception):
    """A failure the user can fix (bad path, missing weights, unsafe model file): exit code 1."""

    exit_code = 1


class OutputLocked(FacesortError):
    """Another run holds the output folder: exit code 4."""

    exit_code = 4


class InputMissing(FacesortError):
    """INPUT is missing, or holds none of the photos OUT was sorted from (a drive not mounted?): exit code 5."""

    exit_code = 5


# Write errors after which no further file can be written: the run stops instead of failing file after file.
STOPPING_WRITE_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                         errno.EROFS: "read-only file system", errno.EIO: "input/output error"}


def stopping_write_error(e, path):
    """The FacesortError that stops a run when writing `path` failed with OSError `e`, or None if it need not."""
    what = STOPPING_WRITE_ERRORS.get(e.errno)
    return FacesortError(f"{what} while writing {path}: stopped; photos sorted so far are kept") if what else None
