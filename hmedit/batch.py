"""Rendering many scenes: find the jobs, skip the ones that are up to date, render the rest, report.

The pieces, in the order a batch uses them:

- :func:`prepare`: a scene file -> a :class:`~hmedit.jobs.Job` (planned on the driver by
  :func:`hmedit.jobs.plan_job`: validated scene, resolved model and preset, asset hashes, the up-to-date key).
  Cheap: no model is loaded, so a batch of finished scenes is checked in moments.
- :func:`up_to_date`: the job's ``render.json`` has the same key and every output it lists exists.
- :func:`render_job`: :func:`hmedit.jobs.run_job` (a function of the job, which a remote worker can call),
  then the outputs, each file atomically, ``render.json`` last, so that an interrupted scene has no key and
  is rendered again on the next run.
- :class:`Batch`: the loop over scene files; one failing scene is recorded and the batch goes on (unless
  ``fail_fast``); Ctrl-C stops it after the current file's temporary files are gone.
- :class:`Reporter`: what the batch tells its user, as structured data (the scene file, the error, its
  severity); the console's bars, problem lines and summary table are ``hmedit.cli.report``.
- :class:`Runner` and :func:`runner`: the one seam for running the jobs elsewhere (``--ray [ADDRESS]``: the
  workers of a Ray cluster, :mod:`hmedit.distributed`). The driver still plans every scene and skips the
  up-to-date ones; each worker calls :func:`work` on a job (the folder's lock, :func:`render_job`, what
  became of it as plain data) and the batch reports the outcomes as they come, in any order.

Output folder of a scene, ``OUT/<scene name>/``::

    image.png | image-<seed>.png   the render; PNG text "hmedit:scene" (the YAML) and "hmedit:settings"
    influence.safetensors          intrinsic/, effective/, attention/<id> maps of the first seed
    influence/<id>.png             heatmaps; influence.png: the contact sheet
    render.json                    provenance and the up-to-date key (see hmedit.provenance)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hmedit.errors import HmeditError
from hmedit.jobs import RENDER_JSON, Job, ModelCache, default_models, image_name, plan_job, run_job
from hmedit.scene.settings import Overrides

__all__ = [
    "RENDER_JSON",
    "Batch",
    "Job",
    "Options",
    "Outcome",
    "Reporter",
    "Result",
    "Runner",
    "exit_code",
    "image_name",
    "prepare",
    "read_record",
    "render_job",
    "runner",
    "up_to_date",
    "work",
]


# statuses of a Result
OK, SKIPPED, FAILED, INTERRUPTED, NOT_RUN = "ok", "skipped", "failed", "interrupted", "not run"


@dataclass
class Options:
    """What the command line sets for every scene of a batch (None: the scene's own value)."""

    out: Path = Path("out")
    model: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    preset: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention: bool = True
    force: bool = False
    fail_fast: bool = False
    cache_dir: Path | None = None  # learned embeddings (None: hmedit's cache folder, embeddings/)
    words: bool = False  # hmedit render --words: per-word attention maps of the first seed
    cuda: bool | None = None  # the workers have CUDA (None: as this process; a Runner says for its own)

    def overrides(self) -> Overrides:
        """The options that change a render."""
        return Overrides(
            self.seed, self.steps, self.guidance, self.scheduler, self.size, self.preset, self.attention
        )


@dataclass
class Result:
    """What became of one scene file."""

    file: Path
    name: str | None = None
    target: Path | None = None
    status: str = NOT_RUN
    seconds: float = 0.0
    images: dict[int, Path] = field(default_factory=dict)  # seed -> image file
    record: dict[str, Any] | None = None  # the render.json content
    error: str | None = None  # one line
    internal: bool = False  # the error was a bug, not a user mistake
    warnings: int = 0


# ------------------------------------------------------------------------------------------------
# Jobs and the up-to-date check


def prepare(
    file: Path,
    options: Options,
    *,
    claimed: dict[Path, Path] | None = None,
    on_warning: Callable[[HmeditError], None] | None = None,
) -> Job:
    """Validate a scene file and plan its render (:func:`hmedit.jobs.plan_job`); raises ``HmeditError`` for
    a problem. ``claimed``: output folders already written in this batch (two scenes with one name would
    overwrite each other)."""
    from hmedit.masks.checks import validate

    try:
        scene_bytes = file.read_bytes()
    except OSError as exc:
        raise HmeditError(f"cannot read the file: {exc.strerror or exc}", file=file) from None
    scene, diags = validate(file)
    for warning in diags.warnings:
        if on_warning is not None:
            on_warning(warning)
    diags.raise_if_errors()
    assert scene is not None and scene.name is not None

    target = options.out / scene.name
    if claimed is not None:
        key = Path(os.path.abspath(target))
        if key in claimed and claimed[key] != file:
            raise HmeditError(
                f"output folder {target} is already written by {claimed[key]} in this run",
                **scene.where("name"),
                hint="give one of the scenes another name: ...",
            )
        claimed[key] = file
    job = plan_job(
        scene,
        overrides=options.overrides(),
        model=options.model,
        device=options.device,
        dtype=options.dtype,
        file=file,
        scene_bytes=scene_bytes,
        cache_dir=options.cache_dir,
        cuda=options.cuda,
        words=options.words,
    )
    job.target = target
    return job


def read_record(folder: Path) -> dict[str, Any] | None:
    """The ``render.json`` in ``folder``, or None if there is none or it cannot be read (read without
    following links, size-capped: ``hmedit.outputs.folder.read_json``)."""
    from hmedit.outputs.folder import read_json

    data = read_json(folder, RENDER_JSON)
    return data if isinstance(data, dict) else None


def up_to_date(job: Job) -> dict[str, Any] | None:
    """The job's existing record if its key matches and every output it lists is there as the record's
    ``files`` describe it (a regular file inside the folder, same size and sha256), else None: a truncated
    output, or one another render wrote, is rendered again (``hmedit.outputs.folder.verify_outputs``)."""
    from hmedit.outputs.folder import verify_outputs

    rec = read_record(job.target)
    if rec is None or rec.get("key") != job.key or not verify_outputs(job.target, rec):
        return None
    return rec


# ------------------------------------------------------------------------------------------------
# Rendering one job


def render_job(
    job: Job,
    models: ModelCache | None = None,
    *,
    on_seed: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_learn: Callable[[str, int, int, float | None], None] | None = None,
) -> dict[str, Any]:
    """Run ``job`` (:func:`hmedit.jobs.run_job`) and write its outputs into ``target``; returns the record
    written to ``render.json``.

    The old ``render.json`` goes first and the new one comes last: until every output is written, the
    folder holds no key, so an interrupted or failed scene is rendered again by the next run. Outputs of
    an earlier render that this one does not write again (other seeds) are removed.
    """
    target = job.target
    assert target is not None
    old = read_record(target)
    with suppress(FileNotFoundError):
        (target / RENDER_JSON).unlink()
    out = run_job(job, models, on_seed=on_seed, on_step=on_step, on_learn=on_learn)
    rec = out.save(target, lock=False)  # the batch holds the folder's lock
    _remove_stale(target, old, out.outputs)
    return rec


def _remove_stale(target: Path, old: dict[str, Any] | None, outputs: Iterable[str]) -> None:
    """Delete what the previous render listed and this one did not write (image-<seed>.png of old seeds)."""
    from hmedit.outputs.folder import safe_unlink

    if not old or not isinstance(old.get("outputs"), list):
        return
    keep = set(outputs)
    for name in old["outputs"]:
        if str(name) in keep or str(name) == RENDER_JSON:
            continue
        safe_unlink(target, str(name))  # only a regular file inside target, never through a symlink


def remove_temp_files(folder: Path) -> None:
    """Temporary files this process left in ``folder`` (outputs.write cleans its own; this is the net).
    Those of dead processes go when the folder is next locked (``outputs.folder.lock_folder``)."""
    from hmedit.outputs.folder import remove_stale_temp

    remove_stale_temp(folder, pids=[os.getpid()])


# ------------------------------------------------------------------------------------------------
# One job on a worker


@dataclass
class Outcome:
    """What became of one job that ran elsewhere (a worker of a :class:`Runner`), as plain data so that it
    crosses processes: the status, the record written, or the error."""

    status: str  # OK, FAILED or INTERRUPTED
    seconds: float = 0.0
    record: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # a user mistake: HmeditError's fields (see error_data)
    internal: dict[str, str] | None = None  # a bug: {"type", "message", "traceback"}


def error_data(err: HmeditError) -> dict[str, Any]:
    """An ``HmeditError`` as plain data (problem, place, hint, the other errors), for :func:`error_from`."""
    loc = err.location
    return {
        "problem": err.problem,
        "file": None if loc.file is None else str(loc.file),
        "line": loc.line,
        "column": loc.column,
        "field": loc.field,
        "hint": err.hint,
        "others": [error_data(o) for o in getattr(err, "others", ())],
    }


def error_from(data: dict[str, Any]) -> HmeditError:
    """The ``HmeditError`` that :func:`error_data` described."""
    where = {k: data.get(k) for k in ("file", "line", "column", "field", "hint")}
    err = HmeditError(str(data["problem"]), **where)
    if data.get("others"):
        err.others = [error_from(o) for o in data["others"]]  # type: ignore[attr-defined]
    return err


def work(
    job: Job,
    models: ModelCache | None = None,
    *,
    stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
) -> Outcome:
    """Render one planned job where it runs (what a worker of a :class:`Runner` calls): hold the output
    folder's lock, :func:`render_job`, and say what became of it. Raises nothing: a user mistake, a bug and
    a stop all come back in the :class:`Outcome`, and a scene that did not finish leaves no temporary file
    and no ``render.json`` behind.

    ``stop()`` is asked before the render and at every seed and step; True stops it (status INTERRUPTED).
    ``on_step(seed index, i, n)``: progress.
    """
    from hmedit.outputs.folder import lock_folder

    start = time.perf_counter()
    outcome = Outcome(INTERRUPTED)

    def check(*_: Any) -> None:
        if stop is not None and stop():
            raise KeyboardInterrupt

    seed_index = [0]

    def seed(index: int, _seed: int) -> None:
        check()
        seed_index[0] = index

    def step(i: int, n: int) -> None:
        check()
        if on_step is not None:
            on_step(seed_index[0], i, n)

    assert job.target is not None
    lock = None
    try:
        check()
        lock = lock_folder(job.target)
        outcome.record = render_job(job, models, on_seed=seed, on_step=step, on_learn=check)
        outcome.status = OK
    except KeyboardInterrupt:
        outcome.status = INTERRUPTED
    except HmeditError as err:
        outcome.status, outcome.error = FAILED, error_data(err)
    except Exception as exc:  # a bug in one scene must not take the worker down
        import traceback

        outcome.status = FAILED
        outcome.internal = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc().rstrip(),
        }
    finally:
        if outcome.status != OK and lock is not None:
            remove_temp_files(job.target)
        if lock is not None:
            lock.release()
        outcome.seconds = round(time.perf_counter() - start, 3)
    return outcome


