"""`facesort review`: the labelled photos the model disagrees with most, as a CSV to edit and a contact sheet."""
import functools

import click

from . import EXIT_CODES, batch_option, model_option, reports_errors, threshold_option


@click.command(epilog=EXIT_CODES)
@click.argument("data_dir", type=click.Path(file_okay=False))
@model_option
@threshold_option
@click.option("--faces", is_flag=True,
              help="Classify each face, as `run` does, instead of the whole image as training sees it.")
@batch_option
@click.option("--top", default=200, show_default=True, type=click.IntRange(0),
              help="How many of the worst images to list (0: all).")
@click.option("--out", "out_dir", default="facesort-review", show_default=True, type=click.Path(file_okay=False),
              help="Folder for review.csv and review.html.")
@reports_errors
def review(data_dir, model_path, threshold, faces, batch_size, top, out_dir):
    """Rank the labelled images under DATA_DIR by loss, likeliest label errors and unreadable files first.

    Writes OUT/review.csv (fill its `action` column: delete, male, female, neither, or empty to keep; then run
    `facesort clean OUT/review.csv`) and OUT/review.html, thumbnails in the same order, which opens offline.
    Whole images by default: training images are judged the way training saw them, so a face the detector
    misses cannot pass for a label error.
    """
    from ..evaluation import classify_labelled
    from ..inference import Classifier
    from ..review import write_review

    log = functools.partial(click.echo, err=True)
    classifier = Classifier(model_path, threshold)
    mode = "face-aware" if faces else "whole-image"
    log(f"model {classifier.path} (sha256 {classifier.sha256[:12]}), threshold {classifier.threshold}, {mode}")
    scored = classify_labelled(data_dir, classifier, not faces, batch_size, log)
    for path in write_review(scored, classifier, data_dir, out_dir, top, mode):
        click.echo(f"wrote {path}")
