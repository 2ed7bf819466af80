"""facesort serve's API and page, through Starlette's test client: what `predict --json` says, and 4xx for bad input."""
import io
import socket
import tempfile

import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import make_photo
from sorter.prediction import predict_files

LIMIT_MB = 1
BOUNDARY = "facesortboundary"
RAW_MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def client(colour_model):
    from sorter.serve import create_app

    with TestClient(create_app(colour_model, whole_image=True, max_upload_mb=LIMIT_MB)) as client:
        yield client


def photo_bytes(tmp_path, label, seed=0):
    """A training-set photo of `label` (seed < 24), as uploaded bytes."""
    return make_photo(tmp_path / f"{label}_{seed}.jpg", label, seed=seed).read_bytes()


def post(client, *files):
    return client.post("/api/predict", files=[("file", f) for f in files])


def part_head(filename):
    """The start of a hand-made multipart part, for what a test client would not send."""
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()


def test_good_image_gets_what_predict_json_says(client, colour_model, tmp_path):
    path = make_photo(tmp_path / "blue.jpg", "male", seed=3)
    response = post(client, ("holiday.jpg", path.read_bytes(), "image/jpeg"))
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    expected = predict_files([path], colour_model, whole_image=True)[0]
    assert result == {**expected, "path": "holiday.jpg"}
    assert result["labels"] == ["male"] and result["size"] == [64, 48] and result["error"] == ""


def test_two_images_keep_their_order_and_names(client, tmp_path):
    response = post(client, ("b.jpg", photo_bytes(tmp_path, "female", 1)), ("a.jpg", photo_bytes(tmp_path, "male", 2)))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["path"], r["labels"]) for r in results] == [("b.jpg", ["female"]), ("a.jpg", ["male"])]
    assert all(set(r["probs"]) == {"female", "male"} and 0 < r["threshold"] < 1 for r in results)


def test_same_name_twice_gets_two_results(client, tmp_path):
    response = post(client, ("image.jpg", photo_bytes(tmp_path, "female", 1)),
                    ("image.jpg", photo_bytes(tmp_path, "male", 2)))
    assert [r["labels"] for r in response.json()["results"]] == [["female"], ["male"]]


@pytest.mark.parametrize("content, reason", [
    (b"just some notes, not a photo\n", "not an image: the file holds text"),
    (b"", "empty file"),
    (b"\x00\x01\x02garbage" * 20, "matches no image format"),
])
def test_non_image_is_a_422_with_the_reason(client, content, reason):
    response = post(client, ("notes.jpg", content))
    assert response.status_code == 422
    body = response.json()
    assert reason in body["error"] and body["error"].startswith("notes.jpg: ")
    assert body["results"][0]["error"] and body["results"][0]["labels"] == []


def test_broken_image_is_a_422_and_good_ones_still_get_labels(client, tmp_path):
    good = photo_bytes(tmp_path, "male", 4)
    response = post(client, ("cut.jpg", good[: len(good) // 2]), ("whole.jpg", good))
    assert response.status_code == 422
    cut, whole = response.json()["results"]
    assert "truncated" in cut["error"]
    assert whole["labels"] == ["male"] and whole["error"] == ""


def test_one_pixel_image_is_labelled(client):
    response = post(client, ("dot.png", one_pixel_png()))
    assert response.status_code == 200, response.text


def one_pixel_png():
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (30, 60, 220)).save(buffer, "PNG")
    return buffer.getvalue()


def test_oversized_upload_is_a_413(client):
    big = b"\xff\xd8\xff" + bytes(LIMIT_MB * 1024 * 1024)
    response = post(client, ("big.jpg", big))
    assert response.status_code == 413
    assert "upload too large" in response.json()["error"] and f"limit is {LIMIT_MB:.1f} MB" in response.json()["error"]


def test_oversized_upload_without_content_length_is_a_413(client):
    """A chunked body announces no size: the limit is counted as it arrives."""
    def body():
        yield part_head("big.jpg")
        for _ in range(LIMIT_MB * 4 + 1):
            yield bytes(256 * 1024)

    response = client.post("/api/predict", content=body(), headers=RAW_MULTIPART)
    assert response.status_code == 413 and "upload too large" in response.json()["error"]


def test_uploads_stay_in_memory(client, tmp_path, monkeypatch):
    """Starlette spools uploads over 1 MiB to a temporary file by default: ours must never need one."""
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    padded = photo_bytes(tmp_path, "male", 5) + bytes(LIMIT_MB * 1024 * 1024 - 50_000)  # JPEG ignores what follows
    response = post(client, ("padded.jpg", padded))
    assert response.status_code == 200, response.text


def test_client_file_name_is_only_a_label(client, tmp_path):
    names = ["../../etc/cron.d/x.jpg", "C:\\Users\\me\\y.jpg", "", "z\x07.jpg"]
    body = b"".join(part_head(name) + photo_bytes(tmp_path, "male", i) + b"\r\n" for i, name in enumerate(names))
    response = client.post("/api/predict", content=body + f"--{BOUNDARY}--\r\n".encode(), headers=RAW_MULTIPART)
    assert [r["path"] for r in response.json()["results"]] == ["x.jpg", "y.jpg", "upload-3", "z.jpg"]


@pytest.mark.parametrize("kwargs, status, message", [
    ({"files": [("photo", ("a.jpg", b"x"))]}, 400, 'field "file"'),
    ({"data": {"file": "not a file"}, "files": [("other", ("a.jpg", b"x"))]}, 400, "must hold files"),
    ({"json": {"file": "a.jpg"}}, 415, "multipart/form-data"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "malformed upload"),
])
def test_bad_requests_are_4xx_with_a_message(client, kwargs, status, message):
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status and message in response.json()["error"]


def test_too_many_files_is_a_400(client):
    response = post(client, *[(f"{i}.jpg", b"x") for i in range(21)])
    assert response.status_code == 400 and "Too many files" in response.json()["error"]


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'type="file"' in html and 'id="drop"' in html and 'name="viewport"' in html
    assert '"mode": "whole image"' in html and '"maxUploadBytes": 1048576' in html
    assert "<link" not in html and "src=" not in html.replace("img.src =", "")  # no asset to fetch: works offline
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "connect-src 'self'" in csp


def test_face_aware_mode_reports_faces_and_boxes(colour_model, tmp_path):
    from sorter.serve import create_app

    with TestClient(create_app(colour_model)) as client:
        response = post(client, ("shapes.jpg", photo_bytes(tmp_path, "male", 1)), ("dot.png", one_pixel_png()))
        assert '"mode": "face-aware"' in client.get("/").text
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert (result["faces"], result["boxes"], result["labels"], result["probs"]) == (0, [], [], {})


def test_cli_serve_help_and_missing_model(cli, tmp_path):
    help_text = " ".join(cli("serve", "--help").output.split())
    assert "[default: 127.0.0.1]" in help_text and "[default: 8000; 0<=x<=65535]" in help_text
    assert "--max-upload-mb" in help_text and "[default: 20;" in help_text
    result = cli("serve", "--model", tmp_path / "missing.pkl", "--port", "0")
    assert result.exit_code == 1 and "model file not found" in result.output


@pytest.mark.parametrize("command", [["serve"], ["review", ".", "--serve"]])
def test_a_port_in_use_is_one_line_before_the_model_loads(cli, tmp_path, monkeypatch, command):
    monkeypatch.setattr("sorter.model.ModelFile.__init__", lambda *a: pytest.fail("the model was opened"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli(*command, "--port", port, *(["--out", tmp_path / "review"] if "review" in command else []))
    assert result.exit_code == 1
    assert result.output == f"facesort: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
