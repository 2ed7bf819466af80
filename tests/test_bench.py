"""scripts/bench (issue 7): its synthetic photos, its measured run, its last three lines; the thread policy."""
import hashlib
import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sorter.images import load_image
from sorter.inference import ModelThreads, model_threads, torch_threads

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench"


@pytest.fixture(scope="module")
def bench():
    loader = importlib.machinery.SourceFileLoader("bench", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("bench", loader))
    loader.exec_module(module)
    return module


def test_model_gets_a_quarter_of_the_cpus_and_at_least_one_thread():
    assert [model_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 1, 4]


def test_the_model_gets_every_cpu_while_decoding_costs_less_than_classifying():
    threads = ModelThreads(cpus=8)
    assert threads.count == 2  # a quarter, until a chunk has been measured
    threads.update(decode_cpu=0.5, classify_seconds=1.0, images=100)  # small photos: 0.5 CPU s decoding, 2 classifying
    assert threads.count == 8
    threads.update(decode_cpu=3.0, classify_seconds=0.25, images=100)  # phone photos: decoding costs more
    assert threads.count == 2


@pytest.mark.parametrize("together, apart, kept", [(1.0, 0.8, True), (0.8, 1.0, False)])
def test_with_every_cpu_the_mirror_images_go_together_then_apart_and_the_faster_way_is_kept(together, apart, kept):
    threads, model = ModelThreads(cpus=2), torch.nn.Identity()

    def chunk(seconds, images=100):  # as a run does it: apply, classify (timed), update
        threads.apply(model)
        threads.update(decode_cpu=0.1, classify_seconds=seconds, images=images)

    with torch_threads(1):
        chunk(1.0)  # one thread: not a trial
        assert (threads.count, threads.apart, threads.per_image) == (2, False, {})
        chunk(0.1, images=ModelThreads.TRIAL_IMAGES - 1)  # too few images to time a way by
        chunk(together)
        assert threads.apart is True
        chunk(apart * 1.5, images=150)  # seconds per image compared
        assert threads.apart is kept
        chunk(9.0)  # measured once: one slow chunk changes nothing
        assert threads.apart is kept
        threads.apply(model)
        assert (model.threads, model.apart) == (2, kept)
        assert torch.get_num_threads() == 1  # the caller's own count: the batches' tensor work stays on one thread


def test_the_model_gets_every_cpu_while_no_photo_is_decoding():
    threads, model = ModelThreads(cpus=8), torch.nn.Identity()
    threads.apply(model, decoding=True)
    assert model.threads == 2  # a quarter: the decoding threads have the rest
    threads.apply(model, decoding=False)  # the last chunk, or the only one
    assert model.threads == 8
    threads.update(decode_cpu=0.5, classify_seconds=0.25, images=100)  # 2 CPU s at 8 threads: still cheap
    assert threads.count == 8


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_photos_are_distinct_files_with_exif_orientation_and_some_pngs(bench, tmp_path):
    bases = bench.base_photos((64, 48), 90, 11.0)
    total = bench.write_photos(tmp_path, 0, 2 * bench.PNG_EVERY, bases, bench.base_screenshot(size=(30, 60)))
    paths = bench.photo_paths(tmp_path, 1000)
    assert len(paths) == 2 * bench.PNG_EVERY and total == sum(p.stat().st_size for p in paths)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == len(paths)
    assert len({p.stat().st_ino for p in paths}) == len(paths)
    formats = [Image.open(p).format for p in paths]
    assert formats.count("PNG") == 2 and formats.count("JPEG") == len(paths) - 2
    orientations = {Image.open(p).getexif().get(0x0112) for p in paths if p.suffix == ".JPG"}
    assert {1, 6, 8, 3} <= orientations
    rotated = next(p for p in paths if p.suffix == ".JPG" and Image.open(p).getexif().get(0x0112) == 6)
    assert load_image(rotated).size == (48, 64)


def test_bench_runs_facesort_and_ends_with_the_ratios(colour_model, tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "3", "--memory-scale", "2", "--repeat", "1", "--predict-count", "2",
         "--seconds", "0.1", "--size", "64x48", "--modes", "whole", "--model", str(colour_model), "--tmp", str(tmp_path),
         "--rerun", "30"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("=")[0] for line in lines[-4:]] == ["ratio_run_vs_model", "ratio_run_vs_predict",
                                                           "memory_ratio", "ratio_run_vs_pipeline_whole_image"]
    assert all(float(line.split("=")[1]) > 0 for line in lines[-4:-1])
    assert any(line.startswith("(b) facesort run whole-image: 6 photos") for line in lines)
    stages = [line for line in lines if line.startswith("(d) ")]
    assert [s.split(":")[0].split(",")[0] for s in stages] == [
        "(d) read + copy + sha256", "(d) decode at draft scale (short side >= 32 px)",
        "(d) classifier on ready tensors", "(d) pipeline ceiling"]
    assert any(line.startswith("(e) nightly rerun, nothing changed: 30 files in") for line in lines)
    assert list(tmp_path.iterdir()) == []  # the temporary photos are gone


def test_the_survey_of_a_large_folder_says_how_far_it_got(cli, colour_model, photos, tmp_path, monkeypatch):
    import sorter.sorting

    monkeypatch.setattr(sorter.sorting, "SURVEY_PROGRESS", 3)
    result = cli("run", photos, "--out", tmp_path / "out", "--model", colour_model, "--whole-image")
    assert result.exit_code == 0
    assert [line.split(" ", 1)[1] for line in result.output.splitlines() if "so far" in line] == [
        "looked at 3 files so far, 3 to classify", "looked at 6 files so far, 6 to classify"]


def test_the_model_is_loaded_before_any_photo_is_decoded_and_detected(cli, colour_model, photos, tmp_path,
                                                                      monkeypatch):
    """Fusing the model traces it with torch.fx, which patches every module call meanwhile: an MTCNN network run
    in a decoding thread then failed. So the run loads the model first, and decodes (and detects) after."""
    import sorter.sorting
    from sorter.inference import Classifier

    loaded, decode_batch = [], sorter.sorting._decode_batch
    monkeypatch.setattr(Classifier, "load", lambda self, load=Classifier.load: loaded.append(1) or load(self))
    monkeypatch.setattr(sorter.sorting, "_decode_batch",
                        lambda *args: decode_batch(*args) if loaded else pytest.fail("decoded before the model loaded"))
    result = cli("run", photos, "--out", tmp_path / "out", "--model", colour_model, "--chunk-size", "2")
    assert result.exit_code == 0 and "sorted=7" in result.output.replace(" ", "")
