"""Batches on a Ray cluster: ``hmedit render|check SCENES --ray [ADDRESS]`` (imported only then).

The driver (the ``hmedit`` process) plans every scene and skips the up-to-date ones
(:class:`hmedit.batch.Batch`); :class:`RayRunner` sends the other jobs to long-lived workers, one per GPU of
the cluster (``num_gpus=1``), or, on a cluster without GPUs (or ``--device cpu``), one per ``cpus`` CPUs.
Each worker is a Ray actor holding a :class:`hmedit.jobs.ModelCache`, so a model is loaded once per worker
and kept for every later job; it runs :func:`hmedit.batch.work` on each job, which writes the outputs
atomically into the output folder (shared by every node on a multi-machine cluster) and returns what became
of the scene as plain data. Jobs are handed out one at a time to the next free worker, so a slow scene holds
up no other.

Ctrl-C: no further job starts; the running ones are asked to stop at their next sampling step (each
removes its temporary files and writes no ``render.json``), and after :data:`STOP_WAIT` seconds, or at a
second Ctrl-C, their workers are killed and the temporary files they left on this machine removed.

Addresses: ``--ray`` alone starts a local cluster (or attaches to ``$RAY_ADDRESS`` when that is set);
``local`` always starts one; ``auto`` (the cluster of ``ray start`` on this machine), ``HOST:PORT`` and
``ray://HOST:PORT`` attach to a running one. Ray moves jobs and outcomes between processes with its own
(pickle-based) serialisation: attach only to clusters you trust, as Ray itself requires.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hmedit.batch import INTERRUPTED, Job, Outcome, Runner, work
from hmedit.errors import HmeditError

__all__ = ["INSTALL_HINT", "STOP_WAIT", "RayRunner", "import_ray", "is_address", "resolve_address"]

INSTALL_HINT = "install it with: pip install 'hmedit[ray]'"
STOP_WAIT = 30.0
"""Seconds that Ctrl-C waits for the running jobs to stop at a sampling step before their workers are
killed (a second Ctrl-C kills them at once)."""
POLL = 0.5  # seconds between looks at the running jobs' progress

_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}$")


def import_ray() -> Any:
    """The ``ray`` module, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise HmeditError("--ray needs Ray, which is not installed", hint=INSTALL_HINT) from None
    return ray


def is_address(word: str) -> bool:
    """Whether a word after ``--ray`` is a cluster address (``local``, ``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``) rather than a scene path."""
    return word in ("local", "auto") or bool(_ADDRESS.match(word))


def resolve_address(value: str, environ: dict[str, str] | None = None) -> str:
    """``--ray``'s value -> ``ray.init``'s address: "" (``--ray`` alone): ``$RAY_ADDRESS`` if set, else
    "local" (a new local cluster); anything else as given."""
    env = os.environ if environ is None else environ
    if value:
        return value
    return env.get("RAY_ADDRESS", "").strip() or "local"


class _Worker:
    """One long-lived worker (a Ray actor): its :class:`~hmedit.jobs.ModelCache` keeps every model it
    loaded for the next jobs. Threaded (``max_concurrency=2``), so that :meth:`stop` and :meth:`progress`
    answer while a job renders; the runner gives it one job at a time."""

    def __init__(self, threads: int | None = None) -> None:
        from hmedit.jobs import ModelCache

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.models = ModelCache()
        self._stopped: set[int] = set()
        self._progress: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def where(self) -> tuple[str, int]:
        """The machine and the process the worker runs in."""
        return socket.gethostname(), os.getpid()

    def render(self, job: Job, token: int) -> Outcome:
        self._progress = None
        try:
            return work(job, self.models, stop=lambda: token in self._stopped, on_step=self._step)
        finally:
            self._progress = None
            with self._lock:
                self._stopped.discard(token)

    def _step(self, seed_index: int, i: int, n: int) -> None:
        self._progress = (seed_index, i, n)

    def progress(self) -> tuple[int, int, int] | None:
        """(seed index, step, steps) of the running job, or None."""
        return self._progress

    def stop(self, token: int) -> None:
        """Stop job ``token`` at its next step (or before it starts)."""
        with self._lock:
            self._stopped.add(token)


@dataclass
class _Handle:
    actor: Any
    where: Any  # an ObjectRef of (host, pid)


_pool: dict[tuple, list[_Handle]] = {}
"""Idle workers kept for the next batch of this process, when the Ray connection is the caller's (a
``ray.init`` of their own: a notebook, the tests), by their resources."""


