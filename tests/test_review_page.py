"""The review page's API (facesort review --serve): every decision lands in review.csv at once, refusals change
nothing, apply and undo are `facesort clean`'s, thumbnails are made on request and cached within a bound."""
import io
import re

import pytest
from PIL import Image
from review_data import ROWS, reviewed_folder
from starlette.testclient import TestClient

from sorter.cleaning import plan_clean
from sorter.discover import TRASH_DIR
from sorter.faces import Faces
from sorter.report import read_rows, write_report
from sorter.review_server import create_app
from sorter.thumbnails import SIDE, Thumbnails

JSON = {"content-type": "application/json"}


@pytest.fixture
def reviewed(tmp_path):
    return reviewed_folder(tmp_path)


@pytest.fixture
def client(reviewed):
    with TestClient(create_app(reviewed[1]), base_url="http://127.0.0.1:8000") as client:
        yield client


def rows(client, **params):
    response = client.get("/api/rows", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def decide(client, row_id, action, sha256=None):
    sha256 = sha256 or rows(client, offset=row_id, limit=1)["rows"][0]["sha256"]
    return client.post("/api/decide", json={"id": row_id, "sha256": sha256, "action": action})


def actions(review_csv):
    return {row["path"]: row["action"] for row in read_rows(review_csv)}


def test_rows_come_in_review_order_with_filters_and_paging(client):
    page = rows(client)
    assert page["total"] == len(ROWS) and [r["path"] for r in page["rows"]] == [r[0] for r in ROWS]
    first = page["rows"][0]
    assert (first["id"], first["label"], first["predicted"], first["probs"]) == (
        0, "female", "male", {"female": 0.02, "male": 0.97})
    assert page["summary"]["images"] == len(ROWS) and page["summary"]["decided"] == {"": len(ROWS)}
    assert [r["path"] for r in rows(client, label="male")["rows"]] == ["web/male/male_1.jpg", "web/male/male_0.jpg"]
    assert [r["id"] for r in rows(client, disagree="1")["rows"]] == [0, 1]
    second = rows(client, offset=2, limit=2)
    assert second["total"] == len(ROWS) and [r["id"] for r in second["rows"]] == [2, 3]
    assert client.get("/api/rows", params={"label": "cat"}).status_code == 400
    assert client.get("/api/rows", params={"limit": "100000"}).status_code == 400


@pytest.mark.parametrize("action", ["keep", "delete", "male", "female", "neither"])
def test_each_decision_is_in_review_csv_as_soon_as_it_is_answered(client, reviewed, action):
    response = decide(client, 3, action)
    assert response.status_code == 200, response.text
    assert response.json()["action"] == action
    assert actions(reviewed[1])["web/female/female_1.jpg"] == action
    assert [p.name for p in reviewed[1].parent.iterdir()] == ["review.csv"]  # no temporary file left
    assert rows(client)["summary"]["decided"] == {"": len(ROWS) - 1, action: 1}
    assert decide(client, 3, "").status_code == 200 and actions(reviewed[1])["web/female/female_1.jpg"] == ""


def test_the_page_s_decisions_are_what_clean_reads(client, reviewed):
    for row_id, action in ((0, "male"), (2, "delete"), (4, "keep")):
        assert decide(client, row_id, action).status_code == 200
    plan = plan_clean(reviewed[1])
    assert [(m.action, m.source) for m in plan.moves] == [("male", "web/female/female_0.jpg"),
                                                          ("delete", "web/male/male_0.jpg")]
    assert plan.kept == len(ROWS) - 2 and plan.refused == []


@pytest.mark.parametrize("body, status, reason", [
    ({"id": 0, "action": "burn"}, 400, "unknown action 'burn'"),
    ({"id": 99, "action": "delete"}, 404, "no row 99"),
    ({"id": -1, "action": "delete"}, 404, "no row -1"),
    ({"id": "0", "action": "delete"}, 404, "no row '0'"),
    ({"id": "web/male/male_0.jpg", "action": "delete"}, 404, "no row 'web/male/male_0.jpg'"),
    ({"path": "web/male/male_0.jpg", "action": "delete"}, 404, "no row None"),
    ({"id": 0, "action": "delete", "sha256": "0" * 64}, 409, "rewritten since the page loaded"),
    ({"id": 0, "action": "delete", "sha256": None}, 400, "the sha256 the page showed"),
])
def test_bad_decisions_are_refused_and_change_nothing(client, reviewed, body, status, reason):
    before = reviewed[1].read_bytes()
    response = client.post("/api/decide", json={"sha256": rows(client)["rows"][0]["sha256"], **body})
    assert response.status_code == status and reason in response.json()["error"], response.text
    assert reviewed[1].read_bytes() == before


def test_a_changed_or_missing_file_is_refused(client, reviewed):
    data, review_csv = reviewed
    before = review_csv.read_bytes()
    (data / "web/male/male_0.jpg").write_bytes(b"edited since the review")
    response = decide(client, 2, "delete")
    assert response.status_code == 409 and "changed since the review" in response.json()["error"]
    (data / "web/male/male_1.jpg").unlink()
    response = decide(client, 1, "delete")
    assert response.status_code == 409 and "file not found" in response.json()["error"]
    assert client.get(f"/thumb/2?sha256={rows(client)['rows'][2]['sha256']}").status_code == 409
    assert review_csv.read_bytes() == before


def test_changes_come_only_as_json_from_the_page_s_own_origin(client, reviewed):
    before = reviewed[1].read_bytes()
    body = {"id": 0, "sha256": rows(client)["rows"][0]["sha256"], "action": "delete"}
    form = client.post("/api/decide", data=body)  # what a cross-site HTML form can send
    assert form.status_code == 415
    foreign = client.post("/api/decide", json=body, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403
    rebound = client.get("/api/rows", headers={"host": "evil.example:8000"})  # DNS rebinding
    assert rebound.status_code == 400
    assert client.post("/api/decide", content=b"{not json", headers=JSON).status_code == 400
    assert client.get("/api/decide").status_code == 405
    assert reviewed[1].read_bytes() == before


def test_spreadsheet_edits_made_while_serving_are_kept(client, reviewed):
    review_csv = reviewed[1]
    text = review_csv.read_text(encoding="utf-8-sig").replace("web/neither/neither_1.jpg,neither,neither,0.01,0.01,"
                                                              "0.01,,", "web/neither/neither_1.jpg,neither,neither,"
                                                              "0.01,0.01,0.01,delete,")
    review_csv.write_text(text, encoding="utf-8-sig")
    assert rows(client)["rows"][5]["action"] == "delete"
    assert decide(client, 0, "male").status_code == 200
    assert {k: v for k, v in actions(review_csv).items() if v} == {"web/female/female_0.jpg": "male",
                                                                   "web/neither/neither_1.jpg": "delete"}


def test_ten_thousand_rows_are_paged_and_a_decision_rewrites_them_all(reviewed):
    review_csv = reviewed[1]
    [first, *_] = read_rows(review_csv)
    many = [{**first, "rank": rank, "path": f"web/female/missing_{rank}.jpg"} for rank in range(1, 10_000)]
    write_report(review_csv, many + [first], list(first))
    app = create_app(review_csv)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        last = rows(client, offset=9_984)
        assert last["total"] == 10_000 and len(last["rows"]) == 16 and last["rows"][-1]["id"] == 9_999
        assert decide(client, 9_999, "delete").status_code == 200  # the one row whose file exists
    after = read_rows(review_csv)
    assert len(after) == 10_000 and [row["path"] for row in after[:3]] == [row["path"] for row in many[:3]]
    assert [row["action"] for row in after].count("delete") == 1 and after[-1]["action"] == "delete"


def test_thumbnails_are_small_jpegs_made_once(client, reviewed):
    page = rows(client)["rows"]
    response = client.get(f"/thumb/0?sha256={page[0]['sha256']}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "JPEG" and max(image.size) <= SIDE
    assert client.get(f"/thumb/99?sha256={page[0]['sha256']}").status_code == 404
    assert client.get(f"/thumb/1?sha256={page[0]['sha256']}").status_code == 409  # another row's hash
    (reviewed[0] / "web/male/male_1.jpg").write_bytes(b"")
    assert client.get(f"/thumb/1?sha256={page[1]['sha256']}").status_code == 409


def test_thumbnail_cache_is_bounded_and_reused(reviewed, monkeypatch):
    data = reviewed[0]
    thumbnails, made = Thumbnails(size=2), []
    make = thumbnails.make
    monkeypatch.setattr(thumbnails, "make", lambda path: made.append(path.name) or make(path))
    paths = [data / rel for rel, *_ in ROWS[:3]]
    for key in (0, 1, 0, 2, 0, 1):
        thumbnails.get(key, paths[key])
    assert made == ["female_0.jpg", "male_1.jpg", "male_0.jpg", "male_1.jpg"]  # 1 was evicted by 2, then 0 kept
    assert len(thumbnails.cache) == 2


def test_face_aware_thumbnails_box_the_faces_found(reviewed):
    class OneFace:  # a face finder that finds the middle of any image
        def find(self, images):
            width, height = images[0].size
            return [Faces(boxes=[[width // 4, height // 4, 3 * width // 4, 3 * height // 4]])]

    path = reviewed[0] / ROWS[0][0]
    with Image.open(io.BytesIO(Thumbnails(OneFace()).make(path))) as boxed, \
            Image.open(io.BytesIO(Thumbnails().make(path))) as plain:
        assert boxed.size == plain.size
        x, y = boxed.width // 4, boxed.height // 2  # on the box's left edge: yellow, not the photo's red
        r, g, b = boxed.getpixel((x, y))
        assert r > 200 and g > 160 and b < 90, (r, g, b)
        assert plain.getpixel((x, y))[1] < 100


def test_apply_and_undo_are_clean_s_own(client, reviewed):
    data, review_csv = reviewed
    before = {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*.jpg")}
    assert decide(client, 0, "male").status_code == 200 and decide(client, 2, "delete").status_code == 200
    plan = client.post("/api/plan", json={}).json()
    assert plan["moves"] == 2 and plan["refused"] == [] and plan["lines"][-1] == "2 to move, 4 kept, 0 refused"

    applied = client.post("/api/apply", json={})
    assert applied.status_code == 200, applied.text
    done = applied.json()
    stamp = re.compile(r"clean-[0-9-]+")  # each clean's own trash folder
    assert [stamp.sub("clean-", line) for line in done["done"]] == [stamp.sub("clean-", l) for l in plan["lines"][:2]]
    assert (data / "web/male/female_0.jpg").read_bytes() == before["web/female/female_0.jpg"]
    [trashed] = (data / TRASH_DIR).glob("clean-*/web/male/male_0.jpg")
    assert trashed.read_bytes() == before["web/male/male_0.jpg"] and not (data / "web/male/male_0.jpg").exists()
    page = rows(client)
    assert page["summary"]["applied"] == done["undo_log"]
    assert page["rows"][0]["moved_to"] == "web/male/female_0.jpg" and page["rows"][1]["moved_to"] is None
    assert client.get(f"/thumb/0?sha256={page['rows'][0]['sha256']}").status_code == 200  # found where it went
    locked = decide(client, 3, "delete")
    assert locked.status_code == 409 and "undo it" in locked.json()["error"]
    assert client.post("/api/apply", json={}).status_code == 409

    undone = client.post("/api/undo", json={})
    assert undone.status_code == 200 and undone.json() == {"restored": 2}
    assert {p.relative_to(data).as_posix(): p.read_bytes() for p in data.rglob("*.jpg")
            if TRASH_DIR not in p.parts} == before
    assert rows(client)["summary"]["applied"] is None and client.post("/api/undo", json={}).status_code == 409
    assert actions(review_csv)["web/female/female_0.jpg"] == "male"  # the record still holds the decisions
    assert decide(client, 3, "delete").status_code == 200


def test_apply_refuses_all_when_a_row_cannot_be_done(client, reviewed):
    data, _ = reviewed
    assert decide(client, 0, "male").status_code == 200 and decide(client, 2, "delete").status_code == 200
    (data / "web/male/male_0.jpg").write_bytes(b"edited after the decision")
    response = client.post("/api/apply", json={})
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "1 rows refused: nothing changed"
    assert re.fullmatch(r"line 4: web/male/male_0.jpg: the file changed .*", response.json()["details"][0])
    assert (data / "web/female/female_0.jpg").exists() and not (data / TRASH_DIR).exists()


def test_a_clean_applied_with_the_cli_shows_on_the_page(cli, client, reviewed):
    assert decide(client, 2, "delete").status_code == 200
    assert cli("clean", reviewed[1], "--apply").exit_code == 0
    assert rows(client)["summary"]["applied"] and rows(client)["rows"][2]["moved_to"].startswith(TRASH_DIR)


def test_decisions_survive_a_new_server(reviewed):
    with TestClient(create_app(reviewed[1]), base_url="http://127.0.0.1:8000") as first:
        assert decide(first, 1, "female").status_code == 200
    with TestClient(create_app(reviewed[1]), base_url="http://127.0.0.1:8000") as second:
        assert rows(second)["rows"][1]["action"] == "female"


def test_page_loads_nothing_else_and_its_policy_is_strict(client):
    response = client.get("/")
    policy = response.headers["content-security-policy"]
    assert "unsafe" not in policy and "default-src 'none'" in policy and "img-src 'self'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'; style-src 'sha256-[A-Za-z0-9+/=]+';", policy)
    assert not re.search(r"(src|href)=\"(https?:)?//", response.text) and "@import" not in response.text


def test_serving_a_review_of_another_folder_is_refused(cli, reviewed, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    result = cli("review", tmp_path / "elsewhere", "--out", reviewed[1].parent, "--serve", "--port", "0")
    assert result.exit_code == 1 and "reviews " in result.output and "choose another --out" in result.output
