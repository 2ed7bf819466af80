"""facesort train: labels from folders at any depth, the exported learner, the calibrated threshold, small folders,
scratch files, the named lr_find phase."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import COLOURS, make_dataset, make_photo

from sorter.labels import folder_label, label_set
from sorter.training import metrics_path

# Enough epochs at a stable rate that the colours are learnt on any CPU: with 1 and 2 torch threads and seeds 1 and 2,
# validation exact match was 1.0 each time, and on 30 fresh photos true labels scored >= 0.95, false ones <= 0.24.
TRAINING = ["--no-pretrained", "--arch", "resnet18", "--size", "32", "--epochs", "8", "--freeze-epochs", "0",
            "--lr", "3e-3", "--batch-size", "8", "--seed", "1"]
QUICK = ["--no-pretrained", "--arch", "resnet18", "--size", "32", "--freeze-epochs", "0"]  # + --epochs, --lr


@pytest.fixture(scope="module")
def trained_model(dataset, tmp_path_factory):
    """A resnet18 trained from scratch on the colour photos through `facesort train`, once for this module."""
    from click.testing import CliRunner

    from sorter.cli import main

    model = tmp_path_factory.mktemp("trained") / "trained.pkl"
    result = CliRunner().invoke(main, ["train", str(dataset), "--model", str(model), *TRAINING])
    assert result.exit_code == 0, result.output
    return model


def test_label_is_nearest_label_folder_at_any_depth(tmp_path):
    assert folder_label(tmp_path / "male" / "a.jpg") == "male"
    assert folder_label(tmp_path / "web" / "Female" / "2019" / "a.jpg") == "female"
    assert folder_label(tmp_path / "male" / "neither" / "a.jpg") == "neither"
    assert folder_label(tmp_path / "misc" / "a.jpg") is None
    assert label_set(tmp_path / "NEITHER" / "a.jpg") == []
    assert label_set(tmp_path / "x" / "female" / "a.jpg") == ["female"]


def test_train_exports_model_with_threshold_and_metrics(trained_model):
    from fastai.learner import load_learner

    learn = load_learner(trained_model, cpu=True)
    metrics = json.loads(metrics_path(trained_model).read_text())
    assert list(learn.dls.vocab) == ["female", "male"]
    assert learn.loss_func.thresh == metrics["threshold"]
    assert 0.05 <= metrics["threshold"] <= 0.95
    assert set(metrics["predicted"]) == {"male", "female", "both", "neither"}
    assert sum(metrics["predicted"].values()) == metrics["valid_images"]
    for label in ("female", "male"):
        assert {"precision", "recall"} <= set(metrics[label])
    assert metrics["exact_match"] >= 0.9, metrics  # colours are easy: the model must really have learnt


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


def test_training_can_start_from_an_exported_model(tmp_path, cli, dataset, trained_model):
    import torch
    from fastai.learner import load_learner

    model = tmp_path / "again.pkl"
    result = cli("train", dataset, "--model", model, "--init-from", trained_model, "--arch", "resnet18",
                 "--no-pretrained", "--size", "32", "--epochs", "0", "--freeze-epochs", "0", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    started, original = (load_learner(m, cpu=True).model.state_dict() for m in (model, trained_model))
    assert all(torch.equal(started[k], v) for k, v in original.items())  # no epochs: the weights it started from


def test_starting_from_a_model_of_another_architecture_is_a_clear_error(tmp_path, cli, dataset, trained_model):
    result = cli("train", dataset, "--model", tmp_path / "m.pkl", "--init-from", trained_model,
                 "--arch", "mobilenet_v2", "--no-pretrained", "--size", "32", "--epochs", "0", "--freeze-epochs", "0", "--lr", "1e-3")
    assert result.exit_code == 1
    assert "is not a mobilenet_v2" in result.output and "Traceback" not in result.output


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Train from an empty working folder, with an empty temporary folder: what training leaves behind shows."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return cwd, tmp


def lr_find_scratch(tmp):
    return [name for name in os.listdir(tmp) if name.startswith("facesort-train-")]


def small_folder(root):
    """The folder that crashed lr_find: 29 images, fewer than a default batch of 64 in the training split."""
    for label, count in zip(COLOURS, (10, 10, 9)):
        for i in range(count):
            make_photo(root / label / f"{i}.jpg", label, seed=i)
    return root


def test_a_small_folder_trains_with_a_smaller_batch_and_leaves_no_scratch_files(tmp_path, cli, scratch, monkeypatch):
    monkeypatch.setattr("sorter.training.LR_FIND_BATCHES", 10)  # lr_find broke on the first batch: 10 show it
    model = tmp_path / "models" / "small.pkl"
    result = cli("train", small_folder(tmp_path / "data"), "--model", model, *QUICK, "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    assert "batch size 64 is more than the 24 training images: using 24" in result.output
    assert "finding a learning rate (lr_find: up to 10 batches)" in result.output and "(lr_find)" in result.output  # the cron log names it
    metrics = json.loads(result.stdout)
    assert metrics["train_images"] == 24 and math.isfinite(metrics["exact_match"]) and model.exists()
    assert os.listdir(scratch[0]) == lr_find_scratch(scratch[1]) == [], "training left scratch files behind"


def test_a_folder_too_small_to_train_and_validate_on_is_refused_with_one_line(tmp_path, cli):
    small = make_dataset(tmp_path / "data", per_label=1)  # 3 images: a 20% split validates on none
    result = cli("train", small, "--model", tmp_path / "m.pkl", *QUICK, "--epochs", "1", "--lr", "1e-3")
    assert result.exit_code == 1 and not (tmp_path / "m.pkl").exists()
    assert result.output == ("facesort: error: too few images to train and validate on: 3 for training and 0 for "
                             "validation (at least 2 and 1): add images or raise --valid-pct\n")


def test_a_model_whose_loss_is_not_finite_is_never_exported(tmp_path, cli, dataset, monkeypatch):
    from fastai.learner import Learner

    def diverge(learn, *args, **kwargs):
        for parameter in learn.model.parameters():
            parameter.data.fill_(math.nan)

    monkeypatch.setattr(Learner, "fit_one_cycle", diverge)
    model = tmp_path / "m.pkl"
    result = cli("train", dataset, "--model", model, *QUICK, "--epochs", "1", "--lr", "1e-3")
    assert result.exit_code == 1 and "the loss is not finite" in result.output and "Traceback" not in result.output
    assert not model.exists() and not metrics_path(model).exists()


def test_the_lr_find_phase_has_its_own_named_bar_and_scratch_folder(dataset, scratch, capsys):
    from fastai.vision.all import BCEWithLogitsLossFlat, Learner

    from colour_model import colour_net
    from sorter.training import TrainOptions, find_lr, make_dataloaders

    dls = make_dataloaders(sorted(dataset.rglob("*.jpg")), TrainOptions(size=32, batch_size=8, workers=0))
    learn = Learner(dls, colour_net(), loss_func=BCEWithLogitsLossFlat())
    home, lines = learn.path, []
    assert find_lr(learn, progress_bars=True, log=lines.append, iterations=20) > 0
    shown = capsys.readouterr().out
    assert lines == ["finding a learning rate (lr_find: up to 20 batches)"]
    assert "finding a learning rate |" in shown and "Epoch" not in shown, shown
    assert os.listdir(scratch[0]) == lr_find_scratch(scratch[1]) == [] and learn.path == home


def test_sigterm_stops_training_and_removes_its_scratch_files(tmp_path, scratch):
    env = dict(os.environ, TMPDIR=str(scratch[1]))
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sorter", "train", str(small_folder(tmp_path / "data")), "--model",
             str(tmp_path / "m.pkl"), *QUICK, "--epochs", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while not lr_find_scratch(scratch[1]):  # lr_find is under way, its scratch folder made
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143, log.read_text()
    finally:
        process.kill()
    assert os.listdir(scratch[0]) == lr_find_scratch(scratch[1]) == [] and not (tmp_path / "m.pkl").exists()


@pytest.mark.parametrize("weights", [(), (3.0, 1.0)])
def test_an_ensemble_averages_its_members_probabilities_each_at_its_own_side_and_normalisation(
        tmp_path, cli, dataset, trained_model, weights):
    """A resnet (ImageNet normalisation, 32 px) and the colour model (none, 48 px): on flat-colour images, which
    resizing and mirroring leave as they are, the ensemble's probabilities are the (weighted) mean of its members'."""
    import numpy as np
    from colour_model import export_colour_model
    from PIL import Image

    from sorter.inference import Classifier

    colour48 = export_colour_model(sorted(dataset.rglob("*.jpg")), tmp_path / "colour48.pkl", size=48)
    model = tmp_path / "ensemble.pkl"
    result = cli("train", dataset, "--model", model, "--ensemble", trained_model, "--ensemble", colour48,
                 *[arg for w in weights for arg in ("--weight", str(w))])
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path(model).read_text())
    assert (metrics["arch"], metrics["size"]) == ("ensemble", 48)
    assert [m["model"] for m in metrics["members"]] == [str(trained_model), str(colour48)]
    share = np.array(weights or (1.0, 1.0)) / sum(weights or (1.0, 1.0))
    assert [m["weight"] for m in metrics["members"]] == pytest.approx(share)
    images = [Image.new("RGB", (64, 48), colour) for colour in [*COLOURS.values(), (128, 128, 128), (200, 40, 200)]]
    members = [Classifier(m).probabilities(images) for m in (trained_model, colour48)]
    assert np.abs(members[0] - members[1]).max() > 0.05  # members that disagree, or the mean shows nothing
    expected = share[0] * members[0] + share[1] * members[1]
    np.testing.assert_allclose(Classifier(model).probabilities(images), expected, atol=1e-4)


def test_an_ensemble_given_epochs_fine_tunes_its_members_together_and_leaves_their_files(
        tmp_path, cli, dataset, trained_model):
    from sorter.hashing import sha256_of
    from sorter.model import load_model

    other = tmp_path / "other.pkl"
    shutil.copy(trained_model, other)
    before = [sha256_of(m) for m in (trained_model, other)]
    model = tmp_path / "tuned.pkl"
    result = cli("train", dataset, "--model", model, "--ensemble", trained_model, "--ensemble", other,
                 "--epochs", "1", "--lr", "1e-3", "--freeze-epochs", "1")
    assert result.exit_code == 0, result.output
    tuned = load_model(model)[0].model.members
    source = load_model(trained_model)[0].model.state_dict()
    moved = [max((member.net.state_dict()[k].float() - v.float()).abs().max().item() for k, v in source.items())
             for member in tuned]
    assert min(moved) > 0  # every member trained, the source models' files untouched
    assert [sha256_of(m) for m in (trained_model, other)] == before
    assert len(json.loads(metrics_path(model).read_text())["members"]) == 2


def test_training_from_an_ensemble_goes_on_training_that_ensemble(tmp_path, cli, dataset, trained_model):
    """--init-from the bundled kind of model, an ensemble, fine-tunes the ensemble itself (whatever --arch), rather
    than failing to fit its weights into a new MobileNetV2; the file it started from is left as it was."""
    from sorter.ensemble import Ensemble
    from sorter.hashing import sha256_of
    from sorter.model import load_model

    start = tmp_path / "ensemble.pkl"
    assert cli("train", dataset, "--model", start, "--ensemble", trained_model, "--ensemble", trained_model,
               "--weight", "3", "--weight", "1").exit_code == 0
    before = sha256_of(start)
    model = tmp_path / "more.pkl"
    result = cli("train", dataset, "--model", model, "--init-from", start, "--epochs", "1", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path(model).read_text())
    assert metrics["arch"] == "ensemble" and metrics["init_from"] == {"model": str(start), "sha256": before}
    tuned, source = (load_model(m)[0].model for m in (model, start))
    assert isinstance(tuned, Ensemble) and tuned.weights.flatten().tolist() == [0.75, 0.25]
    moved = [max((a.float() - b.float()).abs().max().item() for a, b in zip(t.state_dict().values(),
                                                                        s.state_dict().values()))
             for t, s in zip(tuned.members, source.members)]
    assert min(moved) > 0 and sha256_of(start) == before


def test_an_ensembles_female_offset_raises_every_faces_female_logit_by_that_much(tmp_path, cli, dataset):
    """--female-offset moves the female label's logit of every image alike (the male label's stays), is recorded in
    the metrics, and --threshold is stored as given instead of calibrated. The members are the colour model, whose
    logits are fixed; these greyish images keep both labels' probabilities far from 0 and 1, where float32 is exact
    enough to read a logit back."""
    import numpy as np
    from colour_model import export_colour_model
    from PIL import Image

    from sorter.inference import Classifier
    from sorter.model import ModelFile

    colour = export_colour_model(sorted(dataset.rglob("*.jpg")), tmp_path / "colour.pkl")
    plain, offset = tmp_path / "plain.pkl", tmp_path / "offset.pkl"
    for model, extra in ((plain, []), (offset, ["--female-offset", "0.7", "--threshold", "0.3"])):
        result = cli("train", dataset, "--model", model, "--ensemble", colour, "--ensemble", colour, *extra)
        assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path(offset).read_text())
    assert metrics["offsets"] == {"female": pytest.approx(0.7), "male": 0.0} and metrics["threshold"] == 0.3
    assert ModelFile(offset).settings["threshold"] == 0.3
    images = [Image.new("RGB", (64, 48), colour) for colour in [(128, 128, 128), (140, 128, 128), (128, 128, 140)]]
    logit = lambda p: np.log(p / (1 - p))
    before, after = (Classifier(m).probabilities(images).astype(np.float64) for m in (plain, offset))
    np.testing.assert_allclose(logit(after[:, 0]) - logit(before[:, 0]), 0.7, atol=1e-3)
    np.testing.assert_allclose(after[:, 1], before[:, 1], atol=1e-6)


def test_an_ensemble_calibrated_again_keeps_its_members_and_takes_a_new_offset(tmp_path, cli, dataset, trained_model):
    """--init-from an ensemble with --epochs 0 trains nothing: the members' weights are the start's, the offset is
    the start's unless --female-offset gives another."""
    import torch

    from sorter.model import load_model

    start, kept, moved = tmp_path / "start.pkl", tmp_path / "kept.pkl", tmp_path / "moved.pkl"
    assert cli("train", dataset, "--model", start, "--ensemble", trained_model, "--ensemble", trained_model,
               "--female-offset", "0.3").exit_code == 0
    for model, extra in ((kept, []), (moved, ["--female-offset", "-0.2"])):
        result = cli("train", dataset, "--model", model, "--init-from", start, "--epochs", "0", *extra)
        assert result.exit_code == 0, result.output
        assert "learning rate" not in result.output  # nothing trained, no lr_find
    source, *calibrated = (load_model(m)[0].model for m in (start, kept, moved))
    for model in calibrated:
        for name, value in source.members.state_dict().items():
            torch.testing.assert_close(model.members.state_dict()[name], value)
    assert [m.offsets_by_label()["female"] for m in calibrated] == pytest.approx([0.3, -0.2])


