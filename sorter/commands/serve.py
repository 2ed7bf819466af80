"""`facesort serve`: the web page to upload photos and see their labels (the tutorial's Voila app)."""
import click

from . import device_option, exit_codes, model_option, reports_errors, threshold_option, whole_image_option
from ..serve import MAX_UPLOAD_MB, listen, run_server

host_option = click.option("--host", default="127.0.0.1", show_default=True,
                           help="Address to listen on. 0.0.0.0 lets other machines in: there is no login, so only on "
                                "a trusted network.")
port_option = click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
                           help="Port to listen on (0: any free port, printed at start).")


@click.command(epilog=exit_codes({"0": "stopped with Ctrl+C",
                                   "1": "fatal error (one line): port in use, model missing or unloadable"}))
@model_option
@threshold_option
@whole_image_option
@device_option
@host_option
@port_option
@click.option("--max-upload-mb", default=MAX_UPLOAD_MB, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Largest request accepted, in MiB (the page sends one photo per request); larger ones get 413.")
@reports_errors
def serve(model_path, threshold, whole_image, device, host, port, max_upload_mb):
    """Serve a page to upload photos and see their labels, probabilities and faces; JSON at POST /api/predict.

    Uploads are processed in memory and never stored. Stop with Ctrl+C.
    """
    from ..serve import create_app

    sock = listen(host, port)  # a port in use says so at once, not after loading the model
    run_server(create_app(model_path, threshold, whole_image, max_upload_mb, device), sock)
