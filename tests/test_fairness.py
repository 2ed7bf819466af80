"""Right for everyone: groups of people read from a metadata CSV, per-group accuracy, and balanced draws."""
import json
from pathlib import Path

import pytest
from conftest import COLOURS, make_photo

from sorter.errors import FacesortError
from sorter.groups import Groups, fairness, image_key
from sorter.training import LABEL_SHARE, sample_weights


def write_csv(path, text):
    path.write_text(text)
    return path


def test_image_key_is_how_crops_are_named():
    assert image_key("faces-utk/female/25_1_0_x.jpg.chip.jpg") == "faces-utk_female_25_1_0_x.jpg.chip"


def test_groups_are_the_few_valued_columns_found_by_key_or_its_tail(tmp_path):
    rows = [f"female/{i}.jpg,{30 + i},{'old' if i % 2 else 'young'},{['Black', 'White'][i % 2]},200\n"
            for i in range(30)]
    csv = write_csv(tmp_path / "meta.csv", "file,age,age_band,race,width\n" + "".join(rows))
    groups = Groups.read(csv)
    assert groups.columns == ["age_band", "race"]  # age has 30 values, width one: neither groups anyone
    assert groups.of("female_1") == {"age_band": "old", "race": "White"}
    assert groups.of("faces-utk-more_female_2") == {"age_band": "young", "race": "Black"}  # CSV of a subfolder
    assert groups.of("male_1") == {} and groups.of("unknown") == {}


def test_a_csv_without_a_file_column_is_refused_in_one_line(tmp_path):
    with pytest.raises(FacesortError, match="no `file` column"):
        Groups.read(write_csv(tmp_path / "meta.csv", "path,race\na.jpg,Black\n"))
    with pytest.raises(FacesortError, match="cannot read groups file"):
        Groups.read(tmp_path / "missing.csv")


def test_fairness_names_the_worst_sized_group_and_the_gap_between_women_and_men(tmp_path):
    csv = write_csv(tmp_path / "meta.csv", "file,race\n" + "".join(
        f"{label}/{i}.jpg,{race}\n" for label in ("female", "male") for i, race in
        enumerate(["Black"] * 20 + ["White"] * 20 + ["Indian"] * 5)))
    records = [(f"{label}_{i}", label, not (label == "female" and i < 10) and i != 44)
               for label in ("female", "male") for i in range(45)]
    result = fairness(records, Groups.read(csv))
    groups = result["groups"]
    assert groups["gender=female"] == {"images": 45, "accuracy": pytest.approx(34 / 45)}
    assert groups["race=Black"] == {"images": 40, "accuracy": 0.75}
    assert groups["race=Indian"]["accuracy"] == 0.8  # worse than White, but 10 images are too few to be named
    assert result["worst_group"] == "race=Black"
    assert result["error_gap_women_men"] == pytest.approx(100 * (44 / 45 - 34 / 45))


def test_balanced_draws_give_each_label_its_share_and_small_groups_more_than_their_count():
    items = ([Path(f"train/female/utk_{i}.webp") for i in range(900)] + [Path(f"train/female/wild_{i}.webp")
             for i in range(100)] + [Path(f"train/male/utk_{i}.webp") for i in range(100)]
             + [Path(f"train/neither/scene_{i}.webp") for i in range(50)])
    weights = sample_weights(items)
    by = {}
    for item, w in zip(items, weights):
        key = (item.parent.name, item.stem.split("_")[0])
        by[key] = by.get(key, 0) + w
    assert sum(weights) == pytest.approx(1)
    assert by[("male", "utk")] == pytest.approx(LABEL_SHARE["male"])  # 100 men weigh as much as 1,000 women
    assert by[("female", "wild")] == pytest.approx(LABEL_SHARE["female"] * 10 / (10 + 30))  # sqrt(100), sqrt(900)
    assert by[("neither", "scene")] == pytest.approx(LABEL_SHARE["neither"])


def test_evaluate_reports_groups_from_a_csv(tmp_path, cli, colour_model):
    data = tmp_path / "data"
    for label in COLOURS:
        for i in range(4):
            make_photo(data / label / f"{i}.jpg", label, seed=i)
    csv = write_csv(tmp_path / "groups.csv", "file,skin\n" + "".join(
        f"{label}/{i}.jpg,{'dark' if i % 2 else 'light'}\n" for label in COLOURS for i in range(4)))
    result = cli("evaluate", data, "--model", colour_model, "--whole-image", "--groups", csv, "--json")
    assert result.exit_code == 0, result.output
    fair = json.loads(result.output[result.output.index("{"):])["fairness"]
    assert fair["groups"]["skin=dark"] == {"images": 6, "accuracy": 1.0}
    assert fair["groups"]["gender=female"]["images"] == 4 and fair["error_gap_women_men"] == 0
