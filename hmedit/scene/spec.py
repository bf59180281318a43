"""The scene format as typed, frozen pydantic models: validated once, at load; nothing downstream reads dicts.

A scene is a tree of nodes. The root covers the whole frame; every other node has a region, given either by a
``mask`` (one of rect / ellipse / polygon / grayscale image) or by an RGBA ``layer`` whose alpha is the mask.
Coordinates are fractions of the image size, so one scene renders at any resolution.

Checks that span several fields (``seed`` with ``seeds``, ``mask`` with ``layer``, duplicate ids) run in
"wrap" validators that look at the raw input *and* let pydantic check every field, so that a user sees all
problems of a file at once instead of one per run.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PrivateAttr,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from hmedit.errors import HmeditError

FORMAT_VERSION = 1

SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "unipc")
"""The samplers, by the names scenes, presets and the command line use (hmedit.models.load makes them)."""
DTYPES = ("auto", "fp32", "fp16", "bf16")
"""The weights' precisions; auto: the preset's for the device (fp16 on CUDA, fp32 on CPU)."""
Scheduler = Literal[SCHEDULERS]  # type: ignore[valid-type]
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
Composition = Literal["multiplicative", "normalized", "top_down", "depth_weighted", "hybrid"]
Inversion = Literal["none", "ddim", "negative_prompt", "null_text"]
Regions = Literal["attention", "fusion"]
"""How nodes act on their regions: a bias on cross-attention, or one denoising per node fused by its mask."""
NodeComposition = Literal["multiplicative", "normalized", "top_down", "depth_weighted"]
"""A node's own scheme inside a hybrid composition: any scheme but hybrid itself."""
Level = Literal["coarse", "mid", "fine"]
LEVELS: tuple[Level, ...] = ("coarse", "mid", "fine")
MASK_KINDS = ("rect", "ellipse", "polygon", "image", "band", "attention", "click")

# Numbers are strict so that a quoted "0.5" or a bare `true` is reported instead of silently converted;
# an int is still accepted where a float is expected.
Number = Annotated[float, Strict()]
Int = Annotated[int, Strict()]

SAFE_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def is_safe_name(name: str) -> bool:
    """A name usable as a file or folder name everywhere: [A-Za-z0-9_.-], not empty, not '.' or '..'."""
    return bool(name) and set(name) <= SAFE_NAME_CHARS and name not in (".", "..")


def safe_name_hint(name: str) -> str:
    fixed = "".join(c if c in SAFE_NAME_CHARS else "_" for c in name).strip(".") or "scene"
    return f"use only letters, digits, '_', '.', '-', e.g. {fixed!r}"


