"""`facesort run --cluster`: photos decoded, detected and classified by Ray actors; all the rest stays in the driver.

The driver (the `facesort run` process) keeps what must be single: the lock, the survey, the commits and the
reports. Each worker is a Ray actor with one CPU that loads the model once, checked against the driver's sha256, and
turns chunks of photos into the rows a local run makes; the driver commits them in order, as a local run does.
Actors rather than Ray Data: the chunk is what the driver commits, so results must come back chunk by chunk, in
order, with the driver's back-pressure (a stopped run submits nothing more), and an actor is where a model loaded
once lives. An actor that dies (its node lost, the OOM killer) is restarted by Ray, which runs its chunks again: a
chunk's rows depend only on its photos, and nothing is placed before the driver commits them, so a photo is never
lost or placed twice. INPUT and the model must be at the same paths on every node (shared storage); the driver
alone writes OUT.
"""
import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from . import sorting
from .errors import FacesortError
from .faces import FaceFinder
from .inference import Classifier, torch_threads
from .prediction import decode_side

INSTALL = "pip install 'facesort[cluster]'"
IN_FLIGHT = 2  # chunks queued on each actor: one is classified while the driver commits the one before
RESTARTS = 3  # times Ray restarts a dead actor and reruns its chunk before the run stops
BUSY_EVERY = 10.0  # seconds between the log lines that say how many workers are busy
CONNECT_TIMEOUT = 10.0  # seconds to wait for a head given as host:port
# Ray starts its workers at nice 15: on a machine doing other work, a local cluster's workers then got 3-5% of a core
# each (a worker took minutes to import torch next to two busy loops); a local run's own work runs at nice 0
FAIR_WORKERS = ("RAY_worker_niceness", "0")


class RayMissing(FacesortError):
    """--cluster without the cluster extra installed: exit 1, with the pip line that installs it."""


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayMissing(f"--cluster needs Ray ({e}): {INSTALL}") from None
    return ray


@contextmanager
def connected(address):
    """Ray, connected to the cluster at `address` (`ray://head:10001`, `auto`, a head's `host:port`) or to a new
    local cluster of N worker CPUs (`local:N`, stopped afterwards); left as it was if this process was connected."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = address.startswith("local:")
    if not local and "://" not in address and address != "auto":
        _check_reachable(address)
    kwargs = dict(num_cpus=_local_cpus(address), include_dashboard=False) if local else dict(address=address)
    if local:
        os.environ.setdefault(*FAIR_WORKERS)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(**kwargs, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FacesortError(f"cannot connect to the Ray cluster at {address}: {_first_line(e)}") from None
    finally:
        for signum, handler in handlers.items():  # ray.init makes SIGTERM exit at once: a run stops after a chunk
            signal.signal(signum, handler)
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address):
    """Ray waits for ever for a head `host:port` that does not answer (a cron job would hang): say so at once."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as e:
        raise FacesortError(f"cannot reach the Ray cluster's head at {address}: {e}") from None


def _local_cpus(address):
    try:
        cpus = int(address.removeprefix("local:"))
    except ValueError:
        cpus = 0
    if cpus < 1:
        raise FacesortError(f"--cluster {address}: local:N needs a number of worker CPUs N of 1 or more")
    return cpus


def _plural(n, noun):
    return f"{n} {noun}{'s' * (n != 1)}"


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _last_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()


class Worker:
    """One actor's state: the model and the face detector, loaded once, and the run's options."""

    def __init__(self, model_path, threshold, sha256, opts, probe):
        host = socket.gethostname()
        if not os.path.exists(probe):
            raise FacesortError(f"worker on {host} cannot see {probe}: INPUT must be on storage every node reads, "
                                "at the same path")
        self.classifier = Classifier(model_path, threshold, opts.whole_image, "cpu")
        if self.classifier.sha256 != sha256:
            raise FacesortError(f"worker on {host}: {model_path} has sha256 {self.classifier.sha256[:12]}, not the "
                                f"driver's {sha256[:12]}: the model must be the same file on every node")
        self.classifier.load()
        self.finder = None if opts.whole_image else FaceFinder()
        self.min_side = decode_side(self.classifier, opts.whole_image)
        self.opts = opts

    def classify(self, chunk):
        return classify_chunk(chunk, self)


