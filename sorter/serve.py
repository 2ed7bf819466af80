"""facesort serve: one web page to upload photos and see their labels, like the tutorial's Voila notebook.

Safe by default: the CLI listens on 127.0.0.1; a request body over the upload limit is refused (413) before or
while it arrives; uploads are parsed and decoded in memory, never written to disk; a client's file name is only
shown back, never used as a path; unreadable uploads get a 4xx with the reason, never a 500.
"""
import base64
import hashlib
import json
import logging
import re
import socket
import threading
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .errors import FacesortError

MAX_UPLOAD_MB = 20  # per request; the page sends one photo per request, and a phone photo is 2-10 MB
MAX_FILES = 20  # photos per request
FIELD = "file"


def create_app(model_path=None, threshold=None, whole_image=False, max_upload_mb=MAX_UPLOAD_MB, device="auto"):
    """The web app, with the model (and the face detector) loaded once, up front, so errors show at start."""
    # torch comes in here, not at import: `facesort --help` imports this module for MAX_UPLOAD_MB
    from .faces import FaceFinder
    from .images import HEIF_SUPPORTED
    from .inference import Classifier
    from .prediction import predict_sources

    classifier = Classifier(model_path, threshold, whole_image, device).load()
    finder = None if whole_image else FaceFinder(device=classifier.device)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()
    page, script_hash = _page({
        "model": classifier.path.name, "sha256": classifier.sha256, "threshold": classifier.threshold,
        "mode": "whole image" if whole_image else "face-aware", "maxUploadBytes": max_bytes, "heif": HEIF_SUPPORTED})
    headers = _page_headers(script_hash)

    def predict(sources):
        with lock:  # one model, one batch at a time: a fastai learner is not safe to share between threads
            return predict_sources(classifier, sources, whole_image, finder=finder)

    async def index(request):
        return HTMLResponse(page, headers=headers)

    async def api_predict(request):
        """Labels of the photos in the multipart field `file`: 200, or 422 when any could not be read."""
        form = await _read_form(request, max_bytes)
        try:
            uploads = _uploads(form)
            results = await run_in_threadpool(predict, [(_display_name(u.filename, i), u.file)
                                                        for i, u in enumerate(uploads, 1)])
        finally:
            await form.close()
        failed = [f"{r['path']}: {r['error']}" for r in results if r["error"]]
        if failed:
            return JSONResponse({"error": "; ".join(failed), "results": results}, status_code=422)
        return JSONResponse({"results": results})

    return Starlette(routes=[Route("/", index), Route("/api/predict", api_predict, methods=["POST"])],
                     exception_handlers={HTTPException: _json_error})


def listen(host, port):
    """A socket listening on host:port, opened before the model loads: a port in use fails at once, in one line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
        sock.bind((host, port))
        sock.listen()
    except OSError as e:
        sock.close()
        raise FacesortError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def run_server(app, sock):
    """Serve `app` on the listening socket until Ctrl+C, logging its address (the real port for port 0) as uvicorn
    does when it opens the socket itself."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, server_header=False)  # sets up uvicorn's logging
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
                                            f"[{host}]" if ":" in host else host, port)
    uvicorn.Server(config).run(sockets=[sock])


class _InMemoryParser(MultiPartParser):
    """Starlette's parser spools uploads over 1 MiB to a temporary file; the request limit bounds memory instead."""

    spool_max_size = 2**62


async def _read_form(request, max_bytes):
    """The multipart form of a request no larger than max_bytes (413 otherwise, however the body is sent)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, f'send the photos as multipart/form-data, in the field "{FIELD}"')
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, _too_large(max_bytes, int(declared)))
    parser = _InMemoryParser(request.headers, _limited(request.stream(), max_bytes), max_files=MAX_FILES,
                             max_fields=MAX_FILES)
    try:
        return await parser.parse()
    except MultiPartException as e:
        raise HTTPException(400, f"malformed upload: {e.message}") from None
    except ClientDisconnect:
        raise HTTPException(400, "the upload was interrupted") from None


async def _limited(stream, max_bytes):
    """The body's chunks, stopping with a 413 as soon as more than max_bytes have come (chunked uploads too)."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise HTTPException(413, _too_large(max_bytes))
        yield chunk


def _too_large(max_bytes, size=None):
    mb = 1024 * 1024
    return f"upload too large: {'' if size is None else f'{size / mb:.1f} MB, '}the limit is {max_bytes / mb:.1f} MB"


def _uploads(form):
    uploads = form.getlist(FIELD)
    if not uploads:
        raise HTTPException(400, f'no photo: send it in the multipart field "{FIELD}"')
    if not all(isinstance(u, UploadFile) for u in uploads):
        raise HTTPException(400, f'the field "{FIELD}" must hold files, not text')
    return uploads


def _display_name(filename, number):
    """What a result is called: the last part of the client's file name, printable, at most 200 characters."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable())[:200].strip()
    return name or f"upload-{number}"


def _page_headers(script_hash):
    """The page may run its own script, fetch from its own server and show photos picked here: nothing else."""
    return {"Content-Security-Policy": f"default-src 'none'; script-src 'sha256-{script_hash}'; "
                                       "style-src 'unsafe-inline'; img-src blob:; connect-src 'self'; "
                                       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


async def _json_error(request, exc):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _page(config):
    """The page with its settings filled in, and the sha256 of its one script (allowed by the CSP, nothing else)."""
    html = resources.files(__package__).joinpath("serve_page.html").read_text(encoding="utf-8")
    html = html.replace("__CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    return html, base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