def _error(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose message is final; ``hint`` and ``field`` (a sub-key) ride along in ctx."""
    return PydanticCustomError(kind, message, ctx or None)


# ------------------------------------------------------------------------------------------------
# Asset paths


class AssetRef(os.PathLike):
    """A file named in a scene: ``raw`` as written (for messages), ``path`` absolute (for reading).

    It is path-like (``open(ref)``, ``Path(ref)``, ``PIL.Image.open(ref)`` all use the absolute path).
    Relative paths are resolved against the scene file's folder (the ``base_dir`` in the validation context)
    and, when a ``base_dir`` is given, the file must exist.
    """

    __slots__ = ("raw", "path")

    def __init__(self, raw: str, path: Path) -> None:
        self.raw = raw
        self.path = path

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"AssetRef({self.raw!r}, {str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AssetRef) and (self.raw, self.path) == (other.raw, other.path)

    def __hash__(self) -> int:
        return hash((self.raw, self.path))

    @classmethod
    def resolve(cls, raw: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> AssetRef:
        raw = os.fspath(raw)
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or Path.cwd()) / path
        return cls(raw, Path(os.path.abspath(path)))

    @classmethod
    def _validate(cls, value: Any, info: ValidationInfo) -> AssetRef:
        if isinstance(value, AssetRef):
            return value
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise _error("asset_type", f"expected a file path (got {value!r})")
        base_dir = (info.context or {}).get("base_dir")
        ref = cls.resolve(value, base_dir)
        if base_dir is not None and not ref.path.is_file():
            what = "is a folder, not a file" if ref.path.is_dir() else "file not found"
            raise _error(
                "asset_missing",
                f"{what}: {value} (looked for {ref.path})",
                hint="paths are relative to the scene file's folder",
            )
        return ref

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda ref: ref.raw),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler):
        return {"type": "string", "minLength": 1}


# ------------------------------------------------------------------------------------------------
# Small value types


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


COORD_RANGE = 10.0
"""Coordinates (fractions of the image) lie in -10..10: far beyond the frame, still finite arithmetic."""
MAX_POLYGON_POINTS = 1000
SEED_MAX = 2**63 - 1
"""Seeds are 0..2^63 - 1: torch generators take 64 bits, and hmedit derives streams as seed + a constant."""
MAX_NAME_CHARS = 100
"""Names and ids become file names (with a prefix and a suffix): well under every file system's 255 bytes."""

Coord = Annotated[float, Strict(), Field(ge=-COORD_RANGE, le=COORD_RANGE)]
Box = tuple[Coord, Coord, Coord, Coord]
Point = tuple[Coord, Coord]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
MAX_SIDE = 65536
Side = Annotated[int, Strict(), Field(le=MAX_SIDE)]
MAX_FEATHER = 1000.0


def _check_box(box: Box) -> Box:
    _, _, w, h = box
    if w <= 0:
        raise _error("box_size", f"width must be > 0 (got {w:g})", hint="a box is [x, y, width, height]")
    if h <= 0:
        raise _error("box_size", f"height must be > 0 (got {h:g})", hint="a box is [x, y, width, height]")
    return box


class AttentionWeights(_Spec):
    """How strongly a node's prompt is pushed into (pos) and its region kept out of other prompts (neg)."""

    pos: Number = Field(
        1.0, ge=0, le=10, description="Boost of the node's own tokens inside its region, 0..10."
    )
    neg: Number = Field(
        1.0, ge=0, le=10, description="Suppression of the node's tokens outside its region, 0..10."
    )


class Tiling(_Spec):
    """Tiled sampling above the model's native size (MultiDiffusion: Fusing Diffusion Paths for Controlled
    Image Generation, Bar-Tal et al., arXiv:2302.08113; Mixture of Diffusers for scene composition and high
    resolution image generation, Jiménez, arXiv:2302.02412). Sizes are latent pixels (image pixels / 8 on
    SD)."""

    enabled: bool = Field(True, description="false (or tiling: off): render any size whole, untiled.")
    force: bool = Field(False, description="Tile even at or below the native size (tiling: on).")
    tile: Int | None = Field(
        None,
        ge=8,
        le=1024,
        description="Window size in latent px, 8..1024. Default: the native latent size (64 on SD).",
    )
    overlap: Int | None = Field(
        None,
        ge=0,
        le=1023,
        description="Overlap of neighbouring windows, latent px, 0..1023. Default: a quarter of the tile.",
    )
    weighting: Literal["gaussian", "uniform"] = Field(
        "gaussian",
        description="How windows blend: gaussian (Mixture of Diffusers) or uniform (MultiDiffusion).",
    )
    batch: Int | None = Field(
        None, ge=1, le=256, description="Windows per UNet call, 1..256. Default: the preset's."
    )
    offsets: bool = Field(True, description="Shift the window grid randomly every step (hides seams).")
    fade: bool = Field(True, description="Window weights fall to zero at window borders inside the image.")
    coarse: bool | None = Field(
        None,
        description="First render the scene at native size, upscale it, then refine it tiled as an edit. "
        "Default: the preset's (on for renders from noise above the native size).",
    )
    refine: Number | None = Field(
        None,
        gt=0,
        le=1,
        description="With coarse: noise level of the tiled refinement (scales node noise). Default: the "
        "preset's.",
    )

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> Tiling:
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise _error(
                "tiling_overlap",
                f"overlap ({self.overlap}) must be smaller than tile ({self.tile})",
                hint=f"e.g. overlap: {self.tile // 4}",
            )
        return self


class RectMask(_Spec):
    """An axis-aligned rectangle."""

    rect: Box = Field(description="[x, y, width, height] as fractions of the image size (-10..10).")

    _check = field_validator("rect")(_check_box)


class EllipseMask(_Spec):
    """An ellipse, given by its bounding box."""

    ellipse: Box = Field(
        description="Bounding box [x, y, width, height] as fractions of the image size (-10..10)."
    )

    _check = field_validator("ellipse")(_check_box)


class PolygonMask(_Spec):
    """A filled polygon."""

    polygon: tuple[Point, ...] = Field(
        max_length=MAX_POLYGON_POINTS,
        description="3 to 1000 points [[x, y], ...], as fractions of the image size (-10..10).",
    )

    @field_validator("polygon")
    @classmethod
    def _three_points(cls, points: tuple[Point, ...]) -> tuple[Point, ...]:
        if len(points) < 3:
            raise _error(
                "polygon_points",
                f"a polygon needs at least 3 points (got {len(points)})",
                hint="use rect: or ellipse: for simple shapes",
            )
        return points


class ImageMask(_Spec):
    """A grayscale image file, resized to the frame (white = inside)."""

    image: AssetRef = Field(description="Grayscale mask image, relative to the scene file.")
    invert: bool = Field(False, description="Use black as inside instead of white.")


class BandSpec(_Spec):
    """A soft band along another node's boundary (Hierarchical Mask Composition, Tables 2 and 8)."""

    of: str = Field(description="Id of the node whose boundary the band follows: a sibling of this node.")
    width: Number = Field(
        gt=0,
        le=MAX_FEATHER,
        description="Width of the band across the boundary (half inside, half outside), in px at the "
        "reference size, (0, 1000].",
    )


class BandMask(_Spec):
    """A soft band along the boundary of another node (a sibling): e.g. a 'blend smoothly' prompt."""

    band: BandSpec = Field(description="{of: <node id>, width: <px>}.")


class AttentionSpec(_Spec):
    """Where the model drew another node's prompt (or one of its words) in a first pass (DAAM, Tang et al.,
    arXiv:2210.04885; Free-Mask)."""

    of: str = Field(description="Id of the node whose cross-attention map becomes this node's mask.")
    word: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="One word (or a few consecutive words) of that node's prompt. Default: the whole prompt.",
    )
    threshold: Annotated[float, Strict(), Field(gt=0, lt=1)] | Literal["auto"] = Field(
        0.4,
        description="Threshold on the map normalised to 0..1, in (0, 1) (DAAM: 0.4); auto: the one whose "
        "mask the image's edges agree with best (Free-Mask).",
    )
    refine: Literal["none", "self", "image"] = Field(
        "none",
        description="self: sharpen the map with the aggregated self-attention first; image: snap its edges "
        "to the first pass's image (a guided filter).",
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value == "auto" or (number and 0 < value < 1):
            return value
        raise _error(
            "attention_threshold",
            f"threshold must be a number between 0 and 1 (exclusive) or auto (got {value!r})",
            hint="e.g. threshold: 0.4 (DAAM's), or threshold: auto",
        )


class AttentionMask(_Spec):
    """The thresholded cross-attention map of another node's prompt or word, from a first pass."""

    attention: AttentionSpec = Field(description="{of: <node id>, word, threshold, refine}.")


DERIVED_MASKS = (BandMask, AttentionMask)
"""Masks computed from other nodes (hmedit.masks.attention), not drawn by the user."""


Fraction = Annotated[float, Strict(), Field(ge=0, le=1)]


class ClickMask(_Spec):
    """A region grown from one click while the node is rendered (Click2Mask: Local Editing with Dynamic Mask
    Generation, Regev et al., arXiv:2409.08272): a soft bump around the click whose potential moves along a
    masked CLIP loss during blended latent diffusion; the best of ``candidates`` becomes the node's mask."""

    click: tuple[Fraction, Fraction] = Field(
        description="[x, y] of the click as fractions of the image, each 0..1."
    )
    radius: Number = Field(
        0.2, gt=0, le=1, description="Radius of the starting bump, a fraction of the image's shorter side."
    )
    candidates: Int = Field(3, ge=1, le=16, description="Masks grown from different noise; the best is kept.")
    window: tuple[Fraction, Fraction] = Field(
        (0.1, 0.3),
        description="[start, end]: the fraction of the sampling steps in which the mask evolves, 0..1.",
    )
    step: Number = Field(
        0.25, gt=0, le=10, description="How far the boundary moves per update (potential units, 0 to 10)."
    )

    @field_validator("window")
    @classmethod
    def _window_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise _error(
                "click_window",
                f"window must be [start, end] with start < end (got [{value[0]:g}, {value[1]:g}])",
                hint="fractions of the sampling steps, e.g. [0.1, 0.3]",
            )
        return value


# The union's tags are class names, not keys, so that a tag in an error's loc cannot be mistaken for a key.
_MASK_CLASSES: dict[str, type[_Spec]] = {
    "rect": RectMask,
    "ellipse": EllipseMask,
    "polygon": PolygonMask,
    "image": ImageMask,
    "band": BandMask,
    "attention": AttentionMask,
    "click": ClickMask,
}
MASK_TAGS = frozenset(cls.__name__ for cls in _MASK_CLASSES.values())


def _mask_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [k for k in MASK_KINDS if k in value]
        return _MASK_CLASSES[kinds[0]].__name__ if len(kinds) == 1 else None
    return type(value).__name__ if type(value) in _MASK_CLASSES.values() else None


MaskSpec = Annotated[
    Annotated[RectMask, Tag("RectMask")]
    | Annotated[EllipseMask, Tag("EllipseMask")]
    | Annotated[PolygonMask, Tag("PolygonMask")]
    | Annotated[ImageMask, Tag("ImageMask")]
    | Annotated[BandMask, Tag("BandMask")]
    | Annotated[AttentionMask, Tag("AttentionMask")]
    | Annotated[ClickMask, Tag("ClickMask")],
    Discriminator(
        _mask_kind,
        custom_error_type="mask_kind",
        custom_error_message="a mask needs exactly one of: rect, ellipse, polygon, image, band, attention, "
        "click",
    ),
]
"""One of the mask variants; the key present (rect / ellipse / polygon / image / band / attention / click)
picks it."""


def _levels(value: Any) -> Any:
    if value == "all":
        return LEVELS
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise _error(
                "levels_empty", "levels must name at least one level", hint="use all, or coarse/mid/fine"
            )
        # Canonical order, no repeats: a set of levels, kept hashable and printable.
        bad = [v for v in value if v not in LEVELS]
        if bad:
            close = difflib.get_close_matches(str(bad[0]), [*LEVELS, "all"], n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else "use all, or coarse / mid / fine, or a list of them"
            )
            raise _error("levels_value", f"unknown level {bad[0]!r}", hint=hint)
        return tuple(level for level in LEVELS if level in value)
    raise _error("levels_type", f"expected all, a level or a list of levels (got {value!r})")


Levels = Annotated[
    tuple[Level, ...],
    BeforeValidator(_levels, json_schema_input_type=Literal["all"] | Level | list[Level]),
]


class LearnSpec(_Spec):
    """How a node's token is learned: the settings of its textual inversion (Collage Diffusion, Sarukkai
    et al., arXiv:2303.00262, §4.3)."""

    # Unset keys take the preset's ``learn:`` defaults (configs/).

    steps: Int | None = Field(
        None, ge=1, le=100_000, description="Optimisation steps, 1..100000. Default: the preset's."
    )
    lr: Number | None = Field(
        None, gt=0, le=10, description="Learning rate of the token's embedding. Default: the preset's."
    )
    init: str | None = Field(
        None,
        min_length=1,
        description="A word whose embedding the token starts from, e.g. 'square'. Default: the mean of "
        "the vocabulary.",
    )
    batch: Int | None = Field(
        None, ge=1, le=1024, description="Noise samples per step, 1..1024. Default: the preset's."
    )
    guidance: Number | None = Field(
        None,
        ge=0,
        le=100,
        description="Classifier-free guidance the token is learned under: it fits the guided prediction, "
        "as it will be rendered. Default: the scene's guidance; 1 learns as Collage Diffusion eq. 1.",
    )


def _learn(value: Any) -> Any:
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, (dict, LearnSpec)):
        return value
    raise _error(
        "learn_type",
        f"learn is true, false or a mapping of steps, lr, init, batch, guidance (got {value!r})",
        hint="e.g. learn: true, or learn: {steps: 200, init: square}",
    )


