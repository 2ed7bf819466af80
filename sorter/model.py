"""Finding and loading an exported learner safely.

A model file is a pickle, and unpickling can run code: only the bundled model or a path the user names is loaded,
a file other users could have written is refused, and the bundled model must match its recorded sha256.
"""
import stat
import warnings
import sys
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


def check_model_file(path, bundled):
    """Refuse model files that are missing, writable by others, or (bundled) not the file we shipped."""
    path = Path(path)
    if not path.is_file():
        raise FacesortError(f"model file not found: {path}")
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise FacesortError(
            f"refusing to load {path}: it is writable by other users, and a model file can run code when loaded "
            f"(chmod go-w {path})")
    digest = sha256_of(path)
    if bundled and digest != expected_sha256(path):
        raise FacesortError(f"the bundled model {path} does not match its recorded sha256: reinstall facesort")
    return digest


def load_model(path=None):
    """Load an exported learner on the CPU; returns (learner, path, sha256)."""
    from fastai.learner import load_learner

    bundled = path is None
    path = bundled_model_path() if bundled else Path(path)
    digest = check_model_file(path, bundled)
    try:
        with warnings.catch_warnings():  # fastai's pickle warning: the checks above are how we handle that risk
            warnings.simplefilter("ignore", UserWarning)
            learn = load_learner(path, cpu=True)
    except Exception as e:  # a pickle can fail in many ways; all mean "not a facesort model"
        raise FacesortError(f"cannot load model {path}: {type(e).__name__}: {e}") from None
    if list(getattr(learn.dls, "vocab", [])) != ["female", "male"]:
        raise FacesortError(f"{path} is not a facesort model (its labels are not female/male)")
    return learn, path, digest
