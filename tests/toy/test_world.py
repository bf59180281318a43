"""The procedural world: deterministic pictures, masks and captions that say what is drawn."""

import numpy as np
import pytest

from hmedit.toy import world
from hmedit.toy.evaluate import colour_check, largest_component, prompts
from hmedit.toy.train import build_tokenizer, train_bpe


def test_same_seed_same_picture():
    a, b = world.sample(7), world.sample(7)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(world.sample(8).image, a.image)


@pytest.mark.parametrize("seed", range(40))
def test_caption_names_every_object_and_masks_match_pixels(seed):
    s = world.sample(seed)
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    for o in s.objects:
        assert o.phrase.split(" ", 1)[1] in s.caption
        assert o.shape in world.SHAPES and o.colour in world.PALETTE and o.texture in world.TEXTURES
        full = o.mask > 0.99
        if full.sum() > 50 and o.texture == "solid" and not s.outlined:
            # fully covered pixels of a solid object have exactly its palette colour
            assert np.abs(s.image[full].astype(int) - world.PALETTE[o.colour]).max() <= 1
    bg = world.background_phrase(s.background, s.background_texture)
    if s.objects:
        # the objects in drawing order ("a, b and c"), then the background, which is sometimes left out
        names = [o.phrase for o in s.objects]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        style = f", {world.STYLE_WORD}" if s.outlined else ""
        assert s.caption in (f"{listed} on {bg}{style}", f"{listed}{style}"), s.caption
        assert s.caption.count(" and ") == (len(names) > 1)
    else:
        assert s.caption == bg
    assert s.outlined == s.caption.endswith(world.STYLE_WORD)


@pytest.mark.slow
def test_all_shapes_textures_and_colours_occur():
    samples = [world.sample(i) for i in range(300)]
    objs = [o for s in samples for o in s.objects]
    assert {o.shape for o in objs} == set(world.SHAPES)
    assert {o.texture for o in objs} == set(world.TEXTURES)
    assert {o.colour for o in objs} == set(world.COLOURS)
    assert any(s.outlined for s in samples) and any(not s.objects for s in samples)
    assert {len(s.objects) for s in samples} == {0, 1, 2, 3, 4}


def test_objects_differ_from_the_background_colour():
    for i in range(100):
        s = world.sample(i)
        assert all(o.colour != s.background for o in s.objects)


def test_articles_and_caption_grammar():
    assert world.caption_for([("orange", "star", "solid")], "blue") == "an orange star on a blue background"
    assert world.caption_for([("red", "circle", "striped"), ("blue", "square", "solid")], "yellow") == (
        "a striped red circle and a blue square on a yellow background"
    )
    assert world.caption_for([], "green", "dotted") == "a dotted green background"


def test_tokenizer_keeps_every_world_word_whole():
    tok = build_tokenizer()
    for word in world.vocabulary():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
    # any other text still encodes (character fallback), never to unknown tokens
    ids = tok("a teal hexagon", add_special_tokens=False).input_ids
    assert len(ids) > 3 and tok.unk_token_id not in ids


def test_bpe_is_deterministic():
    assert train_bpe(["red", "green", "ring"]) == train_bpe(["ring", "red", "green"])


def test_colour_oracle():
    img = np.zeros((128, 128, 3), np.uint8)
    img[:] = world.PALETTE["blue"]
    img[40:80, 40:80] = world.PALETTE["red"]
    r = colour_check(img, "red", "blue")
    assert r["pass"] and abs(r["object_area"] - 1600 / 16384) < 1e-6
    assert not colour_check(img, "green", "blue")["pass"]
    assert not colour_check(img, "red", "yellow")["pass"]
    assert largest_component(np.eye(5, dtype=bool)) == 1


def test_evaluation_prompts_have_distinct_colours():
    ps = prompts(100)
    assert len(ps) == 100 and all(o != b for o, _, b in ps)
    assert {b for _, _, b in ps} == set(world.COLOURS)