def test_a_female_offset_needs_an_ensemble(tmp_path, cli, dataset, trained_model):
    result = cli("train", dataset, "--model", tmp_path / "m.pkl", "--init-from", trained_model, *QUICK,
                 "--epochs", "0", "--female-offset", "0.2")
    assert result.exit_code == 1 and "--female-offset is stored by an ensemble" in result.output


def test_an_ensemble_trains_its_members_bodies_apart_from_their_heads(tmp_path, dataset, trained_model):
    """Fine-tuned together, the members' bodies and heads are two parameter groups, so fine_tune's discriminative
    rates reach each body as they would in the member's own learner; a member with no head (the colour model's last
    layer has no weights) leaves one group."""
    from colour_model import export_colour_model

    from sorter.ensemble import Ensemble, member_of, split
    from sorter.model import load_model

    resnet = load_model(trained_model)[0]
    net = resnet.model
    pair = Ensemble([member_of(resnet, 32), member_of(load_model(trained_model)[0], 32)])
    bodies, heads = split(pair)
    assert len(bodies) == 2 * len(list(net[0].parameters())) and len(heads) == 2 * len(list(net[1].parameters()))
    colour = load_model(export_colour_model(sorted(dataset.rglob("*.jpg")), tmp_path / "c.pkl"))[0]
    assert [len(group) for group in split(Ensemble([member_of(colour, 32)]))] == [4]