Learn = Annotated[
    LearnSpec | None,
    BeforeValidator(_learn, json_schema_input_type=bool | LearnSpec | None),
]


class RefineSpec(_Spec):
    """Refine the node's drawn mask before it is rendered (Hierarchical Mask Composition for High-Resolution
    Text-Guided Image Editing, Adhikari and Shrestha, §5 and Table 5): sigmoid logits of the mask, optimised
    through the composition operator; the keys are the loss terms' weights."""

    steps: Int = Field(60, ge=1, le=10_000, description="Optimisation steps, 1..10000.")
    # the text term's weight is small: with the bundled toy CLIP its gradient on the mask is speckled at the
    # patch size, and at weight 1 it held the logits in place (hmedit bench masks: IoU 0.307 -> 0.315 and the
    # region's colour match down, 0.876 -> 0.846; at 0.03 with lr 0.3: 0.508 and 0.900)
    text: Number = Field(
        0.03,
        ge=0,
        le=1000,
        description="CLIP text loss of the node's prompt inside its effective mask (small by default: the "
        "bundled CLIP's pixel gradient is speckled).",
    )
    identity: Number = Field(
        4.0, ge=0, le=1000, description="Change from the source left outside the active masks."
    )
    tv: Number = Field(0.3, ge=0, le=1000, description="Total variation of the mask (smooth edges).")
    area: Number = Field(0.3, ge=0, le=1000, description="The mask's mean value (compact support).")
    hierarchy: Number = Field(
        1.0, ge=0, le=1000, description="The part of the mask outside its parent's (child inside parent)."
    )
    lr: Number = Field(0.3, gt=0, le=10, description="Adam's learning rate on the mask logits.")

    @model_validator(mode="after")
    def _some_weight(self) -> RefineSpec:
        if not any((self.text, self.identity, self.tv, self.area, self.hierarchy)):
            raise _error(
                "refine_weights",
                "refine needs at least one weight above 0 (text, identity, tv, area, hierarchy)",
                hint="e.g. refine: {text: 1, area: 0.3}, or refine: true for the defaults",
            )
        return self


def _refine(value: Any) -> Any:
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if isinstance(value, (dict, RefineSpec)):
        return value
    raise _error(
        "refine_type",
        f"refine is true, false or a mapping of steps, text, identity, tv, area, hierarchy, lr "
        f"(got {value!r})",
        hint="e.g. refine: true, or refine: {steps: 60, area: 0.5}",
    )


Refine = Annotated[
    RefineSpec | None,
    BeforeValidator(_refine, json_schema_input_type=bool | RefineSpec | None),
]


MAX_KEYWORDS = 1000


def _keywords(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_KEYWORDS:
        return value
    raise _error(
        "keywords_type",
        f"keywords is auto or a whole number of words, 1..{MAX_KEYWORDS} (got {value!r})",
        hint="e.g. keywords: auto, or keywords: 2 (the node's 2 words of lowest attention entropy)",
    )


Keywords = Annotated[
    Literal["auto"] | int | None,
    BeforeValidator(_keywords, json_schema_input_type=Literal["auto"] | Annotated[int, Field(ge=1)] | None),
]


CONTROL_SOURCES = ("layer", "init_image")
"""``control: {source: ...}`` names: the node's own layer, the scene's init image; anything else is a path."""


def _control_source_kind(value: Any) -> str:
    return "ControlSourceName" if value in CONTROL_SOURCES else "ControlSourcePath"


ControlSource = Annotated[
    Annotated[Literal[CONTROL_SOURCES], Tag("ControlSourceName")]  # type: ignore[valid-type]
    | Annotated[AssetRef, Tag("ControlSourcePath")],
    Discriminator(_control_source_kind),
]
MASK_TAGS = MASK_TAGS | {"ControlSourceName", "ControlSourcePath"}  # union tags, dropped from error paths


class ControlSpec(_Spec):
    """A ControlNet acting in the node's region (Collage Diffusion, Sarukkai et al., arXiv:2303.00262,
    §4.3: its residuals are multiplied by a weight map, the node's weight times its effective mask)."""

    image: AssetRef | None = Field(
        None, description="A ready conditioning image (e.g. an edge map), relative to the scene file."
    )
    source: ControlSource | None = Field(
        None,
        description="Make the conditioning image from: layer (the node's layer), init_image, or a picture "
        "file relative to the scene file; 'kind' says how.",
    )
    kind: str | None = Field(
        None,
        min_length=1,
        description="The preprocessor that turns 'source' into the conditioning image: edges (default), "
        "none, or one registered in hmedit.control.preprocess.",
    )
    model: str | None = Field(
        None,
        min_length=1,
        description="The ControlNet: toy-controlnet (bundled, the default with the toy model), a diffusers "
        "ControlNet folder or a hub id in the local Hugging Face cache. Required with other models.",
    )
    weight: Number = Field(1.0, ge=0, le=10, description="Strength of the control in the region, 0..10.")
    start: Number = Field(0.0, ge=0, le=1, description="Fraction of the steps at which the control starts.")
    end: Number = Field(1.0, ge=0, le=1, description="Fraction of the steps at which the control ends.")
    guess: bool = Field(
        False, description="Guess mode (diffusers'): the control acts on the conditional branch only."
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str | None) -> str | None:
        from hmedit.control.preprocess import PREPROCESSORS

        if value is not None and value not in PREPROCESSORS:
            close = difflib.get_close_matches(value, list(PREPROCESSORS), n=1)
            known = ", ".join(sorted(PREPROCESSORS))
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {known}"
            raise _error("control_kind", f"unknown control kind {value!r}", hint=hint)
        return value

    @model_validator(mode="after")
    def _one_image(self) -> ControlSpec:
        if (self.image is None) == (self.source is None):
            raise _error(
                "control_image",
                "a control needs exactly one of image (a ready conditioning image) or source",
                hint="e.g. control: {source: layer, kind: edges}",
            )
        if self.image is not None and self.kind is not None:
            raise _error(
                "control_kind_image",
                "kind applies to source, not to a ready image",
                hint="remove kind, or use source: <file> with kind",
            )
        if self.start >= self.end:
            raise _error(
                "control_window",
                f"start ({self.start:g}) must be smaller than end ({self.end:g})",
                hint="fractions of the sampling steps, e.g. start: 0.0, end: 0.8",
            )
        return self

    @property
    def preprocessor(self) -> str | None:
        """The preprocessor's name (None for a ready image)."""
        if self.source is None:
            return None
        from hmedit.control.preprocess import DEFAULT_KIND

        return self.kind or DEFAULT_KIND


# ------------------------------------------------------------------------------------------------
# Nodes


def _merge_errors(title: str, extra: list[InitErrorDetails], data: Any, handler: Any) -> Any:
    """Run pydantic's own validation and report its errors together with ``extra`` (cross-field) ones."""
    try:
        value = handler(data)
    except ValidationError as exc:
        if not extra:
            raise
        raise ValidationError.from_exception_data(title, [*extra, *_as_init_details(exc)]) from None
    if extra:
        raise ValidationError.from_exception_data(title, extra)
    return value


_BUILTIN_ERRORS = frozenset(typing.get_args(core_schema.ErrorType))


def _as_init_details(exc: ValidationError) -> list[InitErrorDetails]:
    out: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        kind: Any = err["type"]
        ctx = err.get("ctx")
        if kind not in _BUILTIN_ERRORS:
            kind = _error(kind, err["msg"], **(ctx or {}))
        details = InitErrorDetails(type=kind, loc=err["loc"], input=err["input"])
        if ctx is not None and isinstance(kind, str):
            details["ctx"] = ctx
        out.append(details)
    return out


def _given(obj: Any, key: str) -> Any:
    """A key's value as the user gave it, for raw dicts and for models built in code; None when absent."""
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, BaseModel):
        return getattr(obj, key) if key in obj.model_fields_set else None
    return None


