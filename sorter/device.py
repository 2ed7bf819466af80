"""Which device runs the networks: `--device auto|cpu|cuda`, auto being CUDA when torch sees it (whisper's rule).

torch is imported only to answer auto or cuda, so `--device cpu` and a night with nothing new stay light.
"""
from contextlib import contextmanager

from .errors import FacesortError

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(FacesortError):
    """`--device cuda` where torch sees no CUDA device: exit code 1."""


def resolve_device(name="auto"):
    """"cpu" or "cuda": the device `name` means on this machine; DeviceUnavailable for cuda without CUDA."""
    if name not in DEVICES:
        raise FacesortError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    if name == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceUnavailable(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA device here; "
                                "use --device cpu or auto")
    return "cpu"


def describe(device):
    """The device as the log names it: "cpu", or "cuda (NVIDIA H200)"."""
    if device != "cuda":
        return device
    import torch

    return f"cuda ({torch.cuda.get_device_name()})"


@contextmanager
def training_device(device):
    """Make fastai build its dataloaders and learner on `device` ("cpu" or "cuda"), restoring its default after."""
    from fastai.torch_core import defaults

    previous = defaults.use_cuda
    defaults.use_cuda = device == "cuda"
    try:
        yield
    finally:
        defaults.use_cuda = previous
