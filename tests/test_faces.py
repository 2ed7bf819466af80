"""Face-aware mode plumbing: detection on a downscaled copy, crops with a margin, the union of faces' labels,
and training on face crops first (held-out split, hard negatives, the degrade augmentation).

A stub stands in for MTCNN, so these tests stay fast and deterministic (one test runs the real detector on the
sample astronaut: facesort's faster memory format must find what MTCNN as shipped finds); the colour of a crop
carries its label, as everywhere in this suite.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, make_dataset, make_photo
from sorter import faces, training
from sorter.faces import FaceFinder, Faces, square_crop
from sorter.inference import Classifier


class StubMTCNN:
    """Answers detect() with fixed boxes (in the pixels of the images it is given) and probabilities for each image
    of the batch, a tensor shaped (N, H, W, C) as MTCNN takes it; records each image's (width, height)."""

    min_face_size = 20

    def __init__(self, boxes, probs):
        self.boxes, self.probs, self.sizes = boxes, probs, []

    def detect(self, batch):
        n, height, width, _ = batch.shape
        self.sizes += [(width, height)] * n
        return self.answer(n, (width, height))

    def answer(self, n, size):
        boxes = np.array(self.boxes, dtype=float) if self.boxes else None
        return [boxes] * n, [np.array(self.probs) if self.boxes else [None]] * n


def finder_with(stub, detect_side=faces.DETECT_SIDE, padded=False):
    finder = FaceFinder.__new__(FaceFinder)
    finder.detect_side, finder.mtcnn, finder.second, finder.padded = detect_side, stub, stub, padded
    return finder


class LookStub(StubMTCNN):
    """Sees nothing on copies up to the first look's size; on larger ones, these boxes."""

    def answer(self, n, size):
        return ([None] * n, [[None]] * n) if max(size) <= faces.DETECT_SIDE else super().answer(n, size)


class PaddedStub(StubMTCNN):
    """Sees nothing but on the padded look's small copies (at most PADDED_SIDE long), where it sees these boxes."""

    def answer(self, n, size):
        return super().answer(n, size) if max(size) <= faces.PADDED_SIDE else ([None] * n, [[None]] * n)


class ColourFinder:
    """A face finder for the colour photos: each listed colour region of a photo is one 'face'."""

    def __init__(self, crops_per_image):
        self.crops_per_image = crops_per_image

    def find(self, images):
        return [Faces([[0, 0, 8, 8]] * len(crops), crops, [0.99] * len(crops)) for crops in self.crops_per_image]


def solid(label, size=32):
    return Image.new("RGB", (size, size), COLOURS[label])


def test_square_crop_adds_the_margin_and_pads_outside_the_photo_with_black():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    crop = square_crop(image, (0, 20, 40, 60), margin=0.25)  # a 40 px face at the left edge
    assert crop.size == (60, 60)  # 40 px + 25% on each side
    assert crop.getpixel((2, 30)) == (0, 0, 0)  # left of the photo: black
    assert crop.getpixel((30, 30)) == (255, 255, 255)


def test_large_photos_are_detected_on_a_small_copy_and_boxes_mapped_back():
    stub = StubMTCNN([[10, 20, 60, 80], [100, 100, 110, 112]], [0.99, 0.5])
    image = Image.new("RGB", (1280, 960), (200, 200, 200))
    found = finder_with(stub, detect_side=640).find([image])[0]
    assert stub.sizes == [(640, 480)]  # detection ran on a copy no longer than detect_side
    assert found.boxes == [[20, 40, 120, 160]]  # the unsure detection is dropped, the other scaled back
    assert found.probs == [pytest.approx(0.99)]
    assert found.crops[0].size == (180, 180)  # cropped from the full-size photo, margin included


def test_small_photos_are_detected_as_they_are_and_no_face_gives_nothing():
    stub = StubMTCNN([], [])
    found = finder_with(stub).find([Image.new("RGB", (300, 200))])[0]
    assert stub.sizes == [(300, 200)]
    assert (found.boxes, found.crops, found.probs) == ([], [], [])


