"""The one attention processor: diffusers' SDPA processor plus a regional bias on cross-attention (where the
softmax is computed from the scores the bias needs anyway).

Collage Diffusion (Sarukkai et al., arXiv:2303.00262) §4.2:
softmax((QKᵀ + w_pos·A_pos − w_neg·A_neg) / √d) V with w = v · y(σ),
y(σ) = log(1 + log(1 + σ)) · max(QKᵀ). For an image token x at a UNet level and a token of node k:

    bias = s_k · y(σ) · (v_pos · m̃ᵏ(x) − v_neg · (1 − m̃ᵏ(x)))

where m̃ᵏ is the node's effective mask at that level. Tokens owned by no node (the root's, start/end/
padding) get no bias; tokens of a node that is inactive at this step or level are left out of the softmax
(−inf), as if its prompt were absent. The bias is [B, 1, N, T] and broadcast over heads (no per-head
copies). Self-attention is left alone: restricting it makes regions render as separate pictures (InvokeAI's
finding, peers.md).

Per-call data (masks of this step, σ, recording buffers) flows in through ``cross_attention_kwargs={"region":
RegionCall}``; without it, or with no regional tokens, the processor is exactly the stock one.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import Tensor

# σ of SD's first training step (t = 999). Zero-terminal-SNR schedules reach σ = ∞ there; capping keeps y(σ)
# on the scale the bias was designed for.
SIGMA_CAP = 14.6


def sigma_weight(sigma: float) -> float:
    """log(1 + log(1 + σ)) (Collage Diffusion §4.2), with σ capped at SD's largest finite value."""
    s = min(float(sigma), SIGMA_CAP)
    return math.log1p(math.log1p(max(s, 0.0)))


