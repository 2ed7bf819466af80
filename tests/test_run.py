"""facesort run: copies in the right folders, the CSV report, bad files, INPUT untouched."""
import csv
import subprocess

import pytest
from conftest import make_photo, tree_digest

from sorter.report import safe_cell


def read_csv(path):
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "spreadsheets need the UTF-8 BOM"
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def run_report(out):
    return read_csv(out / "facesort-report.csv")


def test_run_sorts_by_colour_and_keeps_relative_paths(cli, colour_model, photos, tmp_path):
    out = tmp_path / "out"
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image")
    assert result.exit_code == 0, result.output
    rows = run_report(out)
    assert len(rows) == 7
    right = sum(row["labels"] == row["path"].split("/")[-1].split("_")[0] for row in rows.values())
    assert right == 7, rows  # the colour model is right by construction
    for rel, row in rows.items():
        for folder in row["destinations"].split(";"):
            assert (out / folder / rel).read_bytes() == (photos / rel).read_bytes()
    assert (out / rows["trip/male_0.jpg"]["destinations"].split(";")[0] / "trip" / "male_0.jpg").exists()
    assert all(float(row["threshold"]) > 0 and len(row["model_sha256"]) == 64 for row in rows.values())


def test_threshold_zero_puts_every_photo_in_both_folders(cli, colour_model, photos, tmp_path):
    out = tmp_path / "out"
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image", "--threshold", "0").exit_code == 0
    for rel, row in run_report(out).items():
        assert row["labels"] == "female;male" and row["destinations"] == "female;male"
        assert (out / "male" / rel).exists() and (out / "female" / rel).exists()
    assert not (out / "neither").exists()


def test_model_threshold_is_used_unless_given(cli, colour_model, photos, tmp_path):
    from fastai.learner import load_learner

    stored = load_learner(colour_model, cpu=True).loss_func.thresh
    cli("run", photos, "--out", tmp_path / "a", "--model", colour_model, "--whole-image")
    cli("run", photos, "--out", tmp_path / "b", "--model", colour_model, "--whole-image", "--threshold", "0.99")
    assert {float(r["threshold"]) for r in run_report(tmp_path / "a").values()} == {stored}
    assert {float(r["threshold"]) for r in run_report(tmp_path / "b").values()} == {0.99}


def test_bad_files_are_reported_and_the_run_goes_on(cli, colour_model, photos, tmp_path):
    good = make_photo(photos / "whole.jpg", "male").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.jpg").write_text("this is not a photo\n")
    before = tree_digest(photos)
    out = tmp_path / "out"
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image")
    assert result.exit_code == 3, result.output
    rows = run_report(out)
    assert rows["empty.jpg"]["status"] == "error" and "empty file" in rows["empty.jpg"]["error"]
    assert rows["notes.jpg"]["status"] == "error" and "text" in rows["notes.jpg"]["error"]
    assert rows["truncated.jpg"]["status"] == "error" and "truncated" in rows["truncated.jpg"]["error"]
    assert rows["whole.jpg"]["status"] == "sorted"
    assert "failed=3" in result.output
    assert tree_digest(photos) == before


def test_dry_run_copies_nothing_but_reports(cli, colour_model, photos, tmp_path):
    out = tmp_path / "out"
    report = tmp_path / "dry.csv"
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image", "--dry-run", "--report", report)
    assert result.exit_code == 0, result.output
    assert {row["status"] for row in read_csv(report).values()} == {"dry-run"}
    assert not any(p.is_file() and p.suffix == ".jpg" for p in out.rglob("*"))


