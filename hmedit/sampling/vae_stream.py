"""Streamed exact tiled decoding: one sweep over the tiles per GroupNorm, every convolution run once.

The pass-based head of :mod:`hmedit.sampling.vae` finds GroupNorm k's whole-image statistics by running
each tile from its latest checkpoint up to GroupNorm k and stopping there; checkpoints sit at unit
(resnet) inputs, so every resnet's first convolution runs twice, and crops carry the receptive radius of
the whole rest of the head. This module cuts the head at the GroupNorms themselves instead:

* The head is a chain of *stages*. Stage j starts at GroupNorm j (statistics known), runs what follows up to
  the next GroupNorm (exclusive) and writes its output, the next GroupNorm's input, as an image-sized map,
  accumulating that GroupNorm's per-(batch, group) sums over each tile's core while it writes. The next
  stage reads its crops from that map. So each operation runs once per tile, the statistics come with the
  map, and a crop carries only the receptive radius of its own stage (one or two pixels).
* diffusers' ResnetBlock2D (no time embedding, no resampling) is split at its second GroupNorm: its first
  half (norm1, act, conv1) ends one stage, its second half (norm2, act, dropout, conv2, shortcut, sum)
  begins the next, which also reads the resnet's input (the previous stage's input map) for the sum. Its
  sub-modules are called in the order of its own forward. Other units without GroupNorms (upsamplers,
  activations, the output conv) are called whole on crops; a GroupNorm module is its own stage boundary.
* Maps are kept channels-last ([B, H, W, C]) in memory while they fit ``store_bytes`` (with the maps still
  needed), else in an unlinked temporary file of the same layout (one read per crop row, bit for bit); a
  map that fits neither makes :func:`plan` answer None, and the caller falls back to the pass-based head,
  which recomputes instead of storing.

Work: each convolution once, plus its crop's one- or two-pixel rim; the untiled decode's arithmetic, on
crops small enough for the caches. Memory: one crop's activations plus at most ``store_bytes`` of maps;
disk: the maps that did not fit (at 4096 px with the bundled toy VAE about 8 GiB at once, freed at the end).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmedit.sampling.tiling import Window


def _vae():
    from hmedit.sampling import vae

    return vae


# ------------------------------------------------------------------------------------------ GroupNorm
def group_stats(x: Tensor, groups: int) -> tuple[Tensor, Tensor, int]:
    """Per-(batch, group) sum and sum of squares (float64) of ``x`` [B, C, h, w], and the count per group.
    Each row of a channel is summed in float32 (torch's pairwise sum: a relative error of a few 1e-7 over a
    tile's row), the rows in float64: as exact as float64 throughout, for a fraction of its time."""
    b, c = x.shape[:2]
    xf = x.float()
    s1 = xf.sum(-1).to(torch.float64).reshape(b, groups, -1).sum(-1)
    s2 = (xf * xf).sum(-1).to(torch.float64).reshape(b, groups, -1).sum(-1)
    return s1, s2, x[0, : c // groups].numel()


def norm_with(m: nn.GroupNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm ``m`` of ``x`` with the given per-(batch, group) statistics (the whole image's), folded into
    one multiply-add per element: x * (rstd * weight) + (bias - mean * rstd * weight), per channel."""
    b, c = x.shape[:2]
    g = m.num_groups
    rstd = torch.rsqrt(var + m.eps)  # float64 [B, G]
    scale = rstd.repeat_interleave(c // g, dim=1)
    shift = -(mean * rstd).repeat_interleave(c // g, dim=1)
    if m.affine:
        w = m.weight.double()
        scale, shift = scale * w, shift * w + m.bias.double()
    scale, shift = scale.float()[..., None, None], shift.float()[..., None, None]
    return torch.addcmul(shift, x.float(), scale).to(x.dtype)


def _act(f: nn.Module, t: Tensor) -> Tensor:
    """The resnet's activation; SiLU in place (``t`` is the normalisation's fresh output)."""
    return F.silu(t, inplace=True) if type(f) is nn.SiLU else f(t)


class _Sums:
    """Accumulates one GroupNorm's statistics over tile cores."""

    def __init__(self, groups: int) -> None:
        self.groups, self.s1, self.s2, self.n = groups, 0.0, 0.0, 0

    def add(self, x: Tensor) -> None:
        s1, s2, n = group_stats(x, self.groups)
        self.s1, self.s2, self.n = self.s1 + s1, self.s2 + s2, self.n + n

    def result(self) -> tuple[Tensor, Tensor]:
        mean = self.s1 / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp(min=0)


# --------------------------------------------------------------------------------------------- stages
def _plain_resnet(m: nn.Module) -> bool:
    """A diffusers ResnetBlock2D whose forward (temb=None) is norm1, act, conv1, norm2, act, dropout,
    conv2, (shortcut), sum, scale: the one the stages split."""
    return (
        type(m).__name__ == "ResnetBlock2D"
        and getattr(m, "upsample", None) is None
        and getattr(m, "downsample", None) is None
        and getattr(m, "time_embedding_norm", None) in ("default", "group")
        and isinstance(getattr(m, "norm1", None), nn.GroupNorm)
        and isinstance(getattr(m, "norm2", None), nn.GroupNorm)
    )


@dataclass
class _Op:
    kind: str  # "norm" | "first" (resnet act, conv1) | "second" (resnet act, dropout, conv2, sum) | "unit"
    module: nn.Module
    res: Fraction  # input resolution / head input resolution
    radius: float  # receptive radius, px at the op's input
    channels: int  # input channels
    call: Callable[[Tensor], Tensor] | None = None  # "unit"


@dataclass
class Stage:
    ops: list[_Op]
    res: Fraction  # input resolution / head input resolution
    scale: Fraction  # output / input resolution
    in_channels: int
    out_channels: int
    margin: int  # context px at the stage input a crop needs
    skip: bool  # also reads the previous stage's input (a split resnet's input, for its sum)
    norm: int | None = None  # index of the GroupNorm the stage starts with (statistics known)
    out_norm: nn.GroupNorm | None = None  # the GroupNorm whose input the stage writes
    norms: list[nn.GroupNorm] = field(default_factory=list)  # all, in order (the norm indices)

    def run(self, t: Tensor, skip: Tensor | None, stats: list[tuple[Tensor, Tensor]]) -> Tensor:
        for op in self.ops:
            m = op.module
            if op.kind == "norm":  # only ever the first op
                t = norm_with(m, t, *stats[self.norm])
            elif op.kind == "first":
                t = m.conv1(_act(m.nonlinearity, t))
            elif op.kind == "second":
                h = m.conv2(m.dropout(_act(m.nonlinearity, t)))
                s = skip if m.conv_shortcut is None else m.conv_shortcut(skip)
                t = (s + h) / m.output_scale_factor
            else:
                t = op.call(t)
        return t


def stages(units) -> list[Stage] | None:
    """The head's traced units (see :mod:`hmedit.sampling.vae`) as stages cut at its GroupNorms, or None when
    a unit is neither a plain resnet, a GroupNorm, nor free of GroupNorms, or the head downsamples."""
    vae = _vae()
    ops: list[_Op] = []
    for u in units:
        m = u.module
        if isinstance(m, nn.GroupNorm):
            ops.append(_Op("norm", m, u.in_scale, 0.0, u.channels))
        elif _plain_resnet(m):
            r1 = vae._conv_radius(m.conv1)
            r2 = max(vae._conv_radius(m.conv2), vae._conv_radius(m.conv_shortcut) if m.conv_shortcut else 0)
            mid = m.conv1.out_channels
            ops += [
                _Op("norm", m.norm1, u.in_scale, 0.0, u.channels),
                _Op("first", m, u.in_scale, r1, u.channels),
                _Op("norm", m.norm2, u.in_scale, 0.0, mid),
                _Op("second", m, u.in_scale, r2, mid),
            ]
        elif not u.norms:
            ops.append(_Op("unit", m, u.in_scale, u.radius * u.in_scale, u.channels, u.call))
        else:
            return None
        if u.scale.denominator != 1 or u.in_scale.denominator != 1:
            return None  # downsampling heads (encoders) keep the pass-based engine
    norms = [op.module for op in ops if op.kind == "norm"]
    if len(set(map(id, norms))) != len(norms):
        return None
    groups: list[list[_Op]] = []
    for op in ops:
        if op.kind == "norm" or not groups:
            groups.append([])
        groups[-1].append(op)
    out: list[Stage] = []
    for i, g in enumerate(groups):
        res = g[0].res
        last = units[-1]
        end = groups[i + 1][0].res if i + 1 < len(groups) else last.in_scale * last.scale
        radius = sum(op.radius * res / op.res for op in g)
        first = g[0] if g[0].kind != "norm" else (g[1] if len(g) > 1 else None)
        skip = first is not None and first.kind == "second"
        if skip and not (
            i > 0 and any(op.kind == "first" and op.module is first.module for op in groups[i - 1])
        ):
            return None
        out.append(
            Stage(
                ops=g,
                res=res,
                scale=end / res,
                in_channels=g[0].channels,
                out_channels=groups[i + 1][0].channels if i + 1 < len(groups) else 0,
                margin=math.ceil(radius - 1e-9),
                skip=skip,
                norm=norms.index(g[0].module) if g[0].kind == "norm" else None,
                out_norm=groups[i + 1][0].module if i + 1 < len(groups) else None,
                norms=norms,
            )
        )
    for st in out:
        if st.scale.denominator != 1:
            return None
    return out


# ----------------------------------------------------------------------------------------------- maps
class _Input:
    """The head input (an NCHW tensor) read as a map."""

    def __init__(self, t: Tensor) -> None:
        self.t = t

    def read(self, win: Window) -> Tensor:
        return self.t[win.slice].contiguous()

    def close(self) -> None:
        self.t = None


class RamMap:
    """An image-sized map [B, C, H, W] in memory; crops read back as contiguous tensors, as the disk map
    (:class:`hmedit.sampling.vae._DiskMap`, one block per tile core) gives them."""

    def __init__(self, batch: int, channels: int, height: int, width: int, like: Tensor) -> None:
        self.t = like.new_empty(batch, channels, height, width)
        self.height, self.width = height, width

    def write(self, win: Window, v: Tensor) -> None:
        self.t[win.slice] = v

    def read(self, win: Window) -> Tensor:
        return self.t[win.slice].contiguous()

    def close(self) -> None:
        self.t = None


class DiskMap:
    """An image-sized map in an unlinked temporary file, one block per tile core (the pass-based engine's
    :class:`hmedit.sampling.vae._DiskMap`); crops read back contiguous."""

    def __init__(self, cores: list[Window], batch: int, channels: int, like: Tensor) -> None:
        self.m = _vae()._DiskMap(cores, batch, channels, like.dtype, like.device)
        self.height, self.width = self.m.height, self.m.width

    def write(self, win: Window, v: Tensor) -> None:
        self.m.write(win, v)

    def read(self, win: Window) -> Tensor:
        return self.m.read(win)

    def close(self) -> None:
        self.m.close()


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    stages: list[Stage]
    where: list[str]  # per stage output (all but the last): "ram" | "disk"
    stored_bytes: int  # most bytes of maps in memory at once
    spilled_bytes: int  # most bytes of maps on disk at once


def plan(
    stage_list: list[Stage],
    batch: int,
    height: int,
    width: int,
    elem: int,
    store_bytes: int,
    spill_bytes: int,
) -> Plan | None:
    """Where each stage's output map lives: memory while the maps needed at once fit ``store_bytes``, else
    disk within ``spill_bytes``; None when a map fits neither."""

    def size(j: int) -> int:  # stage j's output map
        st = stage_list[j]
        r = st.res * st.scale
        return batch * st.out_channels * int(height * r) * int(width * r) * elem

    where: list[str] = []
    peak_ram = peak_disk = 0
    for j in range(len(stage_list) - 1):
        alive = [j - 1] if j >= 1 else []  # stage j reads stage j-1's output
        if stage_list[j].skip and j >= 2:
            alive.append(j - 2)  # and the input of stage j-1
        ram = sum(size(i) for i in alive if where[i] == "ram")
        disk = sum(size(i) for i in alive if where[i] == "disk")
        s = size(j)
        if ram + s <= store_bytes:
            where.append("ram")
            ram += s
        elif disk + s <= spill_bytes:
            where.append("disk")
            disk += s
        else:
            return None
        peak_ram, peak_disk = max(peak_ram, ram), max(peak_disk, disk)
    return Plan(stage_list, where, peak_ram, peak_disk)


# ----------------------------------------------------------------------------------------------- run
def run(p: Plan, x: Tensor, cores: list[Window], info: dict) -> Tensor:
    """Run the planned stages over the head input ``x`` [B, C, H, W]; ``cores`` partition it (head px)."""
    vae = _vae()
    H, W = x.shape[-2:]
    batch = x.shape[0]
    st0 = p.stages[0]
    stats: list[tuple[Tensor, Tensor]] = []
    if st0.norm is not None:
        s = _Sums(st0.ops[0].module.num_groups)
        s.add(x)
        stats.append(s.result())
    inp: _Input | RamMap | DiskMap = _Input(x)
    prev: _Input | RamMap | DiskMap | None = None
    out: Tensor | None = None
    opened: list = []
    try:
        for j, st in enumerate(p.stages):
            last = j == len(p.stages) - 1
            h, w = int(H * st.res), int(W * st.res)
            oh, ow = int(h * st.scale), int(w * st.scale)
            target = None
            sums = None
            if not last:
                if p.where[j] == "ram":
                    target = RamMap(batch, st.out_channels, oh, ow, x)
                else:
                    out_cores = [vae._scale(c, st.res * st.scale) for c in cores]
                    target = DiskMap(out_cores, batch, st.out_channels, x)
                opened.append(target)
                sums = _Sums(st.out_norm.num_groups)
            if prev is not None and not st.skip:
                prev.close()
                prev = None
            for c0 in cores:
                core = vae._scale(c0, st.res)
                crop = vae._grow(core, st.margin, h, w)
                y = st.run(inp.read(crop), prev.read(crop) if st.skip else None, stats)
                oc, ocrop = vae._scale(core, st.scale), vae._scale(crop, st.scale)
                yc = y[vae._inside(oc, ocrop).slice]
                if last:
                    if out is None:
                        out = yc.new_empty(batch, yc.shape[1], oh, ow)
                    out[oc.slice] = yc
                else:
                    target.write(oc, yc)
                    sums.add(yc)
            if sums is not None:
                stats.append(sums.result())
            if prev is not None:
                prev.close()
            prev, inp = inp, target
        info["passes"] = len(p.stages)
    finally:
        for m in opened:
            m.close()
    return out
