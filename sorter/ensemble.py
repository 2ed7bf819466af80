"""Several exported facesort models as one network: the mean of their probabilities, in one fastai Learner.

dlib's 32 px face network and a MobileNetV2 fine-tuned on 96 px face crops make different mistakes (the first
reads loose in-the-wild faces better, the second aligned crops, older people and children), and their mean is right
more often than either (models/README.md). Each member keeps its own input side and normalisation inside the
network, so the ensemble's DataLoaders only turn images into 0-1 tensors at the largest side, and the ensemble is
exported, loaded and run (fused, channels-last, mirror-averaged) like any facesort model.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .labels import VOCAB
from .mirror import mirror_mean

ARCH = "ensemble"  # the `arch` an ensemble's metrics and stored settings record
EPS = 1e-6  # probabilities are clamped this far from 0 and 1 before their logit is taken


class Member(nn.Module):
    """One model's network inside an ensemble: given 0-1 images at the ensemble's side, it resizes them to its own
    side (as its own DataLoaders would have) and normalises them its own way. A `mirror` member returns the mean of
    its logits for each image and its mirror image: in an ensemble run once (`--no-mirror`), the flip can be spent
    on the member it helps most rather than on all of them (models/README.md)."""

    def __init__(self, net, side, mean, std, input_side, mirror=False):
        super().__init__()
        self.net, self.side, self.resize = net, side, side != input_side  # fixed here: torch.fx traces no branch
        self.mirror = mirror
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def __setstate__(self, state):  # a member exported before members could be mirrored: not mirrored
        super().__setstate__(state)
        self.__dict__.setdefault("mirror", False)

    def forward(self, x):
        if self.resize:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return mirror_mean(self.net, x) if self.mirror else self.net(x)


class Ensemble(nn.Module):
    """The members' mean probability per label (weighted, when weights are given), returned as a logit, so the
    multi-label loss, the threshold and everything downstream treat the ensemble as one network. `offsets` are
    added to those logits, one per label (`set_offsets`: calibration that evens women's and men's error)."""

    def __init__(self, members, weights=None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self._set_weights(weights)
        self.set_offsets({})

    def __setstate__(self, state):  # an ensemble exported before members had weights or offsets: equal, none
        super().__setstate__(state)
        if "weights" not in self._buffers:
            self._set_weights(None)
        if "offsets" not in self._buffers:
            self.set_offsets({})

    def set_offsets(self, offsets):
        """Logit offsets by label, e.g. {"female": 0.2}: that label's probability rises for every image alike."""
        values = [float(offsets.get(label, 0.0)) for label in VOCAB]
        self.register_buffer("offsets", torch.tensor(values, dtype=torch.float32).reshape(1, -1))

    def offsets_by_label(self):
        """{label: logit offset}, as the metrics record them."""
        return dict(zip(VOCAB, self.offsets.flatten().tolist()))

    def _set_weights(self, weights):
        shares = torch.tensor(weight_shares(weights, len(self.members)), dtype=torch.float32)
        self.register_buffer("weights", shares.reshape(-1, 1, 1))

    def forward(self, x):
        probs = (torch.stack([torch.sigmoid(member(x)) for member in self.members]) * self.weights).sum(dim=0)
        return torch.logit(probs, eps=EPS) + self.offsets


def split(model):
    """Parameter groups for discriminative learning rates, as the members' own learners have them: every member's
    body (all but its last layer), then every member's head. In one group, an ImageNet body fine-tuned inside the
    ensemble moved at the heads' rate, a hundred times what its own learner gives it."""
    bodies = [p for member in model.members for p in member.net[:-1].parameters()]
    heads = [p for member in model.members for p in member.net[-1].parameters()]
    return [bodies, heads] if bodies and heads else [bodies + heads]


def weight_shares(weights, count):
    """Each member's share of the mean: the given weights scaled to sum to 1, or equal shares when none are given."""
    weights = list(weights) if weights else [1.0] * count
    return [w / sum(weights) for w in weights]


def member_of(learn, input_side, mirror=False):
    """A `Member` from an exported learner: its network, stored input side and its DataLoaders' Normalize."""
    from fastai.vision.all import Normalize

    norm = next((t for t in learn.dls.after_batch if isinstance(t, Normalize)), None)
    mean, std = (norm.mean.flatten(), norm.std.flatten()) if norm is not None else ((0.0,) * 3, (1.0,) * 3)
    return Member(learn.model.eval(), side_of(learn), mean, std, input_side, mirror)


def side_of(learn):
    """The input side an exported facesort learner was trained at."""
    from .model import DEFAULT_SIZE

    return getattr(learn, "facesort", {}).get("size", DEFAULT_SIZE)
