"""facesort run --cluster: Ray workers classify, with the same reports, copies and crash safety as a local run.

One local Ray cluster of 2 worker CPUs on 127.0.0.1 serves the whole module; runs in this process share its
connection (and its worker hook, tests/cluster_hooks.py, which can kill a worker mid-chunk), a run in another
process connects to it by address.
"""
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_photo
from test_nightly import (_facesort_process, _wait_stopped, assert_complete, assert_consistent, copies, make_input,
                          summary)

import cluster_hooks
from sorter import placement, sorting
from sorter.cluster import FAIR_WORKERS
from sorter.hashing import sha256_of
from sorter.report import read_rows

CHUNK = 2  # photos per chunk: 10 photos make 5 chunks, more than the 2 workers hold at once


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the cluster extra is not installed: pip install 'facesort[cluster]'")
    armed, sigterm = tmp_path_factory.mktemp("hooks") / "kill-armed", signal.getsignal(signal.SIGTERM)
    os.environ.setdefault(*FAIR_WORKERS)  # as `--cluster local:N` does: the workers compete fairly on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             object_store_memory=100 * 2**20, _node_ip_address="127.0.0.1",
             runtime_env={"worker_process_setup_hook": "cluster_hooks.setup",
                          "env_vars": {"PYTHONPATH": str(Path(__file__).parent), cluster_hooks.ARMED: str(armed)}})
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's would outlive the module
    try:
        yield SimpleNamespace(address=ray.get_runtime_context().gcs_address, armed=armed)
    finally:
        ray.shutdown()


@pytest.fixture
def sort(cli, colour_model):
    """`facesort run INPUT --out OUT --whole-image --chunk-size 2` with the colour model, in this process."""

    def invoke(input_dir, out, *args):
        return cli("run", input_dir, "--out", out, "--model", colour_model, "--whole-image", "--chunk-size", CHUNK,
                   *args)

    invoke.model = colour_model
    return invoke


def reports(out):
    """The rows of the latest run's CSV and of the cumulative CSV (file names, which hold the time, left out)."""
    return read_rows(max((out / "reports").glob("*.csv"))), read_rows(out / "facesort-report.csv")


def add_bad_files(folder):
    good = make_photo(folder / "whole.jpg", "male").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not a photo\n")


def test_cluster_without_ray_says_in_one_line_how_to_install_it(sort, photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    result = sort(photos, tmp_path / "out", "--cluster", "auto")
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("facesort: error: --cluster needs Ray") and line.endswith("pip install 'facesort[cluster]'")
    assert not (tmp_path / "out" / "male").exists()


def test_a_cluster_run_gives_the_local_reports_and_copies_even_when_a_worker_is_killed_mid_chunk(
        cluster, sort, tmp_path, monkeypatch):
    """Ray restarts the killed worker and reruns its chunk; nothing is placed before the driver commits a chunk, so
    no photo is lost or placed twice. Bad files fail with the same reasons."""
    input_dir = make_input(tmp_path / "in")
    add_bad_files(input_dir)
    local, clustered, placed = tmp_path / "local", tmp_path / "cluster", []
    assert sort(input_dir, local).exit_code == 3

    def counted(source, target, stat):
        placed.append(target)
        return placement.place_copy(source, target, stat)

    monkeypatch.setattr(sorting, "place_copy", counted)
    cluster.armed.touch()
    result = sort(input_dir, clustered, "--cluster", "auto")
    assert not cluster.armed.exists(), "no worker was killed"
    assert result.exit_code == 3, result.output
    assert "2 workers (1 CPU each) for 7 chunks" in result.output
    assert reports(clustered) == reports(local)
    assert {row["status"] for row in reports(clustered)[0]} == {"sorted", "error"}
    assert copies(clustered) == copies(local)
    assert sorted(placed) == sorted(clustered / folder / rel for folder, rel in copies(local))


def test_driver_killed_mid_run_then_an_incremental_rerun_gives_the_local_result(cluster, sort, colour_model,
                                                                                tmp_path):
    input_dir, out = make_input(tmp_path / "in"), tmp_path / "out"
    argv = ["run", str(input_dir), "--out", str(out), "--model", str(colour_model), "--whole-image", "--chunk-size",
            str(CHUNK), "--cluster", cluster.address]  # another process: it connects by the head's address
    process = multiprocessing.get_context("spawn").Process(  # not the forkserver test_nightly preloads for itself
        target=_facesort_process, args=(argv, tmp_path / "driver.log", ("sorter.state.State.record", 2)))
    process.start()
    _wait_stopped(process)  # 2 chunks recorded, others classified or in flight on the workers
    process.kill()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL
    assert_consistent(out, input_dir)
    [(_, recorded), *_] = sorted(copies(out))
    assert len(copies(out)) == 2 * CHUNK
    make_photo(input_dir / recorded, "neither", seed=7)  # changed since it was sorted
    make_photo(input_dir / "new.jpg", "neither", seed=8)

    rerun = sort(input_dir, out, "--cluster", "auto")
    assert rerun.exit_code == 0, rerun.output
    assert (summary(rerun)["new"], summary(rerun)["changed"], summary(rerun)["unchanged"]) == ("7", "1", "3")
    assert sort(input_dir, tmp_path / "local").exit_code == 0
    assert reports(out)[1] == reports(tmp_path / "local")[1]
    assert_complete(out, input_dir, copies(tmp_path / "local"))
    nothing_new = sort(input_dir, out, "--cluster", "auto")
    assert nothing_new.exit_code == 0 and "cluster auto:" not in nothing_new.output  # no worker started


def test_a_worker_whose_model_differs_from_the_drivers_stops_the_run_in_one_line(cluster, sort, photos, tmp_path,
                                                                                 monkeypatch):
    from sorter.inference import Classifier

    opened = Classifier.__init__

    def another_file(self, *args):  # as if the driver's node held another file at the model's path
        opened(self, *args)
        self.sha256 = "0" * 64

    monkeypatch.setattr(Classifier, "__init__", another_file)
    result = sort(photos, tmp_path / "out", "--cluster", "auto")
    assert result.exit_code == 1
    # facesort's error is one line (Ray prints its own about the workers that refused)
    [error] = [line for line in result.output.splitlines() if line.startswith("facesort: error:")]
    assert error.endswith(f"has sha256 {sha256_of(sort.model)[:12]}, not the driver's 000000000000: the model must "
                          "be the same file on every node")
    assert not list((tmp_path / "out").glob("*/*.jpg"))
