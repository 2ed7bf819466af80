"""Shared fixtures: coloured-shape photos, a model that reads their colours, a CLI runner.

The colours carry the label (blue male, red female, green neither), and `colour_model` answers from the mean colour
by construction (tests/colour_model.py), so the tests check plumbing and behaviour, the same on every CPU, not face
recognition or how well a network trains here.
"""
import contextlib
import ctypes
import hashlib
import os
import random
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

warnings.filterwarnings("ignore", category=FutureWarning)
# One torch thread per test process, children included: the tests check behaviour, not speed, and on a busy machine
# torch's threads spin against the other work (a resnet18 step took 4-5 s with 2 threads at load 5, 0.4 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # linux/capability.h
COLOURS = {"male": (30, 60, 220), "female": (220, 40, 40), "neither": (40, 170, 40)}


def make_photo(path, label, seed=0, size=(64, 48), fmt=None, **save_args):
    """A photo whose dominant colour says its label; a little noise so no two are the same."""
    rng = random.Random(f"{label}-{seed}")
    colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[label])
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    x, y = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
    draw.rectangle((x, y, x + size[0] // 4, y + size[1] // 4), fill=tuple(min(255, c + 30) for c in colour))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg", "") else None), **save_args)
    return path


def make_dataset(root, per_label=24, start=0):
    for label in COLOURS:
        for i in range(start, start + per_label):
            make_photo(Path(root) / label / f"{label}_{i}.jpg", label, seed=i)
    return Path(root)


def tree_digest(root):
    """sha256 of every file (and its relative name) under root: proof a folder was not modified."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.fsencode(os.path.relpath(path, root)))
            if os.path.isfile(path) and not os.path.islink(path):  # never open a FIFO: it would block
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def colour_model(dataset, tmp_path_factory):
    """An exported facesort model whose labels are the photos' colours, on every CPU (see tests/colour_model.py)."""
    from colour_model import export_colour_model

    return export_colour_model(sorted(dataset.rglob("*.jpg")), tmp_path_factory.mktemp("models") / "colour.pkl")


@pytest.fixture
def photos(tmp_path):
    """A small input folder: two of each label, plus a nested same-named file."""
    root = tmp_path / "photos"
    for label in COLOURS:
        for i in range(2):
            make_photo(root / f"{label}_{i}.jpg", label, seed=100 + i)
    make_photo(root / "trip" / "male_0.jpg", "male", seed=200)
    return root


@pytest.fixture
def cli():
    """Invoke `facesort ...` in-process; returns click's Result (exit_code, output)."""
    from sorter.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@contextlib.contextmanager
def permission_bits_enforced():
    """Run the block with permission bits enforced even for root, as for any user.

    Root reads everything through two capabilities, CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: they are dropped
    from this thread's effective set (threads it starts inherit that) and raised again after. Without root,
    permission bits are enforced already.
    """
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    caps = (ctypes.c_uint32 * 6)()  # two 32-bit words of (effective, permitted, inheritable)
    if libc.capget(header, caps) != 0:
        pytest.skip(f"running as root and capget failed ({os.strerror(ctypes.get_errno())}): cannot make "
                    "permission bits count")
    effective = caps[0]
    caps[0] &= ~(1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH)
    assert libc.capset(header, caps) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        caps[0] = effective
        assert libc.capset(header, caps) == 0, os.strerror(ctypes.get_errno())