def test_a_model_trained_with_no_mirror_runs_each_image_once_and_a_mirror_member_is_flipped_alone(
        tmp_path, cli, dataset, trained_model):
    """Mirror-averaged (the default), a photo and its mirror image get the same probabilities; with --no-mirror,
    recorded in the model and its metrics, the network sees each image once, so on lopsided images they differ; a
    --mirror-member is averaged over the mirror image inside the ensemble, the others are not."""
    import numpy as np
    from PIL import Image, ImageOps

    from sorter.inference import Classifier

    once, one_flipped = tmp_path / "once.pkl", tmp_path / "one-flipped.pkl"
    for model, extra in [(once, []), (one_flipped, ["--mirror-member", "2"])]:
        result = cli("train", dataset, "--model", model, "--ensemble", trained_model, "--ensemble", trained_model,
                     "--no-mirror", *extra)
        assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_path(one_flipped).read_text())
    assert metrics["mirror"] is False and [m["mirror"] for m in metrics["members"]] == [False, True]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(4)]
    mirrored = [ImageOps.mirror(im) for im in images]
    averaged = Classifier(trained_model).probabilities(images)
    np.testing.assert_allclose(averaged, Classifier(trained_model).probabilities(mirrored), atol=1e-4)
    alone = Classifier(once).probabilities(images)
    assert np.abs(alone - Classifier(once).probabilities(mirrored)).max() > 1e-3
    np.testing.assert_allclose(Classifier(one_flipped).probabilities(images), (alone + averaged) / 2, atol=1e-4)


