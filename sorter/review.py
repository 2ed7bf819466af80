"""Ranking labelled images by loss, the likeliest label errors first: a CSV to edit and an offline contact sheet.

The loss is the binary cross-entropy of the model's probabilities against the folder's label (fastai's training
loss), so the top of the list is where the model and the folder disagree most confidently. The CSV records each
file's sha256, so `facesort clean` can refuse rows whose file changed after the review.
"""
import base64
import html
import io
from pathlib import Path

import numpy as np

from .archs import sha256_of
from .images import ImageError, load_image
from .labels import VOCAB, labels_text
from .report import display_path, write_report

COLUMNS = ("rank", "path", "label", "predicted", "prob_female", "prob_male", "loss", "action", "sha256", "data_dir")
THUMB_SIDE = 160
EPS = 1e-7
NO_FACE = " (no face found)"


def losses(probs, targets):
    """Mean binary cross-entropy per image; a missing probability (no face found) counts as 0."""
    p = np.clip(np.nan_to_num(np.asarray(probs, dtype=float), nan=0.0), EPS, 1 - EPS)
    t = np.asarray(targets, dtype=float)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)


def ranked(scored):
    """Unreadable images first (useless for training), then the rest by loss, highest first; ties by path."""
    readable = [s for s in scored if not s.error]
    loss = losses([s.probs for s in readable], [s.target for s in readable]) if readable else []
    by_loss = sorted(zip(readable, loss), key=lambda pair: (-pair[1], pair[0].rel))
    return [(s, None) for s in sorted(scored, key=lambda s: s.rel) if s.error] + by_loss


def review_row(rank, scored, loss, threshold, data_dir):
    """One CSV row; `action` is left empty for the user."""
    if scored.error:
        predicted = f"unreadable: {scored.error}"
    elif np.isnan(scored.probs).all():
        predicted = "neither" + NO_FACE
    else:
        predicted = labels_text([label for label, p in zip(VOCAB, scored.probs) if p >= threshold])
    probs = {f"prob_{label}": "" if np.isnan(p) else round(float(p), 4) for label, p in zip(VOCAB, scored.probs)}
    return {"rank": rank, "path": display_path(scored.rel), "label": scored.label, "predicted": predicted, **probs,
            "loss": "" if loss is None else round(float(loss), 4), "action": "", "sha256": sha256_of(scored.path),
            "data_dir": str(Path(data_dir).resolve())}


def write_review(scored, classifier, data_dir, out_dir, top=200, mode="whole-image"):
    """Write review.csv and review.html for the `top` worst images (all when top is 0); returns both paths."""
    out_dir = Path(out_dir)
    worst = ranked(scored)[:top or None]
    rows = [review_row(rank, s, loss, classifier.threshold, data_dir) for rank, (s, loss) in enumerate(worst, 1)]
    csv_path = write_report(out_dir / "review.csv", rows, COLUMNS)
    title = (f"facesort review of {data_dir}: {len(rows)} of {len(scored)} images, worst first "
             f"(model {Path(classifier.path).name}, sha256 {classifier.sha256[:12]}, "
             f"threshold {classifier.threshold:g}, {mode})")
    html_path = out_dir / "review.html"
    html_path.write_text(contact_sheet(title, [(s.path, row) for (s, _), row in zip(worst, rows)]), encoding="utf-8")
    return csv_path, html_path


def agrees(row):
    """Whether a row's prediction is its folder's label (a photo in which no face was found is predicted neither)."""
    return row["predicted"].removesuffix(NO_FACE) == row["label"]


def thumbnail_uri(path):
    """The image as a small JPEG data: URI, or None when it cannot be read."""
    try:
        image = load_image(path, THUMB_SIDE)
    except ImageError:
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """body{font:13px sans-serif;margin:1em}
.sheet{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;border:1px solid #ccc;padding:4px}
img{display:block;margin:auto;max-width:160px;max-height:160px}
figcaption{word-break:break-all}
.bad{color:#b00}.ok{color:#070}.none{height:160px;background:#eee;text-align:center;line-height:160px}"""


def contact_sheet(title, items):
    """A self-contained HTML page: thumbnails embedded, a policy that forbids loading anything else."""
    figures = []
    for path, row in items:
        uri = thumbnail_uri(path)
        picture = f'<img src="{uri}" alt="rank {row["rank"]}">' if uri else '<div class="none">unreadable</div>'
        probs = " ".join(f"{label} {row[f'prob_{label}']}" for label in VOCAB)
        figures.append(
            f"<figure>{picture}<figcaption><b>#{row['rank']}</b> {html.escape(row['path'])}<br>"
            f"given <b>{html.escape(str(row['label']))}</b>, predicted "
            f"<b class=\"{'ok' if agrees(row) else 'bad'}\">{html.escape(row['predicted'])}</b><br>{probs}<br>"
            f"loss {row['loss']}</figcaption>"
            "</figure>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body><h1>facesort review</h1>"
            f"<p>{html.escape(title)}. Fill the <code>action</code> column of review.csv (delete, male, female, "
            "neither, or empty to keep), then run <code>facesort clean review.csv</code>.</p>\n"
            f"<div class=\"sheet\">\n" + "\n".join(figures) + "\n</div></body></html>\n")