class RemoteError(Exception):
    """A bug met on a worker, rebuilt on the driver for :meth:`Reporter.internal` (its class name is the
    original exception's)."""


def internal_error(data: dict[str, str]) -> RemoteError:
    """The :class:`RemoteError` of an :class:`Outcome`'s ``internal`` data, named as the original was."""
    name = str(data.get("type") or "Exception")
    cls = type(name, (RemoteError,), {"__module__": __name__})
    return cls(str(data.get("message", "")))


# ------------------------------------------------------------------------------------------------
# The batch


class Reporter:
    """What a batch tells the user; every method may be left as is (silent). Presentation is the caller's:
    ``hmedit.cli.report.ConsoleReporter`` draws bars and prints each problem in one line."""

    def batch_started(self, total: int) -> None: ...

    def scene_started(self, file: Path) -> None: ...

    def loading(self, file: Path, model: str) -> None: ...

    def seed_started(self, file: Path, index: int, seed: int, count: int) -> None: ...

    def step(self, i: int, n: int) -> None: ...

    def learning(self, file: Path, node_id: str, i: int, n: int, loss: float | None) -> None: ...

    def scene_finished(self, result: Result) -> None: ...

    def problem(self, file: Path, error: HmeditError, severity: str = "error") -> None:
        """A user mistake in the scene ``file``: ``severity`` "error" (the scene failed) or "warning"."""

    def internal(self, file: Path, exc: BaseException, traceback: str | None = None) -> None:
        """A bug met while handling ``file`` (the scene failed, the batch goes on); ``traceback``: the
        formatted traceback when the batch runs with ``debug``, else None."""


