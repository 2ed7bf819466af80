"""Fine-tuning a pretrained CNN on labelled folders, the fastai tutorial's multi-label recipe."""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastai.vision.all import (
    BCEWithLogitsLossFlat, DataBlock, FuncSplitter, ImageBlock, MultiCategoryBlock, ProgressCallback, RandomResizedCrop,
    RandomSplitter, accuracy_multi, aug_transforms, set_seed, vision_learner,
)

from . import archs
from .discover import image_files
from .errors import FacesortError
from .labels import VOCAB, label_set, labelled_images
from .metrics import best_threshold, label_metrics


@dataclass
class TrainOptions:
    """What `facesort train` can change; defaults give a good small model on a CPU."""

    arch: str = "mobilenet_v2"
    size: int = 128
    epochs: int = 3
    freeze_epochs: int = 1
    lr: float | None = None  # None: take lr_find's suggestion
    batch_size: int = 64
    valid_pct: float = 0.2
    seed: int = 42
    pretrained: bool = True
    workers: int | None = None
    progress_bars: bool = True  # fastai's bars; off under cron, where a CSV history is written instead


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


def make_dataloaders(items, opts, root=None):
    """DataBlock: image → multi-label set over female/male; `valid/` folders split when present, else random."""
    has_valid = root is not None and any(in_valid_folder(p.relative_to(root)) for p in items)
    splitter = FuncSplitter(in_valid_folder) if has_valid else RandomSplitter(opts.valid_pct, seed=opts.seed)
    block = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=list(VOCAB))),
        get_y=label_set,
        splitter=splitter,
        item_tfms=RandomResizedCrop(opts.size, min_scale=0.6),
        batch_tfms=aug_transforms(max_lighting=0.4, max_zoom=1.2),
    )
    workers = opts.workers if opts.workers is not None else min(2, os.cpu_count() or 1)
    return block.dataloaders(items, bs=opts.batch_size, num_workers=workers)


def train(data_dir, model_path, opts=None, log=print):
    """Train, calibrate the threshold on the validation split, export the learner and its metrics JSON."""
    opts = opts or TrainOptions()
    set_seed(opts.seed, reproducible=True)
    arch = archs.ensure_weights(opts.arch) if opts.pretrained else archs.ARCHS.get(opts.arch)
    if arch is None:
        raise FacesortError(f"unknown architecture {opts.arch!r}; choose one of {', '.join(archs.ARCHS)}")
    items = find_training_images(data_dir, log)
    dls = make_dataloaders(items, opts, Path(data_dir))
    if not len(dls.valid_ds):
        raise FacesortError("the validation split is empty: add images or raise --valid-pct")
    log(f"training {opts.arch} on {len(dls.train_ds)} images, validating on {len(dls.valid_ds)}")
    learn = vision_learner(dls, arch, pretrained=opts.pretrained, metrics=accuracy_multi,
                           loss_func=BCEWithLogitsLossFlat())
    if not opts.progress_bars:
        learn.remove_cb(ProgressCallback)
        learn.logger = _EpochLog(log)
    lr = opts.lr or learn.lr_find(show_plot=False).valley
    log(f"learning rate {lr:.2g}" + ("" if opts.lr else " (lr_find)"))
    learn.fine_tune(opts.epochs, base_lr=lr, freeze_epochs=opts.freeze_epochs)
    learn.logger = print  # the learner is pickled on export: keep only picklable attributes
    probs, targets = learn.get_preds(ds_idx=1)
    threshold = best_threshold(probs, targets)
    metrics = label_metrics(probs, targets, threshold)
    metrics.update(arch=opts.arch, size=opts.size, train_images=len(dls.train_ds), valid_images=len(dls.valid_ds))
    export(learn, model_path, threshold, metrics)
    return metrics


def export(learn, model_path, threshold, metrics):
    """Store the threshold in the loss function (what learn.predict decodes with), export atomically."""
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    learn.loss_func.thresh = threshold
    learn.facesort = {"threshold": threshold, "arch": metrics["arch"], "size": metrics["size"]}
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
