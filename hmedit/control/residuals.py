"""The denoiser part that runs the scene's ControlNets and hands the UNet their weighted residuals.

ControlNet (Zhang & Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models",
arXiv:2302.05543) adds its zero-convolution outputs to the UNet's skip connections and mid block. diffusers
multiplies them by one scalar ``controlnet_conditioning_scale``; Collage Diffusion (Sarukkai et al.,
arXiv:2303.00262, §4.3) replaces the scalar by a weight map resized bilinearly to each output's size. Here
every down-block residual and the mid residual is multiplied by its group's weight map (the sum of its
nodes' ``weight · effective mask``, of the nodes whose [start, end] window holds the step), and the groups'
residuals are summed, as diffusers' MultiControlNetModel sums its nets'.

Everything else is diffusers' StableDiffusion(XL)ControlNetPipeline: the conditioning image in [0, 1],
repeated for the guidance batch; the ControlNet gets the UNet's latents, timestep, text embeddings and
(SDXL) added conditioning; in guess mode (or for a ControlNet with ``global_pool_conditions``) with guidance
it runs on the conditional branch alone and the unconditional branch gets zeros. The ControlNet also gets
the step's regional attention data (its attention layers are the UNet encoder's), without recording.
Tiled, each window gets its crop of the conditioning image and of the weight map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.control.images import ControlGroup
from hmedit.sampling.tiling import Window

MAX_CACHED_MAPS = 4096
MAX_EMBED_BYTES = 256 << 20  # conditioning embeddings kept per render (tiled: one per window)


class ControlResiduals:
    """``down_block_additional_residuals`` / ``mid_block_additional_residual`` for each UNet call."""

    def __init__(
        self,
        groups: list[ControlGroup],
        nets: list,
        guidance,
        n_steps: int,
        *,
        scale: int,
        device,
        dtype,
    ) -> None:
        self.groups, self.nets, self.guidance, self.n_steps = groups, nets, guidance, n_steps
        self.scale, self.device, self.dtype = scale, device, dtype
        self.images = [g.image[None].to(device, net.dtype) for g, net in zip(groups, nets, strict=True)]
        self._maps: dict[tuple, Tensor] = {}
        self._embeds: dict[tuple, Tensor] = {}
        # the conditioning image's embedding does not change over the steps: computed once per window and
        # handed to the ControlNet in place of the image (its embedding module is an identity meanwhile)
        self.cache_embeddings = [
            getattr(net.config, "controlnet_conditioning_channel_order", "rgb") == "rgb" for net in nets
        ]
        self.passes = 0  # ControlNet calls made (for tests and benchmarks)

    def inputs(self, i: int, windows, n: int) -> dict:
        return {}

    @contextmanager
    def attention(self):
        """hmedit's attention processor on every ControlNet (regional text as in the UNet's encoder)."""
        from hmedit.attention.processor import regional_attention

        with ExitStack() as stack:
            for k, net in {id(n): (k, n) for k, n in enumerate(self.nets)}.values():
                stack.enter_context(regional_attention(net))
                if self.cache_embeddings[k]:
                    stack.enter_context(_embedding_given(net))
            yield

    def maps(self) -> dict[str, Tensor]:
        """Influence maps ``control/<node id>``: each control node's weight map [H, W]."""
        return {f"control/{c.id}": c.map.float() for g in self.groups for c in g.nodes}

    # ---------------------------------------------------------------------------------------------

    def _map(self, g: int, active: tuple[bool, ...], win: Window | None, size: tuple[int, int]) -> Tensor:
        """Group ``g``'s weight map for the active nodes, cropped to ``win``, resized to ``size``: [h, w]."""
        key = (g, active, win, size)
        if key not in self._maps:
            if len(self._maps) > MAX_CACHED_MAPS:
                self._maps.clear()
            full = self.groups[g].weight_map(active)
            m = full if win is None else full[win.scaled(self.scale).slice]
            lo, hi = float(m.min()), float(m.max())
            if lo == hi:  # a constant map (weight 1 everywhere: exactly diffusers' scalar)
                out = torch.full(size, lo)
            else:
                out = F.interpolate(
                    m[None, None].float(), size, mode="bilinear", align_corners=False, antialias=True
                )[0, 0]
            self._maps[key] = out.to(self.device, self.dtype)
        return self._maps[key]

    def _image(self, g: int, windows: Sequence[Window] | None) -> Tensor:
        img = self.images[g]
        if windows is None:
            return img
        return torch.cat([img[win.scaled(self.scale).slice] for win in windows])

    def _cond(self, g: int, net, windows: Sequence[Window] | None) -> Tensor:
        """What the ControlNet takes as ``controlnet_cond`` for the windows: the image, or (inside
        :meth:`attention`) its embedding, computed once per window."""
        if not (self.cache_embeddings[g] and isinstance(net.controlnet_cond_embedding, _Given)):
            return self._image(g, windows)
        out = []
        for win in windows or [None]:
            key = (g, win)
            if key not in self._embeds:
                if sum(e.numel() * e.element_size() for e in self._embeds.values()) > MAX_EMBED_BYTES:
                    self._embeds.clear()
                image = self._image(g, None if win is None else [win])
                self._embeds[key] = net.controlnet_cond_embedding.inner(image)
            out.append(self._embeds[key])
        return torch.cat(out)

    def residuals(self, x: Tensor, t, i: int, windows: Sequence[Window] | None, n: int, kwargs: dict) -> dict:
        """The summed weighted residuals for UNet input ``x`` (the guidance batch, [branches · n, C, h, w])
        and the UNet's other inputs ``kwargs``; {} when no control acts at step ``i``."""
        down: list[Tensor] | None = None
        mid: Tensor | None = None
        for g, (group, net) in enumerate(zip(self.groups, self.nets, strict=True)):
            active = group.active(i, self.n_steps)
            if not any(active):
                continue
            d, m = self._run(g, group, net, x, t, windows, n, kwargs, active)
            down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _run(self, g, group, net, x, t, windows, n, kwargs, active) -> tuple[list[Tensor], Tensor]:
        guess = group.guess or bool(getattr(net.config, "global_pool_conditions", False))
        split = guess and self.guidance.on  # diffusers: the ControlNet sees the conditional branch only
        ehs = kwargs["encoder_hidden_states"]
        added = kwargs.get("added_cond_kwargs")
        region = (kwargs.get("cross_attention_kwargs") or {}).get("region")
        image = self._cond(g, net, windows)
        if split:
            x, ehs = x[-n:], ehs[-n:]
            if added is not None:
                added = {k: v[-n:] for k, v in added.items()}
            if region is not None:
                region = dataclasses.replace(
                    region, owners=region.owners[-1:], valid=region.valid[-1:], record=None, _cache={}
                )
        else:
            image = torch.cat([image] * (x.shape[0] // n))
            if region is not None:
                region = dataclasses.replace(region, record=None)
        extra = {"cross_attention_kwargs": {"region": region}} if region is not None else {}
        if added is not None:
            extra["added_cond_kwargs"] = added
        down, mid = net(
            x.to(net.dtype),
            t,
            encoder_hidden_states=ehs.to(net.dtype),
            controlnet_cond=image,
            conditioning_scale=1.0,
            guess_mode=guess,
            return_dict=False,
            **extra,
        )
        self.passes += 1
        reps = x.shape[0] // n
        wins = list(windows) if windows is not None else [None]

        def weigh(r: Tensor) -> Tensor:
            size = tuple(r.shape[-2:])
            w = torch.stack([self._map(g, active, win, size) for win in wins])[:, None]  # [n, 1, h, w]
            r = r * torch.cat([w] * reps).to(r.dtype)
            if split:
                r = torch.cat([torch.zeros_like(r), r])
            return r

        return [weigh(r) for r in down], weigh(mid)


class _Given(torch.nn.Module):
    """Stands in for a ControlNet's conditioning embedding: its input is the embedding already."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x


@contextmanager
def _embedding_given(net):
    original = net.controlnet_cond_embedding
    net.controlnet_cond_embedding = _Given(original)
    try:
        yield
    finally:
        net.controlnet_cond_embedding = original


def has_controls(scene) -> bool:
    return any(f.node.control is not None for f in scene.flat())


def make_controls(scene, plan, model, guidance, n_steps: int) -> ControlResiduals:
    """The part for a render of ``scene`` (planned as ``plan``) on ``model``: images and maps made, the
    ControlNets resolved and loaded (each once)."""
    from hmedit.control.images import control_nodes, group_controls
    from hmedit.control.models import controlnet_refs, key_of, load_controlnet

    refs = controlnet_refs(scene, model.ref)
    nodes = control_nodes(scene, plan.flat, plan.effective, plan.width, plan.height)
    groups = group_controls(nodes, {k: key_of(r) for k, r in refs.items()})
    by_key = {key_of(r): r for r in refs.values()}
    nets = [load_controlnet(by_key[g.key], model) for g in groups]
    return ControlResiduals(
        groups, nets, guidance, n_steps, scale=model.vae_scale_factor, device=model.device, dtype=model.dtype
    )
