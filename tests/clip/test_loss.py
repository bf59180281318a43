"""The masked CLIP loss on a tiny random CLIP: what the CLIP sees, and that it is differentiable in the image
and the mask and blind to pixels outside the mask."""

import pytest
import torch

from hmedit.clip.loss import MaskedClipLoss, crop_box, load, masked_view

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load(str(tiny_clip_dir))


def box_mask(y0, x0, y1, x1, size=64) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y0:y1, x0:x1] = 1
    return m


def test_crop_box_is_a_square_around_the_region_inside_the_frame():
    y0, x0, y1, x1 = crop_box(box_mask(10, 20, 20, 40))
    assert y1 - y0 == x1 - x0  # square
    assert y0 <= 10 and x0 <= 20 and y1 >= 20 and x1 >= 40  # covers the region
    assert x1 - x0 == 26  # 20 px grown by 15% each side
    y0, x0, y1, x1 = crop_box(box_mask(0, 60, 3, 64))  # in a corner, tiny: the minimum side, kept inside
    assert (y0, x1) == (0, 64) and y1 - y0 == 16
    assert crop_box(torch.zeros(64, 48)) == (0, 0, 64, 48)  # empty: the whole frame


def test_outside_the_mask_the_view_is_the_clip_mean(clip):
    _, proc = clip
    mean = torch.tensor(proc.image_processor.image_mean)
    std = torch.tensor(proc.image_processor.image_std)
    image = torch.rand(1, 3, 32, 32)
    mask = box_mask(8, 8, 24, 24, 32)[None]
    view = masked_view(image, mask, 32, mean, std, crop=False)
    assert view[0, :, :8].abs().max() < 1e-5  # zero after normalisation: "nothing there"
    inner = (image[0, :, 10:22, 10:22] - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    assert torch.allclose(view[0, :, 10:22, 10:22], inner, atol=1e-5)


def test_loss_is_differentiable_in_image_and_mask(clip):
    loss = MaskedClipLoss(*clip, "a red circle")
    image = torch.rand(2, 3, 64, 64, requires_grad=True)
    mask = (box_mask(10, 10, 40, 40) * 0.9)[None].repeat(2, 1, 1).requires_grad_(True)
    value = loss(image, mask)
    assert value.shape == (2,) and bool(((value >= 0) & (value <= 2)).all())
    value.sum().backward()
    assert image.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0
    assert image.grad[:, :, 50:].abs().max() == 0  # outside the crop box, nothing is seen


def test_pixels_outside_a_hard_mask_do_not_change_the_loss(clip):
    loss = MaskedClipLoss(*clip, "a red circle")
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    mask = box_mask(16, 16, 48, 48)
    other = image.clone()
    other[:, :, :16] = torch.rand(1, 3, 16, 64)  # outside the mask, inside the crop box's margin too
    other[:, :, :, :10] = 0.0
    assert torch.allclose(loss(image, mask), loss(other, mask), atol=1e-6)
    changed = image.clone()
    changed[:, :, 20:40, 20:40] = torch.rand(1, 3, 20, 20)
    assert not torch.allclose(loss(image, mask), loss(changed, mask), atol=1e-4)


def test_descending_the_loss_in_the_image_lowers_it(clip):
    loss = MaskedClipLoss(*clip, ["a red circle", "a blue square"])
    torch.manual_seed(1)
    image = torch.rand(2, 3, 64, 64, requires_grad=True)
    mask = box_mask(8, 8, 56, 56)
    start = loss(image, mask).detach()
    opt = torch.optim.Adam([image], lr=0.05)
    for _ in range(10):
        opt.zero_grad()
        loss(image, mask).sum().backward()
        opt.step()
    assert bool((loss(image, mask) < start - 0.01).all())


def test_bad_shapes_are_refused(clip):
    loss = MaskedClipLoss(*clip, "a red circle")
    with pytest.raises(ValueError, match="does not fit"):
        loss(torch.rand(1, 3, 64, 64), torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        loss(torch.rand(3, 64, 64), torch.ones(64, 64))
