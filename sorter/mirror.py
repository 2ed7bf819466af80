"""The network as facesort runs it, averaged over each image and its mirror image."""
import torch
from torch import nn


class MirrorAveraged(nn.Module):
    """Test-time flip: the mean of the network's logits for each image and its mirror image.

    Deterministic, unlike `learn.tta`'s random augmentations, so a photo gets the same answer on every run; on the
    bundled model's validation crops it cut errors by an eighth and narrowed the men/women gap (models/README.md).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        both = self.model(torch.cat([x, x.flip(-1)]).contiguous(memory_format=torch.channels_last))
        return (both[:len(x)] + both[len(x):]) / 2