def test_out_inside_input_is_not_scanned(cli, colour_model, photos):
    out = photos / "sorted"
    assert cli("run", photos, "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    result = cli("run", photos, "--out", out, "--model", colour_model, "--whole-image", "--rescan")
    assert result.exit_code == 0
    assert all(not rel.startswith("sorted/") for rel in run_report(out))
    assert len(run_report(out)) == 7


def test_out_equal_to_input_is_refused(cli, colour_model, photos):
    result = cli("run", photos, "--out", photos, "--model", colour_model)
    assert result.exit_code == 1 and "must not be the input folder" in result.output


def test_out_inside_input_is_allowed_when_spelt_through_a_link(cli, colour_model, photos, tmp_path):
    (tmp_path / "link").symlink_to(photos)
    result = cli("run", photos, "--out", tmp_path / "link" / "sorted", "--model", colour_model, "--whole-image")
    assert result.exit_code == 0, result.output
    assert len(run_report(photos / "sorted")) == 7


@pytest.mark.parametrize("spelling", ["plain", "OUT through a link", "INPUT through a link", "both through links"])
def test_input_inside_out_is_refused_before_any_work(cli, colour_model, photos, tmp_path, spelling):
    """The issue's repro: `run data/male --out data` replaced INPUT's files by copies of themselves, then a
    --reclassify deleted them. Refused however the folders are spelt, and nothing is touched."""
    out = tmp_path / "out"
    out.mkdir()
    input_dir = photos.rename(out / "male")
    (tmp_path / "out-link").symlink_to(out)
    (tmp_path / "in-link").symlink_to(input_dir)
    out_arg = tmp_path / "out-link" if "OUT" in spelling or "both" in spelling else out
    in_arg = tmp_path / "in-link" if "INPUT" in spelling or "both" in spelling else input_dir
    before = tree_digest(out)
    result = cli("run", in_arg, "--out", out_arg, "--model", colour_model, "--whole-image", "--threshold", "0")
    assert result.exit_code == 1
    assert result.output == (f"facesort: error: the input folder {in_arg} is inside the output folder {out_arg}: a "
                             "run would write into it; choose an output folder outside the input folder\n")
    assert tree_digest(out) == before


def test_input_inside_out_through_a_bind_mount_is_refused(cli, colour_model, photos, tmp_path):
    out, bind = tmp_path / "out", tmp_path / "bind"
    bind.mkdir()
    out.mkdir()
    photos.rename(out / "male")
    mounted = subprocess.run(["mount", "--bind", str(out), str(bind)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({mounted.stderr.strip() or 'not root'})")
    try:
        result = cli("run", bind / "male", "--out", out, "--model", colour_model, "--whole-image")
    finally:
        subprocess.run(["umount", str(bind)], check=True)
    assert result.exit_code == 1 and "is inside the output folder" in result.output


def test_a_report_inside_input_is_refused(cli, colour_model, photos, tmp_path):
    before = tree_digest(photos)
    result = cli("run", photos, "--out", tmp_path / "out", "--model", colour_model, "--report", photos / "r.csv")
    assert result.exit_code == 1 and "would be written into the input folder" in result.output
    assert tree_digest(photos) == before and not (tmp_path / "out").exists()
    inside_out = photos / "sorted" / "r.csv"  # OUT inside INPUT: its reports are fine
    assert cli("run", photos, "--out", photos / "sorted", "--model", colour_model, "--whole-image",
               "--report", inside_out).exit_code == 0
    assert len(read_csv(inside_out)) == 7


def test_missing_model_is_a_one_line_error(cli, photos, tmp_path):
    result = cli("run", photos, "--out", tmp_path / "out", "--model", tmp_path / "nope.pkl")
    assert result.exit_code == 1
    assert result.output.strip() == f"facesort: error: model file not found: {tmp_path / 'nope.pkl'}"


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0.jpg", "+1.jpg", "-2.jpg", "@SUM(1).jpg"])
def test_csv_injection_is_neutralised(cli, colour_model, tmp_path, name):
    make_photo(tmp_path / "in" / name, "male")
    out = tmp_path / "out"
    assert cli("run", tmp_path / "in", "--out", out, "--model", colour_model, "--whole-image").exit_code == 0
    rows = run_report(out)
    assert list(rows) == ["'" + name]
    assert (out / rows["'" + name]["destinations"].split(";")[0] / name).exists()


def test_safe_cell_leaves_numbers_and_plain_text():
    assert safe_cell(0.5) == 0.5 and safe_cell("a.jpg") == "a.jpg" and safe_cell("-x") == "'-x"


def test_jpeg_named_png_is_sorted_and_text_named_png_is_an_error(cli, colour_model, tmp_path):
    make_photo(tmp_path / "in" / "photo.png", "female", fmt="JPEG")
    (tmp_path / "in" / "fake.png").write_text("hello")
    out = tmp_path / "out"
    assert cli("run", tmp_path / "in", "--out", out, "--model", colour_model, "--whole-image").exit_code == 3
    rows = run_report(out)
    assert rows["photo.png"]["status"] == "sorted" and rows["fake.png"]["status"] == "error"
