"""`facesort evaluate`: how well a model labels a folder of labelled photos."""
import functools
import json

import click

from . import (batch_option, device_option, exit_codes, model_option, reports_errors, require_folder, threshold_option,
               whole_image_option)


@click.command(epilog=exit_codes())
@click.argument("data_dir", type=click.Path(file_okay=False))
@model_option
@threshold_option
@whole_image_option
@batch_option
@device_option
@click.option("--group-depth", default=2, show_default=True, type=click.IntRange(1),
              help="Break the figures down by the first N folders of each image's path (e.g. source/label).")
@click.option("--groups", "groups_csv", type=click.Path(dir_okay=False),
              help="Metadata CSV (a `file` column relative to DATA_DIR or a folder in it, and columns such as "
                   "age_band, race): accuracy per group, the worst group, women's vs men's error.")
@click.option("--json", "as_json", is_flag=True, help="Print the same numbers as one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG with the threshold sweep and outcomes.")
@reports_errors
def evaluate(data_dir, model_path, threshold, whole_image, batch_size, device, group_depth, groups_csv, as_json, plot):
    """Measure a model on DATA_DIR, laid out as for training (nearest male/female/neither folder is the label).

    Face-aware by default, like `facesort run`, so the figures are what `run` would do with these photos;
    --whole-image measures the tutorial's way, which is how the model saw its (face-crop) training images.
    """
    require_folder(data_dir, "data folder")
    from ..evaluation import classify_labelled, evaluate as measure, format_text, plot as draw
    from ..groups import Groups
    from ..inference import Classifier

    groups = Groups.read(groups_csv) if groups_csv else None
    log = functools.partial(click.echo, err=True)  # progress on stderr, results on stdout
    classifier = Classifier(model_path, threshold, whole_image, device)
    mode = "whole-image" if whole_image else "face-aware"
    log(f"model {classifier.path} (sha256 {classifier.sha256[:12]}), threshold {classifier.threshold}, {mode}, "
        f"device {classifier.describe_device()}")
    result = measure(classify_labelled(data_dir, classifier, whole_image, batch_size, log), classifier.threshold,
                     group_depth, groups)
    result.update(model=str(classifier.path), model_sha256=classifier.sha256, mode=mode)
    if plot:
        log(f"plot written to {draw(result, plot)}")
    click.echo(json.dumps(result, indent=2) if as_json else format_text(result))