def _detail(loc: tuple, data: Any, kind: str, message: str, **ctx: Any) -> InitErrorDetails:
    return InitErrorDetails(type=_error(kind, message, **ctx), loc=loc, input=data)


class Node(_Spec):
    """One region of the scene with its own prompt; children refine it."""

    id: str = Field(
        "root",
        max_length=MAX_NAME_CHARS,
        description="Unique name, also used for output files: up to 100 letters, digits, '_', '.', '-'. "
        "Required on every node but the root.",
    )
    prompt: str = Field("", description="What this region should show.")
    negative: str = Field("", description="What this region should not show (negative prompt).")
    source_prompt: str | None = Field(
        None,
        description="With the scene's inversion: what the init image shows inside this region (the prompt "
        "it is inverted under). Default: the node's prompt.",
    )
    mask: MaskSpec | None = Field(
        None,
        description="The node's region: exactly one of rect, ellipse, polygon (fractions of the image), "
        "image (a grayscale file), band (along a sibling's boundary), attention (where a first pass drew "
        "another node's prompt or word) or click ([x, y]: grown while rendering). Not on the root, which "
        "covers the whole frame.",
    )
    layer: AssetRef | None = Field(
        None,
        description="An RGBA image instead of a mask: alpha is the region, RGB is pasted into the canvas.",
    )
    at: Point = Field(
        (0.0, 0.0),
        description="Top-left position [x, y] of the layer, as fractions of the image size (-10..10).",
    )
    scale: Number | None = Field(
        None,
        gt=0,
        le=COORD_RANGE,
        description="Layer width as a fraction of the image width, in (0, 10]. Default: the layer's pixel "
        "size relative to the scene's size.",
    )
    strength: Number = Field(
        1.0, ge=0, le=10, description="How strongly the node's prompt acts in its region, 0..10."
    )
    noise: Number | None = Field(
        None,
        ge=0,
        le=1,
        description="How much of the region is re-noised before sampling, 0..1 (0 keeps the input, 1 is "
        "pure noise). Default: the parent's; the root's default is 1.",
    )
    feather: Number = Field(
        0.0,
        ge=0,
        le=MAX_FEATHER,
        description="Soft edge of the region: Gaussian sigma in pixels at the reference size, 0..1000.",
    )
    active: tuple[Number, Number] = Field(
        (0.0, 1.0),
        description="[start, end]: the fraction of the sampling steps in which the node acts, "
        "0 <= start < end <= 1.",
    )
    levels: Levels = Field(
        LEVELS,
        description="UNet resolutions the node acts on: all, or coarse / mid / fine, or a list of them.",
    )
    attention: AttentionWeights | None = Field(
        None, description="Per-node override of the scene's attention weights {pos, neg}."
    )
    composition: NodeComposition | None = Field(
        None,
        description="Per-node composition scheme (multiplicative, normalized, top_down or depth_weighted), "
        "used when the scene's composition is hybrid. Default there: normalized.",
    )
    learn: Learn = Field(
        None,
        description="Learn a token for this region's look (textual inversion): true, or {steps, lr, init, "
        "batch}. The prompt becomes '<hm-id> prompt'. Needs a layer, or a mask and the scene's init_image.",
    )
    embedding: AssetRef | None = Field(
        None,
        description="A textual-inversion embedding to use for this node instead of learning one: diffusers "
        "learned_embeds.safetensors/.bin or an A1111 .pt/.safetensors file, relative to the scene file.",
    )
    keywords: Keywords = Field(
        None,
        description="Keep the regional bias on this node's words of lowest cross-attention entropy (MRGD "
        "eq. 6) and let its other words act globally: auto, or a number of words. Costs a first pass. "
        "Default: every word regional.",
    )
    control: ControlSpec | None = Field(
        None,
        description="A ControlNet for this region: {image} or {source: layer | init_image | <file>, kind}, "
        "plus model, weight, start, end, guess.",
    )
    refine: Refine = Field(
        None,
        description="Refine the drawn mask before rendering: true, or weights {steps, text, identity, tv, "
        "area, hierarchy, lr} (paper 000 §5). Needs the scene's init_image.",
    )
    children: tuple[Node, ...] = Field((), description="Nodes that refine this one, each inside its parent.")

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not is_safe_name(value):
            raise _error("id_chars", f"id {value!r} is not a safe file name", hint=safe_name_hint(value))
        return value

    @field_validator("active")
    @classmethod
    def _active_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        start, end = value
        if not 0 <= start < end <= 1:
            raise _error(
                "active_order",
                f"active must be [start, end] with 0 <= start < end <= 1 (got [{start:g}, {end:g}])",
                hint="fractions of the sampling steps, e.g. [0.0, 0.8]",
            )
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _cross_fields(cls, data: Any, handler: Any) -> Any:
        extra: list[InitErrorDetails] = []
        if isinstance(data, dict):
            if data.get("mask") is not None and data.get("layer") is not None:
                extra.append(
                    _detail(
                        ("layer",),
                        data,
                        "mask_and_layer",
                        "a node has either mask or layer, not both",
                        hint="move one of them to a child node",
                    )
                )
            if data.get("learn") not in (None, False) and data.get("embedding") is not None:
                extra.append(
                    _detail(
                        ("embedding",),
                        data,
                        "learn_and_embedding",
                        "a node has either learn or embedding, not both",
                        hint="embedding loads a token, learn makes one: remove one of them",
                    )
                )
            control = data.get("control")
            if _given(control, "source") == "layer" and data.get("layer") is None:
                extra.append(
                    _detail(
                        ("control", "source"),
                        data,
                        "control_layer",
                        "control source 'layer' needs the node's layer, and this node has none",
                        hint="give the node a layer, or use source: <picture file> or image: <file>",
                    )
                )
            for key in ("at", "scale"):
                if data.get(key) is not None and data.get("layer") is None:
                    extra.append(
                        _detail(
                            (key,), data, "layer_only", f"{key} applies only to a layer", hint="remove it"
                        )
                    )
            children = data.get("children")
            if isinstance(children, (list, tuple)):
                for i, child in enumerate(children):
                    if not isinstance(child, (dict, Node)):
                        continue
                    if _given(child, "mask") is None and _given(child, "layer") is None:
                        extra.append(
                            _detail(
                                ("children", i),
                                child,
                                "region_missing",
                                "a child node needs a mask or a layer",
                                hint="add e.g. mask: {rect: [0.25, 0.25, 0.5, 0.5]}",
                            )
                        )
                    if _given(child, "id") is None:
                        extra.append(
                            _detail(
                                ("children", i, "id"),
                                child,
                                "id_missing",
                                "a child node needs an id",
                                hint="add id: <name>, using letters, digits, '_', '.', '-'",
                            )
                        )
        return _merge_errors(cls.__name__, extra, data, handler)

    def walk(self) -> Iterator[Node]:
        """This node and all its descendants, depth-first pre-order."""
        yield self
        for child in self.children:
            yield from child.walk()