class RayRunner(Runner):
    """A :class:`~hmedit.batch.Runner` on a Ray cluster; use as a context manager (it connects on entry and,
    on exit, stops its workers and disconnects from a cluster it connected to). ``address``: as
    :func:`resolve_address` takes it; ``device``: the batch's ``--device``; ``cpus``: CPUs per worker
    without GPUs (default 1)."""

    def __init__(self, address: str = "", *, device: str = "auto", cpus: int | None = None) -> None:
        self.address = resolve_address(address)
        self.device = device
        self.cpus = cpus or 1
        self.workers = 0
        self._ray: Any = None
        self._connected = False  # ray.init was ours
        self._handles: list[_Handle] = []
        self._options: dict[str, Any] = {}
        self._tokens = itertools.count()

    # -- connection ---------------------------------------------------------------------------------

    def __enter__(self) -> RayRunner:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            self._connect(ray)
        try:
            self._plan_workers(ray)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        ray, handles, self._handles = self._ray, self._handles, []
        if ray is None or not ray.is_initialized():
            return
        if self._connected:
            for handle in handles:
                self._kill(handle)
            ray.shutdown()
            self._connected = False
        else:  # the connection is the caller's: keep the workers (and their models) for the next batch
            _pool.setdefault(self._pool_key(), []).extend(handles)

    def _connect(self, ray: Any) -> None:
        if _ADDRESS.match(self.address):  # Ray would retry an unreachable address for minutes, loudly
            _probe(self.address)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if self.address == "local":
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise HmeditError(
                f"cannot connect to the Ray cluster at '{self.address}': {message}",
                field="--ray",
                hint="start one with: ray start --head (then --ray auto), or use --ray alone for a local one",
            ) from None
        self._connected = True

    def _plan_workers(self, ray: Any) -> None:
        """How many workers, with which resources: one per GPU (``--device auto`` on a cluster with GPUs,
        or ``cuda``), else one per ``cpus`` CPUs."""
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        wants = self.device.split(":")[0]
        if wants == "cuda" and self.device != "cuda":
            raise HmeditError(
                f"--device {self.device} names one GPU; on Ray each worker has a GPU of its own",
                field="--device",
                hint="use --device cuda or auto",
            )
        if wants == "cuda" and not gpus:
            raise HmeditError(
                "--device cuda was asked for but the Ray cluster has no GPU",
                field="--device",
                hint="use auto",
            )
        if wants == "cuda" or (wants == "auto" and gpus):
            self.cuda = True
            self.workers = gpus
            self._options = {"num_gpus": 1, "num_cpus": 1}
            return
        self.cuda = False
        self.workers = cpus // self.cpus
        if self.workers < 1:
            raise HmeditError(
                f"the Ray cluster has {cpus} CPUs, fewer than the {self.cpus} each worker takes",
                field="--ray-cpus",
                hint=f"use --ray-cpus {max(cpus, 1)} or less",
            )
        self._options = {"num_cpus": self.cpus, "num_gpus": 0}

    def _pool_key(self) -> tuple:
        """Workers are shared by batches of one connection (a later ``ray.init`` has others) with the same
        resources."""
        job = self._ray.get_runtime_context().get_job_id()
        return (job, *sorted(self._options.items()))

    def _new_handle(self) -> _Handle:
        ray = self._ray
        threads = None if self.cuda else self.cpus
        cls = ray.remote(_Worker).options(max_concurrency=2, **self._options)
        actor = cls.remote(threads)
        return _Handle(actor, actor.where.remote())

    def _take_workers(self, count: int) -> list[_Handle]:
        """``count`` workers: this runner's, then idle ones kept from an earlier batch, then new ones."""
        pool = _pool.get(self._pool_key(), [])
        while len(self._handles) < count and pool:
            self._handles.append(pool.pop())
        while len(self._handles) < count:
            self._handles.append(self._new_handle())
        return list(self._handles[:count])

    def _kill(self, handle: _Handle, targets: Sequence[Path] = ()) -> None:
        """Kill a worker; the temporary files it left in ``targets`` go too, when it ran on this machine."""
        from hmedit.outputs.folder import pid_alive, remove_stale_temp

        ray = self._ray
        where = None
        if targets:
            try:
                where = ray.get(handle.where, timeout=5)
            except Exception:  # a worker that never started leaves nothing
                where = None
        with suppress(Exception):
            ray.kill(handle.actor, no_restart=True)
        if where is None or where[0] != socket.gethostname():
            return  # another machine's files go when their folder is next locked there
        deadline = time.monotonic() + 10
        while pid_alive(where[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for target in targets:
            remove_stale_temp(target, pids=[where[1]])

    # -- running ------------------------------------------------------------------------------------

    def run(
        self,
        jobs: Sequence[Job],
        *,
        started: Callable[[int], None],
        finished: Callable[[int, Outcome], bool],
        progress: Callable[[int, int, int, int], None] | None = None,
    ) -> None:
        ray = self._ray
        assert ray is not None, "use RayRunner as a context manager"
        pending = deque(range(len(jobs)))
        idle = self._take_workers(min(self.workers, len(jobs)))
        busy: dict[Any, tuple[int, _Handle, int]] = {}  # ObjectRef -> (job, worker, token)
        latest: Any = None
        stopping = False
        try:
            while busy or (pending and not stopping):
                while idle and pending and not stopping:
                    i, handle, token = pending.popleft(), idle.pop(0), next(self._tokens)
                    ref = handle.actor.render.remote(jobs[i], token)
                    busy[ref], latest = (i, handle, token), ref
                    started(i)
                ready, _ = ray.wait(list(busy), num_returns=1, timeout=POLL)
                for ref in ready:
                    i, handle, _token = busy.pop(ref)
                    outcome = self._outcome(ref)
                    if outcome is None:  # the worker died: the job failed, a new worker takes its place
                        outcome = self._died(ref)
                        self._handles.remove(handle)
                        handle = self._new_handle()
                        self._handles.append(handle)
                    idle.append(handle)
                    if finished(i, outcome):
                        stopping = True
                if progress is not None and latest in busy:
                    self._show(latest, busy[latest], progress)
        except KeyboardInterrupt:
            self._interrupt(jobs, busy, finished)
            raise

    def _outcome(self, ref: Any) -> Outcome | None:
        """The job's outcome, or None when its worker died."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayActorError:
            return None
        except self._ray.exceptions.RayError as exc:  # e.g. the job could not be unpacked on the worker
            return _failure(exc)

    def _died(self, ref: Any) -> Outcome:
        try:
            self._ray.get(ref)
        except Exception as exc:
            return _failure(exc, "the worker rendering it died")
        return _failure(RuntimeError(), "the worker rendering it died")  # pragma: no cover

    def _show(self, ref: Any, running: tuple[int, _Handle, int], progress: Callable) -> None:
        i, handle, _token = running
        try:
            where = self._ray.get(handle.actor.progress.remote(), timeout=POLL)
        except Exception:
            return
        if where is not None:
            progress(i, *where)

    def _interrupt(
        self, jobs: Sequence[Job], busy: dict[Any, tuple[int, _Handle, int]], finished: Callable
    ) -> None:
        """Ctrl-C: ask the running jobs to stop, wait up to STOP_WAIT seconds (a second Ctrl-C: not at all),
        then kill the workers of those still running."""
        ray = self._ray
        try:
            for _i, handle, token in busy.values():
                handle.actor.stop.remote(token)
            deadline = time.monotonic() + STOP_WAIT
            while busy and time.monotonic() < deadline:
                ready, _ = ray.wait(list(busy), num_returns=1, timeout=POLL)
                for ref in ready:
                    i, _handle, _token = busy.pop(ref)
                    finished(i, self._outcome(ref) or Outcome(INTERRUPTED))
        except KeyboardInterrupt:
            pass
        for i, handle, _token in list(busy.values()):
            self._handles.remove(handle)
            self._kill(handle, [jobs[i].target] if jobs[i].target is not None else [])
            finished(i, Outcome(INTERRUPTED))
        busy.clear()


def _probe(address: str, timeout: float = 5.0) -> None:
    """Raise the one-line error when nothing answers at ``[ray://]HOST:PORT``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise HmeditError(
            f"cannot connect to the Ray cluster at '{address}': {exc.strerror or exc}",
            field="--ray",
            hint="is the cluster up (ray start --head)? The address is the head's HOST:PORT",
        ) from None


def _failure(exc: BaseException, what: str | None = None) -> Outcome:
    """An Outcome for a job that Ray could not run (the worker died, the job could not be unpacked there):
    an internal error whose message is the first line of Ray's, or a user-facing one when hmedit is not
    importable on the worker."""
    from hmedit.batch import FAILED, error_data

    text = str(exc)
    if "No module named 'hmedit" in text:
        err = HmeditError(
            "a Ray worker cannot import hmedit",
            field="--ray",
            hint="install hmedit, the same version, on every node of the cluster",
        )
        return Outcome(FAILED, error=error_data(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    message = (f"{what}: " if what else "") + (lines[-1] if lines else type(exc).__name__)
    return Outcome(FAILED, internal={"type": type(exc).__name__, "message": message, "traceback": text})
