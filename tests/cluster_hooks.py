"""Runs in every Ray worker process of tests/test_cluster.py's cluster (its `worker_process_setup_hook`).

While the file named by FACESORT_TEST_KILL_ARMED exists, the first worker handed a chunk removes it and has Ray kill
its own actor (`ray.kill`, restart allowed) in the middle of that chunk, as a lost node or the OOM killer would.
"""
import os
import time

ARMED = "FACESORT_TEST_KILL_ARMED"


def setup():
    from sorter import cluster

    original = cluster.classify_chunk

    def classify_chunk(chunk, worker):
        try:
            os.unlink(os.environ[ARMED])  # one worker wins, once
        except (KeyError, FileNotFoundError):
            return original(chunk, worker)
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
        time.sleep(60)  # killed before this ends
        raise AssertionError("ray.kill did not kill the actor")

    cluster.classify_chunk = classify_chunk
