"""`facesort review`: the labelled photos the model disagrees with most, as a CSV to edit and a contact sheet."""
import functools
from pathlib import Path

import click

from . import batch_option, device_option, exit_codes, model_option, reports_errors, require_folder, threshold_option
from .serve import host_option, port_option
from ..serve import listen, run_server


@click.command(epilog=exit_codes())
@click.argument("data_dir", type=click.Path(file_okay=False))
@model_option
@threshold_option
@click.option("--faces", is_flag=True,
              help="Classify each face, as `run` does, instead of the whole image as training sees it (with "
                   "--serve: box the faces found on the thumbnails).")
@batch_option
@device_option
@click.option("--top", default=200, show_default=True, type=click.IntRange(0),
              help="How many of the worst images to list (0: all).")
@click.option("--out", "out_dir", default="facesort-review", show_default=True, type=click.Path(file_okay=False),
              help="Folder for review.csv and review.html.")
@click.option("--serve", "serve_page", is_flag=True,
              help="Then open the review as a local page to decide on each image, saved to review.csv at once. An "
                   "existing OUT/review.csv is served as it is, with its decisions (no model is run).")
@host_option
@port_option
@reports_errors
def review(data_dir, model_path, threshold, faces, batch_size, device, top, out_dir, serve_page, host, port):
    """Rank the labelled images under DATA_DIR by loss, likeliest label errors and unreadable files first.

    Writes OUT/review.csv (fill its `action` column: delete, male, female, neither, or empty to keep; then run
    `facesort clean OUT/review.csv`) and OUT/review.html, thumbnails in the same order, which opens offline.
    Whole images by default: training images are judged the way training saw them, so a face the detector
    misses cannot pass for a label error.

    With --serve, a page at http://HOST:PORT/ shows the images as thumbnails, worst first, to keep, delete or
    relabel each with a click or a key (k/d/m/f/n), then apply and undo as `facesort clean` does. Stop with Ctrl+C.
    """
    require_folder(data_dir, "data folder")
    sock = listen(host, port) if serve_page else None  # a port in use says so before the model runs
    review_csv = Path(out_dir) / "review.csv"
    if serve_page and review_csv.exists():
        click.echo(f"{review_csv} exists: serving it with its decisions (delete it to rank the images again)", err=True)
    else:
        _write_review(data_dir, model_path, threshold, faces, batch_size, device, top, out_dir)
    if serve_page:
        _serve(review_csv, data_dir, faces, device, host, sock)


def _write_review(data_dir, model_path, threshold, faces, batch_size, device, top, out_dir):
    from ..evaluation import classify_labelled
    from ..inference import Classifier
    from ..review import write_review

    log = functools.partial(click.echo, err=True)
    classifier = Classifier(model_path, threshold, not faces, device)
    mode = "face-aware" if faces else "whole-image"
    log(f"model {classifier.path} (sha256 {classifier.sha256[:12]}), threshold {classifier.threshold}, {mode}, "
        f"device {classifier.describe_device()}")
    scored = classify_labelled(data_dir, classifier, not faces, batch_size, log)
    for path in write_review(scored, classifier, data_dir, out_dir, top, mode):
        click.echo(f"wrote {path}")


def _serve(review_csv, data_dir, faces, device, host, sock):
    from ..review_server import create_app

    finder = None
    if faces:
        from ..device import resolve_device
        from ..faces import FaceFinder

        finder = FaceFinder(device=resolve_device(device))
    app = create_app(review_csv, data_dir, finder, loopback=host in ("127.0.0.1", "localhost"))
    click.echo(f"every decision made on the page is saved to {review_csv} at once", err=True)
    run_server(app, sock)