def classify_chunk(chunk, worker):
    """The result rows of one chunk, as a local run makes them; one CPU per actor, so one torch thread."""
    with torch_threads(1):
        paths, size = [job.path for job in chunk], sorting.DETECT_BATCH
        decoded = [item for i in range(0, len(paths), size)
                   for item in sorting._decode_batch(paths[i:i + size], worker.min_side, worker.finder,
                                                       prepare=sorting.preparer(worker.classifier, worker.opts))]
        return sorting._classify(chunk, decoded, worker.classifier, worker.finder, worker.opts)


def classify_chunks(jobs, classifier, opts, events):
    """Yield the result rows of each chunk of `jobs`, in order, as `sorting._classify_chunks` does locally."""
    chunks = [[replace(job, path=Path(os.path.abspath(job.path))) for job in jobs[i:i + opts.chunk_size]]
              for i in range(0, len(jobs), opts.chunk_size)]  # a worker's current folder is not the driver's
    with connected(opts.cluster) as ray:
        pool = Pool(ray, classifier, opts, chunks)
        events.log(f"cluster {opts.cluster}: {_plural(len(pool.actors), 'worker')} (1 CPU each) for "
                   f"{_plural(len(chunks), 'chunk')}")
        try:
            yield from pool.results(events)
        finally:
            pool.close()


class Pool:
    """Ray actors fed chunks round-robin, `IN_FLIGHT` at a time each, their results taken back in order."""

    def __init__(self, ray, classifier, opts, chunks):
        self.ray, self.chunks = ray, chunks
        cpus = int(ray.cluster_resources().get("CPU", 1))
        remote = ray.remote(num_cpus=1, max_restarts=RESTARTS, max_task_retries=RESTARTS)(Worker)
        args = (str(Path(classifier.path).absolute()), classifier.threshold, classifier.sha256, opts,
                str(chunks[0][0].path))
        self.actors = [remote.remote(*args) for _ in range(max(1, min(cpus, len(chunks))))]
        self.pending = {}  # chunk index -> (the actor's number, the ObjectRef of the chunk's rows)

    def results(self, events):
        submitted, logged = 0, time.monotonic()
        for index in range(len(self.chunks)):
            while submitted < min(len(self.chunks), index + IN_FLIGHT * len(self.actors)):
                number = submitted % len(self.actors)
                self.pending[submitted] = number, self.actors[number].classify.remote(self.chunks[submitted])
                submitted += 1
            if time.monotonic() - logged >= BUSY_EVERY:
                events.log(f"workers busy: {self.busy()}/{len(self.actors)}, chunk {index + 1}/{len(self.chunks)}")
                logged = time.monotonic()
            yield self._rows(index)

    def busy(self):
        """How many actors are classifying (or have queued) a chunk whose rows are not back yet."""
        refs = {ref: number for number, ref in self.pending.values()}
        _, running = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        return len({refs[ref] for ref in running})

    def _rows(self, index):
        _, ref = self.pending.pop(index)
        try:
            return self.ray.get(ref)
        except FacesortError as e:  # raised while classifying: Ray's copy of it carries the remote traceback
            raise FacesortError(_first_line(getattr(e, "cause", e))) from None
        except self.ray.exceptions.RayActorError as e:  # any other error is a bug: its traceback shows
            if e.actor_init_failed:  # Ray keeps only the text of the error: its last line
                raise FacesortError(_last_line(e).removeprefix(f"{FacesortError.__module__}.FacesortError: ")) from None
            raise FacesortError(f"a cluster worker died {RESTARTS + 1} times on chunk {index + 1}: {_last_line(e)}; "
                                "photos sorted so far are kept") from None

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor)
