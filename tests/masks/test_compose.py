"""Properties of the composition operators (paper 000, §3, §4, Table 3/4)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hmedit.masks import raster
from hmedit.masks.compose import (
    SCHEMES,
    NormalizedComposition,
    compose,
    depth_weighted,
    depths,
    hybrid,
    multiplicative,
    normalized,
    normalized_vjp,
    top_down,
)
from hmedit.masks.levels import downsample

FAST = settings(max_examples=30, deadline=None)
PLAIN = ("multiplicative", "normalized", "top_down", "depth_weighted")


@st.composite
def hierarchies(draw, max_nodes: int = 6, strength_max: float = 1.0, full_root: bool = True):
    """(masks [K, H, W] float64 in [0, 1], parents, strengths [K]) for a random tree, parents first."""
    k = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, k)]
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, h, w, generator=g, dtype=torch.float64)
    # some exact zeros and ones, where operators have their edge cases
    masks = torch.where(masks < 0.2, 0.0, torch.where(masks > 0.8, 1.0, masks))
    if full_root:
        masks[0] = 1.0
    strengths = torch.rand(k, generator=g, dtype=torch.float64) * strength_max
    return masks, parents, strengths


@FAST
@given(hierarchies(strength_max=2.0), st.sampled_from(SCHEMES), st.data())
def test_all_schemes_nonnegative(h, scheme, data):
    masks, parents, s = h
    node_schemes = [data.draw(st.sampled_from(PLAIN)) for _ in parents] if scheme == "hybrid" else None
    out = compose(masks, parents, s, scheme, node_schemes=node_schemes)
    assert out.shape == masks.shape
    assert (out >= 0).all()


@FAST
@given(hierarchies(strength_max=3.0))
def test_normalized_total_at_most_one(h):
    masks, _, s = h
    total = normalized(masks, s).sum(0)
    assert (total <= 1.0 + 1e-12).all()  # sum c / (sum c + eps) < 1 exactly


@FAST
@given(hierarchies(full_root=False), st.sampled_from(["ratio", "capped"]))
def test_top_down_total_at_most_root(h, share):
    masks, parents, s = h  # strengths in [0, 1]
    total = top_down(masks, parents, s, share=share).sum(0)
    assert (total <= masks[0] + 1e-9).all()
    assert (total <= 1.0 + 1e-9).all()


@FAST
@given(hierarchies(full_root=False), st.sampled_from(["ratio", "capped"]))
def test_top_down_conserves_influence(h, share):
    masks, parents, _ = h
    out = top_down(masks, parents, None, share=share)
    # the residuals telescope: the total is the root's mask, i.e. exactly 1 wherever the root is 1
    torch.testing.assert_close(out.sum(0), masks[0], atol=1e-9, rtol=0)
    full = masks.clone()
    full[0] = 1.0
    torch.testing.assert_close(top_down(full, parents, None, share=share).sum(0), torch.ones_like(masks[0]))


def test_top_down_paper_example_vs_capped_on_a_soft_edge():
    # root + one child with a soft edge value 0.3: the paper's q = m / (sum m + eps) hands the child the
    # whole residual wherever m > 0; "capped" hands it 0.3 and leaves 0.7 with the root.
    masks = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.3, 1.0]], dtype=torch.float64)
    ratio = top_down(masks, [-1, 0], share="ratio")
    capped = top_down(masks, [-1, 0], share="capped")
    torch.testing.assert_close(ratio[1], torch.tensor([0.0, 0.3 / (0.3 + 1e-6), 1.0 / (1.0 + 1e-6)]).double())
    torch.testing.assert_close(capped, torch.tensor([[1.0, 0.7, 0.0], [0.0, 0.3, 1.0]]).double())


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.floats(0.1, 2.0))
def test_top_down_capped_keeps_a_soft_edge_soft(values, strength):
    # one child under a full root: "capped" hands the child exactly its mask value and leaves the rest with
    # the root, so a feathered edge ramps; "ratio" hands it (nearly) everything wherever its mask is > 0
    m = torch.tensor(values, dtype=torch.float64)
    masks = torch.stack([torch.ones_like(m), m])
    s = torch.tensor([strength, strength], dtype=torch.float64)
    capped = top_down(masks, [-1, 0], s, share="capped")
    torch.testing.assert_close(capped[1], strength * m, atol=1e-12, rtol=0)
    torch.testing.assert_close(capped[0], strength * (1 - m), atol=1e-12, rtol=0)
    ratio = top_down(masks, [-1, 0], s, share="ratio")
    on = m > 1e-3
    assert (ratio[1][on] >= strength * (1 - 1e-3)).all()


def test_top_down_capped_normalises_siblings_only_where_they_sum_past_one():
    root = torch.ones(3)
    a = torch.tensor([0.2, 0.5, 1.0])
    b = torch.tensor([0.3, 0.5, 1.0])
    out = top_down(torch.stack([root, a, b]).double(), [-1, 0, 0], share="capped")
    expected = torch.tensor([[0.5, 0.0, 0.0], [0.2, 0.5, 0.5], [0.3, 0.5, 0.5]]).double()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("scheme", ["top_down", "hybrid"])
def test_top_down_share_defaults_to_capped_and_ratio_stays_selectable(scheme):
    masks = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.3, 1.0], [0.0, 0.2, 0.0]], dtype=torch.float64)
    parents = [-1, 0, 1]
    kw = {"node_schemes": ["top_down"] * 3} if scheme == "hybrid" else {}
    capped = top_down(masks, parents, share="capped")
    ratio = top_down(masks, parents, share="ratio")
    assert not torch.allclose(capped, ratio)
    torch.testing.assert_close(top_down(masks, parents), capped)
    torch.testing.assert_close(compose(masks, parents, None, scheme, **kw), capped)
    torch.testing.assert_close(compose(masks, parents, None, scheme, share="ratio", **kw), ratio)
    if scheme == "hybrid":
        torch.testing.assert_close(hybrid(masks, parents, None, ["top_down"] * 3, share="ratio"), ratio)
    with pytest.raises(ValueError, match="share"):
        top_down(masks, parents, share="even")


def test_top_down_siblings_share_the_parent_and_children_stay_inside():
    root = torch.ones(1, 4)
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    grand = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # child of a, mostly outside a
    masks = torch.stack([root, a, b, grand]).double()
    out = top_down(masks, [-1, 0, 0, 1], torch.tensor([1.0, 1.0, 1.0, 1.0]).double())
    torch.testing.assert_close(out[1, 0, 1], out[2, 0, 1], atol=1e-6, rtol=0)  # overlap split evenly
    assert float(out[3, 0, 3]) == 0.0  # no influence flows where the parent has none
    assert abs(float(out[0, 0, 3]) - 1.0) < 1e-6


@FAST
@given(hierarchies())
def test_multiplicative_child_takes_precedence_inside_child(h):
    masks, parents, _ = h
    out = multiplicative(masks, parents, None)
    for child, parent in enumerate(parents):
        if parent < 0:
            continue
        inside = masks[child] == 1.0
        assert (out[parent][inside] == 0).all()  # the parent is silenced where its child is fully on
        kids_on = torch.stack([masks[c] for c, p in enumerate(parents) if p == child] or [masks[child] * 0])
        free = inside & (kids_on.amax(0) == 0)  # ...and the child keeps its whole mask there
        assert (out[child][free] == 1.0).all()


def test_multiplicative_nested_rectangles():
    w = h = 32
    masks = torch.stack(
        [
            torch.ones(h, w),
            raster.rect(0.25, 0.25, 0.5, 0.5, w, h),
            raster.rect(0.375, 0.375, 0.25, 0.25, w, h),
        ]
    )
    out = multiplicative(masks, [-1, 0, 1], None)
    assert float(out[0, 0, 0]) == 1.0 and float(out[1, 0, 0]) == 0.0
    assert float(out[1, 9, 9]) == 1.0 and float(out[0, 9, 9]) == 0.0  # inside the child, outside grandchild
    assert float(out[2, 16, 16]) == 1.0 and float(out[1, 16, 16]) == 0.0 and float(out[0, 16, 16]) == 0.0
    # hard nested masks partition the frame
    torch.testing.assert_close(out.sum(0), torch.ones(h, w))


def test_multiplicative_weights_soften_the_override():
    masks = torch.tensor([[1.0], [1.0]])
    out = multiplicative(masks, [-1, 0], None, weights=torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.75, 1.0]))


@FAST
@given(hierarchies(), st.floats(0.3, 1.5))
def test_depth_weighted_is_normalized_with_gamma_to_the_depth(h, gamma):
    masks, parents, s = h
    expected = normalized(masks, torch.tensor([gamma**d for d in depths(parents)]).double() * s)
    torch.testing.assert_close(depth_weighted(masks, parents, s, gamma=gamma), expected)
    expected_paper = normalized(masks, torch.tensor([gamma**d for d in depths(parents)]).double())
    torch.testing.assert_close(depth_weighted(masks, parents, gamma=gamma), expected_paper)


def test_depth_weighted_gamma_sets_precedence():
    masks = torch.ones(2, 1, 1)
    assert depth_weighted(masks, [-1, 0], gamma=0.5)[0, 0, 0] > 0.6  # coarse wins with gamma < 1
    assert depth_weighted(masks, [-1, 0], gamma=2.0)[1, 0, 0] > 0.6  # deep wins with gamma > 1


@FAST
@given(hierarchies(), st.data())
def test_hybrid_takes_each_row_from_its_scheme(h, data):
    masks, parents, s = h
    names = [data.draw(st.sampled_from([*PLAIN, None])) for _ in parents]
    out = hybrid(masks, parents, s, names, default="top_down", gamma=0.7)
    for k, name in enumerate(names):
        ref = compose(masks, parents, s, name or "top_down", gamma=0.7)
        torch.testing.assert_close(out[k], ref[k])


def test_compose_rejects_bad_input():
    masks = torch.ones(2, 2, 2)
    with pytest.raises(ValueError, match="unknown composition"):
        compose(masks, [-1, 0], None, "additive")
    with pytest.raises(ValueError, match="precede"):
        compose(masks, [1, -1], None, "top_down")
    with pytest.raises(ValueError, match="strengths"):
        compose(masks, [-1, 0], [1.0], "normalized")
    with pytest.raises(ValueError, match="hybrid"):
        compose(masks, [-1, 0], None, "hybrid", node_schemes=["hybrid", None])
    assert compose(masks, [-1, 0], None, "top-down").shape == masks.shape  # the YAML-ish spelling works


# ---------------------------------------------------------------------------------------------------------
# Gradients: §4's analytic derivative of the normalized operator against autograd


def _positive_masks(k=3, h=2, w=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.9 * torch.rand(k, h, w, generator=g, dtype=torch.float64)


def test_analytic_normalized_gradient_passes_gradcheck():
    masks = _positive_masks().requires_grad_()
    s = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    # gradcheck compares NormalizedComposition.backward (the paper's formula) with finite differences
    assert torch.autograd.gradcheck(lambda m, s: NormalizedComposition.apply(m, s, 1e-6), (masks, s))


def test_normalized_couples_nodes_not_pixels():
    masks = _positive_masks(k=4, h=2, w=2, seed=1)
    s = torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=torch.float64)
    auto = torch.autograd.functional.jacobian(lambda m: normalized(m, s), masks)  # [K,H,W, K,H,W]
    off_pixel = auto.clone()
    for i in range(2):
        for j in range(2):
            assert auto[:, i, j, :, i, j].abs().max() > 0  # nodes couple within a pixel
            off_pixel[:, i, j, :, i, j] = 0
    assert off_pixel.abs().max() == 0  # pixels do not couple, only nodes do (Table 4)


def test_analytic_vjp_equals_autograd_for_masks_and_strengths():
    masks = _positive_masks(seed=2).requires_grad_()
    s = torch.tensor([0.4, 1.3, 0.9], dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (normalized(masks, s) * g).sum().backward()
    grad_m, grad_s = normalized_vjp(g, masks.detach(), s.detach())
    torch.testing.assert_close(grad_m, masks.grad)
    torch.testing.assert_close(grad_s, s.grad)


@pytest.mark.parametrize("scheme", PLAIN + ("hybrid",))
def test_every_scheme_is_differentiable_in_masks_and_strengths(scheme):
    masks = _positive_masks(k=3, h=2, w=2, seed=4).requires_grad_()
    s = torch.tensor([0.8, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    names = ["top_down", "normalized", "multiplicative"]
    fn = lambda m, s: compose(m, [-1, 0, 0], s, scheme, node_schemes=names)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (masks, s))


def test_analytic_grad_option_gives_the_same_values_and_gradients():
    masks = _positive_masks(seed=5).requires_grad_()
    s = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    a = normalized(masks, s, analytic_grad=True)
    b = normalized(masks, s)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), (masks, s))
    gb = torch.autograd.grad(b.square().sum(), (masks, s))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


# ---------------------------------------------------------------------------------------------------------
# Resolution consistency


@settings(max_examples=8, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 0.7), st.floats(0.0, 0.7), st.floats(0.1, 0.5), st.floats(0.1, 0.5)),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(PLAIN),
)
def test_composition_commutes_with_downsampling_away_from_edges(boxes, scheme):
    """Composite of downsampled intrinsic masks vs downsampled composite.

    The operators act pixel by pixel, so they commute with area averaging exactly over every coarse pixel
    whose fine window is uniform, i.e. where every coarse intrinsic mask is exactly 0 or 1 (an average of
    values in [0, 1] is 0 or 1 only if all of them are): there we demand 1e-5 (float32 rounding). On the
    edge pixels a nonlinear operator can differ by up to 1 per node (e.g. normalized's division, or the
    products of nested masks in multiplicative and top_down), so there we bound only the mean: the total
    error is at most the number of edge pixels times the per-node maximum of 1.
    """
    fine, coarse = 128, 32
    shapes = [torch.ones(fine, fine)] + [raster.rect(*b, fine, fine) for b in boxes[:1]]
    shapes += [raster.ellipse(*b, fine, fine) for b in boxes[1:]]
    masks_fine = torch.stack(shapes)
    parents = [-1] + [0] + [1] * (len(boxes) - 1)
    s = torch.linspace(1.0, 0.5, len(parents))
    masks_coarse = downsample(masks_fine, (coarse, coarse), "area")
    a = compose(masks_coarse, parents, s, scheme)
    b = downsample(compose(masks_fine, parents, s, scheme), (coarse, coarse), "area")
    uniform = ((masks_coarse == 0) | (masks_coarse == 1)).all(0)
    assert (a - b)[:, uniform].abs().max() <= 1e-5
    edge = (~uniform).sum()
    assert (a - b).abs().sum() <= float(edge) * len(parents) + 1e-3


def test_rasterising_small_equals_downsampling_a_large_raster():
    """Coverage rasterisation is area sampling, so rendering at 32 px matches area-downsampling a 128 px
    render: exactly for rectangles, and within the y-sampling bound 1/SUBROWS for ellipses."""
    r_small = raster.rect(0.13, 0.2, 0.41, 0.33, 32, 32)
    r_big = downsample(raster.rect(0.13, 0.2, 0.41, 0.33, 128, 128), (32, 32), "area")
    torch.testing.assert_close(r_small, r_big, atol=1e-6, rtol=0)
    e_small = raster.ellipse(0.13, 0.2, 0.41, 0.33, 32, 32)
    e_big = downsample(raster.ellipse(0.13, 0.2, 0.41, 0.33, 128, 128), (32, 32), "area")
    assert (e_small - e_big).abs().max() <= 1.0 / raster.SUBROWS
