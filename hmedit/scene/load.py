"""Reading scene files: YAML with line/column kept, validation into a typed ``Scene``, messages that point.

Every problem becomes an ``HmeditError`` with ``file:line:col: field.path: problem (hint)``. Positions come
from ``yaml.compose`` (the node graph keeps marks); pydantic's error ``loc`` tuples are walked through the raw
data to a field path, which is looked up in the position map (falling back to the nearest enclosing field).
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hmedit.errors import Diagnostics, HmeditError
from hmedit.scene.limits import limit, raise_hint
from hmedit.scene.spec import (
    MASK_KINDS,
    MASK_TAGS,
    MAX_NAME_CHARS,
    AssetRef,
    AttentionSpec,
    AttentionWeights,
    BandSpec,
    LearnSpec,
    Node,
    Scene,
    SourceInfo,
    Tiling,
    format_field_path,
    is_safe_name,
    safe_name_hint,
)

SCENE_SUFFIXES = (".yaml", ".yml")
MAX_REPORTED = 100
"""Problems listed per scene file; the rest are counted."""
FieldPath = tuple[str | int, ...]
Positions = dict[FieldPath, tuple[int, int]]

# -------------------------------------------------------------------------------------------------
# Public API


Check = Callable[[Scene], Diagnostics]
"""A deeper check of a valid scene by a room above this one (hmedit.masks.checks rasterises the masks)."""


def load_scene(path: str | os.PathLike, *, deep: bool = False, checks: Sequence[Check] = ()) -> Scene:
    """Read and validate a scene file; raise the first problem as ``HmeditError`` (the rest in ``.others``).

    ``deep=True`` also opens the scene's inputs (init image, layers, masks, embeddings) as the render will,
    and runs ``checks``. Warnings do not raise; they are kept in ``scene.warnings``.
    """
    scene, diags = _load(Path(path), deep=deep, checks=checks)
    diags.raise_if_errors()
    assert scene is not None
    return scene


def validate(path: str | os.PathLike, checks: Sequence[Check] = ()) -> tuple[Scene | None, Diagnostics]:
    """Read and check a scene file and its inputs, then run ``checks``; never raises for a user mistake.
    :func:`hmedit.masks.checks.validate` is this with the mask checks, what ``hmedit validate`` runs.

    Returns the scene (None when it has errors) and every error and warning found.
    """
    return _load(Path(path), deep=True, checks=checks)


def find_scenes(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Scene files among ``paths``: files as given, folders searched recursively for *.yaml / *.yml.

    Hidden folders (.git, .venv, ...) are skipped. The result is sorted and has no repeats.
    Raises ``HmeditError`` for a path that does not exist.
    """
    found: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
                found.update(Path(folder) / f for f in files if f.lower().endswith(SCENE_SUFFIXES))
        elif path.is_file():
            found.add(path)
        else:
            raise HmeditError(
                "no such file or folder",
                file=path,
                hint="give scene files (*.yaml) or folders that contain them",
            )
    return sorted(found)


# ------------------------------------------------------------------------------------------------
# Loading


def load_text(text: str, *, base_dir: str | os.PathLike | None = None, deep: bool = False) -> Scene:
    """A scene from YAML text (the API's ``load_scene`` of a string); relative paths are taken from
    ``base_dir`` (default: the working folder), a missing ``name`` is "scene". Errors name ``<text>``."""
    scene, diags = _load(TEXT_SOURCE, deep=deep, text=text, base_dir=Path(base_dir or "."))
    diags.raise_if_errors()
    assert scene is not None
    return scene


TEXT_SOURCE = Path("<text>")


def _load(
    file: Path,
    *,
    deep: bool,
    text: str | None = None,
    base_dir: Path | None = None,
    checks: Sequence[Check] = (),
) -> tuple[Scene | None, Diagnostics]:
    diags = Diagnostics()
    scene = _load_spec(file, diags, text, base_dir)
    if scene is not None and deep and not diags.errors:
        check_inputs(scene, diags)
        for check in checks:
            try:
                found = check(scene)
            except HmeditError as exc:
                diags.errors.append(exc)
                continue
            diags.errors.extend(found.errors)
            diags.warnings.extend(found.warnings)
        diags.errors = list({err.format(): err for err in diags.errors}.values())
    if scene is not None:
        scene._warnings = list(diags.warnings)
    return (scene if not diags.errors else None), diags


