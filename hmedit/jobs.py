"""Jobs: a scene planned on the driver (no model loaded), and one job run into a :class:`Render`.

- :func:`plan_job`: a validated scene + overrides -> :class:`Job`: the model reference and hash, the preset,
  one :class:`~hmedit.scene.settings.Request` per seed, the assets' hashes and the up-to-date key, computed
  from those very requests. Cheap, so a batch of finished scenes is checked in moments.
- :func:`run_job`: a job -> a :class:`Render` (learned tokens first, then every seed). A plain function of the
  job and a model cache, so a distributed runner can call it on a worker.
- :meth:`Render.save`: images, influence maps and ``render.json`` into a folder, each file atomically,
  ``render.json`` last.

The CLI's ``render``, ``check`` and ``bench`` and the library API (:mod:`hmedit.api`) all go through here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmedit import provenance
from hmedit.errors import HmeditError
from hmedit.scene.presets import Preset
from hmedit.scene.settings import Overrides, Request, plan_requests
from hmedit.scene.spec import Scene

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

    from hmedit.models.load import Model, ModelRef
    from hmedit.pipeline import RenderResult

RENDER_JSON = "render.json"


def image_name(seed: int, seeds: list[int]) -> str:
    """``image.png`` for a scene with one seed, ``image-<seed>.png`` for each of several."""
    return "image.png" if len(seeds) == 1 else f"image-{seed}.png"


def edit_image_name(edit_id: str, seed: int, seeds: list[int]) -> str:
    """An edit's target image: ``edits/<id>.png`` for a scene with one seed, ``edits/<id>-<seed>.png`` for
    each of several; its influence maps go to the folder ``edits/<id>/``."""
    return f"edits/{edit_id}.png" if len(seeds) == 1 else f"edits/{edit_id}-{seed}.png"


def scene_bytes_of(scene: Scene) -> bytes:
    """The bytes a scene's key hashes: its file's, else a canonical dump of the validated scene."""
    source = scene.source
    if source is not None and Path(source).is_file():
        return Path(source).read_bytes()
    return json.dumps(scene.model_dump(mode="json"), sort_keys=True).encode()


@dataclass
class Job:
    """One scene, ready to render: everything known before a model is loaded."""

    scene: Scene
    scene_bytes: bytes
    file: Path | None
    model_ref: ModelRef
    model_hash: str
    preset: Preset
    requests: list[Request]
    assets: dict[str, dict[str, str]]  # field path -> {"path", "sha256"}
    device: str  # as resolved: "cpu", "cuda:0"
    dtype: str  # "float32", "float16", "bfloat16"
    key: str
    overrides: Overrides = field(default_factory=Overrides)
    cache_dir: Path | None = None  # learned embeddings (None: hmedit's cache folder, embeddings/)
    target: Path | None = None  # a batch's output folder for the scene
    controls: dict[str, dict[str, str]] = field(default_factory=dict)  # control field -> its ControlNet
    words: bool = False  # write the first seed's per-word attention maps, attention/<id>/<word>.png

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.requests]


def _model_ref(scene: Scene, model: str | ModelRef | None) -> ModelRef:
    from hmedit.models.load import ModelRef, resolve

    if isinstance(model, ModelRef):
        return model
    if model is not None:  # named by the caller: relative to the working folder
        return resolve(model)
    try:  # named by the scene: relative to the scene's folder
        return resolve(scene.model, base_dir=scene.base_dir)
    except HmeditError as err:
        if err.location.file is None:  # point at the scene's model key, or name the file (default)
            given = "model" in scene.model_fields_set
            where = scene.where("model") if given else {"file": scene.source, "field": "model"}
            err = HmeditError(err.problem, **where, hint=err.hint)
        raise err from None


def plan_job(
    scene: Scene,
    *,
    overrides: Overrides | None = None,
    model: str | ModelRef | None = None,
    device: str = "auto",
    dtype: str = "auto",
    file: Path | None = None,
    scene_bytes: bytes | None = None,
    cache_dir: Path | None = None,
    cuda: bool | None = None,
    words: bool = False,
) -> Job:
    """Plan the render of ``scene`` (see the module docstring); raises ``HmeditError`` for a problem.
    ``cuda``: whether the machines that run the job have CUDA (None: this process's)."""
    from hmedit.masks.raster import reference_size
    from hmedit.models.load import default_preset, model_hash, pick_device

    overrides = overrides or Overrides()
    ref = _model_ref(scene, model)
    preset, reqs = plan_requests(scene, overrides, default_preset(ref), image_size=reference_size(scene))
    dev, dt = pick_device(device, dtype, preset, cuda=cuda)
    digest = model_hash(ref)
    assets = {}
    for where, path in provenance.asset_paths(scene).items():
        try:
            assets[where] = {"path": str(path), "sha256": provenance.file_sha256(path)}
        except OSError as exc:
            raise HmeditError(f"cannot read {path}: {exc.strerror or exc}", **scene.where(where)) from None
    data = scene_bytes if scene_bytes is not None else scene_bytes_of(scene)
    device_s, dtype_s = str(dev), str(dt).replace("torch.", "")
    controls = _controls(scene, ref)
    key = provenance.render_key(
        scene_bytes=data,
        assets={k: v["sha256"] for k, v in assets.items()},
        model_hash=digest,
        settings=[r.key() for r in reqs],
        device=device_s,
        dtype=dtype_s,
        controls=controls,
        words=words,
    )
    job = Job(
        scene, data, file, ref, digest, preset, reqs, assets, device_s, dtype_s, key, overrides, cache_dir
    )
    job.controls = controls
    job.words = words
    return job


def _controls(scene: Scene, ref: ModelRef) -> dict[str, dict[str, str]]:
    """The ControlNet of each control node (none: {}), resolved and hashed without loading it."""
    if not any(f.node.control is not None for f in scene.flat()):
        return {}
    from hmedit.control.models import describe

    return describe(scene, ref)


class ModelCache:
    """Loaded models, each loaded once (by place on disk, device and dtype); a model that failed to load
    fails again at once for the next job that names it."""

    def __init__(self) -> None:
        self._loaded: dict[tuple, Model | HmeditError] = {}

    def get(
        self, ref: ModelRef, device: str = "auto", dtype: str = "auto", config: str | None = None
    ) -> tuple[Model, float]:
        """The model and the seconds spent loading it now (0 when it was loaded before). ``config``: a local
        diffusers folder of the same family, for a single-file checkpoint loaded offline."""
        from hmedit.models.load import dtype_flag, load

        dtype = dtype_flag(dtype)
        key = _cache_key(ref, device, dtype)
        if key not in self._loaded:
            start = time.perf_counter()
            try:
                self._loaded[key] = load(ref, device=device, dtype=dtype, config=config)
            except HmeditError as err:
                self._loaded[key] = err
                raise
            return self._loaded[key], round(time.perf_counter() - start, 4)  # type: ignore[return-value]
        got = self._loaded[key]
        if isinstance(got, HmeditError):
            raise got
        return got, 0.0

    def add(self, model: Model) -> None:
        """Hold an already loaded model (the API's ``render(scene, model)``)."""
        from hmedit.models.load import dtype_flag

        self._loaded[_cache_key(model.ref, str(model.device), dtype_flag(model.dtype))] = model


def _cache_key(ref: ModelRef, device: str, dtype: str) -> tuple:
    """A loaded model's place in :class:`ModelCache`: where its weights are, the device and the dtype flag."""
    return (str(ref.path), ref.source, device, dtype)


@dataclass
class Render:
    """What one scene rendered: every seed's image and maps, the provenance, and :meth:`save`."""

    job: Job
    model: Model
    results: dict[int, RenderResult]  # seed -> result, in the job's order
    tokens: Any = None  # SceneTokens of learn:/embedding: nodes, or None
    timings: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # written by save()
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # size and sha256 of each, by save()

    @property
    def seeds(self) -> list[int]:
        return list(self.results)

    @property
    def images(self) -> dict[int, Image.Image]:
        """Seed -> the image, as a PIL image."""
        from PIL import Image

        return {seed: Image.fromarray(r.image) for seed, r in self.results.items()}

    @property
    def image(self) -> Image.Image:
        """The first seed's image."""
        from PIL import Image

        return Image.fromarray(next(iter(self.results.values())).image)

    @property
    def maps(self) -> dict[str, Tensor]:
        """The first seed's influence maps: "intrinsic/<id>", "effective/<id>", "attention/<id>" -> [H, W]."""
        return next(iter(self.results.values())).maps

    @property
    def settings(self) -> list:
        return [r.settings for r in self.results.values()]

    @property
    def provenance(self) -> dict[str, Any]:
        """The content of ``render.json``: model, versions, settings, scene, assets, timings, outputs."""
        job = self.job
        rec = provenance.record(
            key=job.key,
            scene=job.scene,
            scene_file=job.file or job.scene.source or "<scene>",
            scene_bytes=job.scene_bytes,
            assets=job.assets,
            model=self.model.describe(),
            device=job.device,
            dtype=job.dtype,
            settings=self.settings,
            key_settings=[r.key() for r in job.requests],
            overrides=job.overrides.recorded(),
            timings=self.timings,
            outputs=self.outputs,
            embeddings=self.tokens.describe() if self.tokens is not None else None,
            preset={"name": job.preset.name, "source": job.preset.source, **job.preset.values()},
            files=self.files or None,
            controls=job.controls or None,
        )
        if job.scene.edits:  # the edit pairs (also in the scene and the key): what each target changed
            rec["edits"] = {
                e.id: {
                    "kind": e.kind,
                    "node": e.touched,
                    "inject": e.inject,
                    "blend": e.blend,
                    "regions": job.scene.regions,
                }
                for e in job.scene.edits
            }
        return rec

    def _png_text(self, settings: Any) -> dict[str, str]:
        from hmedit import __version__
        from hmedit.outputs import a1111

        return {
            "hmedit:scene": self.job.scene_bytes.decode("utf-8", errors="replace"),
            "hmedit:settings": json.dumps(asdict(settings), sort_keys=True),
            "hmedit:model": json.dumps(
                {"name": self.job.model_ref.name, "hash": self.job.model_hash}, sort_keys=True
            ),
            "Software": f"hmedit {provenance.versions()['hmedit']}",
            a1111.KEY: a1111.parameters(
                self.job.scene,
                settings,
                model_name=self.job.model_ref.name,
                model_hash=self.job.model_hash,
                version=__version__,
            ),
        }

    def save(self, folder: str | Path, *, lock: bool = True) -> dict[str, Any]:
        """Write every seed's image, the first seed's influence maps and ``render.json`` into ``folder``
        (each file atomically, ``render.json`` last, with the size and sha256 of every output); return the
        record written. ``lock``: hold the folder's lock meanwhile (a batch that holds it already: False)."""
        from hmedit.outputs.folder import check_writable, lock_folder

        target = Path(folder)
        if not lock:
            return self._save(target)
        check_writable(target if target.exists() else target.parent)
        with lock_folder(target):
            return self._save(target)

    def _save(self, target: Path) -> dict[str, Any]:
        from hmedit.outputs import save_json, save_png, write_influence
        from hmedit.outputs.folder import describe_outputs

        scene, seeds = self.job.scene, self.seeds
        flats = scene.flat()
        outputs: list[str] = []
        for index, (seed, result) in enumerate(self.results.items()):
            clock = time.perf_counter()
            name = image_name(seed, seeds)
            save_png(target / name, result.image, self._png_text(result.settings))
            outputs.append(name)
            if index == 0:
                s = result.settings
                files = write_influence(
                    target,
                    [f.node.id for f in flats],
                    result.maps,
                    nodes=flats,
                    base_image=result.image,
                    metadata={
                        "scene": str(self.job.file or scene.source or "<scene>"),
                        "name": str(scene.name),
                        "composition": scene.composition,
                        "depth_gamma": f"{scene.depth_gamma:g}",
                        "size": f"{s.width}x{s.height}",
                        "seed": str(seed),
                        "model": self.job.model_hash,
                    },
                    title=f"{scene.name}: {scene.composition}, {s.width}x{s.height}, seed {seed}",
                )
                outputs += ["influence.safetensors", "influence.png"]
                outputs += [p.relative_to(target).as_posix() for p in files.heatmaps.values()]
                outputs += write_word_maps(target, result.probes, seed)
            for edit in scene.edits:
                outputs += self._save_edit(target, edit.id, seed, result.edits[edit.id], index == 0)
            per_seed = self.timings.setdefault("seeds", {}).setdefault(str(seed), {})
            per_seed["write"] = round(time.perf_counter() - clock, 4)
        self.outputs = outputs
        self.files = describe_outputs(target, outputs)
        rec = self.provenance
        save_json(target / RENDER_JSON, rec)
        return rec

    def _save_edit(self, target: Path, edit_id: str, seed: int, result: Any, maps: bool) -> list[str]:
        """One edit's target image (``edits/<id>.png``) and, for the first seed, its influence maps in
        ``edits/<id>/``; returns the names written."""
        from hmedit.outputs import save_png, write_influence

        name = edit_image_name(edit_id, seed, self.seeds)
        text = {**self._png_text(result.settings), "hmedit:edit": edit_id}
        save_png(target / name, result.image, text)
        if not maps:
            return [name]
        folder = target / "edits" / edit_id
        flats = result.plan.flat
        s = result.settings
        files = write_influence(
            folder,
            [f.node.id for f in flats],
            result.maps,
            nodes=flats,
            base_image=result.image,
            metadata={"name": str(self.job.scene.name), "edit": edit_id, "seed": str(seed)},
            title=f"{self.job.scene.name} edit {edit_id}: {s.width}x{s.height}, seed {seed}",
        )
        rel = [f"edits/{edit_id}/influence.safetensors", f"edits/{edit_id}/influence.png"]
        return [name, *rel, *(p.relative_to(target).as_posix() for p in files.heatmaps.values())]


def word_file(word: str) -> str:
    """A word's map file name: the word with anything but letters, digits, '_', '.' and '-' as '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", word).strip(".") or "_"


def write_word_maps(target: Path, probes: dict, seed: int) -> list[str]:
    """``attention/<id>/<word>.png``: each word probe's map (0..1 as 0..255 gray), atomically; the names."""
    import numpy as np

    from hmedit.outputs import save_png
    from hmedit.outputs.folder import real_dir

    names = []
    for probe, m in probes.items():
        if probe.word is None:
            continue
        folder = real_dir(target, f"attention/{probe.node}")
        pixels = (m.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        text = {"node": probe.node, "word": probe.word, "seed": str(seed)}
        path = save_png(folder / f"{word_file(probe.word)}.png", pixels, text)
        names.append(path.relative_to(target).as_posix())
    return names


def run_job(
    job: Job,
    models: ModelCache | None = None,
    *,
    on_seed: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_learn: Callable[[str, int, int, float | None], None] | None = None,
) -> Render:
    """Render every seed of ``job``. Nodes with ``learn`` / ``embedding`` get their tokens first (learned
    ones from the cache, or learned now: ``on_learn(node_id, i, n, loss)`` reports the steps), and the model
    renders the scene with its prompts rewritten to use them. ``on_seed(index, seed)``, ``on_step(i, n)``:
    progress."""
    import hmedit.pipeline as R
    from hmedit.conditioning.tokens import install_tokens, needs_tokens

    start = time.perf_counter()
    models = models if models is not None else default_models
    model, load_seconds = models.get(job.model_ref, job.device, job.dtype)
    scene = job.scene
    tokens = None
    learn_clock = time.perf_counter()
    if needs_tokens(scene):
        tokens = install_tokens(
            scene,
            model,
            cache_dir=job.cache_dir,
            progress=on_learn,
            guidance=job.requests[0].guidance,
            defaults=job.preset.learn,
        )
    learn_seconds = round(time.perf_counter() - learn_clock, 4)
    model_scene = tokens.apply(scene) if tokens is not None else scene
    from hmedit.sampling.inversion import InversionCache

    inversions = InversionCache(job.cache_dir)  # inversions beside the learned tokens (default: inversions/)
    results: dict[int, RenderResult] = {}
    per_seed: dict[str, dict[str, float]] = {}
    for index, req in enumerate(job.requests):
        settings = R.Settings.from_request(scene, model, req, job.preset)
        if on_seed is not None:
            on_seed(index, req.seed)
        results[req.seed] = R.render(
            model_scene,
            model,
            settings,
            progress=on_step,
            inversions=inversions,
            words=job.words and index == 0,
        )
        per_seed[str(req.seed)] = dict(results[req.seed].timings)
    timings = {
        "load": load_seconds,
        **({"tokens": learn_seconds} if tokens is not None else {}),
        "seeds": per_seed,
        "total": round(time.perf_counter() - start, 4),
    }
    return Render(job, model, results, tokens, timings)


default_models = ModelCache()
"""The cache of loaded models that the API and the CLI share within a process."""
