"""band and attention masks name other nodes: the scene's validation checks the names, one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmedit.errors import HmeditError
from hmedit.masks.checks import validate
from hmedit.scene.spec import AttentionMask, BandMask

HEAD = """\
root:
  prompt: a red circle on a blue background
  children:
"""


def errors_of(path: Path) -> list[HmeditError]:
    scene, diags = validate(path)
    assert scene is None, "expected the scene to be rejected"
    return diags.errors


def one_error(path: Path, field: str) -> HmeditError:
    errors = errors_of(path)
    assert [e.location.field for e in errors] == [field], [e.format() for e in errors]
    err = errors[0]
    assert "\n" not in err.format()
    return err


def test_good_band_and_attention_masks_load(write_scene):
    path = write_scene(
        HEAD
        + """\
    - id: recolour
      prompt: a green circle
      mask: {attention: {of: root, word: Circle, threshold: 0.3, refine: self}}
    - id: edge
      prompt: blend smoothly
      mask: {band: {of: recolour, width: 6}}
"""
    )
    scene, diags = validate(path)
    assert scene is not None, [e.format() for e in diags.errors]
    assert not diags.warnings  # derived masks are not checked as drawn ones (no empty-region error)
    rec, edge = scene.root.children
    assert isinstance(rec.mask, AttentionMask) and rec.mask.attention.threshold == 0.3
    assert rec.mask.attention.refine == "self" and rec.mask.attention.word == "Circle"
    assert isinstance(edge.mask, BandMask) and edge.mask.band.of == "recolour" and edge.mask.band.width == 6


def test_attention_threshold_auto_and_refine_image(write_scene):
    path = write_scene(
        HEAD + "    - {id: a, prompt: x, mask: {attention: {of: root, threshold: auto, refine: image}}}\n"
    )
    scene, diags = validate(path)
    assert scene is not None, [e.format() for e in diags.errors]
    spec = scene.root.children[0].mask.attention
    assert spec.threshold == "auto" and spec.refine == "image"
    for bad in ("automatic", "1.5", "0"):
        path = write_scene(
            HEAD + f"    - {{id: a, prompt: x, mask: {{attention: {{of: root, threshold: {bad}}}}}}}\n"
        )
        scene, diags = validate(path)
        assert scene is None and diags.errors, bad
        err = diags.errors[0]
        assert "threshold" in err.format() and "\n" not in err.format()


def test_unknown_node_id(write_scene):
    path = write_scene(
        HEAD + "    - {id: a, prompt: x, mask: {band: {of: recolor, width: 4}}}\n"
        "    - {id: recolour, prompt: y, mask: {rect: [0, 0, 0.5, 0.5]}}\n"
    )
    err = one_error(path, "root.children[0].mask.band.of")
    assert "no node has id 'recolor'" in err.problem and "recolour" in err.hint
    assert err.location.line == 4


def test_own_node(write_scene):
    path = write_scene(HEAD + "    - {id: a, prompt: x, mask: {attention: {of: a}}}\n")
    err = one_error(path, "root.children[0].mask.attention.of")
    assert "its own node" in err.problem


def test_cycle_is_reported_once(write_scene):
    path = write_scene(
        HEAD
        + """\
    - {id: a, prompt: x, mask: {band: {of: b, width: 4}}}
    - {id: b, prompt: y, mask: {band: {of: a, width: 4}}}
"""
    )
    err = one_error(path, "root.children[0].mask.band.of")
    assert "cycle" in err.problem


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.1, "high"])
def test_bad_threshold(write_scene, threshold):
    path = write_scene(
        HEAD + f"    - {{id: a, prompt: x, mask: {{attention: {{of: root, threshold: {threshold}}}}}}}\n"
    )
    err = one_error(path, "root.children[0].mask.attention.threshold")
    assert err.location.line == 4


def test_bad_band_width_and_unknown_key(write_scene):
    path = write_scene(
        HEAD + "    - {id: a, prompt: x, mask: {band: {of: b, width: 0}}}\n"
        "    - {id: b, prompt: y, mask: {rect: [0, 0, 0.5, 0.5]}}\n"
    )
    assert [e.location.field for e in errors_of(path)] == ["root.children[0].mask.band.width"]
    path = write_scene(
        HEAD + "    - {id: a, prompt: x, mask: {band: {of: b, widht: 3}}}\n"
        "    - {id: b, prompt: y, mask: {rect: [0, 0, 0.5, 0.5]}}\n"
    )
    fields = [e.location.field for e in errors_of(path)]
    assert "root.children[0].mask.band.widht" in fields


def test_band_of_root_or_of_a_non_sibling(write_scene):
    path = write_scene(HEAD + "    - {id: a, prompt: x, mask: {band: {of: root, width: 4}}}\n")
    assert "root has no boundary" in one_error(path, "root.children[0].mask.band.of").problem
    path = write_scene(
        HEAD
        + """\
    - id: a
      prompt: x
      mask: {rect: [0, 0, 0.5, 0.5]}
      children:
        - {id: inner, prompt: y, mask: {rect: [0.1, 0.1, 0.2, 0.2]}}
    - {id: edge, prompt: z, mask: {band: {of: inner, width: 4}}}
"""
    )
    err = one_error(path, "root.children[1].mask.band.of")
    assert "another parent" in err.problem and "root.children[0]" in err.hint


def test_word_not_in_prompt(write_scene):
    path = write_scene(HEAD + "    - {id: a, prompt: x, mask: {attention: {of: root, word: square}}}\n")
    err = one_error(path, "root.children[0].mask.attention.word")
    assert "'square' is not a word of the prompt of 'root'" in err.problem and "circle" in err.hint


def test_attention_of_a_node_inside_it_or_from_attention(write_scene):
    path = write_scene(
        HEAD
        + """\
    - id: a
      prompt: x
      mask: {attention: {of: inner}}
      children:
        - {id: inner, prompt: y, mask: {rect: [0.1, 0.1, 0.2, 0.2]}}
"""
    )
    assert "inside this node" in one_error(path, "root.children[0].mask.attention.of").problem
    path = write_scene(
        HEAD
        + """\
    - {id: a, prompt: a circle, mask: {attention: {of: root, word: circle}}}
    - {id: edge, prompt: blend, mask: {band: {of: a, width: 3}}}
    - {id: b, prompt: x, mask: {attention: {of: edge}}}
"""
    )
    assert "depends on an attention mask" in one_error(path, "root.children[2].mask.attention.of").problem


def test_schema_lists_the_new_kinds():
    from hmedit.scene.spec import json_schema

    text = str(json_schema())
    assert "BandMask" in text and "AttentionMask" in text