def _load_spec(
    file: Path, diags: Diagnostics, text: str | None = None, base_dir: Path | None = None
) -> Scene | None:
    try:
        text = _read_text(file) if text is None else text
    except HmeditError as exc:
        diags.errors.append(exc)
        return None
    except FileNotFoundError:
        diags.error("file not found", file=file, hint="check the path")
        return None
    except IsADirectoryError:
        diags.error("is a folder, not a scene file", file=file)
        return None
    except UnicodeDecodeError as exc:
        diags.error(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", file=file)
        return None
    except OSError as exc:
        diags.error(f"cannot read the file: {exc.strerror or exc}", file=file)
        return None

    parsed = parse_yaml(text, file, diags)
    if parsed is None:
        return None
    data, positions = parsed

    if data is None:
        diags.error(
            "the scene file is empty",
            file=file,
            line=1,
            column=1,
            hint="a scene needs at least root: {prompt: ...}",
        )
        return None
    if not isinstance(data, dict):
        diags.error(
            f"a scene is a mapping of keys (version, root, ...), not a {_yaml_type(data)}",
            file=file,
            line=1,
            column=1,
            hint="start with root: {prompt: ...}",
        )
        return None

    context = {"base_dir": (base_dir or file.parent).absolute()}
    try:
        scene = Scene.model_validate(data, context=context)
    except ValidationError as exc:
        seen: set[str] = set()
        errors = exc.errors(include_url=False)
        for err in errors[:MAX_REPORTED]:
            problem = translate_error(err, data, positions, file)
            if problem.format() not in seen:
                seen.add(problem.format())
                diags.errors.append(problem)
        diags.errors.sort(key=lambda e: (e.location.line or 0, e.location.column or 0))
        if len(errors) > MAX_REPORTED:
            diags.error(
                f"{len(errors) - MAX_REPORTED} more problems not shown",
                file=file,
                hint="fix the ones above and validate again",
            )
        return None

    if scene.name is None:
        stem = "scene" if file == TEXT_SOURCE else file.stem
        if not is_safe_name(stem) or len(stem) > MAX_NAME_CHARS:
            diags.error(
                f"the file name {stem!r} is not a safe folder name and the scene sets no name",
                file=file,
                line=1,
                column=1,
                field="name",
                hint=f"add name: ... ({safe_name_hint(stem)})",
            )
            return None
        scene = scene.model_copy(update={"name": stem})
    scene._source = SourceInfo(file, positions)
    _warn(scene, data, diags)
    return scene


def _read_text(file: Path) -> str:
    """The file's text, refusing files above ``HMEDIT_MAX_SCENE_BYTES`` before reading them."""
    allowed = limit("MAX_SCENE_BYTES")
    with open(file, "rb") as fh:
        if not file.is_file():
            raise IsADirectoryError(str(file))
        raw = fh.read(allowed + 1)
    if len(raw) > allowed:
        raise HmeditError(
            f"the scene file is larger than the limit of {allowed} bytes",
            file=file,
            hint=f"scenes are a few KiB; {raise_hint('MAX_SCENE_BYTES')}",
        )
    return raw.decode("utf-8")


CHECK_DECODE_SIDE = 1024
"""Validation decodes images reduced to a long side of 1024 to 2048 px: every byte is read (a truncated or
corrupt file fails), but memory stays small."""


def check_inputs(scene: Scene, diags: Diagnostics) -> None:
    """Open every file the scene reads, with the loaders a render uses, and check the render's size against
    the memory plan (``hmedit.scene.limits.check_render_size``): what passes here does not fail later.

    Images are checked from their header first (``HMEDIT_MAX_IMAGE_PIXELS``); the init image is then
    decoded reduced (layers and mask images are decoded by the mask checks); embedding files are read
    with the loader a render uses (safetensors, or torch with weights only).
    """
    from hmedit.scene.assets import image_size, open_image
    from hmedit.scene.limits import check_render_size

    def attempt(path: str, check: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except HmeditError as exc:
            diags.error(exc.problem, **scene.where(path), hint=exc.hint)
            return None

    init_size = None
    if scene.init_image is not None:
        init_size = attempt("init_image", image_size, scene.init_image, field="init_image")
        if init_size is not None:
            attempt("init_image", open_image, scene.init_image, max_side=CHECK_DECODE_SIDE)
    for flat in scene.flat():
        node = flat.node
        # layers and mask images: the header here, the pixels in the mask checks (they decode them)
        for key, ref in (("layer", node.layer), ("mask.image", getattr(node.mask, "image", None))):
            if ref is not None:
                attempt(f"{flat.path}.{key}", image_size, ref)
        if node.embedding is not None:
            attempt(f"{flat.path}.embedding", _check_embedding, node.embedding)
        for key in ("image", "source"):  # control pictures: header, then decoded reduced
            ref = getattr(node.control, key, None)
            if isinstance(ref, AssetRef) and attempt(f"{flat.path}.control.{key}", image_size, ref):
                attempt(f"{flat.path}.control.{key}", open_image, ref, max_side=CHECK_DECODE_SIDE)

    size, where = (scene.size, "size") if scene.size is not None else (init_size, "init_image")
    if size is not None:
        tiled = scene.tiling is None or scene.tiling.enabled
        attempt(where, check_render_size, size[0], size[1], len(scene.flat()), tiled=tiled)


def _check_embedding(path: os.PathLike) -> None:
    from hmedit.scene.embeddings import load_embedding

    load_embedding(path)


def _warn(scene: Scene, data: dict, diags: Diagnostics) -> None:
    """Things that are valid but almost certainly not what the author meant."""
    where = scene.where
    if "depth_gamma" in data and scene.composition not in ("depth_weighted", "hybrid"):
        diags.warn(
            f"depth_gamma has no effect with composition {scene.composition}",
            **where("depth_gamma"),
            hint="set composition: depth_weighted, or remove depth_gamma",
        )
    if scene.composition != "hybrid":
        for flat in scene.flat():
            if flat.node.composition is not None:
                diags.warn(
                    "a node's composition is used only when the scene's composition is hybrid",
                    **where(f"{flat.path}.composition"),
                    hint="set composition: hybrid at the top of the file",
                )
    if scene.seeds is not None:
        repeats = sorted(seed for seed, n in Counter(scene.seeds).items() if n > 1)
        if repeats:
            diags.warn(
                f"seeds repeat {', '.join(map(str, repeats))}: the same image is rendered twice",
                **where("seeds"),
                hint="list each seed once",
            )


# ------------------------------------------------------------------------------------------------
# YAML with positions


class SceneYAMLError(yaml.MarkedYAMLError):
    """A YAML file that parses but is out of bounds (too deep, too many values, an endless alias, a number
    too long): reported as is, with its own hint, instead of as a syntax error."""

    def __init__(self, problem: str, mark: yaml.Mark | None, hint: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


# YAML 1.2 reads 1e6 and 2.5e-3 as numbers; PyYAML (YAML 1.1) wants a dot and a signed exponent (1.0e+6)
# and reads the rest as text, which a scene author never means.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_MAX_INT_DIGITS = 40


class _SceneLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting depth, values after alias expansion (counted on the node
    graph, never expanded), no alias inside its own anchor, no number longer than 40 digits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.max_depth = limit("MAX_YAML_DEPTH")
        self._depth = 0
        self._open_anchors: list[str] = []
        self.first_alias: yaml.Mark | None = None

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise SceneYAMLError(
                    f"the alias *{event.anchor} is inside its own anchor &{event.anchor} (it never ends)",
                    event.start_mark,
                    hint="an alias can only repeat a value that is complete before it",
                )
            self.first_alias = self.first_alias or event.start_mark
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > self.max_depth:
            raise SceneYAMLError(
                f"the YAML is nested more than {self.max_depth} levels deep",
                event.start_mark,
                hint=f"a scene is a few levels deep; {raise_hint('MAX_YAML_DEPTH')}",
            )
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.pop()

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = len(node.value.replace("_", "").lstrip("+-"))
        if digits > _MAX_INT_DIGITS:
            raise SceneYAMLError(
                f"a number {digits} digits long is out of range",
                node.start_mark,
                hint=f"numbers in a scene fit in {_MAX_INT_DIGITS} digits; seeds are 0 to 2^63 - 1",
            )
        return super().construct_yaml_int(node)


_SceneLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
_SceneLoader.add_constructor("tag:yaml.org,2002:int", _SceneLoader.construct_yaml_int)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of the document with every alias expanded, computed on the node graph (each node
    once, iteratively): what a walk over the loaded data will meet."""
    memo: dict[int, tuple[int, int]] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in memo:
            continue
        if isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        else:
            kids = []
        if not ready:
            stack.append((node, True))
            stack.extend((kid, False) for kid in kids if id(kid) not in memo)
            continue
        values = 1 + sum(memo[id(kid)][0] for kid in kids)
        depth = 1 + max((memo[id(kid)][1] for kid in kids), default=0)
        memo[id(node)] = (min(values, 1 << 62), depth)
    return memo[id(root)]


def parse_yaml(text: str, file: Path, diags: Diagnostics) -> tuple[Any, Positions] | None:
    """One YAML document: (data, positions of every field path), or None after reporting a problem.

    Bounded in time and memory: see ``_SceneLoader`` and ``hmedit.scene.limits``."""
    allowed = limit("MAX_SCENE_BYTES")
    if len(text) > allowed:  # a file is refused before it is read; text given directly, here
        diags.error(
            f"the scene is larger than the limit of {allowed} bytes",
            file=file,
            hint=f"scenes are a few KiB; {raise_hint('MAX_SCENE_BYTES')}",
        )
        return None
    try:
        loader = _SceneLoader(text)  # reads the whole text: refuses control characters
    except yaml.YAMLError as exc:
        diags.error(f"invalid YAML: {' '.join(str(exc).split())}", file=file, hint="remove the character")
        return None
    try:
        node = loader.get_single_node()
        if node is not None:
            values, depth = _expanded_size(node)
            max_values, max_depth = limit("MAX_YAML_VALUES"), loader.max_depth
            aliases = loader.first_alias is not None
            if values > max_values or depth > max_depth:
                many = values > max_values
                what = f"more than {max_values} values" if many else f"deeper than {max_depth} levels"
                name = "MAX_YAML_VALUES" if values > max_values else "MAX_YAML_DEPTH"
                raise SceneYAMLError(
                    f"the YAML expands to {what}" + (" through its aliases (*name)" if aliases else ""),
                    loader.first_alias if aliases else node.start_mark,
                    hint=(
                        "an alias repeats all its anchor holds: do not nest them"
                        if aliases
                        else "split the scene into several files"
                    )
                    + f", or {raise_hint(name)}",
                )
        positions: Positions = {}
        if node is not None:  # before constructing, which folds merge keys (<<) into their mappings
            positions[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
            _collect_positions(node, (), positions, file, diags)
        data = loader.construct_document(node) if node is not None else None
    except SceneYAMLError as exc:
        mark = exc.problem_mark
        diags.error(
            exc.problem or "out of bounds",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint=exc.hint,
        )
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        diags.error(
            f"invalid YAML: {' '.join(problem.split())}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            hint=_yaml_hint(text, exc),
        )
        return None
    except yaml.YAMLError as exc:
        diags.error(f"invalid YAML: {' '.join(str(exc).split())}", file=file)
        return None
    finally:
        loader.dispose()
    return data, positions


def _collect_positions(
    node: yaml.Node, path: FieldPath, out: Positions, file: Path, diags: Diagnostics
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in seen:
                diags.error(
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    file=file,
                    line=line,
                    column=col,
                    field=printable(format_field_path((*path, key))),
                    hint="YAML keeps only the last one: remove one of them",
                )
            else:
                seen[key] = line
            out[(*path, key)] = (line, col)
            _collect_positions(value_node, (*path, key), out, file, diags)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _collect_positions(item, (*path, i), out, file, diags)


def _yaml_hint(text: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark
    if mark is not None:
        lines = text.splitlines()
        if mark.line < len(lines) and "\t" in lines[mark.line]:
            return "YAML does not allow tabs: indent with spaces"
    problem = exc.problem or ""
    if "mapping values are not allowed" in problem:
        return "a value with ': ' in it needs quotes, or a key is indented wrongly"
    if "found character '%' " in problem or "found character '@'" in problem or "'`'" in problem:
        return "put the value in quotes"
    if (
        "expected <block end>" in problem
        or "expected ',' or ']'" in problem
        or "expected ',' or '}'" in problem
    ):
        return "check the indentation and the brackets near here"
    return "check the indentation and quotes near here"


def printable(text: str) -> str:
    """Text for a one-line message: control and other unprintable characters as escapes (\\x1e)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _yaml_type(value: Any) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


# ------------------------------------------------------------------------------------------------
# pydantic errors → HmeditError


def field_path_of(loc: tuple, data: Any) -> FieldPath:
    """Walk a pydantic error ``loc`` through the raw data: keep keys and indices, drop union tags."""
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        if part in MASK_TAGS:
            continue
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, (list, tuple)) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
        elif isinstance(part, str) and i == len(loc) - 1:
            current = None  # a missing key: name it, it has no position of its own
        else:
            continue  # a validator's or union member's name
        path.append(part)
    return tuple(path)


def position_of(path: FieldPath, positions: Positions) -> tuple[int, int] | None:
    while path not in positions and path:
        path = path[:-1]
    return positions.get(path)


def translate_error(err: dict, data: Any, positions: Positions, file: Path) -> HmeditError:
    """One pydantic error as an ``HmeditError`` at the right line and column, in words a user can act on."""
    path = field_path_of(tuple(err["loc"]), data)
    problem, hint = _describe(err, path, data, positions)
    pos = position_of(path, positions)
    return HmeditError(
        problem,
        file=file,
        line=pos[0] if pos else None,
        column=pos[1] if pos else None,
        field=printable(format_field_path(path)) or None,
        hint=hint,
    )


_SHAPES = {
    "rect": "[x, y, width, height]",
    "ellipse": "[x, y, width, height]",
    "polygon": "[[x, y], [x, y], [x, y], ...]",
    "active": "[start, end]",
    "at": "[x, y]",
    "size": "[width, height]",
    "seeds": "[1, 2, 3]",
    "children": "a list of nodes, each starting with - id: ...",
    "levels": "all, coarse, mid, fine or a list of them",
}
_RANGE_HINTS = {
    "noise": "0 keeps the input image, 1 is pure noise",
    "strength": "0 turns the node's prompt off, 1 is normal",
    "feather": "the edge blur in pixels",
    "guidance": "typical values are 5 to 9",
    "steps": "typical values are 20 to 50",
    "scale": "the layer's width as a fraction of the image width",
    "pos": "1.0 is neutral",
    "neg": "1.0 is neutral",
    "depth_gamma": "a weight falloff per tree level, e.g. 0.8",
    "seed": "seeds are whole numbers from 0 to 2^63 - 1",
    "seeds": "seeds are whole numbers from 0 to 2^63 - 1",
    "size": "width and height are 64 to 65536 px, multiples of 8",
    "rect": "coordinates are fractions of the image, -10 to 10",
    "ellipse": "coordinates are fractions of the image, -10 to 10",
    "polygon": "coordinates are fractions of the image, -10 to 10",
    "at": "coordinates are fractions of the image, -10 to 10",
    "tile": "latent pixels, e.g. 64 on SD",
    "overlap": "latent pixels, smaller than the tile",
}
_LEARN_HINTS = {
    "steps": "the default is 120",
    "lr": "the default is 0.01",
    "batch": "the default is 16",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_BOUND_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _describe(err: dict, path: FieldPath, data: Any, positions: Positions) -> tuple[str, str | None]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    names = [p for p in path if isinstance(p, str)]
    name = names[-1] if names else "scene"
    shape = _SHAPES.get(name)

    if kind == "invalid_key":
        return f"keys must be text (got {_show(value)})", "put the key in quotes, or check the indentation"
    if kind == "extra_forbidden":
        return f"unknown key {name!r}", _unknown_key_hint(name, path[:-1], data)
    if kind == "missing" and err["loc"] and isinstance(err["loc"][-1], int):  # a fixed-length list too short
        count = len(value) if isinstance(value, (list, tuple)) else "fewer"
        return f"too few values (got {count})", f"write {name}: {shape}" if shape else None
    if kind == "missing":
        if path == ("root",):
            return "missing required key 'root'", "a scene needs root: {prompt: ...}"
        return f"missing required key {name!r}", None
    if kind == "mask_kind":
        return _mask_kind_problem(value)
    if kind == "duplicate_id":
        first = tuple(ctx.get("first", ()))
        pos = position_of((*first, "id"), positions) if first else None
        where = format_field_path(first) + (f", line {pos[0]}" if pos else "")
        return f"duplicate id {_show(value_at(path, data))} (also used by {where})", ctx.get("hint")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if name == "version":
            return f"unsupported version {_show(value)}", "this hmedit reads version: 1"
        close = difflib.get_close_matches(str(value), choices, n=1) if choices else []
        listed = ", ".join(choices) if choices else str(ctx.get("expected"))
        hint = f"did you mean {close[0]!r}?" if close else None
        return f"{_show(value)} is not one of {listed}", hint
    if kind in _BOUNDS:
        bound = ctx.get(_BOUND_KEYS[kind])
        hints = _LEARN_HINTS if "learn" in names else _RANGE_HINTS
        return f"{name} must be {_BOUNDS[kind]} {_show(bound)} (got {_show(value)})", hints.get(name)
    unquote = _number_hint(value)
    if kind in ("float_type", "float_parsing"):
        return f"expected a number (got {_show(value)})", unquote
    if kind == "finite_number":
        return f"expected a finite number (got {_show(value)})", None
    if kind in ("int_type", "int_parsing", "int_from_float"):
        if isinstance(value, float):
            whole = value.is_integer() and abs(value) < 1e18
            hint = f"write {int(value)}, without a decimal point or exponent" if whole else None
            return f"expected a whole number (got {value!r})", hint
        return f"expected a whole number (got {_show(value)})", unquote
    if kind == "string_too_long":
        limit_ = ctx.get("max_length")
        length = len(value) if isinstance(value, str) else "more"
        hint = "names become file names: shorten it" if name in ("name", "id") else None
        return f"{name} is {length} characters long, more than {limit_}", hint
    if kind in ("string_type", "string_too_short"):
        if kind == "string_too_short":
            return "must not be empty", None
        return f"expected text (got {_show(value)})", "put it in quotes"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false (got {_show(value)})", None
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return f"expected a list (got {_show(value)})", f"write {name}: {shape}" if shape else None
    if kind in ("too_short", "too_long"):
        actual = ctx.get("actual_length")
        if name == "seeds":
            return "seeds must list at least one seed", "e.g. seeds: [1, 2, 3]"
        amount = "too many" if kind == "too_long" else "too few"
        return f"{amount} values (got {actual})", f"write {name}: {shape}" if shape else None
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        hint = "write the keys indented below it, or {key: value, ...}"
        if name == "mask":
            hint = "e.g. mask: {rect: [0.25, 0.25, 0.5, 0.5]}"
        elif name == "children" or (path and isinstance(path[-1], int)):
            hint = "each child is a mapping starting with - id: <name>"
        return f"expected a mapping of keys (got {_show(value)})", hint
    # Our own errors carry their final message; anything else keeps pydantic's words.
    return err["msg"], ctx.get("hint")


def _number_hint(value: Any) -> str | None:
    """For text where a number belongs: say to drop the quotes only when the text is a number."""
    if not isinstance(value, str):
        return None
    try:
        float(value.strip().replace("_", ""))
    except ValueError:
        return None
    return "write a plain number, without quotes"


def _unknown_key_hint(key: str, parent: FieldPath, data: Any) -> str:
    if key == "invert" and parent and parent[-1] == "mask":
        return "invert goes only with an image mask"
    allowed = _allowed_keys(parent, data)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if parent == () and key in Node.model_fields:
        return f"{key} belongs to a node: put it under root:"
    if parent != () and key in Scene.model_fields and key not in Node.model_fields:
        return f"{key} is a scene setting: put it at the top level of the file"
    return "allowed here: " + ", ".join(allowed)


def _allowed_keys(parent: FieldPath, data: Any) -> list[str]:
    if parent == ():
        return list(Scene.model_fields)
    last = parent[-1]
    if last == "mask":
        mask = value_at(parent, data)
        kinds = [k for k in MASK_KINDS if isinstance(mask, dict) and k in mask]
        if len(kinds) == 1:
            return [kinds[0], "invert"] if kinds == ["image"] else kinds
        return [*MASK_KINDS, "invert"]
    if last == "attention" and len(parent) > 1 and parent[-2] == "mask":
        return list(AttentionSpec.model_fields)
    if last == "band":
        return list(BandSpec.model_fields)
    if last == "attention":
        return list(AttentionWeights.model_fields)
    if last == "tiling":
        return list(Tiling.model_fields)
    if last == "learn":
        return list(LearnSpec.model_fields)
    return [k for k in Node.model_fields if parent != ("root",) or k not in ("mask", "layer", "at", "scale")]


def _mask_kind_problem(value: Any) -> tuple[str, str | None]:
    if not isinstance(value, dict):
        return (
            f"expected a mask like {{rect: [x, y, w, h]}} (got {_show(value)})",
            "use rect, ellipse, polygon, image, band or attention",
        )
    kinds = [k for k in MASK_KINDS if k in value]
    if len(kinds) > 1:
        return (
            f"a mask has exactly one shape (got {' and '.join(kinds)})",
            "give the other shape to a child node, or use polygon",
        )
    for key in value:
        close = difflib.get_close_matches(str(key), MASK_KINDS, n=1, cutoff=0.6)
        if close:
            return f"unknown mask kind {key!r}", f"did you mean {close[0]!r}?"
    return (
        "a mask needs one of: rect, ellipse, polygon, image, band, attention",
        "e.g. mask: {rect: [0.25, 0.25, 0.5, 0.5]}",
    )


def value_at(path: FieldPath, data: Any) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _show(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