def test_a_photo_with_no_face_on_the_small_copy_gets_a_second_look_that_keeps_only_small_faces():
    # at 640 px the second look sees a 30 px face (too small for the first look's 24 px at 320) and a 100 px one,
    # which the first look would have seen had it been a face (a dog's, say): only the small one is kept
    stub = LookStub([[100, 100, 130, 130], [300, 200, 400, 300]], [0.99, 0.99])
    found = finder_with(stub).find([Image.new("RGB", (1280, 960))])[0]
    assert stub.sizes == [(320, 240), (640, 480)]
    assert found.boxes == [[200, 200, 260, 260]]  # scaled back to the photo's pixels
    assert found.crops[0].size == (90, 90)


def test_no_second_look_where_the_first_found_a_face_or_the_photo_is_not_much_larger():
    found_first = StubMTCNN([[10, 10, 60, 60]], [0.99])
    finder_with(found_first).find([Image.new("RGB", (1280, 960))])
    assert found_first.sizes == [(320, 240)]
    small = LookStub([[10, 10, 40, 40]], [0.99])
    assert finder_with(small).find([Image.new("RGB", (450, 300))])[0].boxes == []  # 450 px: < 1.5 x 320
    assert small.sizes == [(320, 213)]


def test_a_photo_where_no_look_finds_a_face_gets_a_padded_look_for_one_that_fills_the_frame():
    # a 400x300 photo inside a 100 px black border is 600x500, looked at as 96x80 (a 6.25th): the stub's 60 px box
    # there is a 375 px face in the framed photo, at (25, -25) in the photo's own pixels (its top cut off), and its
    # 10 px box a 62 px face, too small to be one the other looks missed: dropped
    stub = PaddedStub([[20, 12, 80, 72], [2, 2, 12, 12]], [0.99, 0.99])
    found = finder_with(stub, padded=True).find([Image.new("RGB", (400, 300), (200, 200, 200))])[0]
    assert stub.sizes == [(320, 240), (96, 80)]  # first look; 400 px is too small for a second; then padded
    assert found.boxes == [[25, -25, 400, 350]]
    assert found.crops[0].size == (563, 563)  # the box and its margin (1.5 x 375, rounded), black outside the photo
    assert found.crops[0].getpixel((5, 281)) == (0, 0, 0) and found.crops[0].getpixel((200, 281)) == (200, 200, 200)


def test_no_padded_look_where_another_look_found_a_face():
    stub = StubMTCNN([[10, 10, 60, 60]], [0.99])
    finder_with(stub, padded=True).find([Image.new("RGB", (400, 300))])
    assert stub.sizes == [(320, 240)]


def test_the_real_detector_finds_a_face_that_fills_the_frame_only_with_the_padded_look():
    from sorter.images import load_image

    photo = load_image(Path(__file__).parent.parent / "data" / "sample" / "people" / "astronaut.jpg")
    tight = photo.crop((190, 95, 256, 161)).resize((200, 200))  # her face from brows to lips, as a profile picture
    assert FaceFinder(padded_look=False).find([tight])[0].boxes == []
    (box,) = FaceFinder().find([tight])[0].boxes
    assert box[0] < 20 and box[2] > 180 and box[1] < 0  # her whole face, forehead above the picture


def test_a_face_mostly_outside_the_photo_counts_only_when_no_face_is_inside_it():
    # a woman in the photo, and at its edge a bystander of whom MTCNN saw a third: only she is sorted
    stub = StubMTCNN([[80, 60, 140, 130], [-40, 50, 20, 120], [150, 0, 210, 40]], [0.99, 0.99, 0.99])
    found = finder_with(stub).find([Image.new("RGB", (200, 200))])[0]
    assert found.boxes == [[80, 60, 140, 130], [150, 0, 210, 40]]  # 1/3 inside: dropped; 5/6 inside: kept
    alone = finder_with(StubMTCNN([[-40, 50, 20, 120]], [0.99])).find([Image.new("RGB", (200, 200))])[0]
    assert alone.boxes == [[-40, 50, 20, 120]]  # the only face: it is who the photo shows


