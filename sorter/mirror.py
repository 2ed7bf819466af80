"""The network as facesort runs it, averaged over each image and its mirror image."""
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from .inference import torch_threads


class MirrorAveraged(nn.Module):
    """Test-time flip: the mean of the network's logits for each image and its mirror image.

    Deterministic, unlike `learn.tta`'s random augmentations, so a photo gets the same answer on every run; on the
    bundled model's validation crops it cut errors by an eighth and narrowed the men/women gap (models/README.md).

    With `apart` set, on a CPU with two or more torch threads, the images and their mirrors go through as two
    batches in two threads, each with half the threads: a small batch split across threads by torch (intra-op)
    spends about a quarter of its CPU keeping them in step, and two independent batches spend none (MobileNetV2 at 128
    px, batches of 16: 3.6-4.3 ms of wall time per image against 4.5-5.1; README). It does not pay for every
    network, so `sorter.inference.ModelThreads` measures both ways on a run's own photos and keeps the faster.

    A model trained with `--no-mirror` runs once per image, for half the work (an ensemble can keep the flip for
    one member: `sorter.ensemble.Member`).
    """

    def __init__(self, model, mirror=True):
        super().__init__()
        self.model, self.mirror = model, mirror  # mirror off: the network alone, with the threads set here
        self.apart = False
        self.threads = None  # torch threads for the network alone (None: the caller's), set by ModelThreads

    def forward(self, x):
        with torch_threads(self.threads or torch.get_num_threads()):
            if not self.mirror:
                return self._logits(x)
            if self.apart and not x.is_cuda and torch.get_num_threads() > 1:
                return self._apart(x)
            return mirror_mean(self._logits, x)

    def _logits(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))

    def _apart(self, x):
        threads = torch.get_num_threads()
        with ThreadPoolExecutor(1) as helper:  # torch's grad modes and thread counts are per thread: passed on
            mirrored = helper.submit(self._in_thread, x.flip(-1), threads // 2, torch.is_inference_mode_enabled(),
                                     torch.is_grad_enabled())
            with torch_threads(threads - threads // 2):
                logits = self._logits(x)
            return (logits + mirrored.result()) / 2

    def _in_thread(self, x, threads, inference, grad):
        torch.set_num_threads(threads)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return self._logits(x)


def mirror_mean(logits_of, x):
    """The mean of `logits_of` for each image and its mirror image, in one call on both (torch.fx's `fuse`, which
    traces through this, would fold the batch norms of a network called twice into it twice)."""
    return logits_of(torch.cat([x, x.flip(-1)])).unflatten(0, (2, -1)).mean(dim=0)
