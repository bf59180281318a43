"""hmedit as a library: ``load_scene``, ``load_model`` and ``render``, the same path the CLI takes.

    import hmedit

    scene = hmedit.load_scene("scenes/nested_rings.yaml")      # a path, YAML text, or a dict
    out = hmedit.render(scene, seed=3, steps=20)               # the scene's model, loaded once and cached
    out.image                                                   # PIL image of the first seed
    out.maps["effective/ring"]                                  # influence maps, [H, W] tensors
    out.save("out/nested_rings")                                # image, maps and render.json, atomically

``hmedit.render(path, seed=s)`` and ``hmedit render path --seed s`` give the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hmedit.jobs import Job, ModelCache, Render, default_models, plan_job, run_job
from hmedit.scene.settings import Overrides
from hmedit.scene.spec import Scene

if TYPE_CHECKING:
    from hmedit.models.load import Model

__all__ = ["Job", "ModelCache", "Render", "load_model", "load_scene", "plan", "render"]


def load_scene(
    source: str | os.PathLike | Mapping[str, Any] | Scene, *, base_dir: str | os.PathLike | None = None
) -> Scene:
    """A validated scene from a file path, YAML text or a dict (``base_dir``: where the relative paths of a
    text or dict scene point; default the working folder). Raises ``HmeditError`` for any problem."""
    from hmedit.scene.load import load_scene as load_file
    from hmedit.scene.load import load_text

    if isinstance(source, Scene):
        return source
    if isinstance(source, Mapping):
        import yaml

        return load_text(yaml.safe_dump(dict(source), sort_keys=False), base_dir=base_dir)
    if isinstance(source, os.PathLike):
        return load_file(source)
    text = str(source)
    if "\n" not in text and text.lower().endswith((".yaml", ".yml")):
        return load_file(text)
    return load_text(text, base_dir=base_dir)


def load_model(
    ref: str = "toy",
    *,
    device: str = "auto",
    dtype: str = "auto",
    config: str | None = None,
    cache: ModelCache | None = None,
) -> Model:
    """A model by name ('toy', a diffusers folder, a hub id in the local cache, a .safetensors file, or
    'random:sd15' / 'random:sdxl' ...), loaded once per process and device/dtype and then reused.
    ``config``: for a single-file checkpoint offline, a local diffusers folder of the same family whose
    configs give the architecture."""
    from hmedit.models.load import default_preset, dtype_flag, pick_device, resolve
    from hmedit.scene.presets import load_preset

    model_ref = resolve(ref)
    dev, dt = pick_device(device, dtype, load_preset(default_preset(model_ref)))
    return (cache or default_models).get(model_ref, str(dev), dtype_flag(dt), config)[0]


def plan(
    scene: str | os.PathLike | Mapping[str, Any] | Scene,
    model: Model | str | None = None,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    size: tuple[int, int] | None = None,
    scheduler: str | None = None,
    preset: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    record: bool = True,
    cache_dir: str | os.PathLike | None = None,
    words: bool = False,
) -> Job:
    """The job :func:`render` runs, planned without loading a model (settings, the up-to-date key)."""
    from hmedit.models.load import dtype_flag

    sc = load_scene(scene)
    overrides = Overrides(seed, steps, guidance, scheduler, tuple(size) if size else None, preset, record)
    model_ref = model.ref if model is not None and not isinstance(model, str) else model
    if model is not None and not isinstance(model, str):  # a loaded model runs where it is
        device = device or str(model.device)
        dtype = dtype or dtype_flag(model.dtype)
    return plan_job(
        sc,
        overrides=overrides,
        model=model_ref,
        device=device or "auto",
        dtype=dtype or "auto",
        file=sc.source,
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
        words=words,
    )


def render(
    scene: str | os.PathLike | Mapping[str, Any] | Scene,
    model: Model | str | None = None,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    size: tuple[int, int] | None = None,
    scheduler: str | None = None,
    preset: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    record: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_learn: Callable[[str, int, int, float | None], None] | None = None,
    words: bool = False,
) -> Render:
    """Render a scene (a path, YAML text, a dict or a loaded :class:`~hmedit.scene.spec.Scene`) on ``model``
    (a loaded model, a model name, or None for the scene's own), every seed of the scene unless ``seed`` is
    given. Nodes with ``learn:`` / ``embedding:`` get their tokens as the CLI gets them (learned tokens
    cached under ``cache_dir``, default hmedit's cache folder). ``progress(i, n)``: after each sampling step.
    ``words``: also read every word's attention map of the first seed (``Render.results[seed].probes``;
    ``Render.save`` writes them as ``attention/<id>/<word>.png``)."""
    job = plan(
        scene,
        model,
        seed=seed,
        steps=steps,
        guidance=guidance,
        size=size,
        scheduler=scheduler,
        preset=preset,
        device=device,
        dtype=dtype,
        record=record,
        cache_dir=cache_dir,
        words=words,
    )
    cache = default_models
    if model is not None and not isinstance(model, str):
        cache = ModelCache()
        cache.add(model)
    return run_job(job, cache, on_step=progress, on_learn=on_learn)