class Runner:
    """Runs a batch's jobs somewhere else than in this process, several at once (:mod:`hmedit.distributed`:
    the workers of a Ray cluster). The :class:`Batch` plans every scene here and skips the up-to-date ones;
    the runner calls :func:`work` on each other job where it runs and hands back its :class:`Outcome`."""

    cuda: bool | None = None
    """Whether the workers render on CUDA (a batch's jobs are planned for their device), None: as here."""

    def run(
        self,
        jobs: Sequence[Job],
        *,
        started: Callable[[int], None],
        finished: Callable[[int, Outcome], bool],
        progress: Callable[[int, int, int, int], None] | None = None,
    ) -> None:
        """Run ``jobs``: ``started(i)`` when job ``i`` goes to a worker, ``finished(i, outcome)`` when it is
        done, in any order; once ``finished`` returns True no further job is started. ``progress(i, seed
        index, step, steps)``: now and then, where a running job is. On Ctrl-C
        (``KeyboardInterrupt``) no further job starts, the running ones are stopped (each removes its
        temporary files) and reported through ``finished``, and the ``KeyboardInterrupt`` goes on."""
        raise NotImplementedError


@contextmanager
def runner(address: str | None, *, device: str = "auto", cpus: int | None = None) -> Iterator[Runner | None]:
    """The runner for ``--ray [ADDRESS]`` (``""``: a new local cluster, or ``$RAY_ADDRESS``'s), started for
    the ``with`` block and stopped after it; ``address`` None: no runner (the batch renders here, one scene
    after another). ``device``: the batch's ``--device`` (auto: one worker per GPU when the cluster has
    GPUs, else per ``cpus`` CPUs). Ray is imported only here."""
    if address is None:
        yield None
        return
    from hmedit.distributed import RayRunner

    with RayRunner(address, device=device, cpus=cpus) as ray_runner:
        yield ray_runner


