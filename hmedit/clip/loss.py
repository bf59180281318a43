"""A differentiable masked CLIP loss: how far the region of an image that a soft mask selects is from a
prompt, differentiable in the image and in the mask.

Click2Mask (Regev et al., arXiv:2409.08272, §3.2) scores a region with Alpha-CLIP, which takes the mask as an
extra input channel. A plain CLIP has no such channel, so the region is shown to it the way region-CLIP
baselines do: the pixels outside the mask are replaced by the CLIP's mean colour (zero after its
normalisation: "nothing there"), and the picture is cropped to the mask's box (with a margin), so that a small
region fills the CLIP's view. Soft masks blend; the crop box is picked without gradient, the pixels inside it
carry the gradient to the mask and the image. The loss is the cosine distance 1 - cos(image, text) of the
projected embeddings (Click2Mask eq. 2), one per batch item.

    loss = MaskedClipLoss(model, processor, ["a red circle"])
    l = loss(image, mask)          # image [B, 3, H, W] in 0..1, mask [B, H, W] in 0..1 -> [B]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MaskedClipLoss", "crop_box", "load", "masked_view"]

CROP_MARGIN = 0.15  # the crop box grows by this fraction of its side on each side
MIN_CROP = 0.25  # the crop box's side is at least this fraction of the image's shorter side
INSIDE = 0.5  # the box is the bounding box of the pixels above this mask value


def load(ref: str | None = "toy", *, device="cpu", dtype=torch.float32, base_dir: Path | None = None):
    """``(CLIPModel, CLIPProcessor)`` for ``ref`` (None: the bundled toy CLIP) through
    :func:`hmedit.clip.load.load_clip`."""
    from hmedit.clip.load import load_clip

    return load_clip(ref or "toy", device=device, dtype=dtype, base_dir=base_dir)


def crop_box(
    mask: Tensor, margin: float = CROP_MARGIN, min_side: float = MIN_CROP
) -> tuple[int, int, int, int]:
    """The square box (y0, x0, y1, x1) in pixels that a region [H, W] is cropped to: the bounding box of its
    pixels above 0.5 (the whole frame for an empty mask), grown by ``margin`` of its longer side on each side,
    at least ``min_side`` of the shorter image side, kept inside the frame."""
    h, w = mask.shape[-2:]
    ys, xs = torch.nonzero(mask.detach() > INSIDE, as_tuple=True)
    if ys.numel() == 0:
        return 0, 0, h, w
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0)
    side = min(max(math.ceil(side * (1 + 2 * margin)), math.ceil(min_side * min(h, w))), min(h, w))
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top = int(min(max(round(cy - side / 2), 0), h - side))
    left = int(min(max(round(cx - side / 2), 0), w - side))
    return top, left, top + side, left + side


def masked_view(
    image: Tensor, mask: Tensor, size: int, mean: Tensor, std: Tensor, *, crop: bool = True
) -> Tensor:
    """CLIP's normalised input [B, 3, size, size] for ``image`` [B, 3, H, W] (0..1) seen through ``mask``
    [B, H, W]: outside the mask the CLIP's mean colour, then the crop box, resized (bilinear, antialiased)."""
    fill = mean.view(1, 3, 1, 1).to(image)
    m = mask[:, None].to(image)
    x = m * image + (1 - m) * fill
    views = []
    for b in range(x.shape[0]):
        y0, x0, y1, x1 = crop_box(mask[b]) if crop else (0, 0, x.shape[-2], x.shape[-1])
        v = x[b : b + 1, :, y0:y1, x0:x1]
        views.append(F.interpolate(v, (size, size), mode="bilinear", align_corners=False, antialias=True))
    x = torch.cat(views)
    return (x - fill) / std.view(1, 3, 1, 1).to(image)


class MaskedClipLoss:
    """1 - cos(CLIP image embedding of the masked view, CLIP text embedding of the prompt), per batch item.

    ``prompts``: one prompt, or one per batch item. The text embeddings are computed once, without gradient;
    the CLIP's weights never get gradients (they are frozen by the loader), the image and the mask do.
    """

    def __init__(self, model, processor, prompts: str | Sequence[str], *, crop: bool = True) -> None:
        self.model, self.crop = model, crop
        ip = processor.image_processor
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32)
        self.size = int(model.config.vision_config.image_size)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tok = processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = model.text_model(
                input_ids=tok["input_ids"].to(self.device),
                attention_mask=tok["attention_mask"].to(self.device),
            )
            text = model.text_projection(out.pooler_output)
        self.text = F.normalize(text.float(), dim=-1)

    def embed(self, image: Tensor, mask: Tensor) -> Tensor:
        """Normalised image embeddings [B, D] of the masked views."""
        view = masked_view(image.float(), mask.float(), self.size, self.mean, self.std, crop=self.crop)
        out = self.model.vision_model(pixel_values=view.to(self.device, self.dtype))
        return F.normalize(self.model.visual_projection(out.pooler_output).float(), dim=-1)

    def __call__(self, image: Tensor, mask: Tensor) -> Tensor:
        """Loss [B] of ``image`` [B, 3, H, W] in 0..1 inside ``mask`` [B, H, W] (or [H, W], broadcast)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if mask.ndim == 2:
            mask = mask.expand(image.shape[0], *mask.shape)
        if mask.shape != (image.shape[0], *image.shape[-2:]):
            raise ValueError(f"mask {tuple(mask.shape)} does not fit image {tuple(image.shape)}")
        text = self.text if self.text.shape[0] == image.shape[0] else self.text[:1].expand(image.shape[0], -1)
        return 1 - (self.embed(image, mask) * text.to(image.device)).sum(-1)
