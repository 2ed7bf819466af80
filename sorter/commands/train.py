"""`facesort train`: fine-tune a model on labelled folders and export it."""
import json
import signal
import sys
from contextlib import contextmanager

import click

from . import device_option, exit_codes, reports_errors
from ..console import is_terminal, print_table


@click.command(epilog=exit_codes({"130/143": "stopped by SIGINT/SIGTERM: no model written, scratch files removed"}))
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the exported model (.pkl); metrics go beside it (.metrics.json).")
@click.option("--arch", default="mobilenet_v2", show_default=True,
              type=click.Choice(["mobilenet_v2", "resnet18", "resnet34", "dlib_gender"]),
              help="Pretrained CNN to fine-tune: an ImageNet one, or dlib's face-trained gender network.")
@click.option("--size", type=click.IntRange(32),
              help="Image side in pixels. [default: 32 for dlib_gender, else 128]")
@click.option("--epochs", type=click.IntRange(0),
              help="Epochs with all layers; 0 with nothing else to train (an ensemble, which has no head alone, or "
                   "--freeze-epochs 0): calibrate only. [default: 3; with --ensemble 0]")
@click.option("--freeze-epochs", default=1, show_default=True, type=click.IntRange(0),
              help="Epochs training the head only first.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate. Default: lr_find's.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
              help="Images per training batch (at most the training images).")
@click.option("--valid-pct", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Random validation share (ignored when DATA_DIR has valid/ folders).")
@click.option("--seed", default=42, show_default=True, type=int,
              help="Random seed: the validation split, augmentations and initial weights.")
@click.option("--no-pretrained", is_flag=True, help="Train from random weights (no ImageNet weights needed).")
@click.option("--crop-faces", "crop_faces_to", type=click.Path(file_okay=False),
              help="First crop DATA_DIR's faces with the face detector into this new folder (10% of images held "
                   "out for testing, 10% for validation) and train on those crops.")
@click.option("--per-folder", type=click.IntRange(1),
              help="With --crop-faces: use at most this many images of each folder, spread evenly over its names.")
@click.option("--degrade", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Share of training images shrunk and JPEG-compressed, like small faces in real photos.")
@click.option("--grey", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of training images turned black-and-white, for black-and-white photos.")
@click.option("--erase", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of training batches with a random rectangle (up to 30% of each image, the same one "
                   "across the batch: fastai's RandomErasing) replaced by noise, so that no one part of a face "
                   "(hair, a cap, glasses) decides its label.")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="Start from this exported model's weights (same --arch). An ensemble, such as the bundled "
                   "model, goes on training as itself, whatever --arch.")
@click.option("--groups", type=click.Path(dir_okay=False),
              help="Metadata CSV (a `file` column relative to DATA_DIR, and columns such as age_band, race): "
                   "validation is reported per group, and --balance weighs by them.")
@click.option("--balance", is_flag=True,
              help="Draw training images so that each label, and each group within it, weighs fairly.")
@click.option("--ensemble", "ensemble", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Combine these exported models (repeat it: two or more) into one that averages their "
                   "probabilities; only its threshold is calibrated, on DATA_DIR's validation split, unless "
                   "--epochs fine-tunes all of them together first (no --freeze-epochs: it has no head alone).")
@click.option("--weight", "ensemble_weights", multiple=True, type=click.FloatRange(0, min_open=True),
              help="With --ensemble, one per model in the same order: its weight in the mean. [default: equal]")
@click.option("--no-mirror", is_flag=True,
              help="Run the model once per image, not averaged with its mirror image: half the classifier's work "
                   "(an ensemble can keep the flip for one member: --mirror-member).")
@click.option("--mirror-member", "mirror_members", multiple=True, type=click.IntRange(1),
              help="With --ensemble: average the Nth model (1: the first --ensemble) over each image and its mirror "
                   "image inside the ensemble; with --no-mirror, the flip for that member alone.")
@click.option("--female-offset", type=float,
              help="Ensembles: add this to the female logit of every face (e.g. 0.2: a woman's probability 0.45 "
                   "becomes 0.50), to even women's and men's error as measured on real photos; the --init-from "
                   "ensemble's own is kept when not given. [default: 0 for a new ensemble]")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Store this probability threshold instead of the one that does best on the validation split "
                   "(chosen, say, with `facesort evaluate` on real photos).")
@click.option("--resume", is_flag=True, help="Continue an interrupted training from its last epoch (same options).")
@click.option("--workers", type=click.IntRange(0),
              help="Processes loading images (and cropping faces). [default: 2; none under 512 images]")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the validation metrics as JSON.")
@reports_errors
def train(data_dir, model_path, arch, size, epochs, freeze_epochs, lr, batch_size, valid_pct, seed, no_pretrained,
          crop_faces_to, per_folder, degrade, grey, erase, init_from, groups, balance, ensemble, ensemble_weights,
          no_mirror, mirror_members, female_offset, threshold, resume, workers, device, as_json):
    """Train on DATA_DIR, where each image's label is the nearest folder named male, female or neither.

    The probability threshold that maximises exact-match accuracy on the validation split is stored in the model
    (or the one --threshold gives).
    """
    if ensemble and (len(ensemble) < 2 or init_from or resume):
        raise click.UsageError("--ensemble takes two or more models, and no --init-from or --resume")
    if ensemble_weights and len(ensemble_weights) != len(ensemble):
        raise click.UsageError("--weight takes one weight for each --ensemble model")
    if any(n > len(ensemble) for n in mirror_members):
        raise click.UsageError(f"--mirror-member takes the number of an --ensemble model ({len(ensemble)} given)")
    from ..device import resolve_device, training_device
    from ..training import TrainOptions, train as train_model

    if epochs is None:
        epochs = 0 if ensemble else TrainOptions.epochs
    opts = TrainOptions(arch=arch, size=size, epochs=epochs, freeze_epochs=freeze_epochs, lr=lr,
                        batch_size=batch_size, valid_pct=valid_pct, seed=seed, pretrained=not no_pretrained,
                        crop_faces_to=crop_faces_to, per_folder=per_folder, degrade=degrade, grey=grey,
                        erase=erase, init_from=init_from, groups=groups, balance=balance, workers=workers,
                        ensemble=ensemble, ensemble_weights=ensemble_weights, mirror=not no_mirror,
                        mirrored_members=tuple(n - 1 for n in mirror_members), female_offset=female_offset,
                        threshold=threshold,
                        progress_bars=is_terminal() and not as_json)
    with signals_stop_training(), training_device(resolve_device(device)):
        metrics = train_model(data_dir, model_path, opts, log=lambda m: click.echo(m, err=as_json), resume=resume)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    print_table(f"validation ({metrics['valid_images']} images)", [
        ("threshold", metrics["threshold"]),
        ("exact_match", f"{metrics['exact_match']:.4f}"),
        ("accuracy_multi", f"{metrics['accuracy_multi']:.4f}"),
        *[(f"{label}_{k}", f"{metrics[label][k]:.4f}") for label in ("female", "male") for k in ("precision", "recall")],
        *[(f"predicted_{k}", v) for k, v in metrics["predicted"].items()],
    ])
    click.echo(f"model written to {model_path}")


@contextmanager
def signals_stop_training():
    """SIGINT and SIGTERM (cron's kill) unwind training like an error, so its scratch files are removed and no model
    is written; exit 130/143. The previous handlers come back after (tests run this in the test process)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: sys.exit(128 + signum)) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