def test_a_photo_gets_the_union_of_its_faces_labels_and_the_highest_probabilities(colour_model):
    classifier = Classifier(colour_model)
    finder = ColourFinder([[solid("female"), solid("male")], [solid("male")], []])
    couple, man, nobody = classifier.predict_faces([solid("neither")] * 3, finder)
    assert couple.labels == ["female", "male"] and couple.faces == 2
    assert man.labels == ["male"] and man.faces == 1
    assert (nobody.labels, nobody.faces, nobody.probs) == ([], 0, {})
    alone = classifier.probabilities([solid("female"), solid("male")])
    assert couple.probs["female"] == pytest.approx(float(alone[:, 0].max()), abs=1e-5)
    assert couple.probs["male"] == pytest.approx(float(alone[:, 1].max()), abs=1e-5)


def test_one_face_is_one_person_even_when_the_model_is_sure_of_both_labels(colour_model):
    classifier = Classifier(colour_model)
    magenta = Image.new("RGB", (32, 32), (230, 40, 200))  # red and blue: the model says female and male, both > 0.9
    assert (classifier.probabilities([magenta]) > 0.9).all()
    one, pair = classifier.predict_faces([solid("neither")] * 2, ColourFinder([[magenta], [magenta, solid("male")]]))
    assert one.labels == ["female"] and one.probs["male"] == 0  # its likelier label only
    assert pair.labels == ["female", "male"]  # a second face brings the other label


class OneFaceFinder:
    """Stub finder: on face photos one centred face, on green (neither) photos a 'face' only in the first."""

    def find(self, images):
        image = images[0]
        box = [image.width // 4, image.height // 4, 3 * image.width // 4, 3 * image.height // 4]
        return [Faces([box], [square_crop(image, box)], [0.99])]


def one_per_file_dataset(root, per_label):
    """Colour photos whose names end in no number: split one by one (numbered runs are split by block)."""
    for label in COLOURS:
        for i in range(per_label):
            make_photo(root / label / f"{label}_{i}_photo.jpg", label, seed=i)
    return root


def test_crop_faces_first_writes_train_and_valid_crops_and_keeps_the_test_split_out(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "_finder", lambda min_face: OneFaceFinder())
    data = one_per_file_dataset(tmp_path / "data", per_label=30)
    counts = training.crop_faces_first(data, tmp_path / "crops", size=40, log=lambda m: None)
    written = sorted(tmp_path.glob("crops/*/*/*.webp"))
    tested = [p for p in data.rglob("*.jpg") if training.split_of(p.relative_to(data)) == "test"]
    assert counts["held out for testing"] == len(tested) > 0
    assert {p.relative_to(tmp_path / "crops").parts[0] for p in written} == {"train", "valid"}
    assert not {p.stem for p in tested} & {p.stem.split("_", 1)[1].removesuffix("_face0") for p in written}
    assert all(Image.open(p).size == (40, 40) for p in written)
    neither = [p for p in written if p.parent.name == "neither"]
    assert len([p for p in neither if p.stem.endswith("_face0")]) == counts["faces found in no-face images"] > 0


def test_crop_faces_first_can_use_an_even_share_of_each_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "_finder", lambda min_face: OneFaceFinder())
    data = make_dataset(tmp_path / "data", per_label=30)
    counts = training.crop_faces_first(data, tmp_path / "crops", size=32, per_folder=10, log=lambda m: None)
    assert sum(n for name, n in counts.items() if name.split()[0] in ("train", "valid", "held")) == 30


