"""Fine-tuning a pretrained CNN on labelled folders, the fastai tutorial's multi-label recipe."""
import io
import json
import math
import os
import random
import signal
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from multiprocessing import get_context
from pathlib import Path

import torch

from fastai.vision.all import (
    BCEWithLogitsLossFlat, Callback, DataBlock, FuncSplitter, ImageBlock, Learner, MultiCategoryBlock, Normalize,
    PILImage, ProgressCallback, RandomErasing, RandomResizedCrop, RandomSplitter, RandTransform, accuracy_multi,
    aug_transforms,
    progress_bar, set_seed, vision_learner,
)
from PIL import Image, ImageOps

from . import archs, dlib_gender, ensemble
from .discover import image_files
from .errors import FacesortError
from .faces import FaceFinder, square_crop
from .groups import Groups, fairness, format_fairness
from .images import ImageError, load_image
from .inference import inference_model
from .labels import VOCAB, folder_label, label_set, labelled_images
from .metrics import best_threshold, label_metrics
from .model import load_model, python_version
from .splits import split_of


@dataclass
class TrainOptions:
    """What `facesort train` can change; defaults give a good small model on a CPU."""

    arch: str = "mobilenet_v2"
    size: int | None = None  # None: the architecture's own (ARCH_SIZES)
    epochs: int = 3
    freeze_epochs: int = 1
    lr: float | None = None  # None: take lr_find's suggestion
    batch_size: int = 64
    valid_pct: float = 0.2
    seed: int = 42
    pretrained: bool = True
    workers: int | None = None
    crop_faces_to: str | None = None  # crop DATA's faces into this new folder first, and train on that
    per_folder: int | None = None  # with crop_faces_to: use at most this many images of each folder
    degrade: float = 0.3  # share of training images shrunk and re-compressed like small faces in real photos
    grey: float = 0.0  # share of training images turned black-and-white, like old or artistic photos
    erase: float = 0.0  # share of training batches with a random rectangle replaced by noise (hair, caps)
    init_from: str | None = None  # an exported facesort model whose weights training starts from
    groups: str | None = None  # a metadata CSV (see sorter.groups): balance training and report validation per group
    balance: bool = False  # sample so labels, and groups within a label, weigh fairly (LABEL_SHARE, sample_weights)
    progress_bars: bool = True  # fastai's bars; off under cron, where a CSV history is written instead
    ensemble: tuple = ()  # exported models to combine (sorter.ensemble) instead of training one
    ensemble_weights: tuple = ()  # each member's weight in the ensemble's mean (none: equal)
    mirror: bool = True  # run (and calibrate) averaged over each image and its mirror image (sorter.mirror)
    mirrored_members: tuple = ()  # indexes (from 0) of ensemble members averaged over the mirror image inside it
    female_offset: float | None = None  # an ensemble's logit offset for `female` (Ensemble.set_offsets); None: kept
    threshold: float | None = None  # stored as given instead of calibrated on the validation split


