"""Rendering many scenes: find the jobs, skip the ones that are up to date, render the rest, report.

The pieces, in the order a batch uses them:

- :func:`prepare`: a scene file -> a :class:`Job` (validated scene, resolved model, asset hashes, the
  up-to-date key). Cheap: no model is loaded, so a batch of finished scenes is checked in moments.
- :func:`up_to_date`: the job's ``render.json`` has the same key and every output it lists exists.
- :func:`render_job`: render every seed and write the outputs, each file atomically, ``render.json`` last,
  so that an interrupted scene has no key and is rendered again on the next run.
- :class:`Batch`: the loop over scene files; one failing scene is recorded and the batch goes on (unless
  ``fail_fast``); Ctrl-C stops it after the current file's temporary files are gone.
- :class:`ConsoleReporter` and :func:`print_summary`: the progress bars and the summary table.

Output folder of a scene, ``OUT/<scene name>/``::

    image.png | image-<seed>.png   the render; PNG text "hmedit:scene" (the YAML) and "hmedit:settings"
    influence.safetensors          intrinsic/, effective/, attention/<id> maps of the first seed
    influence/<id>.png             heatmaps; influence.png: the contact sheet
    render.json                    provenance and the up-to-date key (see hmedit.provenance)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmedit import provenance
from hmedit.errors import HmeditError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.text import Text

    from hmedit.models.load import Model, ModelRef
    from hmedit.scene import Scene

__all__ = [
    "RENDER_JSON",
    "Batch",
    "ConsoleReporter",
    "Job",
    "Models",
    "Options",
    "Reporter",
    "Result",
    "exit_code",
    "image_name",
    "prepare",
    "print_summary",
    "read_record",
    "render_job",
    "up_to_date",
]

RENDER_JSON = "render.json"

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
    device: str = "auto"
    dtype: str = "auto"
    attention: bool = True
    force: bool = False
    fail_fast: bool = False
    cache_dir: Path | None = None  # learned embeddings (None: hmedit's cache folder, embeddings/)

    def overrides(self) -> dict[str, Any]:
        """The options that change a render, for the provenance."""
        return {
            "model": self.model,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "scheduler": self.scheduler,
            "size": list(self.size) if self.size else None,
            "record_attention": None if self.attention else False,
        }


@dataclass
class Job:
    """One scene, ready to render: everything known before a model is loaded."""

    file: Path
    scene: Scene
    scene_bytes: bytes
    target: Path
    model_ref: ModelRef
    model_hash: str
    seeds: list[int]
    assets: dict[str, dict[str, str]]  # field path -> {"path", "sha256"}
    key_settings: list[dict[str, Any]]
    device: str
    dtype: str
    key: str


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


def image_name(seed: int, seeds: Sequence[int]) -> str:
    """``image.png`` for a scene with one seed, ``image-<seed>.png`` for each of several."""
    return "image.png" if len(seeds) == 1 else f"image-{seed}.png"


# ------------------------------------------------------------------------------------------------
# Jobs and the up-to-date check


def _key_settings(scene: Scene, seed: int, options: Options) -> dict[str, Any]:
    """The settings of one seed after defaults and overrides, as ``render.Settings.of`` will make them;
    a size left to the model (its native size) is None, which the model hash pins."""
    size = options.size or scene.size
    return {
        "seed": int(seed),
        "size": list(size) if size else None,
        "steps": int(options.steps or scene.steps),
        "guidance": float(scene.guidance if options.guidance is None else options.guidance),
        "scheduler": options.scheduler or scene.scheduler,
        "record_attention": bool(options.attention),
    }


def prepare(
    file: Path,
    options: Options,
    *,
    device: str,
    dtype: str,
    claimed: dict[Path, Path] | None = None,
    on_warning: Callable[[HmeditError], None] | None = None,
) -> Job:
    """Validate a scene file and gather what its render depends on; raises ``HmeditError`` for a problem.

    ``device`` / ``dtype``: as resolved for the batch (``"cpu"``, ``"float32"``). ``claimed``: output
    folders already written in this batch (two scenes with one name would overwrite each other).
    """
    from hmedit.models.load import model_hash, resolve
    from hmedit.scene import validate

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

    if options.model is not None:  # a command-line path is relative to the working folder
        ref = resolve(options.model)
    else:  # a scene's path is relative to the scene's folder
        try:
            ref = resolve(scene.model, base_dir=scene.base_dir)
        except HmeditError as err:
            if err.location.file is None:  # point at the scene's model key, or name the file (default)
                given = "model" in scene.model_fields_set
                where = scene.where("model") if given else {"file": scene.source, "field": "model"}
                err = HmeditError(err.problem, **where, hint=err.hint)
            raise err from None
    digest = model_hash(ref)

    assets = {}
    for where, path in provenance.asset_paths(scene).items():
        try:
            assets[where] = {"path": str(path), "sha256": provenance.file_sha256(path)}
        except OSError as exc:
            raise HmeditError(f"cannot read {path}: {exc.strerror or exc}", **scene.where(where)) from None
    seeds = [options.seed] if options.seed is not None else scene.seed_list
    key_settings = [_key_settings(scene, seed, options) for seed in seeds]
    key = provenance.render_key(
        scene_bytes=scene_bytes,
        assets={k: v["sha256"] for k, v in assets.items()},
        model_hash=digest,
        settings=key_settings,
        device=device,
        dtype=dtype,
    )
    return Job(file, scene, scene_bytes, target, ref, digest, seeds, assets, key_settings, device, dtype, key)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The ``render.json`` in ``folder``, or None if there is none or it cannot be read."""
    try:
        data = json.loads((folder / RENDER_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if it stays inside ``folder`` (a record is data from disk: trust it little);
    see ``hmedit.outputs.folder.inside`` (lexical: no absolute name, no '..')."""
    from hmedit.outputs.folder import inside

    return inside(folder, relative)


def up_to_date(job: Job) -> dict[str, Any] | None:
    """The job's existing record if its key matches and every output it lists is there as the record's
    ``files`` describe it (a regular file inside the folder, same size and sha256), else None: a truncated
    output, or one another render wrote, is rendered again (``hmedit.outputs.folder.verify_outputs``)."""
    from hmedit.outputs.folder import read_json, verify_outputs

    rec = read_json(job.target, RENDER_JSON)
    if not isinstance(rec, dict) or rec.get("key") != job.key or not verify_outputs(job.target, rec):
        return None
    return rec


# ------------------------------------------------------------------------------------------------
# Rendering one job


class Models:
    """Loaded models, each loaded once per batch (by place on disk, device and dtype); a model that failed
    to load fails again at once for the next scene that names it."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device, self.dtype = device, dtype
        self._loaded: dict[tuple, Model | HmeditError] = {}

    def get(self, ref: ModelRef) -> tuple[Model, float]:
        """The model and the seconds spent loading it now (0 when it was loaded before)."""
        from hmedit.models.load import load

        key = (str(ref.path), ref.source, self.device, self.dtype)
        if key not in self._loaded:
            start = time.perf_counter()
            try:
                self._loaded[key] = load(ref, device=self.device, dtype=self.dtype)
            except HmeditError as err:
                self._loaded[key] = err
                raise
            return self._loaded[key], round(time.perf_counter() - start, 4)  # type: ignore[return-value]
        got = self._loaded[key]
        if isinstance(got, HmeditError):
            raise got
        return got, 0.0


def _png_text(job: Job, settings: Any) -> dict[str, str]:
    return {
        "hmedit:scene": job.scene_bytes.decode("utf-8", errors="replace"),
        "hmedit:settings": json.dumps(asdict(settings), sort_keys=True),
        "hmedit:model": json.dumps({"name": job.model_ref.name, "hash": job.model_hash}, sort_keys=True),
        "Software": f"hmedit {provenance.versions()['hmedit']}",
    }


def render_job(
    job: Job,
    models: Models,
    options: Options,
    *,
    on_seed: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_learn: Callable[[str, int, int, float | None], None] | None = None,
) -> dict[str, Any]:
    """Render every seed of ``job`` and write its outputs; returns the record written to ``render.json``.

    Nodes with ``learn`` / ``embedding`` get their tokens first (learned ones from the cache, or learned
    now: ``on_learn(node_id, i, n, loss)`` reports the steps), and the model renders the scene with its
    prompts rewritten to use them.

    The old ``render.json`` goes first and the new one comes last: until every output is written, the
    folder holds no key, so an interrupted or failed scene is rendered again by the next run. Outputs of
    an earlier render that this one does not write again (other seeds) are removed.
    """
    import hmedit.render as R
    from hmedit.conditioning.tokens import install_tokens, needs_tokens
    from hmedit.outputs import save_json, save_png, write_influence

    start = time.perf_counter()
    model, load_seconds = models.get(job.model_ref)
    scene, target = job.scene, job.target
    old = read_record(target)
    with suppress(FileNotFoundError):
        (target / RENDER_JSON).unlink()

    tokens = None
    learn_clock = time.perf_counter()
    if needs_tokens(scene):
        tokens = install_tokens(scene, model, cache_dir=options.cache_dir, progress=on_learn)
    learn_seconds = round(time.perf_counter() - learn_clock, 4)
    model_scene = tokens.apply(scene) if tokens is not None else scene

    flats = scene.flat()
    ids = [f.node.id for f in flats]
    outputs: list[str] = []
    all_settings = []
    per_seed: dict[str, dict[str, float]] = {}
    for index, seed in enumerate(job.seeds):
        settings = R.Settings.of(
            scene,
            model,
            seed,
            steps=options.steps,
            guidance=options.guidance,
            scheduler=options.scheduler,
            size=options.size,
            record=options.attention,
        )
        if on_seed is not None:
            on_seed(index, seed)
        result = R.render(model_scene, model, settings, progress=on_step)
        clock = time.perf_counter()
        name = image_name(seed, job.seeds)
        save_png(target / name, result.image, _png_text(job, settings))
        outputs.append(name)
        if index == 0:
            w, h = settings.width, settings.height
            files = write_influence(
                target,
                ids,
                result.maps,
                nodes=flats,
                base_image=result.image,
                metadata={
                    "scene": str(job.file),
                    "name": str(scene.name),
                    "composition": scene.composition,
                    "depth_gamma": f"{scene.depth_gamma:g}",
                    "size": f"{w}x{h}",
                    "seed": str(seed),
                    "model": job.model_hash,
                },
                title=f"{scene.name}: {scene.composition}, {w}x{h}, seed {seed}",
            )
            outputs += ["influence.safetensors", "influence.png"]
            outputs += [p.relative_to(target).as_posix() for p in files.heatmaps.values()]
        timings = dict(result.timings)
        timings["write"] = round(time.perf_counter() - clock, 4)
        per_seed[str(seed)] = timings
        all_settings.append(settings)

    _remove_stale(target, old, outputs)
    rec = provenance.record(
        key=job.key,
        scene=scene,
        scene_file=job.file,
        scene_bytes=job.scene_bytes,
        assets=job.assets,
        model=model.describe(),
        device=job.device,
        dtype=job.dtype,
        settings=all_settings,
        key_settings=job.key_settings,
        overrides=options.overrides(),
        timings={
            "load": load_seconds,
            **({"tokens": learn_seconds} if tokens is not None else {}),
            "seeds": per_seed,
            "total": round(time.perf_counter() - start, 4),
        },
        outputs=outputs,
        embeddings=tokens.describe() if tokens is not None else None,
    )
    save_json(target / RENDER_JSON, rec)
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
    """What a batch tells the user; every method may be left as is (silent)."""

    def batch_started(self, total: int) -> None: ...

    def scene_started(self, file: Path) -> None: ...

    def loading(self, file: Path, model: str) -> None: ...

    def seed_started(self, file: Path, index: int, seed: int, count: int) -> None: ...

    def step(self, i: int, n: int) -> None: ...

    def learning(self, file: Path, node_id: str, i: int, n: int, loss: float | None) -> None: ...

    def scene_finished(self, result: Result) -> None: ...

    def problem(self, line: Text | str) -> None: ...


def _error_line(err: HmeditError, file: Path, severity: str = "error") -> Text:
    """One line for a scene's problem; names the scene file when the error itself names no file."""
    from rich.text import Text

    from hmedit.cli.options import problem_line

    if err.location.file is not None:
        line = problem_line(err, severity)
    else:
        style = "bold red" if severity == "error" else "bold yellow"
        line = Text.assemble((f"{severity}: ", style), f"{file}: ", err.format())
    others = len(getattr(err, "others", ()))
    if others:
        line.append(f" (+{others} more: run hmedit validate {file})")
    return line


class Batch:
    """Render scene files one after another; see the module docstring."""

    def __init__(self, options: Options, reporter: Reporter | None = None, *, debug: bool = False) -> None:
        from hmedit.models.load import pick_device

        self.options = options
        self.reporter = reporter or Reporter()
        self.debug = debug
        dev, dt = pick_device(options.device, options.dtype)  # a bad --device fails the whole batch
        self.device, self.dtype = str(dev), str(dt).replace("torch.", "")
        self.models = Models(options.device, options.dtype)
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
        from hmedit.outputs.folder import lock_folder, seal_record

        file, report = result.file, self.reporter
        report.scene_started(file)
        start = time.perf_counter()

        def warn(warning: HmeditError) -> None:
            result.warnings += 1
            report.problem(_error_line(warning, file, "warning"))

        lock = None  # the scene's output folder is ours alone from the up-to-date check to render.json
        try:
            job = prepare(
                file, self.options, device=self.device, dtype=self.dtype, claimed=claimed, on_warning=warn
            )
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
                    self.options,
                    on_seed=lambda i, seed: report.seed_started(file, i, seed, len(job.seeds)),
                    on_step=report.step,
                    on_learn=lambda node, i, n, loss: report.learning(file, node, i, n, loss),
                )
                rec = seal_record(job.target, rec)  # size and sha256 of each output, for up_to_date
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
            report.problem(_error_line(err, file))
            result.status, result.error = FAILED, err.problem
        except Exception as exc:  # a bug in one scene must not stop the batch
            if self.debug:
                import traceback

                report.problem(traceback.format_exc().rstrip())
            message = str(exc).splitlines()[0] if str(exc) else ""
            report.problem(
                f"error: {file}: internal error: {type(exc).__name__}: {message} "
                "(run again with --debug for the traceback, and please report it)"
            )
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


# ------------------------------------------------------------------------------------------------
# The console: progress bars and the summary table


def progress_bar(console: Console) -> Progress:
    """The progress display of hmedit's batch commands: transient, and silent when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


class ConsoleReporter(Reporter):
    """A bar over the scenes and one over the steps of the current render, on a terminal only; problems
    print above the bars (or plainly, when not on a terminal). Use as a context manager."""

    def __init__(self, console: Console, verb: str = "render") -> None:

        self.console = console
        self.verb = verb
        self.progress = progress_bar(console)
        self._scenes = self._steps = None

    def __enter__(self) -> ConsoleReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def batch_started(self, total: int) -> None:
        self._scenes = self.progress.add_task(self.verb, total=total)
        self._steps = self.progress.add_task("", total=None, visible=False)

    def scene_started(self, file: Path) -> None:
        self.progress.update(self._scenes, description=f"{self.verb} {file.name}")
        self.progress.update(self._steps, visible=False)

    def loading(self, file: Path, model: str) -> None:
        self.progress.update(self._steps, description=f"  loading {model}", total=None, visible=True)

    def seed_started(self, file: Path, index: int, seed: int, count: int) -> None:
        label = f"  seed {seed}" + (f" ({index + 1}/{count})" if count > 1 else "")
        self.progress.reset(self._steps, description=label, total=None, visible=True)

    def step(self, i: int, n: int) -> None:
        self.progress.update(self._steps, completed=i + 1, total=n)

    def learning(self, file: Path, node_id: str, i: int, n: int, loss: float | None) -> None:
        label = f"  learn {node_id}" + (f" (loss {loss:.4f})" if loss is not None else "")
        if i == 0:
            self.progress.reset(self._steps, description=label, total=n, visible=True)
        else:
            self.progress.update(self._steps, description=label, completed=i, total=n)

    def scene_finished(self, result: Result) -> None:
        self.progress.update(self._steps, visible=False)
        self.progress.advance(self._scenes)

    def problem(self, line: Text | str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)


_STATUS_STYLE = {
    OK: "[green]ok[/]",
    SKIPPED: "[dim]skipped (up to date)[/]",
    FAILED: "[bold red]failed[/]",
    INTERRUPTED: "[bold yellow]interrupted[/]",
    NOT_RUN: "[dim]not run[/]",
}


def wide(console: Console) -> Console:
    """``console`` on a terminal (long cells fold to fit); elsewhere (a log, a pipe) a console as wide as
    the content, so that each table row stays one line."""
    if console.is_terminal:
        return console
    from rich.console import Console

    return Console(file=console.file, width=10_000, highlight=False, soft_wrap=True)


def print_summary(console: Console, results: Sequence[Result]) -> None:
    """The table (scene, seeds, status, time, output) and a count line."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for name in ("scene", "seeds", "status", "time", "output"):
        table.add_column(name, justify="right" if name == "time" else "left", overflow="fold")
    for r in results:
        seeds = r.record.get("seeds") if r.record else None
        table.add_row(
            escape(str(r.file)),
            ", ".join(map(str, seeds)) if seeds else "",
            _STATUS_STYLE.get(r.status, r.status),
            f"{r.seconds:.1f}s" if r.status not in (NOT_RUN,) else "",
            escape(str(r.target)) if r.target is not None and r.status in (OK, SKIPPED) else "",
        )
    wide(console).print(table)
    counts = {s: sum(r.status == s for r in results) for s in _STATUS_STYLE}
    parts = [f"{counts[OK]} rendered", f"{counts[SKIPPED]} up to date", f"{counts[FAILED]} failed"]
    parts += [f"{counts[s]} {s}" for s in (INTERRUPTED, NOT_RUN) if counts[s]]
    total = len(results)
    console.print(f"{total} scene{'s' * (total != 1)}: " + ", ".join(parts))
