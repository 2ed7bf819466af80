"""The library's own errors; the CLI turns them into one-line messages and exit codes."""


class FacesortError(Exception):
    """A failure the user can fix (bad path, missing weights, unsafe model file): exit code 1."""

    exit_code = 1


class OutputLocked(FacesortError):
    """Another run holds the output folder: exit code 4."""

    exit_code = 4
