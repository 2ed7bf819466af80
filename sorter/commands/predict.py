"""`facesort predict`: labels and probabilities of a few photos, like the tutorial's learn.predict."""
import json

import click

from . import batch_option, device_option, exit_codes, model_option, reports_errors, threshold_option, whole_image_option
from ..labels import labels_text


@click.command(epilog=exit_codes({"3": "some image could not be read (its line says why)"}))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@model_option
@threshold_option
@whole_image_option
@batch_option
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@reports_errors
def predict(images, model_path, threshold, whole_image, batch_size, device, as_json):
    """Print the labels and probabilities of each IMAGE. Exit 3 when an image cannot be read."""
    from ..prediction import predict_files

    results = predict_files(images, model_path, threshold, whole_image, batch_size, device)
    for result in results:
        if as_json:
            click.echo(json.dumps(result))
        elif result["error"]:
            click.echo(f"{result['path']}: error: {result['error']}")
        else:
            probs = " ".join(f"{k}={v:.3f}" for k, v in result["probs"].items())
            faces = "" if result["faces"] is None else f" faces={result['faces']}"
            click.echo(f"{result['path']}: {labels_text(result['labels'])} {probs}{faces}")
    raise SystemExit(3 if any(r["error"] for r in results) else 0)
