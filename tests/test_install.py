"""facesort as a pip user gets it: a wheel built from this checkout, installed into a fresh venv that cannot see
the checkout, sorting a folder with the bundled model from another working directory.

The venv reuses this environment's torch, fastai and the rest through a .pth line pointing at a folder of links
to them, so nothing is downloaded and the install takes seconds; facenet-pytorch is left out of that folder at
first (the user has not done the extra step yet), then linked in, as `pip install --no-deps` would put it.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sorter.faces import FACENET

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(sysconfig.get_paths()["purelib"])  # this environment's site-packages
SAMPLE = ROOT / "data" / "sample"
# What the scratch venv must not get from this environment: facesort itself (an editable install of ROOT) and,
# until the extra step, facenet-pytorch.
OWN = ("facesort-", "__editable__", "sorter")
FACENET_ENTRIES = ("facenet_pytorch",)


def build_wheel(work):
    """A wheel of this checkout, built from a copy of it so the checkout gets no build/ folder."""
    source = work / "source"
    shutil.copytree(ROOT / "sorter", source / "sorter", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    work / "dist", source], check=True, capture_output=True)
    [wheel] = (work / "dist").glob("facesort-*.whl")
    return wheel


def link_dependencies(folder, leave_out):
    """A folder of links to this environment's packages, minus facesort and the names in `leave_out`."""
    folder.mkdir()
    for entry in SITE.iterdir():
        if not entry.name.startswith(OWN + leave_out):
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A venv with only the wheel installed, its dependencies seen through a .pth line (facenet-pytorch not)."""
    work = tmp_path_factory.mktemp("install")
    wheel = build_wheel(work)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", work / "venv"], check=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    wheel], check=True, capture_output=True)
    deps = link_dependencies(work / "deps", FACENET_ENTRIES)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "facesort-test-deps.pth").write_text(f"{deps}\n")
    return work, python, deps


def facesort(work, *args):
    """`facesort ARGS` as the venv's console script runs it, from a folder outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([work / "venv" / "bin" / "facesort", *map(str, args)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_installed_wheel_cannot_see_the_checkout(venv):
    work, python, _ = venv
    found = subprocess.run([python, "-c", "import sorter.model as m; print(m.__file__); print(m.bundled_model_path())"],
                           cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert all(path.startswith(str(work / "venv")) for path in found), found


def test_a_wheel_sorts_with_the_bundled_model_after_the_documented_extra_step(venv):
    work, _, deps = venv
    photos = work / "photos"
    photos.mkdir()
    for name in ("people/astronaut.jpg", "things/cat.jpg"):
        shutil.copy(SAMPLE / name, photos)

    missing = facesort(work, "run", photos, "--out", work / "out")
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.splitlines()[-1].startswith("facesort: error: face-aware mode needs facenet-pytorch")
    assert f"pip install --no-deps {FACENET}" in missing.stderr and "Traceback" not in missing.stderr

    for entry in SITE.glob("facenet_pytorch*"):  # what `pip install --no-deps facenet-pytorch==...` puts there
        (deps / entry.name).symlink_to(entry)
    result = facesort(work, "run", photos, "--out", work / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"model {work / 'venv'}" in result.stdout + result.stderr  # the wheel's own bundled model
    assert (work / "out" / "female" / "astronaut.jpg").is_file() and (work / "out" / "neither" / "cat.jpg").is_file()