def test_degrade_shrinks_and_recompresses_training_images_only():
    from fastai.vision.all import PILImage

    image = PILImage.create(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    degrade = training.Degrade(p=1.0, min_side=8, quality=(20, 20))
    changed = degrade(image, split_idx=0)
    assert changed.size == image.size and np.asarray(changed).tolist() != np.asarray(image).tolist()
    assert degrade(image, split_idx=1) is image  # never at validation or prediction


def test_greyscale_turns_training_images_black_and_white_only():
    from fastai.vision.all import PILImage

    image = PILImage.create(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    grey = np.asarray(training.Greyscale(p=1.0)(image, split_idx=0)).astype(int)
    assert grey.shape == (16, 16, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert training.Greyscale(p=1.0)(image, split_idx=1) is image  # never at validation or prediction


def test_erase_hides_a_rectangle_of_training_batches_only(dataset):
    import torch
    from fastai.vision.all import RandomErasing, TensorImage

    plain = training.make_dataloaders(sorted(dataset.rglob("*.jpg")), training.TrainOptions(size=32, workers=0))
    assert not any(isinstance(t, RandomErasing) for t in plain.after_batch)  # off by default: draws as before
    dls = training.make_dataloaders(sorted(dataset.rglob("*.jpg")),
                                    training.TrainOptions(size=32, batch_size=8, workers=0, erase=1.0))
    assert isinstance(dls.after_batch[-1], RandomErasing)  # after Normalize: the noise is in the network's scale
    batch = TensorImage(torch.zeros(8, 3, 32, 32))
    erased = dls.after_batch[-1](batch.clone(), split_idx=0)
    assert ((erased != 0).flatten(1).any(dim=1)).all()  # every image of the batch has a rectangle of noise
    assert (erased == 0).flatten(1).any(dim=1).all()  # a rectangle, not the whole image
    assert (dls.after_batch[-1](batch, split_idx=1) == 0).all()  # never at validation or prediction


def test_train_refuses_a_face_crop_folder_that_is_not_empty(cli, dataset, tmp_path):
    (tmp_path / "crops").mkdir()
    (tmp_path / "crops" / "keep.txt").write_text("mine")
    result = cli("train", dataset, "--model", tmp_path / "m.pkl", "--crop-faces", tmp_path / "crops")
    assert result.exit_code == 1
    assert "is not empty" in result.output and (tmp_path / "crops" / "keep.txt").exists()


def test_the_real_detector_finds_the_sample_astronaut_as_mtcnn_does_as_shipped():
    import torch
    from sorter.images import load_image

    photo = load_image(Path(__file__).parent.parent / "data" / "sample" / "people" / "astronaut.jpg")
    fast = FaceFinder().find([photo])[0]
    shipped = FaceFinder()
    shipped.use_memory_format(torch.contiguous_format)
    assert len(fast.boxes) == 1
    assert fast.boxes == shipped.find([photo])[0].boxes
    copy = photo.resize((320, 320))  # MTCNN given the image itself, as shipped, not facesort's tensor of it
    boxes, probs = shipped.mtcnn.detect(copy)
    (own_boxes,), (own_probs,) = faces._detect(shipped.mtcnn, [copy])
    assert np.allclose(own_boxes.astype(float), boxes.astype(float), atol=1e-3)
    assert np.allclose(own_probs.astype(float), probs.astype(float))


def test_the_real_detector_finds_a_distant_astronaut_only_with_the_second_look():
    from sorter.images import load_image

    photo = load_image(Path(__file__).parent.parent / "data" / "sample" / "people" / "astronaut.jpg")
    scene = Image.new("RGB", (1500, 1000), (90, 120, 90))
    scene.paste(photo.resize((250, 250)), (600, 400))  # her face: about 4% of the scene's width
    assert FaceFinder(second_look=False).find([scene])[0].boxes == []
    (box,) = FaceFinder().find([scene])[0].boxes
    assert 600 < box[0] < box[2] < 850 and 400 < box[1] < box[3] < 650
