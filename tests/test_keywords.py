"""``keywords`` on a node (MRGD eq. 6): the scene key's checks, and a render on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmedit.conditioning.encode import encode_scene
from hmedit.pipeline import Settings, keep_regional, render
from hmedit.sampling.plan import build_plan
from hmedit.scene import validate
from hmedit.scene.spec import Scene, json_schema

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red circle, highly detailed, beautiful, artstation"


def scene(**node) -> Scene:
    child = {"id": "a", "prompt": PROMPT, "mask": {"rect": [0, 0, 0.5, 1.0]}, **node}
    return Scene.model_validate(
        {
            "size": [64, 64],
            "steps": 3,
            "guidance": 5.0,
            "root": {"prompt": "a grey wall", "children": [child]},
        }
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "keywords is auto or a whole number"),
        (-2, "whole number"),
        (1.5, "whole number"),
        ("some", "whole number"),
        (True, "whole number"),
    ],
)
def test_bad_keywords_are_one_line_errors(write_scene, value, message):
    path = write_scene(
        "root:\n  prompt: a wall\n  children:\n    - id: a\n      prompt: a red circle\n"
        f"      mask: {{rect: [0, 0, 0.5, 0.5]}}\n      keywords: {value!r}\n".replace("'", "")
    )
    sc, diags = validate(path)
    assert sc is None
    (err,) = diags.errors
    assert message in err.format() and "\n" not in err.format()
    assert err.location.field == "root.children[0].keywords"


def test_keywords_load_and_are_in_the_schema(write_scene):
    assert scene(keywords="auto").root.children[0].keywords == "auto"
    assert scene(keywords=3).root.children[0].keywords == 3
    assert scene().root.children[0].keywords is None
    assert "keywords" in str(json_schema())


def test_the_root_has_no_keywords(write_scene):
    sc, diags = validate(write_scene("root:\n  prompt: a wall, 4k\n  keywords: auto\n"))
    assert sc is None and "root has no keywords" in diags.errors[0].format()


def test_a_keyword_node_renders_with_its_other_words_global(tiny_model):
    m = tiny_model("sd1")
    sc = scene(keywords=2)
    s = Settings.of(sc, m, seed=2)
    result = render(sc, m, s)
    words = result.stats["keywords"]["a"]
    assert len(words) == 2 and set(words) <= {
        "a",
        "red",
        "circle",
        "highly",
        "detailed",
        "beautiful",
        "artstation",
    }
    assert result.image.shape == (64, 64, 3) and result.image.std() > 0
    # the same render as with those words given
    plain = scene()
    given = render(plain, m, s, keep_words={"a": words})
    assert np.array_equal(given.image, result.image)
    # without the key: bit-identical to the plain path, and different from the keyword render
    before = render(plain, m, s)
    assert "keywords" not in before.stats
    assert not np.array_equal(before.image, result.image)
    assert np.array_equal(render(plain, m, s, keep_words={}).image, before.image)


def test_a_coarse_tiled_render_selects_keywords_once(tiny_model, monkeypatch):
    import hmedit.pipeline as P

    def wide(**node) -> Scene:
        raw = scene(**node).model_dump(mode="json", exclude_unset=True)
        return Scene.model_validate({**raw, "size": [128, 64], "tiling": {"coarse": True}})

    m = tiny_model("sd1")
    sc = wide(keywords=2)
    s = Settings.of(sc, m, seed=2)
    assert s.tiling is not None and s.tiling.coarse
    calls, original = [], P.node_keywords

    def counting(scene, model, settings, *a, **kw):
        calls.append((settings.width, settings.height))
        return original(scene, model, settings, *a, **kw)

    monkeypatch.setattr(P, "node_keywords", counting)
    result = render(sc, m, s)
    assert calls == [(64, 32)]  # in the coarse render (the native frame, aspect kept) only, not tiled again
    words = result.stats["keywords"]["a"]
    assert len(words) == 2
    # the same render as with those words given (no keyword pass at all)
    given = render(wide(), m, s, keep_words={"a": words})
    assert len(calls) == 1 and np.array_equal(given.image, result.image)


def test_owners_of_non_keywords_are_global(tiny_model):
    m = tiny_model("sd1")
    sc = scene()
    s = Settings.of(sc, m, seed=0)
    fam = m.family
    plan = build_plan(sc, fam.factors(m.unet), s.width, s.height, m.vae_scale_factor)
    text = fam.text(m)
    cond = encode_scene(text, [f.node.prompt for f in plan.flat], [f.node.negative for f in plan.flat])
    start, end = cond.ranges[1]
    ids = text.word_ids(PROMPT)[0]
    out = keep_regional(cond, plan, text, {"a": ["circle"]})
    own = out.cond.owner[start:end]
    circle = list(text.word_ids("circle")[0])
    pos = [i for i in range(len(ids)) if list(ids[i : i + len(circle)]) == circle][0]
    regional = [i for i in range(end - start) if own[i] == 1]
    # the word's tokens and the end token stay regional; everything else is global
    assert regional == [*range(pos, pos + len(circle)), end - start - 1]
    assert torch.equal(cond.cond.owner[start:end], torch.ones(end - start, dtype=torch.long))  # not mutated
    assert torch.equal(out.uncond.owner, cond.uncond.owner)
    # no word kept: the whole node global, end token too
    assert (keep_regional(cond, plan, text, {"a": []}).cond.owner[start:end] == -1).all()
