"""`facesort review --serve`: the review as one local page, the fastai tutorial's ImageClassifierCleaner.

The page pages through review.csv's rows (thumbnails made on request), and each keep / delete / relabel decision
is sent as a row number, checked here and written to review.csv at once (sorter.review_record). Apply and undo
run `facesort clean`'s own code. Safe by default: the CLI listens on 127.0.0.1 and, there, answers only requests
addressed to the loopback (no DNS rebinding); changes are JSON POSTs from the page's own origin (no cross-site
form can send one); the page loads nothing from elsewhere and its CSP allows only its own script and style.
"""
import base64
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .errors import FacesortError
from .images import ImageError
from .labels import LABEL_FOLDERS
from .review_record import CHOICES, Refused, ReviewRecord
from .thumbnails import Thumbnails

PAGE_SIZE = 48
MAX_PAGE = 500
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def create_app(review_csv, data_dir=None, finder=None, loopback=True):
    """The app over one review.csv (of `data_dir`, when given); `finder` boxes faces on the thumbnails."""
    record = ReviewRecord(review_csv)
    if data_dir is not None and record.rows and record.data_dir != Path(data_dir).resolve():
        raise FacesortError(f"{review_csv} reviews {record.data_dir}, not {data_dir}: choose another --out")
    thumbnails = Thumbnails(finder)
    page, headers = _page({"choices": CHOICES, "labels": LABEL_FOLDERS, "pageSize": PAGE_SIZE,
                           "faces": finder is not None})

    async def index(request):
        return HTMLResponse(page, headers=headers)

    async def rows(request):
        query = request.query_params
        label = query.get("label", "")
        if label and label not in LABEL_FOLDERS:
            raise HTTPException(400, f"unknown label {label!r}")
        offset, limit = _int(query, "offset", 0, 0), _int(query, "limit", PAGE_SIZE, 1, MAX_PAGE)
        return JSONResponse(await run_in_threadpool(record.page, offset, limit, label, query.get("disagree") == "1"))

    async def thumbnail(request):
        row_id, sha256 = _int(request.path_params, "row_id", 0, 0), request.query_params.get("sha256", "")
        path = await _refusing(record.file_of, row_id, sha256)
        try:
            data = await run_in_threadpool(thumbnails.get, (row_id, sha256), path)
        except ImageError as e:
            raise HTTPException(422, f"unreadable: {e}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    async def decide(request):
        body = await _json(request)
        return JSONResponse(await _refusing(record.decide, body.get("id"), body.get("sha256"), body.get("action")))

    async def plan(request):
        await _json(request)
        found, lines = await _refusing(record.plan)
        return JSONResponse({"lines": lines, "refused": found.refused, "moves": len(found.moves)})

    async def apply(request):
        await _json(request)
        return JSONResponse(await _refusing(record.apply))

    async def undo(request):
        await _json(request)
        return JSONResponse({"restored": await _refusing(record.undo)})

    async def no_icon(request):
        return Response(status_code=204)

    routes = [Route("/", index), Route("/favicon.ico", no_icon), Route("/api/rows", rows), Route("/thumb/{row_id}", thumbnail),
              Route("/api/decide", decide, methods=["POST"]), Route("/api/plan", plan, methods=["POST"]),
              Route("/api/apply", apply, methods=["POST"]), Route("/api/undo", undo, methods=["POST"])]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)] if loopback else []
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _json_error})


async def _refusing(function, *args):
    """Run a record method in a thread; its refusals become 4xx answers with the reason."""
    try:
        return await run_in_threadpool(function, *args)
    except Refused as e:
        raise HTTPException(e.status, {"error": str(e), "details": e.details}) from None
    except FacesortError as e:
        raise HTTPException(409, {"error": str(e), "details": []}) from None


async def _json(request):
    """The JSON object a change request carries, sent by this page (same origin) and nothing else."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        raise HTTPException(403, "changes are accepted from the review page only")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "send changes as application/json")
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise HTTPException(400, "malformed JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "send a JSON object")
    return body


def _int(params, name, default, low, high=None):
    text = params.get(name, str(default))
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < low or (high is not None and int(text) > high):
        raise HTTPException(400, f"{name} must be a whole number from {low}" + (f" to {high}" if high else ""))
    return int(text)


async def _json_error(request, exc):
    body = exc.detail if isinstance(exc.detail, dict) else {"error": exc.detail, "details": []}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _page(config):
    """The page with its settings, and headers whose CSP allows its one script and one style block, by hash."""
    html = resources.files(__package__).joinpath("review_page.html").read_text(encoding="utf-8")
    html = html.replace("__CONFIG__", json.dumps(config).replace("<", "\\u003c"))
    script, style = (_hash(re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S).group(1)) for tag in ("script", "style"))
    return html, {"Content-Security-Policy": f"default-src 'none'; script-src '{script}'; style-src '{style}'; "
                                             "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                                             "form-action 'none'; frame-ancestors 'none'",
                  "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _hash(text):
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
