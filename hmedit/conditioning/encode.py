"""Prompt embeddings for a scene: each node's prompt (and negative) encoded on its own and concatenated along
the token axis, so a scene may hold many more than 77 tokens, with the owner node of every token kept.

Layout of both branches (conditional: prompts; unconditional: negatives):
  [root: 77 tokens, exactly as diffusers encodes one prompt] [node 1: its words + end token] [node 2: ...] ...
The root's tokens (with start, end and padding tokens) are global and never masked (owner -1). Other nodes
contribute their words and their end token (which carries the prompt's meaning in CLIP) and no start/padding
tokens: those are the same for every prompt and would only dilute the softmax. A root prompt longer than the
tokenizer's window is encoded in 75-token chunks (as A1111 does) instead of being cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hmedit.models.family import TextStack


@dataclass
class Branch:
    """One side of classifier-free guidance: embeddings [T, D] and each token's owner node (-1: global)."""

    embeds: Tensor
    owner: Tensor  # long [T]

    def __len__(self) -> int:
        return self.embeds.shape[0]


@dataclass
class Conditioning:
    cond: Branch
    uncond: Branch
    ranges: dict[int, tuple[int, int]]  # node index -> [start, end) of its tokens in cond
    root_words: int = 0  # the root's word tokens (after its start token) in the first chunk
    pooled: Tensor | None = None  # [2, P] (uncond, cond) pooled embeddings of the root (SDXL), else None

    def record_owner(self) -> Tensor:
        """[T_cond] the node each cond token's attention counts towards in influence maps: the root's words
        -> 0, a node's tokens -> its index, start/end/padding -> -1 (DAAM measures words, not the sink: What
        the DAAM: Interpreting Stable Diffusion Using Cross Attention, Tang et al., arXiv:2210.04885)."""
        out = torch.where(self.cond.owner >= 0, self.cond.owner, torch.full_like(self.cond.owner, -1))
        out[1 : 1 + self.root_words] = 0
        return out

    @property
    def regional(self) -> bool:
        """True when any token is owned by a node (else the processor has nothing to do)."""
        return bool((self.cond.owner >= 0).any() or (self.uncond.owner >= 0).any())

    def batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """[2, T, D] embeddings (uncond, cond, as diffusers orders them), owners [2, T] and a validity mask
        [2, T] for the padding that makes both branches the same length."""
        t = max(len(self.cond), len(self.uncond))
        embeds, owners, valid = [], [], []
        for b in (self.uncond, self.cond):
            pad = t - len(b)
            embeds.append(torch.cat([b.embeds, b.embeds.new_zeros(pad, b.embeds.shape[1])]))
            owners.append(torch.cat([b.owner, b.owner.new_full((pad,), -1)]))
            valid.append(torch.arange(t) < len(b))
        return torch.stack(embeds), torch.stack(owners), torch.stack(valid)


def encode_scene(
    text: TextStack, prompts: Sequence[str], negatives: Sequence[str], *, zero_empty_negative: bool = False
) -> Conditioning:
    """Embeddings for the flat node list (index 0 = root) through the model's text encoders (``text``, from
    its family). ``zero_empty_negative`` (SDXL's ``force_zeros_for_empty_prompt``): an empty root negative
    is all zeros, its pooled embedding too."""

    def branch(texts: Sequence[str], zero: bool) -> tuple[Branch, dict[int, tuple[int, int]], Tensor | None]:
        root, pooled = text.encode_window(texts[0], zero=zero)
        parts = [root]
        owner = [torch.full((root.shape[0],), -1, dtype=torch.long)]
        ranges, pos = {}, root.shape[0]
        for k, t in enumerate(texts[1:], start=1):
            e = text.encode_words(t).to(root)
            if e.shape[0]:
                parts.append(e)
                owner.append(torch.full((e.shape[0],), k, dtype=torch.long))
                ranges[k] = (pos, pos + e.shape[0])
                pos += e.shape[0]
        return Branch(torch.cat(parts), torch.cat(owner)), ranges, pooled

    cond, ranges, pooled = branch(prompts, False)
    uncond, _, upooled = branch(negatives, zero_empty_negative and not negatives[0])
    root_words = min(len(text.word_ids(prompts[0])[0]), text.window - 2)
    both = torch.stack([upooled, pooled]) if pooled is not None else None
    return Conditioning(cond, uncond, ranges, root_words, both)
