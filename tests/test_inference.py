"""Classification as facesort runs it: the fused, mirror-averaged network and its batches."""
import copy

import numpy as np
import pytest
import torch
from PIL import ImageOps

from conftest import make_photo


def test_a_photo_and_its_mirror_image_get_the_same_probabilities(colour_model, tmp_path):
    from sorter.images import load_image
    from sorter.inference import Classifier

    photo = load_image(make_photo(tmp_path / "p.jpg", "male", size=(64, 48)))
    probs = Classifier(colour_model).probabilities([photo, ImageOps.mirror(photo)])
    assert probs[0] == pytest.approx(probs[1], abs=1e-5)


def test_batches_skip_the_augmentations_that_are_the_identity_outside_training_and_give_fastais_answer(
        colour_model, tmp_path):
    from fastai.vision.all import AffineCoordTfm
    from sorter.images import load_image
    from sorter.inference import Classifier, inference_batch_tfms

    classifier = Classifier(colour_model)
    learn = classifier.learn
    assert any(isinstance(t, AffineCoordTfm) for t in learn.dls.after_batch)  # the trained model has flips, zooms
    assert not any(isinstance(t, AffineCoordTfm) for t in inference_batch_tfms(learn.dls))
    photos = [load_image(make_photo(tmp_path / f"{label}.jpg", label, size=(64, 48))) for label in ("male", "female")]
    with torch.inference_mode(), learn.no_bar():
        fastais, _ = learn.get_preds(dl=learn.dls.test_dl(photos, num_workers=0))  # every batch transform
    assert classifier.probabilities(photos) == pytest.approx(fastais.numpy(), abs=1e-5)


def test_the_fast_model_computes_the_exported_model_averaged_over_the_mirror_image(colour_model):
    from sorter.inference import inference_model
    from sorter.model import load_model

    exported = load_model(colour_model)[0].model.eval()
    kept = copy.deepcopy(exported.state_dict())
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = (exported(x) + exported(x.flip(-1))) / 2
        assert inference_model(exported)(x) == pytest.approx(expected, abs=1e-4)
    assert all(torch.equal(kept[k], v) for k, v in exported.state_dict().items())  # exports stay unfused


def test_without_the_mirror_the_fast_model_computes_the_exported_model_alone():
    from sorter.inference import inference_model

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 2)).eval()  # reads where things are: not mirror-symmetric
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert inference_model(net, mirror=False)(x) == pytest.approx(net(x), abs=1e-5)
        assert (net(x) - net(x.flip(-1))).abs().max() > 1e-2


class ThreadsSeen(torch.nn.Module):
    """Records the torch threads each call ran with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return x.mean(dim=(2, 3))[:, :2]


def test_the_network_runs_with_the_models_threads_and_the_caller_keeps_its_own():
    from sorter.inference import torch_threads
    from sorter.mirror import MirrorAveraged

    net = ThreadsSeen()
    model = MirrorAveraged(net)
    with torch.inference_mode(), torch_threads(1):
        model(torch.zeros(2, 3, 4, 4))
        model.threads = 2
        model(torch.zeros(2, 3, 4, 4))
        assert torch.get_num_threads() == 1
    assert net.seen == [1, 2]


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_the_mirror_images_apart_in_two_threads_give_the_same_logits(mode):
    from sorter.inference import inference_model, torch_threads

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = inference_model(net)
    with (torch.inference_mode() if mode == "inference" else torch.no_grad()), torch_threads(2):
        together = model(x)
        model.apart = True
        apart = model(x)
        assert torch.get_num_threads() == 2  # the half it ran with is given back
    assert apart == pytest.approx(together, abs=1e-5) and not apart.requires_grad


class BranchingNet(torch.nn.Module):
    """A network torch.fx cannot trace: it branches on a tensor's value (always true, so batches do not matter)."""

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))[:, :2]
        return pooled * 2 if x.abs().sum() >= 0 else pooled


def test_a_network_that_cannot_be_fused_is_run_as_exported_and_still_mirror_averaged():
    from sorter.inference import inference_model

    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        net = BranchingNet()
        assert inference_model(net)(x) == pytest.approx((net(x) + net(x.flip(-1))) / 2, abs=1e-5)


def test_the_batch_size_option_defaults_to_the_library_batch_size():
    from sorter.commands.run import run
    from sorter.inference import BATCH_SIZE

    assert next(p for p in run.params if p.name == "batch_size").default == BATCH_SIZE


def test_images_prepared_on_other_threads_get_the_probabilities_of_the_whole_pipeline(colour_model, tmp_path):
    """facesort run --whole-image crops and resizes on its decoding threads (Classifier.prepare): same answer."""
    from sorter.images import load_image
    from sorter.inference import Classifier

    classifier = Classifier(colour_model)
    photos = [load_image(make_photo(tmp_path / f"{label}.jpg", label, size=(96, 64))) for label in ("male", "female")]
    prepared = [classifier.prepare(photo) for photo in photos]
    assert prepared[0].size == (classifier.size, classifier.size)
    assert classifier.probabilities(prepared, prepared=True) == pytest.approx(classifier.probabilities(photos),
                                                                              abs=1e-7)
    twice = np.asarray(classifier.prepare(prepared[0]), dtype=float)  # the centre crop again: prepared images
    assert np.abs(twice - np.asarray(prepared[0], dtype=float)).mean() > 1  # must not go through it twice

