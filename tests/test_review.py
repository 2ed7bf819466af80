"""facesort review: the likeliest label errors first, in a safe CSV and an offline HTML contact sheet."""
import csv
import math

import numpy as np
import pytest
from conftest import make_photo

from sorter.archs import sha256_of
from sorter.review import losses


def read_review(path):
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def labelled_folder(root):
    """Three fresh photos per label, one male photo filed as female, and a name built to break HTML and CSV."""
    for label in ("male", "female", "neither"):
        for i in range(3):
            make_photo(root / label / f"{label}_{i}.jpg", label, seed=300 + i)
    make_photo(root / "female" / "oops.jpg", "male", seed=777)
    make_photo(root / "=1+1 <b>&amp" / "neither" / "odd.jpg", "neither", seed=778)
    return root


def test_mislabelled_image_ranks_first(cli, colour_model, tmp_path):
    data, out = labelled_folder(tmp_path / "data"), tmp_path / "review"
    result = cli("review", data, "--model", colour_model, "--out", out, "--top", "0")
    assert result.exit_code == 0, result.output
    rows = read_review(out / "review.csv")
    assert len(rows) == 11
    assert (rows[0]["path"], rows[0]["label"], rows[0]["predicted"]) == ("female/oops.jpg", "female", "male")
    assert float(rows[0]["prob_male"]) > float(rows[0]["prob_female"])
    assert [int(row["rank"]) for row in rows] == list(range(1, 12))
    loss = [float(row["loss"]) for row in rows]
    assert loss == sorted(loss, reverse=True)
    assert all(row["action"] == "" and row["data_dir"] == str(data.resolve()) for row in rows)
    assert all(row["sha256"] == sha256_of(data / row["path"].removeprefix("'")) for row in rows)
    assert "'=1+1 <b>&amp/neither/odd.jpg" in {row["path"] for row in rows}  # not a formula to a spreadsheet


def test_contact_sheet_is_offline_escaped_and_in_csv_order(cli, colour_model, tmp_path):
    data, out = labelled_folder(tmp_path / "data"), tmp_path / "review"
    assert cli("review", data, "--model", colour_model, "--out", out, "--top", "0").exit_code == 0
    page = (out / "review.html").read_text()
    rows = read_review(out / "review.csv")
    assert page.count('<img src="data:image/jpeg;base64,') == len(rows)
    assert "http:" not in page and "https:" not in page and "src=\"/" not in page
    assert "=1+1 &lt;b&gt;&amp;amp/neither/odd.jpg" in page and "<b>&amp/" not in page
    positions = [page.index(f"<b>#{row['rank']}</b> ") for row in rows]
    assert positions == sorted(positions)
    assert page.index("female/oops.jpg") < page.index("male/male_0.jpg")
    figures = {row["path"]: page[page.index(f"<b>#{row['rank']}</b> "):].split("</figure>")[0] for row in rows}
    assert 'predicted <b class="bad">male</b>' in figures["female/oops.jpg"]  # red only where they disagree
    assert 'predicted <b class="ok">male</b>' in figures["male/male_0.jpg"]
    assert 'predicted <b class="ok">neither</b>' in figures["neither/neither_0.jpg"]


def test_top_limits_both_files_and_unreadable_images_come_first(cli, colour_model, tmp_path):
    data, out = labelled_folder(tmp_path / "data"), tmp_path / "review"
    (data / "male" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert cli("review", data, "--model", colour_model, "--out", out, "--top", "3").exit_code == 0
    rows = read_review(out / "review.csv")
    assert [row["path"] for row in rows[:2]] == ["male/broken.jpg", "female/oops.jpg"]
    assert rows[0]["predicted"].startswith("unreadable: ") and rows[0]["loss"] == ""
    page = (out / "review.html").read_text()
    assert page.count("<figure>") == 3 and "unreadable</div>" in page


def test_loss_is_binary_cross_entropy_against_the_folder_label():
    probs = [[0.9, 0.1], [0.5, 0.5], [np.nan, np.nan]]
    targets = [[0, 1], [1, 0], [0, 1]]  # male photo predicted female; unsure; no face found for a male photo
    expected = [-(math.log(0.1) + math.log(0.1)) / 2, -math.log(0.5), -(math.log(1e-7) + math.log(1)) / 2]
    assert losses(probs, targets) == pytest.approx(expected)


def test_review_of_a_folder_without_labels_is_exit_1(cli, colour_model, tmp_path):
    make_photo(tmp_path / "misc" / "x.jpg", "male")
    result = cli("review", tmp_path, "--model", colour_model, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "no labelled images" in result.output
