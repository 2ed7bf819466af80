"""--device (issue 15): which device runs, what the log says, `cuda` without CUDA, and the GPU paths' CPU fallbacks
(JPEG decoding on the GPU falls back to the CPU's way; a chunk's faces detected as one batch find what one by one
finds). No GPU here: `torch.cuda.is_available` is patched where a test needs to pretend."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import sorter.images as images
from sorter.device import DeviceUnavailable, resolve_device, training_device
from sorter.images import ImageError, load_image
from sorter.inference import Classifier, torch_threads

ASTRONAUT = Path(__file__).parent.parent / "data" / "sample" / "people" / "astronaut.jpg"


@pytest.fixture
def cuda(monkeypatch):
    """Pretend torch sees a GPU (True) or not (False); fastai asks for the current one's number even to discard it."""
    def pretend(seen):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: seen)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    return pretend


def test_auto_is_cuda_when_torch_sees_one_and_cpu_is_always_cpu(cuda, colour_model):
    cuda(True)
    assert [resolve_device(name) for name in ("auto", "cpu", "cuda")] == ["cuda", "cpu", "cuda"]
    assert Classifier(colour_model, device="auto").device == "cuda"  # resolved without loading the model
    cuda(False)
    assert [resolve_device(name) for name in ("auto", "cpu")] == ["cpu", "cpu"]
    with pytest.raises(DeviceUnavailable, match="sees no CUDA device here; use --device cpu or auto"):
        resolve_device("cuda")


@pytest.mark.parametrize("command", ["run", "predict", "evaluate", "review", "train", "serve"])
def test_cuda_without_cuda_is_one_line_and_exit_1(cli, cuda, colour_model, dataset, photos, tmp_path, command):
    cuda(False)
    args = {"run": ["run", photos, "--out", tmp_path / "out", "--model", colour_model],
            "predict": ["predict", photos / "male_0.jpg", "--model", colour_model],
            "evaluate": ["evaluate", dataset, "--model", colour_model],
            "review": ["review", dataset, "--model", colour_model, "--out", tmp_path / "review"],
            "train": ["train", dataset, "--model", tmp_path / "m.pkl"],
            "serve": ["serve", "--model", colour_model, "--port", "0"]}[command]
    result = cli(*args, "--device", "cuda")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1].startswith("facesort: error: --device cuda: torch ") and lines[-1].endswith("use --device cpu or auto")
    assert not any(line.startswith("facesort: error") for line in lines[:-1])


def test_an_unknown_device_is_a_usage_error(cli, photos, tmp_path):
    result = cli("run", photos, "--out", tmp_path / "out", "--device", "tpu")
    assert result.exit_code == 2 and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in result.output


@pytest.mark.parametrize("device, seen", [("auto", False), ("cpu", True)], ids=["auto-here", "cpu-asked"])
def test_the_run_log_names_the_device_really_used(cli, cuda, colour_model, photos, tmp_path, device, seen):
    cuda(seen)  # --device cpu is honoured even where a GPU is seen
    result = cli("run", photos, "--out", tmp_path / "out", "--model", colour_model, "--whole-image",
                 "--device", device)
    assert result.exit_code == 0, result.output
    assert any(line.endswith(" device cpu") for line in result.output.splitlines())
    assert "whole-image, device" not in result.output  # the model line no longer guesses


def test_training_device_sets_fastais_default_and_restores_it():
    from fastai.torch_core import default_device, defaults

    before = defaults.use_cuda
    with training_device("cpu"):
        assert default_device() == torch.device("cpu") and defaults.use_cuda is False
    assert defaults.use_cuda == before


def jpeg(size, orientation, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size[0])[None, :, None] + np.linspace(0, 50, size[1])[:, None, None]
    pixels = (ramp + rng.normal(0, 8, (size[1], size[0], 3))).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[images.ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("size, orientation", [((1600, 1200), 6), ((1200, 900), 1), ((640, 480), 3), ((400, 300), 8)])
def test_the_gpu_decoding_path_gives_what_the_cpu_gives(monkeypatch, size, orientation):
    """torchvision's decoding, run here on the CPU in place of the GPU: same size, frame and orientation, pixels
    within a few levels (draft()'s DCT scaling vs an antialiased resize)."""
    decode = images.decode_jpeg_on
    monkeypatch.setattr(images, "decode_jpeg_on", lambda data, o, f, device: decode(data, o, f, "cpu"))
    data = jpeg(size, orientation)
    cpu, gpu = load_image(io.BytesIO(data), 300), load_image(io.BytesIO(data), 300, device="cuda")
    assert gpu.size == cpu.size and gpu.info["full_size"] == cpu.info["full_size"] and gpu.mode == "RGB"
    assert np.abs(np.asarray(gpu, dtype=int) - np.asarray(cpu, dtype=int)).mean() < 4


def test_what_the_gpu_cannot_decode_goes_the_cpus_way_with_the_same_errors(monkeypatch, tmp_path):
    def refuse(*args):
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(images, "decode_jpeg_on", refuse)
    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg((640, 480), 6))
    assert np.array_equal(np.asarray(load_image(good, 300, device="cuda")), np.asarray(load_image(good, 300)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:2000])
    errors = []
    for device in ("cpu", "cuda"):
        with pytest.raises(ImageError) as e:
            load_image(bad, 300, device=device)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and errors[0].startswith("corrupt or truncated image")


def test_faces_of_equal_size_photos_found_as_one_batch_are_those_found_one_by_one():
    from sorter.faces import FaceFinder

    finder = FaceFinder()
    photo = load_image(ASTRONAUT)
    photos = [photo, ImageOps.mirror(photo), photo.resize((photo.width // 2, photo.height // 2))]
    with torch_threads(1):  # as runs detect: torch's own count spins against a busy machine's other work
        together = finder.find(photos)
        alone = [finder.find([p])[0] for p in photos]
    assert [len(f.boxes) for f in together] == [len(f.boxes) for f in alone] and len(together[0].boxes) >= 1
    for a, b in zip(together, alone):
        assert np.allclose(a.boxes, b.boxes, atol=1) and np.allclose(a.probs, b.probs, atol=1e-4)