# ------------------------------------------------------------------------------------------------
# Edits


class EditSpec(_Spec):
    """One target image of an edit pair (MRGD, Li et al., "Multi-Region Text-Driven Manipulation of
    Diffusion Imagery", AAAI 2024, Alg. 1): the scene with one node's prompt changed (``node`` + ``prompt``),
    one node removed (``node`` + ``remove: true``) or one node added (``add``), denoised beside the source
    from the same latents."""

    id: str = Field(
        max_length=MAX_NAME_CHARS,
        description="The edit's name, also its output file edits/<id>.png: up to 100 letters, digits, "
        "'_', '.', '-'.",
    )
    node: str | None = Field(None, description="The id of the node to change or remove.")
    prompt: str | None = Field(None, description="With node: the node's new prompt.")
    remove: bool = Field(False, description="With node: remove the node (and its children).")
    add: Node | None = Field(
        None, description="A node to add (id, mask or layer, prompt, ...), under parent (default: root)."
    )
    parent: str | None = Field(None, description="With add: the id of the node the new node goes under.")
    inject: Number = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of the steps in which the nodes the edit does not touch take the source's "
        "cross-attention (prompt-to-prompt), 0..1; 0: none.",
    )

    blend: Number = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of the steps in which the target's latents outside the edited node's region "
        "are the source's (local blending), 0..1; 0: none.",
    )

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not is_safe_name(value):
            raise _error("id_chars", f"edit id {value!r} is not a safe file name", hint=safe_name_hint(value))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> EditSpec:
        kinds = [k for k, on in (("prompt", self.prompt is not None), ("remove", self.remove)) if on]
        if self.add is not None:
            kinds.append("add")
        hint = "e.g. {id: blue, node: ball, prompt: a blue ball}, {id: no-ball, node: ball, remove: true}"
        if len(kinds) != 1:
            raise _error(
                "edit_kind",
                "an edit has exactly one of prompt (with node), remove: true (with node) or add",
                hint=hint,
            )
        if kinds[0] == "add" and self.node is not None:
            raise _error("edit_node", "add takes no node (use parent for where it goes)", hint=hint)
        if kinds[0] != "add" and self.node is None:
            raise _error("edit_node", f"{kinds[0]} needs node: the id of the node to edit", hint=hint)
        if kinds[0] != "add" and self.parent is not None:
            raise _error("edit_parent", "parent applies only to add", hint="remove parent")
        return self

    @property
    def kind(self) -> str:
        """ "prompt", "remove" or "add"."""
        return "add" if self.add is not None else "remove" if self.remove else "prompt"

    @property
    def touched(self) -> str:
        """The id of the node the edit changes, removes or adds."""
        return self.add.id if self.add is not None else str(self.node)


# ------------------------------------------------------------------------------------------------
# The scene


class FlatNode(NamedTuple):
    """A node in the flattened tree (depth-first pre-order: a parent always comes before its children)."""

    index: int
    node: Node
    parent: int  # index of the parent, -1 for the root
    depth: int  # 0 for the root
    path: str  # field path in the scene file, e.g. "root.children[1]"
    noise: float  # the node's noise level with inheritance applied


class SourceInfo(NamedTuple):
    """Where a scene came from, for messages: the file (as the user named it) and field positions."""

    file: Path
    positions: dict[tuple[str | int, ...], tuple[int, int]]


