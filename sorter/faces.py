"""Finding faces with MTCNN (weights ship inside facenet-pytorch) and cropping them for the classifier.

facenet-pytorch is an extra step of installing facesort (its metadata pins old torch and Pillow releases, so it is
installed without its dependencies); face-aware mode says how when it is missing. torch is imported on use.
"""
import copy
from dataclasses import dataclass, field

from PIL import Image

from .errors import FacesortError

DETECT_SIDE = 320  # detection runs on a copy no longer than this (README, "Face detection")
MIN_FACE = 24  # smallest face, in pixels of that copy, worth classifying (7.5% of the photo's long side)
SECOND_LOOK_SIDE = 640  # a photo where that copy shows no face is looked at again on a copy this large (faces
SECOND_LOOK_MIN = 1.5  # down to 3.75% of its long side) if it is at least this much larger, else it shows little new
SECOND_LOOK_FACTOR = 0.5  # that look's scales step an octave (MTCNN's default 0.709): a third cheaper, as many found
PADDED_BORDER = 0.25  # a photo where no look finds a face gets a last one inside a black border this share of its
PADDED_SIDE = 96  # longer side wide, on a copy this long, for a face that fills the frame; of what it finds, only
PADDED_MIN_SHARE = 0.6  # faces this share of the photo's shorter side or more count: a smaller one was seen before
STAGE_THRESHOLDS = (0.8, 0.8, 0.9)  # cut-offs of MTCNN's three networks: fewer candidate boxes
MIN_CONFIDENCE = 0.92  # MTCNN's probability below which a detection is ignored
IN_FRAME = 0.5  # a face with less of its box inside the photo is someone cut off by its edge: ignored beside others
CROP_SIDE = 300  # faces are cropped from the photo decoded with at least this short side, not from the small copy
MARGIN = 0.25  # crop this much of the face box's size around it on each side, like the training crops
FACENET = "facenet-pytorch==2.6.0"  # the release scripts/setup installs and the tests run


@dataclass
class Faces:
    """The faces found in one image: boxes (x0, y0, x1, y1 in the image's pixels), square crops, MTCNN's probs."""

    boxes: list = field(default_factory=list)
    crops: list = field(default_factory=list)
    probs: list = field(default_factory=list)


class FaceFinder:
    """MTCNN fed downscaled copies, on the CPU or a GPU; crops come from the full decoded image."""

    def __init__(self, min_face=MIN_FACE, detect_side=DETECT_SIDE, device="cpu", second_look=True, padded_look=True):
        mtcnn = _mtcnn_class()  # first: without facenet-pytorch, say so before importing torch
        import torch

        self.detect_side, self.device, self.padded = detect_side, device, padded_look
        self.mtcnn = mtcnn(keep_all=True, min_face_size=min_face, thresholds=list(STAGE_THRESHOLDS), device=device,
                           select_largest=False)
        self.second = copy.copy(self.mtcnn) if second_look else None  # the same three networks, another pyramid
        if self.second:
            self.second.factor = SECOND_LOOK_FACTOR
        self.use_memory_format(torch.channels_last)

    @property
    def detects_while_decoding(self):
        """On the CPU detection runs in the decoding threads, photo by photo; a GPU gets whole chunks at once."""
        return self.device == "cpu"

    def use_memory_format(self, memory_format):
        """Store MTCNN's three networks' weights in this memory format. channels_last (facesort's) finds the same
        boxes as torch.contiguous_format (as shipped) in a third less time: CPU fast paths for its pools and convs."""
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=memory_format)

    def find(self, images):
        """Faces of every image: a first look at a small copy, then, where it found none, a second look for faces
        too small for it and a padded look for a face too large for it."""
        found = self._find(images, self.detect_side, self.mtcnn)
        if self.second is not None:
            self._second_look(images, found)
        if self.padded:
            self._padded_look(images, found)
        return found

    def _second_look(self, images, found):
        """A photo where the small copy shows no face gets a second look at a larger copy, for the faces too small
        for the first (a person far off in a scene); that look keeps only faces that small, since a larger one it
        finds is one the first look saw and rejected (a dog's face, say)."""
        again = [i for i, faces in enumerate(found)
                 if not faces.boxes and max(images[i].size) >= SECOND_LOOK_MIN * self.detect_side]
        for i, faces in zip(again, self._find([images[i] for i in again], SECOND_LOOK_SIDE, self.second)):
            limit = 2 * self.mtcnn.min_face_size * max(images[i].size) / self.detect_side
            found[i] = _sized(faces, lambda side: side < limit)

    def _padded_look(self, images, found):
        """A photo still without a face may be one face filling the frame, its chin or hair cut off (a profile
        picture, a tight crop): MTCNN sees no face larger than the photo. It is looked at once more inside a black
        border, on a small copy; only faces of PADDED_MIN_SHARE of its shorter side or more are kept (what it finds
        and costs: models/README.md, session 20)."""
        again = [i for i, faces in enumerate(found) if not faces.boxes]
        borders = [round(PADDED_BORDER * max(images[i].size)) for i in again]
        framed = [_with_border(images[i], border) for i, border in zip(again, borders)]
        for i, border, faces in zip(again, borders, self._find(framed, PADDED_SIDE, self.mtcnn)):
            least = PADDED_MIN_SHARE * min(images[i].size)
            found[i] = _sized(_moved(faces, -border), lambda side: side >= least)

    def _find(self, images, side, mtcnn):
        """Faces of every image on copies at most `side` long; the copies of equal size go through MTCNN as one
        batch (its batches need equal sizes), so a folder of same-size photos costs a few large calls."""
        import torch

        copies = [_downscale(image, side) for image in images]
        groups = {}
        for i, (small, _) in enumerate(copies):
            if min(small.size) >= mtcnn.min_face_size:  # else no face fits, and MTCNN fails on such an image
                groups.setdefault(small.size, []).append(i)
        found = [Faces() for _ in images]
        with torch.inference_mode():
            for members in groups.values():
                for i, boxes, probs in zip(members, *_detect(mtcnn, [copies[i][0] for i in members])):
                    found[i] = _faces(images[i], boxes, probs, copies[i][1])
        return found