class Batch:
    """Render scene files one after another, or with a :class:`Runner`; see the module docstring."""

    def __init__(
        self,
        options: Options,
        reporter: Reporter | None = None,
        *,
        debug: bool = False,
        models: ModelCache | None = None,
        runner: Runner | None = None,
    ) -> None:
        from hmedit.models.load import pick_device

        if runner is not None:  # jobs are planned for the workers' device
            options = replace(options, cuda=runner.cuda)
        self.options = options
        self.reporter = reporter or Reporter()
        self.debug = debug
        self.runner = runner
        pick_device(options.device, options.dtype, cuda=options.cuda)  # a bad --device or --dtype fails all
        if options.preset is not None:  # and so does a bad --preset
            from hmedit.scene.presets import load_preset

            load_preset(options.preset, field="--preset")
        self.models = models if models is not None else default_models
        self.interrupted = False

    def run(self, files: Sequence[Path]) -> list[Result]:
        """Results in file order; files not reached (Ctrl-C, --fail-fast) are listed as "not run"."""
        from hmedit.outputs.folder import check_writable

        check_writable(self.options.out)  # a read-only, full or mistyped --out fails before the first scene
        claimed: dict[Path, Path] = {}
        results = [Result(Path(f)) for f in files]
        self.reporter.batch_started(len(files))
        if self.runner is not None:
            self._run_elsewhere(self.runner, results, claimed)
            return results
        for result in results:
            stop = self._one(result, claimed)
            self.reporter.scene_finished(result)
            if stop:
                break
        return results

    def _one(self, result: Result, claimed: dict[Path, Path]) -> bool:
        """Run one scene into ``result``; True when the batch must stop."""
        from hmedit.outputs.folder import lock_folder

        file, report = result.file, self.reporter
        report.scene_started(file)
        start = time.perf_counter()

        def warn(warning: HmeditError) -> None:
            result.warnings += 1
            report.problem(file, warning, "warning")

        lock = None  # the scene's output folder is ours alone from the up-to-date check to render.json
        try:
            job = prepare(file, self.options, claimed=claimed, on_warning=warn)
            result.name, result.target = job.scene.name, job.target
            lock = lock_folder(job.target)
            rec = None if self.options.force else up_to_date(job)
            if rec is not None:
                result.status = SKIPPED
            else:
                report.loading(file, job.model_ref.name)
                rec = render_job(
                    job,
                    self.models,
                    on_seed=lambda i, seed: report.seed_started(file, i, seed, len(job.seeds)),
                    on_step=report.step,
                    on_learn=lambda node, i, n, loss: report.learning(file, node, i, n, loss),
                )
                result.status = OK
            result.record = rec
            result.images = {s: job.target / image_name(s, job.seeds) for s in job.seeds}
        except KeyboardInterrupt:
            if result.target is not None:
                remove_temp_files(result.target)
            result.status, result.error = INTERRUPTED, "interrupted"
            self.interrupted = True
            return True
        except Exception as exc:  # a user mistake, or a bug in one scene: it must not stop the batch
            self._failed(result, exc)
        finally:
            if lock is not None:
                lock.release()
            result.seconds = round(time.perf_counter() - start, 3)
        if result.status == FAILED and result.target is not None:
            remove_temp_files(result.target)
        return result.status == FAILED and self.options.fail_fast

    def _failed(self, result: Result, exc: Exception, trace: str | None = None) -> None:
        """Record and report a scene that failed: a user mistake (``HmeditError``) or a bug (``trace``: its
        traceback when it was met elsewhere; shown with ``debug``)."""
        if isinstance(exc, HmeditError):
            self.reporter.problem(result.file, exc)
            result.status, result.error = FAILED, exc.problem
            return
        if self.debug and trace is None:
            import traceback

            trace = traceback.format_exc().rstrip()
        self.reporter.internal(result.file, exc, trace if self.debug else None)
        result.status, result.error, result.internal = FAILED, f"internal error: {type(exc).__name__}", True

    def _run_elsewhere(self, runner: Runner, results: list[Result], claimed: dict[Path, Path]) -> None:
        """Plan every scene here and skip the up-to-date ones, then let ``runner`` render the rest; results
        are reported as they come. The output folders are locked by the workers that write them."""
        report, options = self.reporter, self.options
        jobs: list[Job] = []
        waiting: list[Result] = []  # the result of each job
        clocks: list[float] = []
        try:
            for result in results:
                file = result.file
                start = time.perf_counter()

                def warn(warning: HmeditError, result: Result = result) -> None:
                    result.warnings += 1
                    report.problem(result.file, warning, "warning")

                try:
                    job = prepare(file, options, claimed=claimed, on_warning=warn)
                    result.name, result.target = job.scene.name, job.target
                    rec = None if options.force else up_to_date(job)
                except Exception as exc:
                    self._failed(result, exc)
                    rec = None
                if result.status == FAILED or rec is not None:
                    if rec is not None:
                        result.status, result.record = SKIPPED, rec
                        result.images = {s: job.target / image_name(s, job.seeds) for s in job.seeds}
                    result.seconds = round(time.perf_counter() - start, 3)
                    report.scene_finished(result)
                    if result.status == FAILED and options.fail_fast:
                        return
                    continue
                jobs.append(job)
                waiting.append(result)
                clocks.append(start)
        except KeyboardInterrupt:
            self.interrupted = True
            return
        if not jobs:
            return

        shown = {"job": -1, "seed": -1}  # the steps bar follows the job started last

        def started(i: int) -> None:
            clocks[i] = time.perf_counter()
            shown.update(job=i, seed=-1)
            report.scene_started(waiting[i].file)
            report.loading(waiting[i].file, jobs[i].model_ref.name)

        def progress(i: int, seed_index: int, step: int, steps: int) -> None:
            if i != shown["job"]:
                return
            if seed_index != shown["seed"]:
                shown["seed"] = seed_index
                seeds = jobs[i].seeds
                report.seed_started(waiting[i].file, seed_index, seeds[seed_index], len(seeds))
            report.step(step, steps)

        def finished(i: int, outcome: Outcome) -> bool:
            result, job = waiting[i], jobs[i]
            result.seconds = round(time.perf_counter() - clocks[i], 3)
            if outcome.status == OK:
                result.status, result.record = OK, outcome.record
                result.images = {s: job.target / image_name(s, job.seeds) for s in job.seeds}
            elif outcome.status == INTERRUPTED:
                result.status, result.error = INTERRUPTED, "interrupted"
            elif outcome.error is not None:
                self._failed(result, error_from(outcome.error))
            else:
                data = outcome.internal or {}
                trace = data.get("traceback") or "(no traceback came back from the worker)"
                self._failed(result, internal_error(data), trace)
            report.scene_finished(result)
            return result.status == FAILED and options.fail_fast

        try:
            runner.run(jobs, started=started, finished=finished, progress=progress)
        except KeyboardInterrupt:
            self.interrupted = True


def exit_code(results: Sequence[Result], interrupted: bool = False) -> int:
    """130 when interrupted; 2 if any scene failed for a user mistake; 1 if only bugs failed; else 0."""
    if interrupted:
        return 130
    failed = [r for r in results if r.status == FAILED]
    if any(not r.internal for r in failed):
        return 2
    return 1 if failed else 0