def format_field_path(path: tuple[str | int, ...] | list) -> str:
    """('root', 'children', 1, 'mask') -> 'root.children[1].mask'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_field_path(text: str) -> tuple[str | int, ...]:
    """'root.children[1].mask' -> ('root', 'children', 1, 'mask')."""
    out: list[str | int] = []
    for piece in text.replace("[", ".[").split("."):
        if not piece:
            continue
        out.append(int(piece[1:-1]) if piece.startswith("[") and piece.endswith("]") else piece)
    return tuple(out)


class Scene(_Spec):
    """A whole scene file: global settings plus the tree of nodes under ``root``."""

    version: Literal[1] = Field(
        FORMAT_VERSION, description="Version of the scene format; this hmedit reads 1."
    )
    name: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="Output folder name (up to 100 letters, digits, '_', '.', '-'). Default: the scene "
        "file's name.",
    )
    model: str = Field(
        "toy",
        description="The diffusion model: 'toy' (bundled), a local diffusers folder, a Hugging Face hub id, "
        "or a .safetensors file.",
    )
    clip: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="The CLIP that scores regions against their prompts (hmedit score, benches) and guides "
        "CLIP-driven masks: 'toy' (the bundled toy-clip), a transformers CLIPModel folder (relative to the "
        "scene) or a Hugging Face hub id already in the local cache, e.g. openai/clip-vit-base-patch16. "
        "Default: toy.",
    )
    size: tuple[Side, Side] | None = Field(
        None,
        description="[width, height] in pixels: multiples of 8, 64..65536 (the memory plan limits width x "
        "height further). Default: the model's native size (or the init image's size).",
    )
    seed: Seed | None = Field(
        None, description="Random seed, 0..2^63 - 1 (default 0). Use either seed or seeds."
    )
    seeds: tuple[Seed, ...] | None = Field(
        None,
        min_length=1,
        description="Several seeds, each 0..2^63 - 1: one output per seed. Use either seed or seeds.",
    )
    preset: str | None = Field(
        None,
        max_length=256,
        description="Defaults for the model: toy, sd15, sd21, sdxl (configs/), or a path to a preset YAML "
        "file relative to the scene. Default: the model family's preset.",
    )
    steps: Int | None = Field(
        None, ge=1, le=1000, description="Number of sampling steps, 1..1000. Default: the preset's."
    )
    guidance: Number | None = Field(
        None, ge=0, le=100, description="Classifier-free guidance scale, 0..100. Default: the preset's."
    )
    scheduler: Scheduler | None = Field(
        None, description="Sampler: ddim, euler, euler_a, dpmpp_2m, pndm or unipc. Default: the preset's."
    )
    init_image: AssetRef | None = Field(
        None,
        description="Image to edit, relative to the scene file. Without it, the scene is generated "
        "from noise.",
    )
    inversion: Inversion = Field(
        "none",
        description="How the init image enters sampling: none (re-noised with fresh noise), ddim (DDIM "
        "inversion), negative_prompt (DDIM inversion, source prompts as the negative) or null_text "
        "(DDIM inversion plus optimised per-step negative embeddings). Inversions are cached.",
    )
    regions: Regions = Field(
        "attention",
        description="How nodes act on their regions: attention (a bias on cross-attention, one denoising) "
        "or fusion (each node denoised over its own crop with its own prompt, the predictions fused with "
        "its mask as the weight: MultiDiffusion / Mixture of Diffusers).",
    )
    edits: tuple[EditSpec, ...] = Field(
        (),
        description="Edit pairs: targets rendered beside the source from the same latents, each "
        "{id, node, prompt}, {id, node, remove: true} or {id, add: <node>, parent}; written to "
        "edits/<id>.png.",
    )
    composition: Composition = Field(
        "top_down",
        description="How overlapping regions combine: multiplicative, normalized, top_down, depth_weighted "
        "or hybrid (each node's own composition).",
    )
    depth_gamma: Number = Field(
        0.8, gt=0, le=1, description="For depth_weighted: weight falloff per tree level, in (0, 1]."
    )
    attention: AttentionWeights = Field(
        default_factory=AttentionWeights, description="Attention weights {pos, neg} for every node."
    )
    tiling: Tiling | None = Field(
        None,
        description="Tiled sampling: a mapping {tile, overlap, weighting, batch, offsets, fade, coarse, "
        "refine}, 'on' to tile any size, 'off' to render any size whole. Default: on when "
        "the size exceeds the native size.",
    )
    root: Node = Field(description="The root node: covers the whole frame (no mask, no layer).")

    _source: SourceInfo | None = PrivateAttr(None)
    _warnings: list[HmeditError] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not is_safe_name(value):
            raise _error(
                "name_chars", f"name {value!r} is not a safe folder name", hint=safe_name_hint(value)
            )
        return value

    @field_validator("size", mode="before")
    @classmethod
    def _size_shape(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise _error(
                "size_shape", f"size must be [width, height] (got {value!r})", hint="e.g. [512, 512]"
            )
        return value

    @field_validator("size")
    @classmethod
    def _size_valid(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return value
        nearest = [max(64, int(v / 8 + 0.5) * 8) for v in value]
        hint = f"nearest valid size: [{nearest[0]}, {nearest[1]}]"
        for what, v in zip(("width", "height"), value, strict=True):
            if v < 64:
                raise _error("size_small", f"{what} must be at least 64 px (got {v})", hint=hint)
            if v % 8:
                raise _error("size_multiple", f"{what} must be a multiple of 8 (got {v})", hint=hint)
        return value

    @field_validator("tiling", mode="before")
    @classmethod
    def _tiling_switch(cls, value: Any) -> Any:
        # YAML reads on/off/true/false as booleans; a scene given as a dict (the API) may spell them
        if isinstance(value, str) and value.lower() in ("on", "off", "true", "false"):
            value = value.lower() in ("on", "true")
        if value is True:
            return {"enabled": True, "force": True}
        if value is False:
            return {"enabled": False}
        if value is not None and not isinstance(value, (dict, Tiling)):
            raise _error(
                "tiling_value",
                f"tiling is a mapping, on or off (got {value!r})",
                hint="e.g. tiling: {tile: 64, overlap: 16} or tiling: off",
            )
        return value

    @field_validator("root")
    @classmethod
    def _root_noise(cls, root: Node) -> Node:
        return root if root.noise is not None else root.model_copy(update={"noise": 1.0})

    @model_validator(mode="wrap")
    @classmethod
    def _cross_fields(cls, data: Any, handler: Any) -> Any:
        extra: list[InitErrorDetails] = []
        if isinstance(data, dict):
            too_big = _tree_bounds(data)
            if too_big is not None:  # before pydantic walks the tree (recursively)
                raise ValidationError.from_exception_data(cls.__name__, [too_big])
            if "seed" in data and "seeds" in data:
                extra.append(
                    _detail(
                        ("seeds",),
                        data,
                        "seed_and_seeds",
                        "use either seed or seeds, not both",
                        hint="seeds: [1, 2, 3] renders one image per seed",
                    )
                )
            root = data.get("root")
            if isinstance(root, (dict, Node)):
                if _given(root, "keywords") is not None:
                    extra.append(
                        _detail(
                            ("root", "keywords"),
                            data,
                            "root_keywords",
                            "the root has no keywords: its words act globally already",
                            hint="put keywords on a child node with a long prompt",
                        )
                    )
                for key in ("mask", "layer", "at", "scale"):
                    if _given(root, key) is not None:
                        extra.append(
                            _detail(
                                ("root", key),
                                data,
                                "root_region",
                                f"the root has no {key}: it covers the whole frame",
                                hint="put the region on a child node under root.children",
                            )
                        )
                extra.extend(_duplicate_ids(root, data))
                extra.extend(_learn_sources(root, data))
                extra.extend(_control_sources(root, data))
                extra.extend(_edit_targets(root, data))
                extra.extend(_mask_references(root, data))
                extra.extend(_mask_search_sources(root, data))
        return _merge_errors(cls.__name__, extra, data, handler)

    # ---------------------------------------------------------------------------------------------

    @property
    def seed_list(self) -> list[int]:
        """The seeds to render: ``seeds``, or ``[seed]``, or ``[0]``."""
        if self.seeds is not None:
            return list(self.seeds)
        return [self.seed if self.seed is not None else 0]

    def flat(self) -> list[FlatNode]:
        """The tree flattened depth-first in pre-order: parents always come before their children."""
        out: list[FlatNode] = []

        def visit(node: Node, parent: int, depth: int, path: str, inherited: float) -> None:
            noise = node.noise if node.noise is not None else inherited
            index = len(out)
            out.append(FlatNode(index, node, parent, depth, path, noise))
            for i, child in enumerate(node.children):
                visit(child, index, depth + 1, f"{path}.children[{i}]", noise)

        visit(self.root, -1, 0, "root", 1.0)
        return out

    def edit_target(self, edit: EditSpec | str) -> Scene:
        """The scene an edit (or the id of one of ``edits``) renders: its node's prompt changed (its
        ``source_prompt`` kept: what the init image shows there), the node and its children removed, or the
        new node appended to its parent's children; without edits of its own."""
        if isinstance(edit, str):
            edit = next(e for e in self.edits if e.id == edit)

        def rebuild(node: Node) -> Node | None:
            if edit.kind == "remove" and node.id == edit.node:
                return None
            update: dict[str, Any] = {}
            if edit.kind == "prompt" and node.id == edit.node:
                update["prompt"] = edit.prompt
                if node.source_prompt is None and self.inversion != "none":
                    update["source_prompt"] = node.prompt  # the source image still shows the old prompt
            children = [c for c in (rebuild(c) for c in node.children) if c is not None]
            if edit.kind == "add" and node.id == (edit.parent or "root"):
                children.append(edit.add)
            if tuple(children) != node.children:
                update["children"] = tuple(children)
            return node.model_copy(update=update) if update else node

        root = rebuild(self.root)
        assert root is not None  # the root is never removed (validated)
        return self.model_copy(update={"root": root, "edits": ()})

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError if there is none)."""
        for node in self.root.walk():
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def source(self) -> Path | None:
        """The scene file this was loaded from (as the user named it), or None for a scene built in code."""
        return self._source.file if self._source else None

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the scene are resolved against."""
        return self._source.file.parent.absolute() if self._source else Path.cwd()

    @property
    def warnings(self) -> list[HmeditError]:
        """Warnings found while loading (they do not stop a render)."""
        return list(self._warnings)

    def position(self, field_path: str | tuple[str | int, ...]) -> tuple[int, int] | None:
        """(line, column), 1-based, of a field in the scene file, e.g. ``"root.children[1].mask"``.

        Falls back to the nearest enclosing field that has a position (a default value has none);
        None for a scene that was not loaded from a file.
        """
        if self._source is None:
            return None
        path = parse_field_path(field_path) if isinstance(field_path, str) else tuple(field_path)
        positions = self._source.positions
        while path not in positions and path:
            path = path[:-1]
        return positions.get(path)

    def where(self, field_path: str | tuple[str | int, ...]) -> dict[str, Any]:
        """Keyword arguments for ``HmeditError`` / ``Diagnostics.error`` pointing at a field of this scene.

        Example: ``diags.warn("mask is empty", **scene.where(f"{flat.path}.mask"), hint="...")``.
        """
        text = field_path if isinstance(field_path, str) else format_field_path(field_path)
        pos = self.position(field_path)
        return {
            "file": self.source,
            "line": pos[0] if pos else None,
            "column": pos[1] if pos else None,
            "field": text,
        }


