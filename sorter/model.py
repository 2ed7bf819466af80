"""Finding, checking and loading an exported learner safely, and cheaply until it is needed.

A model file is a pickle, and unpickling can run code: only the bundled model or a path the user names is loaded,
a file other users could have written is refused, and the bundled model must match its recorded sha256. Opening a
model checks it, hashes it and reads the settings stored in it without unpickling anything real, so a run with
nothing to classify never imports fastai or loads the network.
"""
import os
import pickle
import stat
import sys
import warnings
import zipfile
from importlib import resources
from pathlib import Path

from .errors import FacesortError
from .hashing import sha256_of

BUNDLED_NAME = "facesort-default.pkl"  # face-aware: dlib's face network fine-tuned on face crops
WHOLE_IMAGE_NAME = "facesort-whole-image.pkl"  # --whole-image: MobileNetV2, which saw whole no-face photos too
DEFAULT_SIZE = 128  # input side of models exported before facesort stored it


def bundled_model_path(whole_image=False):
    """The model shipped inside the sorter package (sorter/models/), wherever and however the package is installed:
    the face model, or the one for classifying whole photos (a 32 px face network cannot tell a person's gender
    from a whole photo shrunk to 32 px)."""
    path = resources.files(__package__).joinpath("models", WHOLE_IMAGE_NAME if whole_image else BUNDLED_NAME)
    if not path.is_file():
        raise FacesortError("no bundled model is installed: pass --model PATH (train one with `facesort train`)")
    return Path(str(path))


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


class _Stub:
    """Stands for every class and function named in a model's pickle: keeps the state it is given, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __setitem__(self, key, value):  # the items of dict subclasses and lists are not needed
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _SkeletonUnpickler(pickle.Unpickler):
    """Rebuilds a pickle's plain data (dicts, numbers, strings) around stubs: imports and calls nothing."""

    def find_class(self, module, name):
        return _Stub

    def persistent_load(self, pid):  # torch's tensor storages
        return None


def stored_settings(f, path):
    """{"threshold", "size", "python", "mirror"} as stored in an exported learner, read without running its pickle."""
    try:
        with zipfile.ZipFile(f) as archive:  # torch.save's format, which fastai's export uses
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if not pickles:
                raise FacesortError(f"{path} is not a facesort model (an archive without a pickled learner)")
            with archive.open(pickles[0]) as data:
                learner = _SkeletonUnpickler(data).load()
    except zipfile.BadZipFile:
        raise FacesortError(f"{path} is not a facesort model (not a fastai export: those are zip archives)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise FacesortError(f"{path} is not a facesort model (unreadable pickle: {e})") from None
    state = getattr(learner, "__dict__", {})
    threshold = getattr(state.get("loss_func"), "__dict__", {}).get("thresh")
    if not isinstance(threshold, (int, float)):
        raise FacesortError(f"{path} is not a facesort model (no probability threshold stored in it)")
    facesort = state.get("facesort") if isinstance(state.get("facesort"), dict) else {}
    return {"threshold": float(threshold), "size": facesort.get("size", DEFAULT_SIZE), "python": facesort.get("python"),
            "mirror": facesort.get("mirror", True)}


class ModelFile:
    """An exported model, opened, checked and hashed, its settings read: `load` unpickles it when needed."""

    def __init__(self, path=None, whole_image=False):
        bundled = path is None
        self.path = bundled_model_path(whole_image) if bundled else Path(path)
        try:
            self.file = open(self.path, "rb")
        except FileNotFoundError:
            raise FacesortError(f"model file not found: {self.path}") from None
        except OSError as e:
            raise FacesortError(f"cannot read model file {self.path}: {e.strerror}") from None
        try:
            self.sha256 = check_model_file(self.file, self.path, bundled)
            self.file.seek(0)
            self.settings = stored_settings(self.file, self.path)
            _check_python(self.settings["python"], self.path)
        except BaseException:
            self.file.close()
            raise

    def load(self):
        """The learner, unpickled on the CPU from the file that was checked, which is then closed."""
        from fastai.learner import load_learner

        with self.file as f:
            f.seek(0)
            try:
                with warnings.catch_warnings():  # fastai's pickle warning: the checks are how we handle that risk
                    warnings.simplefilter("ignore", UserWarning)
                    learn = load_learner(f, cpu=True)
            except Exception as e:  # a pickle can fail in many ways; all mean "not a facesort model"
                raise FacesortError(f"cannot load model {self.path}: {type(e).__name__}: {e}") from None
        if list(getattr(learn.dls, "vocab", [])) != ["female", "male"]:
            raise FacesortError(f"{self.path} is not a facesort model (its labels are not female/male)")
        return learn


def load_model(path=None):
    """Load an exported learner on the CPU at once; returns (learner, path, sha256)."""
    model = ModelFile(path)
    return model.load(), model.path, model.sha256


def _check_python(exported, path):
    """Refuse a model exported by another Python: its pickled bytecode could crash or misbehave when run here."""
    if exported and exported != python_version():
        raise FacesortError(f"{path} was exported by Python {exported} and this is Python {python_version()}: fastai "
                            f"stores some of its code in the model as bytecode; use Python {exported} or retrain")
