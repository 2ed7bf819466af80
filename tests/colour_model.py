"""A facesort model whose answers are fixed by construction: its logits come from the image's mean colour.

Plumbing tests need a model that gives the same answers on every CPU, not one trained here (a network trained from
scratch learnt the colours on one CPU and not on another). This one is a real fastai Learner on facesort's own
DataBlock, exported by `sorter.training.export` and run by `sorter.inference` (fused, channels-last,
mirror-averaged) like any model, but its weights are set, not learnt. The network is built from torch's own layers
only, so the exported file loads in any process (the CLI in a subprocess, a forkserver child, scripts/bench)
without tests/ on its path.
"""
import torch
from fastai.vision.all import BCEWithLogitsLossFlat, Learner, accuracy_multi
from torch import nn

from sorter.metrics import label_metrics
from sorter.training import TrainOptions, export, make_dataloaders, validation_preds

THRESHOLD = 0.5
SIZE = 32
# Logit of a label = GAIN * (its colour channel - the mean of the two others) + BIAS, channels in [0, 1]: the
# conftest colours (red female, blue male, green neither) score about +10 for their label and -4 or less otherwise.
GAIN, BIAS = 20.0, -2.0
CHANNEL = {"female": 0, "male": 2}  # red, blue: the rows follow the vocab (female, male)


def colour_net():
    """1x1 convolution + batch norm + global mean: a linear function of the mean colour, through the layers that
    inference fuses (the batch norm is the identity in eval mode, with statistics that fusing must fold in)."""
    conv, norm = nn.Conv2d(3, 2, kernel_size=1), nn.BatchNorm2d(2)
    weights = torch.full((2, 3), -GAIN / 2)
    for row, channel in enumerate(CHANNEL.values()):
        weights[row, channel] = GAIN
    with torch.no_grad():
        conv.weight.copy_(weights.view(2, 3, 1, 1))
        conv.bias.fill_(BIAS)
        norm.running_mean.fill_(1.0)
        norm.running_var.fill_(4.0 - norm.eps)  # (z - 1) / 2 * 2 + 1 = z
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
    return nn.Sequential(conv, norm, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def export_colour_model(items, model_path, size=SIZE):
    """Export the colour network as a facesort model over `items` (labelled images: its DataBlock and metrics)."""
    dls = make_dataloaders(items, TrainOptions(size=size, batch_size=8, workers=0))
    learn = Learner(dls, colour_net(), loss_func=BCEWithLogitsLossFlat(), metrics=accuracy_multi)
    probs, targets = validation_preds(learn)
    metrics = label_metrics(probs, targets, THRESHOLD)
    metrics.update(arch="colour", size=size, train_images=len(dls.train_ds), valid_images=len(dls.valid_ds))
    export(learn, model_path, THRESHOLD, metrics)
    return model_path
