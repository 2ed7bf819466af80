"""facesort train: labels from folders at any depth, the exported learner, the calibrated threshold."""
import json

from conftest import make_photo

from sorter.labels import folder_label, label_set
from sorter.training import metrics_path


def test_label_is_nearest_label_folder_at_any_depth(tmp_path):
    assert folder_label(tmp_path / "male" / "a.jpg") == "male"
    assert folder_label(tmp_path / "web" / "Female" / "2019" / "a.jpg") == "female"
    assert folder_label(tmp_path / "male" / "neither" / "a.jpg") == "neither"
    assert folder_label(tmp_path / "misc" / "a.jpg") is None
    assert label_set(tmp_path / "NEITHER" / "a.jpg") == []
    assert label_set(tmp_path / "x" / "female" / "a.jpg") == ["female"]


def test_train_exports_model_with_threshold_and_metrics(tiny_model):
    from fastai.learner import load_learner

    learn = load_learner(tiny_model, cpu=True)
    metrics = json.loads(metrics_path(tiny_model).read_text())
    assert list(learn.dls.vocab) == ["female", "male"]
    assert learn.loss_func.thresh == metrics["threshold"]
    assert 0.05 <= metrics["threshold"] <= 0.95
    assert set(metrics["predicted"]) == {"male", "female", "both", "neither"}
    assert sum(metrics["predicted"].values()) == metrics["valid_images"]
    for label in ("female", "male"):
        assert {"precision", "recall"} <= set(metrics[label])
    assert metrics["exact_match"] >= 0.8, metrics  # colours are easy: the model must really have learnt


def test_train_skips_unlabelled_images_with_a_count(tmp_path, cli, dataset):
    data = tmp_path / "data"
    for label in ("male", "female", "neither"):
        for i in range(4):
            make_photo(data / "deep" / label / f"{i}.jpg", label, seed=i)
    make_photo(data / "misc" / "x.jpg", "male")
    make_photo(data / "misc" / "y.jpg", "male")
    result = cli("train", data, "--model", tmp_path / "m.pkl", "--no-pretrained", "--size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--lr", "1e-3", "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    assert "skipped 2 images under no male/female/neither folder" in result.output
    assert (tmp_path / "m.pkl").exists()


def test_train_without_labelled_images_is_a_clear_error(tmp_path, cli):
    make_photo(tmp_path / "misc" / "x.jpg", "male")
    result = cli("train", tmp_path, "--model", tmp_path / "m.pkl", "--no-pretrained")
    assert result.exit_code == 1
    assert "no labelled images" in result.output
    assert "Traceback" not in result.output


def test_missing_pretrained_weights_say_how_to_get_them(tmp_path, cli, dataset, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = cli("train", dataset, "--model", tmp_path / "m.pkl", "--arch", "resnet34")
    assert result.exit_code == 1
    assert "no pretrained weights for resnet34" in result.output and "--no-pretrained" in result.output


def test_training_can_start_from_an_exported_model(tmp_path, cli, dataset, tiny_model):
    import torch
    from fastai.learner import load_learner

    model = tmp_path / "again.pkl"
    result = cli("train", dataset, "--model", model, "--init-from", tiny_model, "--arch", "resnet18",
                 "--no-pretrained", "--size", "32", "--epochs", "0", "--freeze-epochs", "0", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    started, original = (load_learner(m, cpu=True).model.state_dict() for m in (model, tiny_model))
    assert all(torch.equal(started[k], v) for k, v in original.items())  # no epochs: the weights it started from


def test_starting_from_a_model_of_another_architecture_is_a_clear_error(tmp_path, cli, dataset, tiny_model):
    result = cli("train", dataset, "--model", tmp_path / "m.pkl", "--init-from", tiny_model, "--arch", "mobilenet_v2",
                 "--no-pretrained", "--size", "32", "--epochs", "0", "--freeze-epochs", "0", "--lr", "1e-3")
    assert result.exit_code == 1
    assert "is not a mobilenet_v2" in result.output and "Traceback" not in result.output
