"""scripts/heldout.py and scripts/realphotos.py: the held-out measurement's scoring, the pooling of several runs,
and the real photos that need no download."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import heldout  # noqa: E402
import realphotos  # noqa: E402


def test_score_counts_exact_label_sets_per_kind_and_per_portrait_truth():
    truth = [{"path": "a", "kind": "portrait", "labels": "male", "groups": {}},
             {"path": "b", "kind": "portrait", "labels": "female", "groups": {}},
             {"path": "c", "kind": "pair", "labels": "female;male", "groups": {}},
             {"path": "d", "kind": "small", "labels": "female", "groups": {"height": "10-15%"}}]
    predicted = {"a": {"labels": "male"}, "b": {"labels": "female;male"}, "c": {"labels": "female;male"},
                 "d": {"labels": ""}}
    scores = heldout.score(truth, predicted)
    assert scores["kind portrait"] == {"accuracy": 0.5, "n": 2}
    assert scores["portrait truth female"] == {"accuracy": 0.0, "n": 1}
    assert scores["kind pair"] == {"accuracy": 1.0, "n": 1}
    assert scores["small height 10-15%"] == scores["small truth female"] == {"accuracy": 0.0, "n": 1}


def test_a_data_folder_without_held_out_photos_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(LookupError, match="no held-out faces"):
        heldout.build(tmp_path / "data", tmp_path / "out", per_kind=3, seed=7)
    assert not (tmp_path / "out").exists()


def test_pooled_runs_sum_photos_and_weight_accuracy_by_photos(tmp_path):
    files = []
    for i, (accuracy, n, speed) in enumerate(((0.9, 300, 30.0), (0.8, 100, 20.0))):
        scores = {"kind portrait": {"accuracy": accuracy, "n": n}}
        if i:  # a group only a later run has (a subgroup one seed's photos happen to include)
            scores["portrait race Black"] = {"accuracy": 0.5, "n": 2}
        run = {"model": "bundled", "photos": n, "systems": {"facesort": {"scores": scores, "photos_per_second": speed}}}
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(run))
    result = heldout.pooled(files)
    assert result["photos"] == 400
    assert result["systems"]["facesort"]["scores"]["kind portrait"] == {"accuracy": pytest.approx(0.875), "n": 400}
    assert result["systems"]["facesort"]["photos_per_second"] == pytest.approx(25.0)
    assert result["systems"]["facesort"]["scores"]["portrait race Black"] == {"accuracy": 0.5, "n": 2}


def test_real_photos_from_the_repo_and_installed_packages_are_there_and_decode(tmp_path):
    from sorter.images import load_image
    offline = {name: entry for name, entry in realphotos.PHOTOS.items() if not entry[0].startswith(("pypi", "npm"))}
    assert len(offline) >= 8
    for name, (source, path, kind, labels, _) in offline.items():
        target = tmp_path / name
        target.write_bytes(realphotos.photo_bytes(source, path, cache=None))
        assert min(load_image(target).size) >= 200, name
        assert labels in {"male", "female", "female;male", "neither"} and kind in {"portrait", "group", "no-face"}