class Degrade(RandTransform):
    """Faces in real photos are often small, blurred and JPEG-compressed: shrink some training crops, re-encode.

    Pickled by reference into exported learners: keep its name. Training only (split_idx 0).
    """

    split_idx, order = 0, 2  # after RandomResizedCrop, so the shrink is relative to the model's input size

    def __init__(self, p=0.3, min_side=24, quality=(30, 90)):
        super().__init__(p=p)
        self.min_side, self.quality = min_side, quality

    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        self.side_share = random.random()
        self.jpeg_quality = random.randint(*self.quality)

    def encodes(self, img: PILImage):
        low = min(self.min_side, min(img.size))
        side = round(low + self.side_share * (min(img.size) - low))
        small = img.resize((max(1, img.width * side // min(img.size)), max(1, img.height * side // min(img.size))))
        buffer = io.BytesIO()
        small.convert("RGB").save(buffer, "JPEG", quality=self.jpeg_quality)
        return PILImage.create(Image.open(buffer).resize(img.size))


class Greyscale(RandTransform):
    """Black-and-white photos are common and the faces in the data are in colour: turn some training images grey.

    Pickled by reference into exported learners: keep its name. Training only (split_idx 0).
    """

    split_idx, order = 0, 3  # after Degrade

    def encodes(self, img: PILImage):
        return PILImage.create(img.convert("L").convert("RGB"))


def in_valid_folder(path):
    """FuncSplitter rule: an image under a folder named `valid` is validation (an honest, fixed hold-out)."""
    return "valid" in (part.lower() for part in Path(path).parts[:-1])


class _EpochLog:
    """fastai's logger without progress bars: one plain line per epoch."""

    def __init__(self, log):
        self.log = log

    def __call__(self, values):
        names = ("epoch", "train_loss", "valid_loss", "accuracy_multi", "time")
        self.log(" ".join(f"{n}={v:.4f}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names, values)))


def find_training_images(data_dir, log=print):
    """The labelled images under `data_dir`; warns about and drops images under no label folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FacesortError(f"training folder not found: {data_dir}")
    labelled, unlabelled = labelled_images(image_files(data_dir))
    if unlabelled:
        log(f"warning: skipped {unlabelled} images under no male/female/neither folder")
    if not labelled:
        raise FacesortError(f"no labelled images under {data_dir} (put them in male/, female/ or neither/ folders)")
    return labelled


ARCH_SIZES = {dlib_gender.ARCH: dlib_gender.SIDE}  # input side in pixels; other architectures: DEFAULT_SIZE
DEFAULT_SIZE = 128
# fine_tune's ratio of the head's learning rate to the first layers': ImageNet features need little change (fastai's
# 100); dlib's body learnt faces, at 32 px, from fewer data than ours, and is worth moving more
LR_MULT = {dlib_gender.ARCH: 10}
LABEL_SHARE = {"female": 0.4, "male": 0.4, "neither": 0.2}  # of the training draws, with `balance`


def input_size(opts):
    return opts.size or ARCH_SIZES.get(opts.arch, DEFAULT_SIZE)


def make_dataloaders(items, opts, root=None, groups=None):
    """DataBlock: image → multi-label set over female/male; `valid/` folders split when present, else random.

    With `opts.balance`, training batches are drawn by `sample_weights` (fastai's WeightedDL) instead of shuffled.
    """
    has_valid = root is not None and any(in_valid_folder(p.relative_to(root)) for p in items)
    splitter = FuncSplitter(in_valid_folder) if has_valid else RandomSplitter(opts.valid_pct, seed=opts.seed)
    # vision_learner adds its ImageNet normalisation itself; dlib's network has its own
    norm = [Normalize.from_stats(dlib_gender.MEAN, dlib_gender.STD)] if opts.arch == dlib_gender.ARCH else []
    block = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=list(VOCAB))),
        get_y=label_set,
        splitter=splitter,
        item_tfms=[RandomResizedCrop(input_size(opts), min_scale=0.6), Degrade(opts.degrade),
                   *([Greyscale(opts.grey)] if opts.grey else [])],  # absent at 0: the random draws stay as they were
        batch_tfms=[*aug_transforms(max_lighting=0.4, max_zoom=1.2), *norm,
                    *([RandomErasing(opts.erase, max_count=1)] if opts.erase else [])],  # after Normalize: noise
    )
    if opts.balance:
        return block.weighted_dataloaders(items, sample_weights(items, groups), bs=opts.batch_size,
                                          num_workers=_loader_workers(opts, len(items)))
    return block.dataloaders(items, bs=opts.batch_size, num_workers=_loader_workers(opts, len(items)))


def sample_weights(items, groups=None):
    """Draw weights: each label gets its LABEL_SHARE; within a label, each source (the CSV's first column, or the
    prefix of a crop's name, `faces-utk_…`), and within a source each group of the CSV's other columns, gets a
    share that grows with the square root of its size: few older women or boys are drawn more often than their
    count alone would have them, but not so often that they are learnt by heart.
    """
    keys = [(folder_label(p) or "neither", *(groups.of(p.stem).values() if groups else [p.stem.split("_")[0]]))
            for p in items]
    sizes = Counter(key[:depth] for key in keys for depth in range(1, len(key) + 1))
    siblings = Counter()  # the sum of sqrt(size) of the groups that share a parent
    for prefix, size in sizes.items():
        siblings[prefix[:-1]] += size ** 0.5
    return [LABEL_SHARE.get(key[0], 0.2) * _share(key, sizes, siblings) for key in keys]


def _share(key, sizes, siblings):
    """One image's share of its label's draws: the product, level by level, of its group's share of its parent."""
    share = 1.0
    for depth in range(2, len(key) + 1):
        share *= sizes[key[:depth]] ** 0.5 / siblings[key[:depth - 1]]
    return share / sizes[key]


def train(data_dir, model_path, opts=None, log=print, resume=False):
    """Train, calibrate the threshold on the validation split, export the learner and its metrics JSON.

    After every epoch the weights, optimiser and progress are saved to `checkpoint_path(model_path)`; with
    `resume`, training continues from there (same options) instead of starting again. The checkpoint is removed
    once the model is exported.
    """
    opts = opts or TrainOptions()
    set_seed(opts.seed, reproducible=True)
    opts, network, lineage = _network(opts)
    checkpoint = checkpoint_path(model_path)
    state = _read_checkpoint(checkpoint, opts) if resume else None
    if opts.crop_faces_to:
        data_dir = _crop_first(data_dir, opts, log)
    groups = Groups.read(opts.groups) if opts.groups else None
    items = find_training_images(data_dir, log)
    dls = make_dataloaders(items, opts, Path(data_dir), groups)
    fit_batch_size(dls, log)
    log(f"training {opts.arch} on {len(dls.train_ds)} images, validating on {len(dls.valid_ds)}")
    learn = network(dls)
    if opts.epochs or opts.freeze_epochs:  # else calibrate only (an ensemble of trained members, by default)
        _fit(learn, opts, checkpoint, state, log)
    learn.logger = print  # the learner is pickled on export: keep only picklable attributes
    probs, targets = validation_preds(learn, opts.mirror)
    refuse_non_finite(learn, probs)
    threshold = best_threshold(probs, targets) if opts.threshold is None else opts.threshold
    metrics = label_metrics(probs, targets, threshold)
    metrics["fairness"] = validation_fairness(learn, probs, targets, threshold, groups)
    for line in format_fairness(metrics["fairness"]):
        log(line)
    metrics.update(arch=opts.arch, size=input_size(opts), train_images=len(dls.train_ds),
                   valid_images=len(dls.valid_ds), mirror=opts.mirror, **lineage)
    if isinstance(learn.model, ensemble.Ensemble):
        metrics["offsets"] = learn.model.offsets_by_label()
    export(learn, model_path, threshold, metrics)
    checkpoint.unlink(missing_ok=True)
    return metrics


def _fit(learn, opts, checkpoint, state, log):
    """Find the learning rate unless given or resumed, fine-tune."""
    if not opts.progress_bars:
        learn.remove_cb(ProgressCallback)
        learn.logger = _EpochLog(log)
    lr = state["lr"] if state else opts.lr or find_lr(learn, opts.progress_bars, log)
    log(f"learning rate {lr:.2g}" + (" (resumed)" if state else "" if opts.lr else " (lr_find)"))
    _fine_tune(learn, opts, lr, Checkpoint(checkpoint, opts, lr), state, log)


def _network(opts):
    """(opts, a function dls → Learner, lineage) for `opts.arch`, checked (weights found, members loaded) before any
    data is read; an ensemble's opts get its arch and the largest of its members' input sides. With `init_from`, the
    learner starts from that model's weights; an ensemble (the bundled model) goes on as itself, whatever --arch.
    The lineage is what the metrics record of the model files loaded: each path and the sha256 of what was read."""
    start = load_model(opts.init_from) if opts.init_from else None
    lineage = {"init_from": _file_record(start)} if start else {}
    if start and isinstance(start[0].model, ensemble.Ensemble):
        opts = replace(opts, arch=ensemble.ARCH, size=opts.size or ensemble.side_of(start[0]), freeze_epochs=0)
        return opts, _learner(_offset(start[0].model, opts), ensemble.split), lineage
    if opts.ensemble:
        loaded = [load_model(path) for path in opts.ensemble]
        members = [learner for learner, _, _ in loaded]
        side = opts.size or max(ensemble.side_of(m) for m in members)
        net = ensemble.Ensemble([ensemble.member_of(m, side, i in opts.mirrored_members)
                                 for i, m in enumerate(members)], opts.ensemble_weights)
        shares = ensemble.weight_shares(opts.ensemble_weights, len(members))
        lineage["members"] = [{**_file_record(model), "weight": w, "mirror": i in opts.mirrored_members}
                              for i, (model, w) in enumerate(zip(loaded, shares))]
        # fine-tuned together, the members learn the resized input they get inside it (dlib's network at 64 px
        # moves 5% of its answers between PIL's and torch's resampling); there is no head to train alone first
        opts = replace(opts, arch=ensemble.ARCH, size=side, freeze_epochs=0)
        return opts, _learner(_offset(net, opts), ensemble.split), lineage
    if opts.female_offset is not None:
        raise FacesortError("--female-offset is stored by an ensemble: give --ensemble models, or --init-from one")
    make = _pretrained_learner(opts)
    return opts, (lambda dls: _start_from(make(dls), start[0], opts)) if start else make, lineage


def _offset(net, opts):
    """The ensemble with `opts.female_offset` set, when given (else as it is: none for a new one)."""
    if opts.female_offset is not None:
        net.set_offsets({"female": opts.female_offset})
    return net


def _file_record(loaded):
    """A loaded model file as the metrics name it: `load_model`'s (learner, path, sha256) → its path and sha256."""
    _, path, sha256 = loaded
    return {"model": str(path), "sha256": sha256}


def _learner(net, splitter):
    """A function dls → a plain fastai Learner over `net`."""
    return lambda dls: Learner(dls, net, splitter=splitter, **_learner_args())


def _learner_args():
    """What every learner here has: the multi-label loss (a new one each time: export stores the threshold in it)."""
    return dict(metrics=accuracy_multi, loss_func=BCEWithLogitsLossFlat())


def _pretrained_learner(opts):
    """A function dls → Learner for `opts.arch`, from its pretrained weights (or random ones)."""
    if opts.arch == dlib_gender.ARCH:
        return _learner(dlib_gender.pretrained_net() if opts.pretrained else dlib_gender.dlib_gender_net(),
                        dlib_gender.split)
    arch = archs.ensure_weights(opts.arch) if opts.pretrained else archs.ARCHS.get(opts.arch)
    if arch is None:
        raise FacesortError(f"unknown architecture {opts.arch!r}; choose one of "
                            f"{', '.join([*archs.ARCHS, dlib_gender.ARCH])}")
    return lambda dls: vision_learner(dls, arch, pretrained=opts.pretrained, **_learner_args())


def _fine_tune(learn, opts, lr, checkpoint, state, log):
    """fastai's `fine_tune` (head alone, then everything at half the rate with discriminative rates), in two
    phases that a resumed training enters part-way: fit's `start_epoch` skips the epochs already done."""
    done = state["epoch"] if state else 0
    if state:
        learn.model.load_state_dict(state["model"])
        learn.create_opt()
        learn.opt.load_state_dict(state["opt"])
        log(f"resuming after {done} of {opts.freeze_epochs} + {opts.epochs} epochs")
    if done < opts.freeze_epochs:
        learn.freeze()
        learn.fit_one_cycle(opts.freeze_epochs, slice(lr), pct_start=0.99, start_epoch=done, cbs=checkpoint)
    checkpoint.offset = opts.freeze_epochs
    learn.unfreeze()
    low = lr / 2 / LR_MULT.get(opts.arch, 100)
    learn.fit_one_cycle(opts.epochs, slice(low, lr / 2), pct_start=0.3, div=5.0,
                        start_epoch=max(0, done - opts.freeze_epochs), cbs=checkpoint)


class Checkpoint(Callback):
    """Saves weights, optimiser and epochs done after every epoch, atomically, so `--resume` loses at most one."""

    order = 99  # after the recorder and schedulers

    def __init__(self, path, opts, lr):
        self.path, self.options, self.lr = Path(path), asdict(opts), lr
        self.offset = 0  # epochs of the phases before this fit's

    def after_epoch(self):  # also after each epoch that a resumed fit skips: it saves the same weights again
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": self.offset + self.epoch + 1, "lr": self.lr, "options": self.options, "model": self.learn.model.state_dict(),
                    "opt": self.learn.opt.state_dict()}, tmp)
        os.replace(tmp, self.path)


def checkpoint_path(model_path):
    """Where a training in progress keeps its last epoch: models/my.pkl → models/my.pkl.checkpoint."""
    return Path(f"{model_path}.checkpoint")


def _read_checkpoint(path, opts):
    """The saved progress of an interrupted training with the same options, or a one-line error."""
    if not path.exists():
        raise FacesortError(f"nothing to resume: {path} does not exist (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise FacesortError(f"cannot resume from {path}: {type(e).__name__}: {e}") from None
    changed = [k for k, v in asdict(opts).items() if k not in RESUME_MAY_CHANGE and state["options"].get(k) != v]
    if changed:
        raise FacesortError(f"cannot resume: options differ from the interrupted training's ({', '.join(changed)})")
    return state


RESUME_MAY_CHANGE = ("workers", "progress_bars", "crop_faces_to")  # how training runs, not what it learns


MIN_TRAIN_IMAGES = 2  # a batch norm in training mode needs two images in its batch


def fit_batch_size(dls, log):
    """Refuse a split too small to train and validate on; shrink the batch to a smaller training split.

    fastai drops a last incomplete training batch: with fewer images than the batch size, an epoch had no batch at
    all, lr_find divided by zero and training exported a model that had learnt nothing (train_loss=nan).
    """
    train_images, valid_images = len(dls.train_ds), len(dls.valid_ds)
    if train_images < MIN_TRAIN_IMAGES or not valid_images:
        raise FacesortError(f"too few images to train and validate on: {train_images} for training and "
                            f"{valid_images} for validation (at least {MIN_TRAIN_IMAGES} and 1): add images"
                            + ("" if valid_images else " or raise --valid-pct"))
    if dls.train.bs > train_images:
        log(f"batch size {dls.train.bs} is more than the {train_images} training images: using {train_images}")
        dls.train.bs = train_images


class _PhaseBar(Callback):
    """One bar over lr_find's mock training, named for it: under fastai's own bar it read 'Epoch 1/51 … 51/51'."""

    order = ProgressCallback.order

    def __init__(self, phase, total):
        self.phase, self.total = phase, total

    def before_fit(self):
        self.bar = progress_bar(range(self.total), leave=False)
        self.bar.prefix = self.phase  # on a terminal: "finding a learning rate |████------| 40.00% [40/100 …]"
        self.bar.update(0)

    def after_batch(self):
        self.bar.update(min(self.train_iter, self.total))

    def after_fit(self):
        self.bar.on_iter_end()


LR_FIND_BATCHES = 100  # fastai's own number of lr_find steps


def find_lr(learn, progress_bars, log, iterations=None):
    """lr_find's suggested learning rate. Its mock training first saves the model under learn.path (by default the
    current folder): here a temporary folder, removed however lr_find ends."""
    iterations = iterations or LR_FIND_BATCHES
    log(f"finding a learning rate (lr_find: up to {iterations} batches)")
    home = learn.path
    with _scratch_folder() as scratch, learn.no_bar(), \
            learn.added_cbs([_PhaseBar("finding a learning rate", iterations)] if progress_bars else []):
        learn.path = Path(scratch)
        try:
            return learn.lr_find(num_it=iterations, show_plot=False).valley
        finally:
            learn.path = home


def _scratch_folder():
    """A temporary folder made with SIGINT and SIGTERM held off: one arriving between making the folder and
    registering its removal left it behind (seen in a loaded test run, SIGTERM sent as the folder appeared)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return tempfile.TemporaryDirectory(prefix="facesort-train-")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def refuse_non_finite(learn, probs):
    """Never export a model whose loss is not finite: it diverged, or learnt nothing."""
    losses = dict(zip(("train_loss", "valid_loss"), learn.recorder.values[-1] if learn.recorder.values else []))
    if not all(math.isfinite(v) for v in losses.values()) or not torch.isfinite(torch.as_tensor(probs)).all():
        shown = " ".join(f"{name}={value:.4g}" for name, value in losses.items())
        raise FacesortError(f"training failed: the loss is not finite ({shown or 'NaN predictions'}); no model "
                            "written (try a lower --lr)")


def _start_from(learn, trained, opts):
    """The new learner holding an exported learner's weights, to fine-tune it further (same architecture)."""
    try:
        learn.model.load_state_dict(trained.model.state_dict())
    except RuntimeError:
        raise FacesortError(f"cannot start from {opts.init_from}: its network is not a {opts.arch} with a "
                            "female/male head") from None
    return learn


def validation_fairness(learn, probs, targets, threshold, groups=None):
    """`sorter.groups.fairness` of the validation predictions: women vs men, and the CSV's groups."""
    right = ((probs >= threshold) == targets.bool()).all(dim=1).tolist()
    records = [(Path(p).stem, folder_label(p), ok) for p, ok in zip(learn.dls.valid_ds.items, right)]
    return fairness(records, groups)


def validation_preds(learn, mirror=True):
    """Probabilities on the validation split from the model as facesort will run it, to calibrate the threshold."""
    trained = learn.model
    learn.model = inference_model(trained, mirror)  # a fused copy: the exported, trained modules stay as they are
    try:
        return learn.get_preds(ds_idx=1)
    finally:
        learn.model = trained


def _crop_first(data_dir, opts, log):
    """Crop once: a folder whose cropping finished (CROPS_DONE) is reused, any other non-empty one refused."""
    target = Path(opts.crop_faces_to)
    if (target / CROPS_DONE).exists():
        log(f"using the face crops already in {target}")
        return target
    if target.exists() and any(target.iterdir()):
        raise FacesortError(f"the face-crop folder {target} is not empty and its cropping did not finish: "
                            "remove it or choose another")
    log(f"cropping faces of {data_dir} into {target}")
    crop_faces_first(data_dir, target, size=max(input_size(opts), DEFAULT_CROP_SIDE), seed=opts.seed,
                     workers=_workers(opts), per_folder=opts.per_folder, log=log)
    (target / CROPS_DONE).write_text(f"cropped from {Path(data_dir).absolute()}\n")
    return target


CROPS_DONE = ".facesort-crops-done"  # written last into a face-crop folder: the cropping is complete
DEFAULT_CROP_SIDE = 96  # crops are stored at least this large, whatever the input size: faces are detected on a
# copy 5/4 of it, and smaller ones are missed


def _workers(opts):
    return opts.workers if opts.workers is not None else min(2, os.cpu_count() or 1)


SMALL_FOLDER = 512  # images: fastai starts its loader processes at every pass over the data, which costs more than
# loading this few in the main process (lr_find's 100 passes over a 29-image folder took 8 minutes with 2 workers)


def _loader_workers(opts, count):
    return 0 if opts.workers is None and count < SMALL_FOLDER else _workers(opts)


def export(learn, model_path, threshold, metrics):
    """Store the threshold in the loss function (what learn.predict decodes with), export atomically."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    learn.loss_func.thresh = threshold
    learn.facesort = {"threshold": threshold, "arch": metrics["arch"], "size": metrics["size"],
                      "mirror": metrics.get("mirror", True), "python": python_version()}
    tmp = model_path.with_name(f".{model_path.name}.tmp{os.getpid()}")
    learn.export(tmp.absolute())
    os.chmod(tmp, os.stat(tmp).st_mode & ~0o022)  # facesort refuses to load model files others could write
    os.replace(tmp, model_path)
    write_json_atomic(metrics_path(model_path), metrics)


def metrics_path(model_path):
    """The validation metrics saved beside a model: models/my.pkl → models/my.metrics.json."""
    return Path(model_path).with_suffix(".metrics.json")


def write_json_atomic(path, data):
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def crop_faces_first(data_dir, out_dir, size=128, paste_share=0.7, seed=42, workers=1, per_folder=None, log=print):
    """Make labelled folders look like what face-aware sorting classifies: MTCNN face crops with a margin.

    Writes OUT/{train,valid}/{female,male,neither}/ (the held-out test split of `split_of` is skipped). Tight face
    crops are first pasted, at random, onto a training scene so the margin shows a background rather than black;
    no-face images are kept whole, and any face MTCNN finds in them is kept as a hard `neither` example.
    With `per_folder`, at most that many images of each folder, spread evenly over its sorted names, are used.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    items = find_training_images(data_dir, log)
    if per_folder:
        items = _spread_sample(items, per_folder)
    scenes = [p for p in items if folder_label(p) == "neither" and split_of(p.relative_to(data_dir)) == "train"]
    work = partial(_prepare_one, data_dir=data_dir, out_dir=out_dir, size=size, paste_share=paste_share, seed=seed,
                   scenes=scenes)
    counts = Counter()
    if workers > 1:  # spawn: forking a process that holds torch's thread pools can hang
        with get_context("spawn").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for found in pool.imap_unordered(work, items, chunksize=16):
                counts.update(found)
    else:
        for path in items:
            counts.update(work(path))
    for name, n in sorted(counts.items()):
        log(f"{name}: {n}")
    return counts


def _spread_sample(items, per_folder):
    """At most `per_folder` items of each folder, evenly spaced in name order (ages, dates: all kept in range)."""
    folders = {}
    for path in sorted(items):
        folders.setdefault(path.parent, []).append(path)
    return [paths[i * len(paths) // per_folder] if len(paths) > per_folder else paths[i]
            for paths in folders.values() for i in range(min(per_folder, len(paths)))]


@lru_cache(maxsize=None)
def _finder(min_face):
    return FaceFinder(min_face=min_face)


def _prepare_one(path, data_dir, out_dir, size, paste_share, seed, scenes):
    """Write the training image(s) of one labelled image; returns what happened, as counts."""
    rel = path.relative_to(data_dir)
    split, label = split_of(rel), folder_label(path)
    if split == "test":
        return Counter({"held out for testing": 1})
    try:
        image = load_image(path)
    except ImageError:
        return Counter({"unreadable, skipped": 1})
    counts = Counter({f"{split} {label}": 1})
    image.thumbnail((size * 5 // 4, size * 5 // 4))  # what is stored is `size` pixels: detect on a small copy
    stem = out_dir / split / label / "_".join(rel.with_suffix("").parts)
    if label == "neither":
        _save(image, stem, size)
        for i, crop in enumerate(_finder(20).find([image])[0].crops):
            _save(crop, Path(f"{stem}_face{i}"), size)
            counts["faces found in no-face images"] += 1
        return counts
    rng = random.Random(f"{seed}-{rel}")  # per image: the same result whatever the number of workers
    background = scenes[rng.randrange(len(scenes))] if scenes and rng.random() < paste_share else None
    crop = _face_crop(image, _finder(40), background)  # a face image's face is most of it: skip tiny ones
    counts["face images where MTCNN found no face"] += crop is None
    _save(image if crop is None else crop, stem, size)
    return counts


def _face_crop(image, finder, background=None):
    """The crop face-aware sorting would take of the image's largest face; outside the image, black or a scene.

    Detecting on the image alone and padding afterwards gives the crop that pasting onto the scene first would,
    at a fraction of the detector's cost.
    """
    faces = finder.find([image])[0]
    if not faces.boxes:
        return None
    index = max(range(len(faces.boxes)), key=lambda i: _area(faces.boxes[i]))
    if background is None:
        return faces.crops[index]
    pad = max(image.size)  # room for the margin on every side
    canvas = ImageOps.fit(load_image(background), (image.width + 2 * pad, image.height + 2 * pad))
    canvas.paste(image, (pad, pad))
    return square_crop(canvas, [v + pad for v in faces.boxes[index]])


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def _save(image, stem, size):
    stem.parent.mkdir(parents=True, exist_ok=True)
    ImageOps.fit(image, (size, size)).save(f"{stem}.webp", quality=80)  # small: the set travels to a GPU machine
