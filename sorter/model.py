"""Finding and loading an exported learner safely.

A model file is a pickle, and unpickling can run code: only the bundled model or a path the user names is loaded,
a file other users could have written is refused, and the bundled model must match its recorded sha256.
"""
import os
import stat
import sys
import warnings
from pathlib import Path

from .archs import sha256_of
from .errors import FacesortError

BUNDLED_NAME = "facesort-default.pkl"


def bundled_model_candidates():
    """Where the bundled model lies: installed data files first, then the source checkout."""
    return [Path(sys.prefix) / "share" / "facesort" / "models" / BUNDLED_NAME,
            Path(__file__).resolve().parent.parent / "models" / BUNDLED_NAME]


def bundled_model_path():
    for path in bundled_model_candidates():
        if path.exists():
            return path
    raise FacesortError("no bundled model is installed: pass --model PATH (train one with `facesort train`)")


def expected_sha256(model_path):
    """The sha256 recorded beside a bundled model (facesort-default.pkl.sha256), or None."""
    record = Path(str(model_path) + ".sha256")
    return record.read_text().split()[0] if record.exists() else None


def check_model_file(f, path, bundled):
    """Refuse an open model file that others could have written, or (bundled) that is not the file we shipped.

    The checks and the hash are made on the open file that is then loaded, so the file cannot be swapped between
    check and load. Returns its sha256.
    """
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise FacesortError(f"model file is not a regular file: {path}")
    unsafe = _who_else_can_write(st, Path(path).absolute().parent)
    if unsafe:
        raise FacesortError(f"refusing to load {path}: {unsafe}, and a model file can run code when loaded")
    digest = sha256_of(f)
    if bundled:
        expected = expected_sha256(path)
        if expected is None:
            raise FacesortError(f"the bundled model {path} has no recorded sha256 ({path}.sha256): reinstall facesort")
        if digest != expected:
            raise FacesortError(f"the bundled model {path} does not match its recorded sha256: reinstall facesort")
    return digest


def _who_else_can_write(st, folder):
    """Why users other than us (and root) could change this model file, or "" when they cannot."""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "it is writable by other users (chmod go-w it)"
    if st.st_uid not in (os.geteuid(), 0):
        return f"it belongs to another user (uid {st.st_uid}): copy it to a file of your own"
    folder_mode = os.stat(folder).st_mode
    if folder_mode & stat.S_IWOTH and not folder_mode & stat.S_ISVTX:
        return f"its folder {folder} is writable by everyone, so anyone could replace it"
    return ""


def python_version():
    """'3.11': fastai's export stores some of its functions as this Python's bytecode, so a model is tied to it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def load_model(path=None):
    """Load an exported learner on the CPU; returns (learner, path, sha256)."""
    from fastai.learner import load_learner

    bundled = path is None
    path = bundled_model_path() if bundled else Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FacesortError(f"model file not found: {path}") from None
    except OSError as e:
        raise FacesortError(f"cannot read model file {path}: {e.strerror}") from None
    with f:
        digest = check_model_file(f, path, bundled)
        f.seek(0)
        try:
            with warnings.catch_warnings():  # fastai's pickle warning: the checks above are how we handle that risk
                warnings.simplefilter("ignore", UserWarning)
                learn = load_learner(f, cpu=True)
        except Exception as e:  # a pickle can fail in many ways; all mean "not a facesort model"
            raise FacesortError(f"cannot load model {path}: {type(e).__name__}: {e}") from None
    if list(getattr(learn.dls, "vocab", [])) != ["female", "male"]:
        raise FacesortError(f"{path} is not a facesort model (its labels are not female/male)")
    _check_python(learn, path)
    return learn, path, digest


def _check_python(learn, path):
    """Refuse a model exported by another Python: its pickled bytecode could crash or misbehave when run here."""
    exported = getattr(learn, "facesort", {}).get("python")
    if exported and exported != python_version():
        raise FacesortError(f"{path} was exported by Python {exported} and this is Python {python_version()}: fastai "
                            f"stores some of its code in the model as bytecode; use Python {exported} or retrain")
