"""Presets: every model-dependent default (native size, steps, scheduler, guidance, dtype per device, tiling,
the tiled VAE, learned tokens) in one YAML file per model kind. ``configs/`` (shipped in the package as
``hmedit/configs``) holds ``toy``, ``sd15``, ``sd21`` and ``sdxl``; a scene names one (``preset: sd15``, or a
path to a YAML file, relative to the scene), ``--preset`` overrides, and without either the model's family
picks one. Model-free: nothing here imports torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hmedit.errors import HmeditError
from hmedit.scene.spec import DTYPES, Scheduler

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
MAX_PRESET_BYTES = 64 * 1024


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TilingDefaults(_Part):
    tile: int | None = Field(None, ge=8, le=4096)
    overlap: int | None = Field(None, ge=0, le=4096)
    batch: int = Field(8, ge=1, le=256)
    coarse: bool = False  # renders from noise above the native size start from a native render
    refine: float = Field(0.6, gt=0, le=1)  # the noise level of that render's tiled refinement


Device = Literal["cpu", "cuda", "mps"]


class VaeDefaults(_Part):
    # latent px per tile of the exact tiled decoder, per device; one number sets every device's. An
    # accelerator wants few large tiles, a CPU small ones that stay in its caches
    decode_tile: dict[Device, Annotated[int, Field(ge=8, le=1024)]] = {"cpu": 32}
    encode_tiled_above: int = Field(1024, ge=64, le=65536)

    @field_validator("decode_tile", mode="before")
    @classmethod
    def _one_for_all(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return dict.fromkeys(("cpu", "cuda", "mps"), v)
        if not isinstance(v, dict):
            raise ValueError("give one number of latent px, or one per device, e.g. {cpu: 32, cuda: 128}")
        return v

    def decode_tile_on(self, device: str) -> int:
        """The decode tile for a device type ("cpu", "cuda", ...); one the preset does not name gets its
        CPU tile (else 32)."""
        return self.decode_tile.get(device, self.decode_tile.get("cpu", 32))  # type: ignore[call-overload]


class LearnDefaults(_Part):
    steps: int = Field(120, ge=1, le=100_000)
    lr: float = Field(1e-2, gt=0, le=10)
    batch: int = Field(16, ge=1, le=1024)


class Preset(_Part):
    """One preset file, validated."""

    name: str = ""
    source: str = ""
    family: Literal["sd1", "sd2", "sdxl"]
    native_size: int = Field(ge=64, le=8192)
    steps: int = Field(ge=1, le=1000)
    scheduler: Scheduler
    guidance: float = Field(ge=0, le=100)
    dtype: dict[Literal["cpu", "cuda", "mps"], Literal[DTYPES[1:]]]  # type: ignore[valid-type] # not auto
    tiling: TilingDefaults = TilingDefaults()
    vae: VaeDefaults = VaeDefaults()
    learn: LearnDefaults = LearnDefaults()

    def dtype_for(self, device_type: str) -> str:
        return self.dtype.get(device_type, "fp32")  # type: ignore[call-overload]

    def values(self) -> dict:
        """The defaults themselves (no name or file), for the up-to-date key and the provenance."""
        return self.model_dump(mode="json", exclude={"name", "source"})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.values(), sort_keys=True).encode()).hexdigest()[:16]


def preset_names() -> list[str]:
    """The presets shipped with hmedit."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read(path: Path, name: str) -> Preset:
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise HmeditError(f"the preset is larger than {MAX_PRESET_BYTES // 1024} KiB", file=path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HmeditError(
            f"cannot read the preset: {getattr(exc, 'strerror', None) or exc}", file=path
        ) from None
    from hmedit.errors import Diagnostics
    from hmedit.scene.load import parse_yaml

    diags = Diagnostics()  # the scenes' bounded YAML reader: a small file cannot expand without bound
    parsed = parse_yaml(text, path, diags)
    diags.raise_if_errors()
    data = parsed[0] if parsed is not None else None
    if not isinstance(data, dict):
        raise HmeditError("a preset is a mapping of defaults", file=path, hint="see configs/toy.yaml")
    try:
        return Preset(**data, name=name, source=str(path))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise HmeditError(
            err["msg"], file=path, field=loc, hint="see configs/toy.yaml for every key"
        ) from None


@lru_cache(maxsize=32)
def _builtin(name: str) -> Preset:
    return _read(PRESET_DIR / f"{name}.yaml", name)


def load_preset(ref: str, *, base_dir: Path | None = None, **where) -> Preset:
    """A preset by name (``toy``, ``sd15``, ``sd21``, ``sdxl``) or by path to a YAML file (relative to
    ``base_dir``, the scene's folder). ``where``: the error location of the reference (file, line, field)."""
    names = preset_names()
    if ref in names:
        return _builtin(ref)
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise HmeditError(f"preset file {ref} not found", **where, hint="paths are relative to the scene")
        return _read(path, path.stem)
    close = difflib.get_close_matches(ref, names, n=1)
    hint = (
        (f"did you mean '{close[0]}'? " if close else "")
        + "presets: "
        + ", ".join(names)
        + ", or a .yaml path"
    )
    raise HmeditError(f"unknown preset '{ref}'", **where, hint=hint)
