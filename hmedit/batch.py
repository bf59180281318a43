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

Output folder of a scene, ``OUT/<scene name>/``::

    image.png | image-<seed>.png   the render; PNG text "hmedit:scene" (the YAML) and "hmedit:settings"
    influence.safetensors          intrinsic/, effective/, attention/<id> maps of the first seed
    influence/<id>.png             heatmaps; influence.png: the contact sheet
    render.json                    provenance and the up-to-date key (see hmedit.provenance)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
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
    "Reporter",
    "Result",
    "exit_code",
    "image_name",
    "prepare",
    "read_record",
    "render_job",
    "up_to_date",
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


class Batch:
    """Render scene files one after another; see the module docstring."""

    def __init__(
        self,
        options: Options,
        reporter: Reporter | None = None,
        *,
        debug: bool = False,
        models: ModelCache | None = None,
    ) -> None:
        from hmedit.models.load import pick_device

        self.options = options
        self.reporter = reporter or Reporter()
        self.debug = debug
        pick_device(options.device, options.dtype)  # a bad --device or --dtype fails the whole batch
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
        except HmeditError as err:
            report.problem(file, err)
            result.status, result.error = FAILED, err.problem
        except Exception as exc:  # a bug in one scene must not stop the batch
            trace = None
            if self.debug:
                import traceback

                trace = traceback.format_exc().rstrip()
            report.internal(file, exc, trace)
            result.status, result.error, result.internal = (
                FAILED,
                f"internal error: {type(exc).__name__}",
                True,
            )
        finally:
            if lock is not None:
                lock.release()
            result.seconds = round(time.perf_counter() - start, 3)
        if result.status == FAILED and result.target is not None:
            remove_temp_files(result.target)
        return result.status == FAILED and self.options.fail_fast


def exit_code(results: Sequence[Result], interrupted: bool = False) -> int:
    """130 when interrupted; 2 if any scene failed for a user mistake; 1 if only bugs failed; else 0."""
    if interrupted:
        return 130
    failed = [r for r in results if r.status == FAILED]
    if any(not r.internal for r in failed):
        return 2
    return 1 if failed else 0