def test_a_mirror_member_must_be_one_of_the_ensembles_models(tmp_path, cli, dataset, trained_model):
    result = cli("train", dataset, "--model", tmp_path / "e.pkl", "--ensemble", trained_model, "--ensemble",
                 trained_model, "--mirror-member", "3")
    assert result.exit_code == 2 and "--mirror-member takes the number of an --ensemble model (2 given)" in result.output


@pytest.mark.parametrize("extra", [[], ["--init-from", "{m}"], ["--resume"]])
def test_an_ensemble_needs_two_models_and_no_training_options(tmp_path, cli, dataset, trained_model, extra):
    more = ["--ensemble", trained_model] if extra else []
    result = cli("train", dataset, "--model", tmp_path / "e.pkl", "--ensemble", trained_model, *more,
                 *[a.format(m=trained_model) for a in extra])
    assert result.exit_code == 2 and "--ensemble takes two or more models" in result.output


def test_an_ensemble_takes_one_weight_per_model(tmp_path, cli, dataset, trained_model):
    result = cli("train", dataset, "--model", tmp_path / "e.pkl", "--ensemble", trained_model, "--ensemble",
                 trained_model, "--weight", "1")
    assert result.exit_code == 2 and "--weight takes one weight for each --ensemble model" in result.output


def test_an_ensemble_exported_before_weights_and_offsets_loads_with_equal_ones_and_none():
    import pickle

    import torch

    from sorter.ensemble import Ensemble, Member

    net = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    members = [Member(net(), 8, (0.0,) * 3, (1.0,) * 3, 8) for _ in range(2)]  # (n, 2) logits, as a head gives
    old = Ensemble(members, [3.0, 1.0])
    del old._buffers["weights"], old._buffers["offsets"]  # as pickled before weights and offsets existed
    loaded = pickle.loads(pickle.dumps(old))
    x = torch.rand(1, 3, 8, 8)
    expected = torch.logit(torch.stack([torch.sigmoid(m(x)) for m in members]).mean(dim=0), eps=1e-6)
    torch.testing.assert_close(loaded(x), expected)