def _tree_bounds(data: dict) -> InitErrorDetails | None:
    """The tree's depth and node count against ``HMEDIT_MAX_TREE_DEPTH`` / ``HMEDIT_MAX_NODES``, walked
    iteratively over the raw data: an error for the first node past a bound, else None."""
    from hmedit.scene.limits import limit, raise_hint

    max_depth, max_nodes = limit("MAX_TREE_DEPTH"), limit("MAX_NODES")
    stack: list[tuple[Any, tuple, int]] = [(data.get("root"), ("root",), 0)]
    count = 0
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, (dict, Node)):
            continue
        count += 1
        if depth > max_depth:
            problem = f"the tree of nodes is more than {max_depth} levels deep"
            return _detail(path, data, "tree_depth", problem, hint=raise_hint("MAX_TREE_DEPTH"))
        if count > max_nodes:
            problem = f"the scene has more than {max_nodes} nodes"
            return _detail(path, data, "tree_nodes", problem, hint=raise_hint("MAX_NODES"))
        children = _given(node, "children")
        if isinstance(children, (list, tuple)):
            stack.extend(
                (child, (*path, "children", i), depth + 1) for i, child in reversed(list(enumerate(children)))
            )
    return None


def _duplicate_ids(root: dict, data: Any) -> list[InitErrorDetails]:
    """Ids must be unique across the tree: report each repeat with the path of its first use."""
    seen: dict[str, tuple] = {}
    out: list[InitErrorDetails] = []

    def visit(node: Any, path: tuple, default_id: str | None) -> None:
        if not isinstance(node, (dict, Node)):
            return
        node_id = _given(node, "id") or default_id
        if isinstance(node_id, str):
            if node_id in seen:
                first = seen[node_id]
                out.append(
                    _detail(
                        (*path, "id"),
                        data,
                        "duplicate_id",
                        f"duplicate id {node_id!r} (also used by {format_field_path(first)})",
                        hint="ids must be unique across the tree",
                        first=first,
                    )
                )
            else:
                seen[node_id] = path
        children = _given(node, "children")
        if isinstance(children, (list, tuple)):
            for i, child in enumerate(children):
                visit(child, (*path, "children", i), None)

    visit(root, ("root",), "root")
    return out


def _nodes(root: Any) -> Iterator[tuple[Any, tuple]]:
    """Every node (dict or Node) of a tree as given, with its field path, parents first; recursion-free."""
    stack: list[tuple[Any, tuple]] = [(root, ("root",))]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, (dict, Node)):
            continue
        yield node, path
        children = _given(node, "children")
        if isinstance(children, (list, tuple)):
            stack.extend((child, (*path, "children", i)) for i, child in reversed(list(enumerate(children))))


def _learn_sources(root: Any, data: Any) -> list[InitErrorDetails]:
    """A node that learns a token needs pixels to learn from: its layer, or its mask on the init image."""
    has_init = _given(data, "init_image") is not None
    out: list[InitErrorDetails] = []
    for node, path in _nodes(root):
        if _given(node, "learn") in (None, False):
            continue
        if path == ("root",):
            problem, hint = "the root cannot learn a token: it has no region", "put learn on a child node"
        elif _given(node, "layer") is None and (_given(node, "mask") is None or not has_init):
            problem = "learn needs a layer, or a mask and the scene's init_image, to learn from"
            hint = "give the node a layer image, or set init_image, or use embedding: with a file"
        else:
            continue
        out.append(_detail((*path, "learn"), data, "learn_source", problem, hint=hint))
    return out


def _control_sources(root: Any, data: Any) -> list[InitErrorDetails]:
    """``control: {source: init_image}`` needs the scene's init_image."""
    if _given(data, "init_image") is not None:
        return []
    out: list[InitErrorDetails] = []
    for node, path in _nodes(root):
        if _given(_given(node, "control"), "source") == "init_image":
            problem = "control source 'init_image' needs the scene's init_image, and this scene has none"
            hint = "set init_image, or use source: <picture file> or image: <file>"
            out.append(_detail((*path, "control", "source"), data, "control_init", problem, hint=hint))
    return out