@dataclass
class RegionCall:
    """Everything the processor needs for one UNet call (one step, one batch of windows).

    The UNet batch is [uncond × W, cond × W] for W windows (W = 1 untiled), or [cond × W] without guidance.
    masks: query length N → [W, K, N] effective masks of this step's level (node 0 = root, unused).
    active: query length N → [K] bool, nodes acting at this step and level.
    owners: [B, T] owner node per token (-1: global), for the uncond and cond branches (B = 2), or the cond
        branch alone (B = 1).
    valid: [B, T] False for padding that evens out the branches' lengths.
    pos, neg: [K] s_k · v_pos,k and s_k · v_neg,k.
    record: query length N → [W, K, N] accumulated attention mass per node (cond branch), or None.
    record_owner: [T] node whose mass a cond token counts towards (-1: none), e.g. the root's words → 0.
    record_tokens: [T'] cond token positions whose own maps are recorded into ``token_record`` (query
        length N → [W, T', N]), for word maps and attention masks (hmedit.masks.attention).
    self_record: query length N → [W, N, N] accumulated self-attention (cond branch, mean over heads), for
        sharpening those maps; recorded at the levels it holds.
    record_only: no token is regional (a root-only scene recorded for its words): the output is the stock
        processor's, and the probabilities are computed for the recording alone.
    """

    masks: dict[int, Tensor]
    active: dict[int, Tensor]
    owners: Tensor
    valid: Tensor
    pos: Tensor
    neg: Tensor
    y_sigma: float
    record: dict[int, Tensor] | None = None
    record_owner: Tensor | None = None
    record_count: dict[int, int] = field(default_factory=dict)
    record_tokens: Tensor | None = None
    token_record: dict[int, Tensor] | None = None
    self_record: dict[int, Tensor] | None = None
    record_only: bool = False
    inject: Tensor | None = None
    _cache: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    # Edit pairs (hmedit.sampling.edits): the W "windows" are copies of one image (the source, then the
    # targets), each with its own nodes and tokens: owners and valid are then [B, W, T], active [W, K] per
    # level, pos and neg [W, K], record_owner [W, T]; and ``inject`` [W, T] names, per target token, the
    # source token whose cross-attention probabilities it takes (-1: its own; prompt-to-prompt).

    def bias(self, n: int, windows: int, scores_max: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
        """Additive attention bias [B·W, 1, N, T], already multiplied by the attention ``scale`` (1/√d)."""
        term, drop = self._terms(n)  # [B, W, N, T], [B, W or 1, 1, T]
        y = (self.y_sigma * scale) * scores_max.view(term.shape[0], windows, 1, 1)
        bias = torch.addcmul(drop, y.to(term.dtype), term)
        return bias.flatten(0, 1).unsqueeze(1).to(dtype)

    def row_valid(self, windows: int) -> Tensor:
        """[B·W, T] valid tokens per row of the UNet batch."""
        if self.valid.ndim == 3:
            return self.valid.flatten(0, 1)
        return self.valid.repeat_interleave(windows, dim=0)

    def inject_source(self, probs: Tensor, windows: int) -> Tensor:
        """The cond rows of the targets (copies 1..W-1) with the source's (copy 0) probabilities where
        ``inject`` names a source token [B·W, h, N, T]."""
        idx = self.inject.to(probs.device)
        cond = probs[probs.shape[0] - windows :]
        src = cond[0][..., idx.clamp(min=0)]  # [h, N, W, T]
        taken = torch.where((idx >= 0)[:, None, None, :], src.permute(2, 0, 1, 3), cond)
        return torch.cat([probs[: probs.shape[0] - windows], taken])

    def _terms(self, n: int) -> tuple[Tensor, Tensor]:
        """The step's bias pattern at level ``n``, shared by every layer of the level: v_pos·m − v_neg·(1 − m)
        per (window, query, token) ([B, W, N, T], 0 for global and dropped tokens), and the additive −inf
        of dropped tokens ([B, 1, 1, T], or [B, W, 1, T] with per-window owners)."""
        cache = self._cache
        if n not in cache:
            if self.owners.ndim == 3:
                cache[n] = self._copy_terms(n)
                return cache[n]
            masks, active = self.masks[n], self.active[n]  # [W, K, N], [K]
            terms, drops = [], []
            for b in range(self.owners.shape[0]):
                own = self.owners[b]
                node = own >= 0
                idx = own.clamp(min=0)
                m = masks[:, idx, :].transpose(1, 2)  # [W, N, T]
                term = self.pos[idx] * m - self.neg[idx] * (1 - m)
                drop = (node & ~active[idx]) | ~self.valid[b]
                terms.append(torch.where(node & ~drop, term, torch.zeros((), dtype=term.dtype)))
                drops.append(
                    torch.zeros(drop.shape, dtype=term.dtype, device=term.device).masked_fill(
                        drop, -torch.inf
                    )
                )
            cache[n] = (torch.stack(terms), torch.stack(drops)[:, None, None, :])
        return cache[n]

    def _copy_terms(self, n: int) -> tuple[Tensor, Tensor]:
        """:meth:`_terms` with per-window owners, valid, active, pos and neg (edit pairs)."""
        masks, active = self.masks[n], self.active[n]  # [W, K, N], [W, K]
        terms, drops = [], []
        for b in range(self.owners.shape[0]):
            own = self.owners[b]  # [W, T]
            node = own >= 0
            idx = own.clamp(min=0)
            m = masks.gather(1, idx[..., None].expand(-1, -1, masks.shape[2])).transpose(1, 2)  # [W, N, T]
            term = self.pos.gather(1, idx)[:, None] * m - self.neg.gather(1, idx)[:, None] * (1 - m)
            drop = (node & ~active.gather(1, idx)) | ~self.valid[b]  # [W, T]
            terms.append(torch.where((node & ~drop)[:, None], term, torch.zeros((), dtype=term.dtype)))
            drops.append(
                torch.zeros(drop.shape, dtype=term.dtype, device=term.device).masked_fill(drop, -torch.inf)
            )
        return torch.stack(terms), torch.stack(drops)[:, :, None, :]


class RegionAttnProcessor(AttnProcessor2_0):
    """Stock SDPA attention, plus the regional bias on cross-attention when a ``region`` is given."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        region: RegionCall | None = None,
        **kwargs,
    ):
        plain = (
            region is None
            or encoder_hidden_states is None
            or attention_mask is not None
            or hidden_states.ndim != 3
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_cross
            or attn.residual_connection
        )
        if plain or region.record_only:
            if region is not None and attention_mask is None and hidden_states.ndim == 3:
                self._record_plain(attn, hidden_states, encoder_hidden_states, region)
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
            )
        batch, n, _ = hidden_states.shape
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(encoder_hidden_states)
        v = attn.to_v(encoder_hidden_states)
        d = k.shape[-1] // heads
        q, k, v = (x.view(batch, -1, heads, d).transpose(1, 2) for x in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        scale = attn.scale
        scores = q @ k.transpose(-1, -2)  # [B, h, N, T], unscaled QKᵀ as in the paper
        windows = batch // region.owners.shape[0]  # the batch is [uncond × W, cond × W], or [cond × W]
        valid = region.row_valid(windows)  # [B, T]
        smax = scores.amax(dim=(1, 2)).masked_fill(~valid, float("-inf")).amax(dim=-1)  # max over valid QKᵀ
        bias = region.bias(n, windows, smax, scale, scores.dtype)
        # the scores are at hand (y(σ) needs their max), so the softmax is finished here rather than handing
        # q, k, v to scaled_dot_product_attention, which would compute QKᵀ a second time
        probs = torch.softmax(torch.add(bias, scores, alpha=scale), dim=-1)
        if region.inject is not None:
            probs = region.inject_source(probs, windows)
        out = probs @ v
        if region.record is not None:
            self._record(region, probs[batch - windows :], n)
        out = out.transpose(1, 2).reshape(batch, -1, heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor

    @staticmethod
    def _record(region: RegionCall, probs: Tensor, n: int) -> None:
        """Add this layer's cond-branch attention mass per node (mean over heads) to the recording, and the
        recorded tokens' own maps."""
        owner = region.record_owner
        heads_mean = probs.mean(1)  # [W, N, T]
        k = region.record[n].shape[1]
        if owner.ndim == 2:  # per-window owners (edit pairs): each copy's tokens to its own nodes
            for w in range(owner.shape[0]):
                keep = owner[w] >= 0
                mass = heads_mean[w][..., keep]  # [N, T']
                per_node = mass.new_zeros(n, k).index_add_(1, owner[w][keep], mass)
                region.record[n][w] += per_node.transpose(0, 1).float()
        else:
            keep = owner >= 0
            mass = heads_mean[..., keep]  # [W, N, T']
            per_node = mass.new_zeros(mass.shape[0], n, k).index_add_(2, owner[keep], mass)
            region.record[n] += per_node.transpose(1, 2).float()
        region.record_count[n] = region.record_count.get(n, 0) + 1
        if region.token_record is not None and n in region.token_record:
            region.token_record[n] += heads_mean[..., region.record_tokens].transpose(1, 2).float()

    def _record_plain(self, attn, hidden_states, encoder_hidden_states, region: RegionCall) -> None:
        """Where the stock processor computes the output: the cond branch's attention probabilities for the
        recordings alone (cross-attention of a ``record_only`` call; self-attention into ``self_record``)."""
        cross = encoder_hidden_states is not None
        n = hidden_states.shape[1]
        if cross and not (region.record_only and region.record is not None and n in region.record):
            return
        if not cross and (region.self_record is None or n not in region.self_record):
            return
        if attn.spatial_norm is not None or attn.group_norm is not None or (cross and attn.norm_cross):
            return
        windows = hidden_states.shape[0] // region.owners.shape[0]
        x = hidden_states[-windows:]
        ctx = encoder_hidden_states[-windows:] if cross else x
        heads = attn.heads
        q, k = attn.to_q(x), attn.to_k(ctx)
        d = k.shape[-1] // heads
        q, k = (t.view(windows, -1, heads, d).transpose(1, 2) for t in (q, k))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        scores = (q @ k.transpose(-1, -2)) * attn.scale
        if cross:
            scores = scores.masked_fill(~region.valid[-1][None, None, None, :], float("-inf"))
            self._record(region, torch.softmax(scores, dim=-1), n)
        else:
            region.self_record[n] += torch.softmax(scores.float(), dim=-1).mean(1)


@contextmanager
def regional_attention(unet):
    """Install the processor on every attention layer of ``unet``; restore the originals on exit."""
    original = unet.attn_processors
    unet.set_attn_processor(RegionAttnProcessor())
    try:
        yield
    finally:
        unet.set_attn_processor(original)
