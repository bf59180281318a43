"""What a render is asked for, before any model is loaded: the scene's settings, filled from its preset and
overridden by the caller (command line or API). The batch computes each scene's up-to-date key from these
requests on the driver, and the very same requests go to the render. Model-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hmedit.errors import HmeditError
from hmedit.scene.presets import Preset, load_preset
from hmedit.scene.spec import Scene

MAX_SIDE = 65536  # px: no render side above this, tiled or not (hmedit.scene.limits bounds the memory)


@dataclass(frozen=True)
class Overrides:
    """What the caller sets for every scene (None: the scene's own value, else the preset's)."""

    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    preset: str | None = None
    record: bool = True

    def recorded(self) -> dict[str, Any]:
        """The overrides that change a render, for the provenance."""
        return {
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "scheduler": self.scheduler,
            "size": list(self.size) if self.size else None,
            "preset": self.preset,
            "record_attention": None if self.record else False,
        }


@dataclass(frozen=True)
class Request:
    """One seed's render as asked for. ``size`` None: the model's native size (the model hash pins it)."""

    seed: int
    size: tuple[int, int] | None
    steps: int
    guidance: float
    scheduler: str
    record_attention: bool
    preset: str
    preset_digest: str

    def key(self) -> dict[str, Any]:
        """JSON-ready, for the up-to-date key and the provenance."""
        out = asdict(self)
        out["size"] = list(self.size) if self.size else None
        return out


def _check_overrides(o: Overrides) -> None:
    """The caller's values obey the scene's own types and ranges (the API takes them unchecked by a command
    line): each is validated against the Scene field of its name, so the ranges live in scene.spec alone."""
    from typing import Annotated

    from pydantic import ConfigDict, TypeAdapter, ValidationError

    for name in ("seed", "steps", "guidance", "scheduler"):
        value = getattr(o, name)
        if value is None:
            continue
        info = Scene.model_fields[name]
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        try:
            TypeAdapter(kind, config=ConfigDict(allow_inf_nan=False)).validate_python(value)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise HmeditError(f"{value!r}: {problem}", field=f"--{name}", hint=info.description) from None


def pick_preset(scene: Scene, overrides: Overrides, family_preset: str) -> tuple[Preset, bool]:
    """The preset of a render and whether it was named (by ``--preset`` or the scene) rather than picked from
    the model's family (``family_preset``)."""
    if overrides.preset is not None:
        return load_preset(overrides.preset, field="--preset"), True
    if scene.preset is not None:
        return load_preset(scene.preset, base_dir=scene.base_dir, **scene.where("preset")), True
    return load_preset(family_preset), False


def requests(
    scene: Scene, overrides: Overrides, preset: Preset, named: bool, *, image_size: tuple[int, int] | None
) -> list[Request]:
    """One request per seed (``overrides.seed``, else the scene's seeds). ``image_size``: the scene's
    reference size (its ``size``, else its init image's), or None; a named preset's native size comes next,
    and otherwise the model's (None here)."""
    _check_overrides(overrides)
    size = overrides.size or image_size or ((preset.native_size,) * 2 if named else None)
    if size is not None:
        w, h = int(size[0]), int(size[1])
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise HmeditError(
                f"size {w}x{h} is out of range", field="size", hint=f"sides are 64..{MAX_SIDE} px"
            )
        size = (w, h)
    seeds = [overrides.seed] if overrides.seed is not None else scene.seed_list
    return [
        Request(
            seed=int(seed),
            size=size,
            steps=int(overrides.steps or scene.steps or preset.steps),
            guidance=float(
                overrides.guidance
                if overrides.guidance is not None
                else scene.guidance
                if scene.guidance is not None
                else preset.guidance
            ),
            scheduler=overrides.scheduler or scene.scheduler or preset.scheduler,
            record_attention=bool(overrides.record),
            preset=preset.name,
            preset_digest=preset.digest(),
        )
        for seed in seeds
    ]


def plan_requests(
    scene: Scene, overrides: Overrides, family_preset: str, *, image_size: tuple[int, int] | None
) -> tuple[Preset, list[Request]]:
    """The preset (:func:`pick_preset`) and the per-seed requests (:func:`requests`) of a render."""
    preset, named = pick_preset(scene, overrides, family_preset)
    return preset, requests(scene, overrides, preset, named, image_size=image_size)
