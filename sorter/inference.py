"""Classifying decoded images with an exported learner, in batches, the fastai way (test_dl + get_preds).

torch is imported where it is used: a run with nothing to classify, which imports this module, never needs it.
"""
import copy
import gc
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .device import describe, resolve_device
from .labels import VOCAB
from .model import ModelFile

BATCH_SIZE = 16  # images per model batch: on 2 cores, 16 ran 20% faster per image than 64 (cache-sized)
CUDA_BATCH_SIZE = 256  # the least a GPU gets: small batches leave it waiting on each launch


@dataclass
class Prediction:
    """One photo's verdict: probabilities per label (face-aware: over its faces, see `face_votes`), the label set."""

    probs: dict  # {"female": p, "male": p}, empty when no face was found
    labels: list  # sorted subset of VOCAB; [] means neither
    faces: int | None = None  # faces used (face-aware mode only)
    boxes: list | None = None  # face boxes in the decoded image's pixels (face-aware mode only)


def face_votes(rows):
    """A photo's probabilities from its faces' rows (n, 2): each face is one person, so it keeps only its likelier
    label's probability and the other becomes 0. Thresholded, the photo gets the union of its faces' labels, and
    one face never sends it to both folders (as a plain maximum did to 13 of 2,925 one-face validation photos)."""
    kept = np.zeros_like(rows)
    top = rows.argmax(axis=1)
    kept[np.arange(len(rows)), top] = rows[np.arange(len(rows)), top]
    return kept.max(axis=0)


def available_cpus():
    """CPUs this process may run on (its affinity: a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_threads(cpus=None):
    """Intra-op threads for the model while photos decode in other threads: decoding a phone JPEG costs several
    times the model, so the model gets a quarter of the CPUs (one on a 2-core machine, where a second thread
    spinning against the decoders cost 1.5x (whole-image) to 4x (face-aware) more CPU per photo: see README)."""
    return max(1, (cpus or available_cpus()) // 4)


class ModelThreads:
    """The model's intra-op threads for the next chunk, chosen from what the last chunk cost.

    While decoding a chunk (and, face-aware, detecting its faces) costs more CPU than classifying it, the decoding
    threads keep the other cores busy and the model gets `model_threads`; when decoding costs less (small photos,
    whole-image), the decoding threads idle while the model runs, so the model gets every CPU, and it gets them
    too whenever no photo is left decoding (a run's last chunk, or its only one: a night's few new photos). With
    every CPU, the first chunk of TRIAL_IMAGES or more is classified with the mirror images together
    (`MirrorAveraged.apart` off), the next apart, and the way that took less time per image is kept."""

    TRIAL_IMAGES = 32  # fewer images time the two ways too roughly to choose between them

    def __init__(self, cpus=None):
        self.cpus = cpus or available_cpus()
        self.count = self.used = model_threads(self.cpus)
        self.apart = False
        self.per_image = {}  # seconds per image of the first chunk classified with several threads, by `apart`

    def apply(self, model, decoding=True):
        """Set the model's threads and way for the next chunk; `decoding`: whether photos are decoding meanwhile.
        The threads are the network's alone (`MirrorAveraged.threads`): the batches' own tensor work (collation,
        normalisation) stays on the calling thread, where a second torch thread waiting for a busy core made
        stacking a batch of 16 images 17-100 ms instead of 0.3 (README, Performance)."""
        self.used = self.count if decoding else self.cpus
        model.threads, model.apart = self.used, self.apart

    def update(self, decode_cpu, classify_seconds, images):
        """Decoding's CPU seconds for a chunk, the seconds the model took to classify its `images` as applied."""
        if self.used > 1 and self.apart not in self.per_image and images >= self.TRIAL_IMAGES:
            self.per_image[self.apart] = classify_seconds / images
        cheap = decode_cpu < classify_seconds * self.used
        self.count = self.cpus if cheap else model_threads(self.cpus)
        untried = [apart for apart in (False, True) if apart not in self.per_image]
        self.apart = untried[0] if untried else min(self.per_image, key=self.per_image.get)


