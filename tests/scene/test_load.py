"""Reading scene files: every broken scene gives a message with file, line:col, field path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmedit.errors import Diagnostics, HmeditError
from hmedit.scene import Scene, find_scenes, load_scene, validate

BENTO = """
version: 1
name: bento
model: toy
size: [512, 384]
seed: 7
steps: 30
guidance: 7.5
scheduler: ddim
init_image: photo.png
composition: top_down
attention: {pos: 1.0, neg: 1.0}
root:
  prompt: "a bento box, studio photo"
  negative: "blurry"
  noise: 0.7
  children:
    - id: rice
      mask: {rect: [0.05, 0.1, 0.4, 0.5]}
      prompt: "white rice"
      strength: 1.0
      noise: 0.5
      feather: 6
      active: [0.0, 0.8]
      children:
        - id: sesame
          mask: {ellipse: [0.1, 0.2, 0.1, 0.1]}
          prompt: "black sesame seeds"
    - id: sushi
      layer: sushi.png
      at: [0.5, 0.5]
      prompt: "salmon sushi"
"""


def errors_of(path: Path) -> list[HmeditError]:
    scene, diags = validate(path)
    assert scene is None, "expected the scene to be rejected"
    assert diags.errors
    return diags.errors


def error_at(path: Path, field: str) -> HmeditError:
    errors = errors_of(path)
    found = [e for e in errors if e.location.field == field]
    assert found, f"no error for {field}; got: {[e.format() for e in errors]}"
    return found[0]


def assert_at(err: HmeditError, path: Path, line: int, column: int) -> None:
    assert err.location.file == path
    assert (err.location.line, err.location.column) == (line, column)
    assert err.format().startswith(f"{path}:{line}:{column}: {err.location.field}: ")


# ------------------------------------------------------------------------------------------------------------
# Good scenes


def test_example_scene_loads_with_typed_values(write_scene, write_png):
    write_png("photo.png", "RGB", (512, 384))
    write_png("sushi.png", "RGBA", (64, 64))
    path = write_scene(BENTO, "bento.yaml")
    scene = load_scene(path)
    assert scene.name == "bento"
    assert scene.size == (512, 384)
    assert scene.seed_list == [7]
    assert scene.init_image.path == path.parent.absolute() / "photo.png"
    assert scene.init_image.raw == "photo.png"
    rice, sushi = scene.root.children
    assert rice.mask.rect == (0.05, 0.1, 0.4, 0.5)
    assert rice.children[0].mask.ellipse == (0.1, 0.2, 0.1, 0.1)
    assert sushi.layer.path.is_absolute() and sushi.at == (0.5, 0.5)
    assert scene.source == path
    assert scene.warnings == []


def test_minimal_scene_gets_defaults(write_scene):
    path = write_scene("root: {prompt: a cat}\n", "my-scene.yaml")
    scene = load_scene(path)
    assert scene.name == "my-scene"  # the file's stem
    assert scene.model == "toy" and scene.size is None and scene.seed_list == [0]
    # steps, guidance and scheduler left out: the model's preset decides them at render time
    assert scene.steps is None and scene.guidance is None and scene.scheduler is None
    assert scene.composition == "top_down" and scene.depth_gamma == 0.8
    assert scene.root.id == "root" and scene.root.noise == 1.0


def test_positions_are_kept_for_later_checks(write_scene, write_png):
    write_png("photo.png", "RGB")
    write_png("sushi.png", "RGBA")
    path = write_scene(BENTO, "bento.yaml")
    scene = load_scene(path)
    assert scene.position("root.children[0].mask") == (18, 7)
    assert scene.position(("root", "children", 1, "layer")) == (29, 7)
    # a default value has no position: the nearest enclosing field's is used
    assert scene.position("root.children[1].feather") == (28, 7)
    where = scene.where("root.children[0].mask")
    assert where == {"file": path, "line": 18, "column": 7, "field": "root.children[0].mask"}
    err = HmeditError("mask is empty", **where)
    assert err.format() == f"{path}:18:7: root.children[0].mask: mask is empty"


def test_warnings_do_not_fail(write_scene):
    path = write_scene(
        """
        depth_gamma: 0.5
        root:
          prompt: x
          children:
            - {id: a, mask: {rect: [0, 0, 1, 1]}, composition: multiplicative}
        """
    )
    scene, diags = validate(path)
    assert scene is not None and not diags.errors
    fields = [w.location.field for w in diags.warnings]
    assert fields == ["depth_gamma", "root.children[0].composition"]
    assert load_scene(path).warnings  # kept on the scene too


# ------------------------------------------------------------------------------------------------------------
# Broken scenes: one test per kind of mistake


def test_malformed_yaml_reports_parser_position(write_scene):
    path = write_scene(
        """
        root:
          prompt: "a cat
          negative: x
        """,
        "broken.yaml",
    )
    (err,) = errors_of(path)
    assert err.problem.startswith("invalid YAML: ")
    assert err.location.file == path and err.location.line is not None and err.location.column is not None
    assert err.format().startswith(f"{path}:{err.location.line}:{err.location.column}: invalid YAML")
    assert err.hint
    assert "\n" not in err.format()


def test_yaml_tab_indentation_hint(write_scene):
    path = write_scene("root:\n\tprompt: x\n")
    (err,) = errors_of(path)
    assert err.location.line == 2 and "tabs" in err.hint


def test_unknown_key_with_did_you_mean(write_scene):
    path = write_scene(
        """
        root:
          promt: a cat
        """
    )
    err = error_at(path, "root.promt")
    assert_at(err, path, 2, 3)
    assert err.problem == "unknown key 'promt'"
    assert err.hint == "did you mean 'prompt'?"


def test_unknown_top_level_key(write_scene):
    path = write_scene("schedular: ddim\nroot: {prompt: x}\n")
    err = error_at(path, "schedular")
    assert_at(err, path, 1, 1)
    assert err.hint == "did you mean 'scheduler'?"


def test_node_key_at_top_level_says_where_it_belongs(write_scene):
    path = write_scene("negative: blurry\nroot: {prompt: x}\n")
    err = error_at(path, "negative")
    assert "put it under root" in err.hint


def test_unknown_value_with_did_you_mean(write_scene):
    path = write_scene("scheduler: eular\nroot: {prompt: x}\n")
    err = error_at(path, "scheduler")
    assert "'eular' is not one of ddim, euler" in err.problem
    assert err.hint == "did you mean 'euler'?"


def test_node_composition_cannot_be_hybrid(write_scene):
    path = write_scene(
        "composition: hybrid\nroot:\n  prompt: x\n  children:\n"
        "    - {id: a, mask: {rect: [0, 0, 1, 1]}, composition: hybrid}\n"
    )
    err = error_at(path, "root.children[0].composition")
    assert "'hybrid' is not one of multiplicative, normalized, top_down, depth_weighted" in err.problem
    assert_at(err, path, 5, 43)


def test_rect_width_not_positive(write_scene):
    path = write_scene(
        """
        root:
          prompt: bento
          children:
            - id: rice
              mask: {rect: [0.05, 0.1, 0.4, 0.5]}
            - id: sushi
              mask: {rect: [0.5, 0.1, -0.2, 0.5]}
        """,
        "bento.yaml",
    )
    err = error_at(path, "root.children[1].mask.rect")
    assert_at(err, path, 7, 14)
    assert err.problem == "width must be > 0 (got -0.2)"
    assert err.hint
    assert err.format() == (
        f"{path}:7:14: root.children[1].mask.rect: width must be > 0 (got -0.2) ({err.hint})"
    )


def test_rect_wrong_number_of_values(write_scene):
    path = write_scene("root:\n  children:\n    - {id: a, mask: {rect: [0, 0, 1]}}\n")
    err = errors_of(path)[0]
    assert err.location.field.startswith("root.children[0].mask.rect")
    assert "[x, y, width, height]" in err.hint


def test_duplicate_ids_name_both_places(write_scene):
    path = write_scene(
        """
        root:
          children:
            - id: rice
              mask: {rect: [0, 0, 0.5, 0.5]}
              children:
                - id: rice
                  mask: {rect: [0, 0, 0.1, 0.1]}
        """
    )
    err = error_at(path, "root.children[0].children[0].id")
    assert_at(err, path, 6, 11)
    assert err.problem == "duplicate id 'rice' (also used by root.children[0], line 3)"
    assert "unique" in err.hint


def test_missing_asset_file_names_path_and_resolved_location(write_scene, tmp_path):
    path = write_scene(
        """
        init_image: photos/cat.png
        root:
          children:
            - id: sushi
              layer: sushi.png
            - id: m
              mask: {image: masks/m.png, invert: true}
        """
    )
    errors = {e.location.field: e for e in errors_of(path)}
    assert set(errors) == {"init_image", "root.children[0].layer", "root.children[1].mask.image"}
    err = errors["init_image"]
    assert_at(err, path, 1, 1)
    assert err.problem == f"file not found: photos/cat.png (looked for {tmp_path / 'photos' / 'cat.png'})"
    assert "relative to the scene file" in err.hint
    assert_at(errors["root.children[0].layer"], path, 5, 7)
    assert str(tmp_path / "masks" / "m.png") in errors["root.children[1].mask.image"].problem


def test_noise_outside_0_1(write_scene):
    path = write_scene(
        """
        root:
          noise: 1.5
          children:
            - {id: a, mask: {rect: [0, 0, 1, 1]}, noise: -0.1}
        """
    )
    err = error_at(path, "root.noise")
    assert_at(err, path, 2, 3)
    assert err.problem == "noise must be <= 1 (got 1.5)"
    assert "0 keeps the input image, 1 is pure noise" in err.hint
    err = error_at(path, "root.children[0].noise")
    assert err.problem == "noise must be >= 0 (got -0.1)"
    assert err.location.line == 4


def test_strength_negative(write_scene):
    path = write_scene(
        """
        root:
          children:
            - id: a
              mask: {rect: [0, 0, 1, 1]}
              strength: -1
        """
    )
    err = error_at(path, "root.children[0].strength")
    assert_at(err, path, 5, 7)
    assert err.problem == "strength must be >= 0 (got -1)"
    assert err.hint


def test_active_out_of_order(write_scene):
    path = write_scene(
        """
        root:
          children:
            - id: a
              mask: {rect: [0, 0, 1, 1]}
              active: [0.8, 0.2]
        """
    )
    err = error_at(path, "root.children[0].active")
    assert_at(err, path, 5, 7)
    assert "0 <= start < end <= 1 (got [0.8, 0.2])" in err.problem
    assert "e.g. [0.0, 0.8]" in err.hint


def test_mask_on_root(write_scene):
    path = write_scene(
        """
        root:
          prompt: x
          mask: {rect: [0, 0, 1, 1]}
        """
    )
    err = error_at(path, "root.mask")
    assert_at(err, path, 3, 3)
    assert "the root has no mask" in err.problem
    assert "child node" in err.hint


def test_node_with_both_mask_and_layer(write_scene, write_png):
    write_png("sushi.png", "RGBA")
    path = write_scene(
        """
        root:
          children:
            - id: sushi
              mask: {rect: [0, 0, 1, 1]}
              layer: sushi.png
        """
    )
    err = error_at(path, "root.children[0].layer")
    assert_at(err, path, 5, 7)
    assert err.problem == "a node has either mask or layer, not both"
    assert err.hint


def test_child_without_region_or_id(write_scene):
    path = write_scene("root:\n  children:\n    - prompt: x\n    - {id: b, mask: null}\n")
    errors = {e.location.field: e for e in errors_of(path)}
    assert errors["root.children[0]"].problem == "a child node needs a mask or a layer"
    assert errors["root.children[0].id"].problem == "a child node needs an id"
    assert errors["root.children[0].id"].location.line == 3  # the node's position: the key is missing
    assert errors["root.children[1]"].problem == "a child node needs a mask or a layer"


def test_mask_with_two_shapes_and_misspelled_kind(write_scene):
    path = write_scene(
        """
        root:
          children:
            - {id: a, mask: {rect: [0, 0, 1, 1], ellipse: [0, 0, 1, 1]}}
            - {id: b, mask: {rectangle: [0, 0, 1, 1]}}
            - {id: c, mask: {rect: [0, 0, 1, 1], invert: true}}
        """
    )
    errors = {e.location.field: e for e in errors_of(path)}
    assert errors["root.children[0].mask"].problem == "a mask has exactly one shape (got rect and ellipse)"
    assert errors["root.children[1].mask"].hint == "did you mean 'rect'?"
    assert errors["root.children[2].mask.invert"].hint == "invert goes only with an image mask"


def test_size_not_multiple_of_8_hints_nearest(write_scene):
    path = write_scene("size: [500, 383]\nroot: {prompt: x}\n")
    err = error_at(path, "size")
    assert_at(err, path, 1, 1)
    assert err.problem == "width must be a multiple of 8 (got 500)"
    assert err.hint == "nearest valid size: [504, 384]"


def test_size_too_small(write_scene):
    path = write_scene("size: [32, 64]\nroot: {prompt: x}\n")
    assert error_at(path, "size").problem == "width must be at least 64 px (got 32)"


def test_seed_and_seeds_together(write_scene):
    path = write_scene("seed: 1\nseeds: [1, 2]\nroot: {prompt: x}\n")
    err = error_at(path, "seeds")
    assert_at(err, path, 2, 1)
    assert err.problem == "use either seed or seeds, not both"
    assert err.hint


def test_quoted_number_is_an_error(write_scene):
    path = write_scene("guidance: '7.5'\nroot: {prompt: x}\n")
    err = error_at(path, "guidance")
    assert (
        err.problem == "expected a number (got '7.5')" and err.hint == "write a plain number, without quotes"
    )


def test_unsafe_names(write_scene):
    path = write_scene("name: my scene\nroot: {prompt: x}\n")
    assert "not a safe folder name" in error_at(path, "name").problem
    path = write_scene("root: {prompt: x}\n", "my scene.yaml")
    err = error_at(path, "name")
    assert "file name 'my scene'" in err.problem and "my_scene" in err.hint


def test_duplicate_yaml_key(write_scene):
    path = write_scene("root:\n  prompt: a\n  prompt: b\n")
    err = error_at(path, "root.prompt")
    assert_at(err, path, 3, 3)
    assert "first at line 2" in err.problem


def test_empty_and_non_mapping_files(write_scene):
    (err,) = errors_of(write_scene("", "empty.yaml"))
    assert "empty" in err.problem and err.hint
    (err,) = errors_of(write_scene("- a\n- b\n", "list.yaml"))
    assert "mapping" in err.problem


def test_missing_root(write_scene):
    path = write_scene("seed: 3\n")
    err = error_at(path, "root")
    assert err.problem == "missing required key 'root'"


def test_all_errors_are_collected_in_file_order(write_scene):
    path = write_scene(
        """
        steps: 0
        root:
          noise: 2
          children:
            - id: a
              mask: {rect: [0, 0, 0, 1]}
              strength: -1
        """
    )
    errors = errors_of(path)
    assert [e.location.field for e in errors] == [
        "steps",
        "root.noise",
        "root.children[0].mask.rect",
        "root.children[0].strength",
    ]
    with pytest.raises(HmeditError) as info:
        load_scene(path)
    assert info.value.location.field == "steps"
    assert [e.location.field for e in info.value.others] == [e.location.field for e in errors[1:]]


def test_validate_never_raises_for_a_missing_file(tmp_path):
    scene, diags = validate(tmp_path / "nope.yaml")
    assert scene is None and diags.errors[0].problem == "file not found"


# ------------------------------------------------------------------------------------------------------------
# Mask checks hook and scene discovery


def test_deeper_checks_run_in_validate_not_in_a_plain_load(write_scene):
    """Checks of rooms above the scene (hmedit.masks.checks) are passed in; a plain load runs none."""
    calls: list[Scene] = []

    def check_masks(scene: Scene) -> Diagnostics:
        calls.append(scene)
        diags = Diagnostics()
        diags.warn("mask is empty", **scene.where("root.children[0].mask"))
        return diags

    path = write_scene("root:\n  children:\n    - {id: a, mask: {rect: [0, 0, 1, 1]}}\n")
    scene, diags = validate(path, checks=[check_masks])
    assert calls and scene is not None
    assert diags.warnings[0].format() == f"{path}:3:15: root.children[0].mask: mask is empty"
    calls.clear()
    load_scene(path)  # a plain load does not rasterise the masks
    assert not calls


def test_find_scenes(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for name in ("a/x.yaml", "a/deep/y.yml", "a/notes.txt", ".git/z.yaml", "b.yaml"):
        (tmp_path / name).write_text("root: {}\n")
    found = find_scenes([tmp_path / "a", tmp_path / "b.yaml", tmp_path / "a" / "x.yaml"])
    assert found == sorted([tmp_path / "a/x.yaml", tmp_path / "a/deep/y.yml", tmp_path / "b.yaml"])
    with pytest.raises(HmeditError, match="no such file or folder"):
        find_scenes([tmp_path / "missing"])
