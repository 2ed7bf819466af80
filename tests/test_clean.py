"""facesort clean: review -> edit the CSV -> clean --apply moves files, trashes, logs; refusals change nothing."""
import csv
import json
import os
import re

import pytest
from conftest import make_photo, tree_digest

from sorter.archs import sha256_of
from sorter.discover import image_files
from sorter.errors import FacesortError


def reviewed(tmp_path, cli, model):
    """A labelled folder and its review.csv (every image listed)."""
    data = tmp_path / "data"
    for label in ("male", "female", "neither"):
        for i in range(2):
            make_photo(data / "web" / label / f"{label}_{i}.jpg", label, seed=400 + i)
    result = cli("review", data, "--model", model, "--out", tmp_path / "review", "--top", "0")
    assert result.exit_code == 0, result.output
    return data, tmp_path / "review" / "review.csv"


def edit(review_csv, actions, delimiter=",", extra_rows=()):
    """Fill the action column as a spreadsheet user would, optionally saving with another delimiter."""
    with open(review_csv, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["action"] = actions.get(row["path"], "")
    rows += [{**rows[0], **extra} for extra in extra_rows]
    with open(review_csv, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def images(data):
    """{relative path: bytes} of what training would see."""
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in image_files(data)}


def test_round_trip_review_edit_apply_undo(cli, colour_model, tmp_path):
    data, review_csv = reviewed(tmp_path, cli, colour_model)
    before = images(data)
    edit(review_csv, {"web/male/male_0.jpg": "delete", "web/female/female_1.jpg": " Male ",
                      "web/neither/neither_0.jpg": "neither", "web/neither/neither_1.jpg": "keep"}, delimiter=";")

    plan = cli("clean", review_csv)
    assert plan.exit_code == 0, plan.output
    assert "delete (to trash): web/male/male_0.jpg -> .facesort-trash/clean-" in plan.output
    assert "relabel as male: web/female/female_1.jpg -> web/male/female_1.jpg" in plan.output
    assert "2 to move, 4 kept, 0 refused" in plan.output and "add --apply" in plan.output
    assert images(data) == before

    applied = cli("clean", review_csv, "--apply")
    assert applied.exit_code == 0, applied.output
    after = images(data)
    assert "web/male/male_0.jpg" not in after and "web/female/female_1.jpg" not in after
    assert after["web/male/female_1.jpg"] == before["web/female/female_1.jpg"]
    assert len(after) == len(before) - 1  # the trash is not training data
    [trashed] = (data / ".facesort-trash").glob("clean-*/web/male/male_0.jpg")
    assert trashed.read_bytes() == before["web/male/male_0.jpg"]
    log_path = trashed.parents[2] / "undo.json"
    assert str(log_path) in applied.output
    log = json.loads(log_path.read_text())
    assert sorted((m["action"], m["source"]) for m in log["moves"]) == [("delete", "web/male/male_0.jpg"),
                                                                        ("male", "web/female/female_1.jpg")]

    assert cli("clean", "--undo", log_path).exit_code == 0 and images(data) == after  # a plan only
    undone = cli("clean", "--undo", log_path, "--apply")
    assert undone.exit_code == 0, undone.output
    assert "restored 2 files" in undone.output and images(data) == before
    again = cli("clean", "--undo", log_path, "--apply")
    assert again.exit_code == 1 and "already undone" in again.output


def test_each_bad_row_is_refused_and_nothing_changes(cli, colour_model, tmp_path):
    data, review_csv = reviewed(tmp_path, cli, colour_model)
    outside = make_photo(tmp_path / "elsewhere.jpg", "male")
    os.symlink(outside, data / "web" / "male" / "link.jpg")
    (data / "web" / "female" / "female_0.jpg").write_bytes(b"changed after the review")
    make_photo(data / "web" / "female" / "male_1.jpg", "male", seed=1)  # takes the name a relabel would use
    edit(review_csv, {"web/male/male_0.jpg": "burn", "web/female/female_0.jpg": "delete",
                      "web/male/male_1.jpg": "female", "web/neither/neither_0.jpg": "delete"},
         extra_rows=[{"path": "../elsewhere.jpg", "action": "delete"},
                     {"path": str(outside), "action": "delete"},
                     {"path": "web/male/link.jpg", "action": "delete", "sha256": sha256_of(outside)},
                     {"path": ".facesort-trash/x/web/male/a.jpg", "action": "male"}])
    before = tree_digest(data)
    result = cli("clean", review_csv, "--apply")
    assert result.exit_code == 1
    assert re.search(r"line \d+: web/female/female_0.jpg: the file changed since the review", result.output)
    for message in (
                    "web/male/male_0.jpg: unknown action 'burn'",
                    "web/male/male_1.jpg: web/female/male_1.jpg already exists",
                    "../elsewhere.jpg: path outside the data folder",
                    f"{outside}: path outside the data folder",
                    "web/male/link.jpg: path outside the data folder (through a symbolic link)",
                    ".facesort-trash/x/web/male/a.jpg: path inside .facesort-trash"):
        assert message in result.output, result.output
    assert "7 refused: nothing changed" in result.output
    assert tree_digest(data) == before and not (data / ".facesort-trash").exists()


def test_two_rows_for_one_file_are_refused(cli, colour_model, tmp_path):
    data, review_csv = reviewed(tmp_path, cli, colour_model)
    edit(review_csv, {"web/male/male_0.jpg": "female"}, extra_rows=[{"path": "web/male/male_0.jpg", "action": "delete",
                                                                      "sha256": sha256_of(data / "web/male/male_0.jpg")}])
    result = cli("clean", review_csv)
    assert result.exit_code == 1 and "another row already moves this file" in result.output


def test_nothing_to_do_changes_nothing(cli, colour_model, tmp_path):
    data, review_csv = reviewed(tmp_path, cli, colour_model)
    edit(review_csv, {"web/male/male_0.jpg": "male"})  # already male
    before = tree_digest(data)
    result = cli("clean", review_csv, "--apply")
    assert result.exit_code == 0 and "0 to move, 6 kept, 0 refused" in result.output
    assert "nothing to move" in result.output and tree_digest(data) == before


def test_a_failure_part_way_puts_everything_back(cli, colour_model, tmp_path, monkeypatch):
    from sorter import cleaning

    data, review_csv = reviewed(tmp_path, cli, colour_model)
    edit(review_csv, {"web/male/male_0.jpg": "female", "web/male/male_1.jpg": "delete"})
    plan = cleaning.plan_clean(review_csv)
    before = tree_digest(data / "web")
    real_rename, calls = os.rename, []

    def rename_then_fail(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(cleaning.os, "rename", rename_then_fail)
    with pytest.raises(FacesortError, match="every move was undone"):
        cleaning.apply_plan(plan, review_csv)
    assert len(calls) == 3  # two moves tried, then the first one put back
    assert tree_digest(data / "web") == before
    assert not list((data / ".facesort-trash").rglob("undo.json"))


def test_not_a_review_csv_and_usage_errors(cli, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("path,status\nx.jpg,sorted\n")
    result = cli("clean", other)
    assert result.exit_code == 1 and "missing columns: action, sha256, data_dir" in result.output
    assert cli("clean").exit_code == 2
    assert cli("clean", other, "--undo", tmp_path / "log.json").exit_code == 2


def test_cells_a_spreadsheet_would_run_survive_the_round_trip(tmp_path):
    from sorter.report import read_rows, write_report

    rows = [{"path": "=cmd|' /C calc'!A0/male/x.jpg", "action": "-delete"}, {"path": "'quoted", "action": ""}]
    write_report(tmp_path / "r.csv", rows, ("path", "action"))
    assert b"'=cmd" in (tmp_path / "r.csv").read_bytes()
    assert read_rows(tmp_path / "r.csv") == rows