@contextmanager
def torch_threads(count):
    """Run torch with `count` intra-op threads, restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    if count != previous:  # the model sets its count at every batch: no call when nothing changes
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def inference_model(model, mirror=True):
    """The exported network as facesort runs it: batch norms and dlib's affine layers folded into the convolutions,
    channels-last weights (together 3-4 times faster on a CPU, same outputs to 1e-5), and mirror-averaged unless
    `mirror` is off. The exported network itself is left as it is."""
    import torch
    from torch.fx.experimental.optimization import fuse

    from .dlib_gender import fold_affines
    from .mirror import MirrorAveraged

    model = fold_affines(model.eval())
    try:
        fast = fuse(model).to(memory_format=torch.channels_last)
    except Exception:  # torch.fx cannot trace every network (branches on tensor values): run it as exported
        fast = model
    return MirrorAveraged(fast, mirror).eval()


def inference_batch_tfms(dls):
    """The DataLoaders' batch transforms less those that do nothing outside training: fastai's affine augmentations
    (flip, rotate, zoom, warp in one) with no output size still resample each batch through an identity grid there
    (at 128 px, 4-10 ms a batch of 16 on one CPU thread: README, Performance); the rest run as they are."""
    from fastai.vision.all import AffineCoordTfm, Pipeline

    return Pipeline([t for t in dls.after_batch if not (isinstance(t, AffineCoordTfm) and t.size is None)])


def split_item_tfms(dls):
    """The item transforms as two pipelines: those before ToTensor (the crop and resize of a PIL image, run on the
    decoding threads by `facesort run --whole-image`, where they cost the serial main thread 1.3 ms a ~500 px
    photo: README, Performance) and the rest, which `test_dl` runs on the prepared images."""
    from fastai.vision.all import Pipeline, ToTensor

    tfms = list(dls.after_item)
    cut = next((i for i, t in enumerate(tfms) if isinstance(t, ToTensor)), len(tfms))
    return Pipeline(tfms[:cut], split_idx=1), Pipeline(tfms[cut:], split_idx=1)


class Classifier:
    """An exported facesort learner with its threshold; `probabilities` is the only place the model runs.

    The model file is checked, hashed and its settings read at once; the learner is unpickled on first use, so
    a run that finds nothing to classify never loads it. `device` auto is resolved on first use too (it needs
    torch); an explicit cuda is checked at once, so a machine without one says so before any work."""

    def __init__(self, model_path=None, threshold=None, whole_image=False, device="auto"):
        self.model_file = ModelFile(model_path, whole_image)  # no path: the bundled model for that mode
        self.path, self.sha256 = self.model_file.path, self.model_file.sha256
        self.threshold = float(threshold if threshold is not None else self.model_file.settings["threshold"])
        self.size = self.model_file.settings["size"]
        self._device = resolve_device(device) if device != "auto" else None
        self._learn = None

    @property
    def device(self):
        """"cpu" or "cuda", the device the networks run on."""
        if self._device is None:
            self._device = resolve_device("auto")
        return self._device

    def describe_device(self):
        return describe(self.device)

    @property
    def learn(self):
        return self.load()._learn

    def load(self):
        """Unpickle the learner now, if not yet done (a server does it before its first request); returns self."""
        if self._learn is None:
            learn = self.model_file.load()
            mirror = self.model_file.settings["mirror"]
            learn.model = inference_model(learn.model, mirror).to(self.device)  # fp32 on CUDA too: half is unmeasured
            learn.dls.to(self.device)
            self._after_batch = inference_batch_tfms(learn.dls)
            self._prepare, self._after_prepared = split_item_tfms(learn.dls)
            self._threads = threading.local()  # each thread's own copy of `_prepare`: see `prepare`
            self._learn = learn
            # torch, fastai and the model hold ~500,000 objects that never become garbage: frozen, they are not
            # traversed by the collection after each batch call (400-500 ms of CPU each here, 0.01 ms after)
            gc.collect()
            gc.freeze()
        return self

    def prepare(self, image):
        """The image as the model's item transforms crop and resize it, ready for `probabilities(prepared=True)`.
        Each thread runs its own copy of the transforms: fastai's RandomResizedCrop keeps the size of the image it
        is cropping on itself, so two decoding threads sharing it could crop one photo by another's size."""
        own = self.load()._threads
        if not hasattr(own, "prepare"):
            own.prepare = copy.deepcopy(self._prepare)
        return own.prepare(image)

    def probabilities(self, images, batch_size=BATCH_SIZE, prepared=False):
        """Sigmoid outputs for a list of PIL images (`prepared`: each already through `prepare`), shape (n, 2) in
        VOCAB order."""
        import torch

        if not images:
            return np.zeros((0, len(VOCAB)), dtype=np.float32)
        if self.device == "cuda":
            batch_size = max(batch_size, CUDA_BATCH_SIZE)
        item = {"after_item": self._after_prepared} if prepared else {}
        dl = self.learn.dls.test_dl(images, bs=batch_size, num_workers=0, after_batch=self._after_batch, **item)
        with torch.inference_mode(), self.learn.no_bar():
            probs, _ = self.learn.get_preds(dl=dl)
        del dl
        gc.collect()  # test_dl holds the images in reference cycles: without a collection here, they piled up
        return probs.numpy()  # until a rare full one, and a run's peak memory doubled from 500 to 5000 photos

    def verdict(self, probs_row, faces=None, boxes=None):
        """Turn one row of probabilities into a Prediction at this classifier's threshold."""
        probs = {label: float(p) for label, p in zip(VOCAB, probs_row)}
        labels = [label for label in VOCAB if probs[label] >= self.threshold]
        return Prediction(probs, labels, faces, boxes)

    def predict_whole(self, images, batch_size=BATCH_SIZE, prepared=False):
        """The tutorial's way: one prediction per whole image."""
        return [self.verdict(row) for row in self.probabilities(images, batch_size, prepared)]

    def predict_faces(self, images, finder, batch_size=BATCH_SIZE, found=None):
        """Face-aware: classify every face crop of all images in one batch; a photo gets the union of its faces'
        labels, one label per face (see `face_votes`).

        `found` holds the images' faces when they were already detected (facesort run detects while decoding)."""
        found = finder.find(images) if found is None else found
        crops = [crop for faces in found for crop in faces.crops]
        probs = self.probabilities(crops, batch_size)
        results, start = [], 0
        for faces in found:
            rows = probs[start:start + len(faces.crops)]
            start += len(faces.crops)
            if len(rows):
                results.append(self.verdict(face_votes(rows), len(rows), faces.boxes))
            else:
                results.append(Prediction({}, [], 0, []))
        return results
