"""facesort evaluate: the numbers on a set whose probabilities are known, worked out by hand below."""
import json

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from sorter.evaluation import Scored, evaluate

# image -> (prob_female, prob_male) the fake classifier returns; label from the folder; outcome at threshold 0.5
KNOWN = {
    "src1/male/a.png": (0.1, 0.9),  # male -> male: right
    "src2/male/b.png": (0.2, 0.4),  # male -> neither: wrong
    "src1/female/c.png": (0.8, 0.6),  # female -> both: wrong
    "src2/female/d.png": (0.72, 0.0),  # female -> female: right
    "src1/neither/e.png": (0.0, 0.0),  # neither -> neither: right
    "src2/neither/f.png": (0.0, 0.6),  # neither -> male: wrong
}


@pytest.fixture
def known(tmp_path, monkeypatch):
    """The KNOWN images, each a flat colour that encodes its probabilities, plus one unreadable file."""
    from sorter.inference import Classifier

    root = tmp_path / "known"
    for rel, (female, male) in KNOWN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (round(female * 250), round(male * 250), 0)).save(root / rel)
    (root / "src1" / "male" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    def decode_colour(self, images, batch_size=64, prepared=False):
        return np.array([[image.getpixel((0, 0))[0] / 250, image.getpixel((0, 0))[1] / 250] for image in images])

    monkeypatch.setattr(Classifier, "probabilities", decode_colour)
    return root


def evaluate_json(cli, root, model, *args):
    result = cli("evaluate", root, "--model", model, "--threshold", "0.5", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_metrics_match_hand_computed_values(cli, colour_model, known):
    r = evaluate_json(cli, known, colour_model, "--whole-image", "--group-depth", "1")
    assert (r["images"], r["unreadable"], r["no_face"], r["mode"]) == (6, 1, 0, "whole-image")
    assert r["exact_match"] == pytest.approx(3 / 6)  # a, d, e
    assert r["accuracy_multi"] == pytest.approx(9 / 12)  # b, c and f each get one of their two labels wrong
    assert r["female"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2})  # c, d
    # predicted male: a, c, f, of which a is; actual male: a, b; f1 = 2 * 1/3 * 1/2 / (1/3 + 1/2) = 0.4
    assert r["male"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert r["confusion"]["male"] == {"neither": 1, "female": 0, "male": 1, "both": 0}
    assert r["confusion"]["female"] == {"neither": 0, "female": 1, "male": 0, "both": 1}
    assert r["confusion"]["neither"] == {"neither": 1, "female": 0, "male": 1, "both": 0}
    assert r["predicted"] == {"neither": 2, "female": 1, "male": 2, "both": 1}
    assert r["groups"]["src1"]["exact_match"] == pytest.approx(2 / 3)  # a, c, e
    assert r["groups"]["src1"]["accuracy_multi"] == pytest.approx(5 / 6)
    assert r["groups"]["src2"]["exact_match"] == pytest.approx(1 / 3)  # b, d, f
    assert set(r["groups"]) == {"src1", "src2"}


def test_threshold_sweep_marks_the_threshold_in_use(cli, colour_model, known):
    sweep = {row["threshold"]: row for row in evaluate_json(cli, known, colour_model, "--whole-image")["sweep"]}
    assert list(sweep) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert [t for t, row in sweep.items() if row["in_use"]] == [0.5]
    assert sweep[0.3]["exact_match"] == pytest.approx(4 / 6)  # b becomes male (0.4); c still both, f still male
    assert sweep[0.7]["exact_match"] == pytest.approx(5 / 6)  # c female, f neither; only b (neither) wrong
    assert sweep[0.7]["male_precision"] == 1.0 and sweep[0.7]["male_recall"] == 0.5  # only a predicted male
    assert sweep[0.5]["exact_match"] == pytest.approx(0.5)


def test_threshold_outside_the_grid_is_added_to_the_sweep():
    scored = [Scored(f"male/{i}.jpg", f"male/{i}.jpg", np.array([False, True]), np.array([0.0, p]))
              for i, p in enumerate((0.5, 0.56, 0.6))]
    result = evaluate(scored, 0.55)
    assert [row["threshold"] for row in result["sweep"] if row["in_use"]] == [0.55]
    assert len(result["sweep"]) == 10
    assert result["exact_match"] == pytest.approx(2 / 3)


def test_no_face_counts_as_neither_at_every_threshold():
    scored = [Scored("male/a.jpg", "male/a.jpg", np.array([False, True]), np.array([np.nan, np.nan]), faces=0),
              Scored("neither/b.jpg", "neither/b.jpg", np.array([False, False]), np.array([np.nan, np.nan]), faces=0)]
    result = evaluate(scored, 0.0)
    assert result["no_face"] == 2 and result["faces_missed"] == 1
    assert result["groups"]["male"]["no_face"] == 1
    assert result["confusion"]["male"]["neither"] == 1 and result["confusion"]["neither"]["neither"] == 1
    assert all(row["exact_match"] == 0.5 for row in result["sweep"])


def test_face_aware_is_the_default_and_finds_no_faces_in_flat_colours(cli, colour_model, known):
    r = evaluate_json(cli, known, colour_model)
    assert r["mode"] == "face-aware"
    assert r["no_face"] == 6 and r["faces_missed"] == 4 and r["predicted"]["neither"] == 6
    assert r["groups"]["src1/male"]["no_face"] == 1
    text = cli("evaluate", known, "--model", colour_model).stdout
    assert "no face found in 4 of 4 male/female images" in text
    assert r["exact_match"] == pytest.approx(2 / 6)  # only e and f are labelled neither


def test_text_report_and_plot(cli, colour_model, known, tmp_path):
    plot = tmp_path / "plots" / "eval.png"
    result = cli("evaluate", known, "--model", colour_model, "--threshold", "0.5", "--whole-image", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "exact_match 0.5000  accuracy_multi 0.7500" in result.stdout
    assert "   0.5*" in result.stdout and "src1/male" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and plot.stat().st_size > 10_000


def test_folder_without_labelled_images_is_exit_1(cli, colour_model, tmp_path):
    make_photo(tmp_path / "misc" / "x.jpg", "male")
    result = cli("evaluate", tmp_path, "--model", colour_model)
    assert result.exit_code == 1
    assert "no labelled images" in result.output and "Traceback" not in result.output