def _edit_targets(root: Any, data: Any) -> list[InitErrorDetails]:
    """Edits name nodes that exist (the root cannot be removed), add nodes under existing ones with new ids,
    and have distinct ids."""
    edits = _given(data, "edits")
    if not isinstance(edits, (list, tuple)):
        return []
    ids = {_given(node, "id") or ("root" if path == ("root",) else None) for node, path in _nodes(root)}
    ids.discard(None)
    known = ", ".join(sorted(str(i) for i in ids))
    out: list[InitErrorDetails] = []
    seen: dict[str, int] = {}
    for i, edit in enumerate(edits):
        if not isinstance(edit, (dict, EditSpec)):
            continue
        where = ("edits", i)
        eid = _given(edit, "id")
        if isinstance(eid, str):
            if eid in seen:
                problem = f"duplicate edit id {eid!r} (also used by edits[{seen[eid]}])"
                out.append(
                    _detail((*where, "id"), data, "edit_duplicate", problem, hint="edit ids are unique")
                )
            else:
                seen[eid] = i
        for key in ("node", "parent"):
            ref = _given(edit, key)
            if isinstance(ref, str) and ref not in ids:
                close = difflib.get_close_matches(ref, [str(x) for x in ids], n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"the scene's nodes: {known}"
                out.append(
                    _detail((*where, key), data, "edit_unknown", f"no node {ref!r} in the scene", hint=hint)
                )
        if _given(edit, "remove") is True and _given(edit, "node") == "root":
            problem = "the root cannot be removed: it is the whole frame"
            hint = "remove a child node, or change the root's prompt with node: root, prompt: ..."
            out.append(_detail((*where, "remove"), data, "edit_remove_root", problem, hint=hint))
        added = _given(edit, "add")
        add_id = _given(added, "id") if isinstance(added, (dict, Node)) else None
        if isinstance(added, (dict, Node)):
            if add_id is None:
                out.append(
                    _detail(
                        (*where, "add", "id"),
                        data,
                        "id_missing",
                        "an added node needs an id",
                        hint="add id: <name>, using letters, digits, '_', '.', '-'",
                    )
                )
            elif add_id in ids:
                problem = f"the added node's id {add_id!r} is already used in the scene"
                out.append(
                    _detail((*where, "add", "id"), data, "edit_add_id", problem, hint="give it a new id")
                )
            if _given(added, "mask") is None and _given(added, "layer") is None:
                out.append(
                    _detail(
                        (*where, "add"),
                        data,
                        "region_missing",
                        "an added node needs a mask or a layer",
                        hint="add e.g. mask: {rect: [0.25, 0.25, 0.5, 0.5]}",
                    )
                )
    return out


def prompt_words(text: str) -> list[str]:
    """The words of a prompt, lower-cased, as ``attention.word`` and ``hmedit render --words`` name them."""
    return re.findall(r"[\w'-]+", text.lower())


def _reference(node: Any) -> tuple[str, str, Any] | None:
    """(kind, the id it names, its spec) of a node's band / attention mask, or None."""
    mask = _given(node, "mask")
    for kind in ("band", "attention"):
        spec = _given(mask, kind)
        of = _given(spec, "of")
        if isinstance(of, str):
            return kind, of, spec
    return None


def _mask_references(root: Any, data: Any) -> list[InitErrorDetails]:
    """``band`` and ``attention`` masks name another node: it must exist, not be the node itself or come
    back to it (a cycle); a band follows a sibling; an attention map comes from a first pass without the
    attention-mask nodes, so the node it reads must not depend on one; a word must be in its prompt."""
    nodes = list(_nodes(root))
    by_id: dict[str, tuple[Any, tuple]] = {}
    parent_of: dict[tuple, tuple | None] = {("root",): None}
    for node, path in nodes:
        node_id = _given(node, "id") or ("root" if path == ("root",) else None)
        if isinstance(node_id, str):
            by_id.setdefault(node_id, (node, path))
        children = _given(node, "children")
        if isinstance(children, (list, tuple)):
            for i in range(len(children)):
                parent_of[(*path, "children", i)] = path
    refs = {path: ref for node, path in nodes if (ref := _reference(node)) is not None}
    out: list[InitErrorDetails] = []

    def add(path: tuple, kind: str, key: str, problem: str, hint: str) -> None:
        out.append(_detail((*path, "mask", kind, key), data, f"{kind}_reference", problem, hint=hint))

    def target(path: tuple) -> tuple | None:
        ref = refs.get(path)
        return by_id[ref[1]][1] if ref is not None and ref[1] in by_id else None

    def from_attention(path: tuple) -> bool:
        """The node at ``path`` is absent from the first pass: it, an ancestor, or what its band follows
        has an attention mask."""
        seen: set[tuple] = set()
        while path is not None and path not in seen:
            seen.add(path)
            up: tuple | None = path
            while up is not None:
                if refs.get(up, ("",))[0] == "attention":
                    return True
                up = parent_of.get(up)
            path = target(path)  # type: ignore[assignment]
        return False

    reported: set[tuple] = set()
    for path, (kind, of, spec) in refs.items():
        if of not in by_id:
            close = difflib.get_close_matches(of, list(by_id), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "of: names another node's id"
            add(path, kind, "of", f"no node has id {of!r}", hint)
            continue
        other, other_path = by_id[of]
        if other_path == path:
            add(path, kind, "of", f"a {kind} mask cannot follow its own node", "name another node")
            continue
        # a cycle: following the references from here comes back here
        seen, step = {path}, other_path
        while step is not None and step not in seen:
            seen.add(step)
            step = target(step)
        if step == path:
            if path not in reported:
                reported.update(seen)
                add(
                    path,
                    kind,
                    "of",
                    f"the masks of {of!r} and this node refer to each other (a cycle)",
                    "one of them needs a mask of its own",
                )
            continue
        if kind == "band":
            if other_path == ("root",):
                add(path, kind, "of", "the root has no boundary to follow", "name a node with a mask")
            elif parent_of.get(other_path) != parent_of.get(path):
                where = format_field_path(parent_of.get(other_path) or ("root",))
                add(
                    path,
                    kind,
                    "of",
                    f"a band goes next to the node it follows, and {of!r} has another parent",
                    f"move this node into the children of {where}",
                )
            continue
        up = parent_of.get(other_path)
        while up is not None and up != path:
            up = parent_of.get(up)
        if up == path:
            add(
                path,
                kind,
                "of",
                f"{of!r} lies inside this node, which the first pass leaves out",
                "read the attention of a node outside this one",
            )
        elif from_attention(other_path):
            add(
                path,
                kind,
                "of",
                f"{of!r} itself depends on an attention mask (one first pass only)",
                "read the attention of a node with a drawn mask, or of the root",
            )
        else:
            word = _given(spec, "word")
            prompt = _given(other, "prompt")
            if isinstance(word, str) and isinstance(prompt, str):
                want, have = " ".join(prompt_words(word)), prompt_words(prompt)
                if not want or f" {want} " not in f" {' '.join(have)} ":
                    shown = ", ".join(dict.fromkeys(have)) or "none: its prompt is empty"
                    add(
                        path,
                        kind,
                        "word",
                        f"{word!r} is not a word of the prompt of {of!r}",
                        f"its words: {shown}",
                    )
    return out


def _mask_search_sources(root: Any, data: Any) -> list[InitErrorDetails]:
    """Click masks and refinement edit a source picture (pixels outside the mask stay the source's): they
    need the scene's init_image; the root has no region to refine."""
    has_init = _given(data, "init_image") is not None
    out: list[InitErrorDetails] = []
    for node, path in _nodes(root):
        if path == ("root",):
            if _given(node, "refine") not in (None, False):
                problem, hint = "the root cannot refine a mask: it covers the whole frame", "refine a child"
                out.append(_detail((*path, "refine"), data, "refine_root", problem, hint=hint))
            continue
        if has_init:
            continue
        mask = _given(node, "mask")
        if _given(mask, "click") is not None:
            problem = "a click mask needs the scene's init_image (it grows while editing a picture)"
            out.append(_detail((*path, "mask", "click"), data, "click_init", problem, hint="set init_image"))
        if _given(node, "refine") not in (None, False):
            problem = "refine needs the scene's init_image (it keeps the source outside the masks)"
            out.append(_detail((*path, "refine"), data, "refine_init", problem, hint="set init_image"))
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of scene files (what ``hmedit schema`` prints); every field has a description."""
    schema = Scene.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "hmedit scene",
        "description": "Global settings and a tree of nodes, each with a region and a prompt.",
    }
