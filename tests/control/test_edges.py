import numpy as np
from PIL import Image

from hmedit.control.edges import edge_map
from hmedit.toy import world


def test_edges_follow_a_square_boundary_and_nothing_else():
    img = np.full((64, 64, 3), 40, np.uint8)
    img[16:48, 16:48] = (220, 40, 40)
    e = np.asarray(edge_map(img))[..., 0] > 0
    assert e.shape == (64, 64)
    ys, xs = np.nonzero(e)
    # every edge pixel lies within 2 px of the square's outline
    d = np.minimum.reduce([np.abs(ys - 16), np.abs(ys - 47), np.abs(xs - 16), np.abs(xs - 47)])
    assert d.max() <= 2
    # the outline is found on all four sides, thin (at most 2 px across)
    assert e[32, 10:24].sum() in (1, 2) and e[32, 40:54].sum() in (1, 2)
    assert e[10:24, 32].sum() in (1, 2) and e[40:54, 32].sum() in (1, 2)
    assert not e[24:40, 24:40].any() and not e[:8].any()


def test_equal_brightness_colours_still_give_an_edge_and_flat_gives_none():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = (200, 0, 0)
    img[:, 16:] = (0, 0, 200)
    assert (np.asarray(edge_map(img))[..., 0] > 0)[:, 14:18].any(axis=1).all()
    assert not np.asarray(edge_map(np.full((32, 32, 3), 90, np.uint8))).any()


def test_edge_map_is_deterministic_rgb_and_takes_pil_and_rgba():
    w = world.sample(5)
    a = edge_map(w.image)
    b = edge_map(Image.fromarray(w.image).convert("RGBA"))
    assert a.mode == "RGB" and a.size == (128, 128)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert 0 < (np.asarray(a)[..., 0] > 0).mean() < 0.4