def _detect(mtcnn, smalls):
    """MTCNN's (boxes, probs) per image, the images given as one tensor in the (N, H, W, C) shape MTCNN takes but
    laid out (N, C, H, W) in memory, the layout it turns them into: its pyramid's resampling runs a tenth to a
    fifth faster on a contiguous tensor than on the channels-last one it makes of images, and finds the same boxes."""
    import numpy as np
    import torch

    batch = torch.from_numpy(np.stack([np.asarray(small) for small in smalls])).permute(0, 3, 1, 2).contiguous()
    return mtcnn.detect(batch.permute(0, 2, 3, 1))


def _faces(image, boxes, probs, scale):
    """The confident detections of one image, boxes scaled back to its pixels, with their crops; a face mostly
    outside the photo (a bystander at its edge, MTCNN guessing the rest of the box) counts only if no face is in it."""
    if boxes is None:
        return Faces()
    kept = [(box * scale, float(p)) for box, p in zip(boxes, probs) if p >= MIN_CONFIDENCE]
    framed = [(box, p) for box, p in kept if _share_inside(box, image.size) >= IN_FRAME]
    kept = framed or kept
    return Faces([[round(float(v)) for v in box] for box, _ in kept], [square_crop(image, box) for box, _ in kept],
                 [p for _, p in kept])


def _sized(faces, keep):
    """The faces whose box's longer side, in pixels, passes `keep`."""
    kept = [i for i, box in enumerate(faces.boxes) if keep(max(box[2] - box[0], box[3] - box[1]))]
    return Faces(*([values[i] for i in kept] for values in (faces.boxes, faces.crops, faces.probs)))


def _moved(faces, offset):
    """The faces with their boxes moved by `offset` pixels along both axes (their crops are the same)."""
    return Faces([[v + offset for v in box] for box in faces.boxes], faces.crops, faces.probs)


def _with_border(image, border):
    """The image inside a black border `border` pixels wide."""
    framed = Image.new("RGB", (image.width + 2 * border, image.height + 2 * border))
    framed.paste(image, (border, border))
    return framed


def _share_inside(box, size):
    """The share of a box's area inside an image of this (width, height)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = max(0.0, min(x1, size[0]) - max(x0, 0.0)) * max(0.0, min(y1, size[1]) - max(y0, 0.0))
    return inside / max((x1 - x0) * (y1 - y0), 1e-9)


def _mtcnn_class():
    """facenet-pytorch's MTCNN, or a one-line error that says how to install it."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as e:
        how = f"pip install --no-deps {FACENET} (its own pins are wrong; its dependencies come with facesort)"
        raise FacesortError(f"face-aware mode needs facenet-pytorch ({e}): {how}, or use --whole-image") from None
    return MTCNN


def _downscale(image, side):
    scale = max(image.size) / side
    if scale <= 1:
        return image, 1.0
    size = (round(image.width / scale), round(image.height / scale))  # bilinear: half bicubic's time, same faces
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), scale


def square_crop(image, box, margin=MARGIN):
    """A square around the face box, grown by `margin` on each side; parts outside the photo are black."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = side / 2
    return image.crop(tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half)))
