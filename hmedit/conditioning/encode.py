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

    def record_owner(self) -> Tensor:
        """[T_cond] the node each cond token's attention counts towards in influence maps: the root's words
        -> 0, a node's tokens -> its index, start/end/padding -> -1 (DAAM measures words, not the sink)."""
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


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False).input_ids


@torch.no_grad()
def encode_text(tokenizer, text_encoder, text: str) -> Tensor:
    """[77·n, D] embeddings for one prompt: identical to diffusers for prompts that fit the window."""
    n = tokenizer.model_max_length
    device = text_encoder.device
    ids = _token_ids(tokenizer, text)
    if len(ids) <= n - 2:
        batch = tokenizer(
            text, padding="max_length", max_length=n, truncation=True, return_tensors="pt"
        ).input_ids
    else:
        body = n - 2
        chunks = [ids[i : i + body] for i in range(0, len(ids), body)]
        pad = tokenizer.pad_token_id
        batch = torch.tensor(
            [[tokenizer.bos_token_id, *c, tokenizer.eos_token_id] + [pad] * (body - len(c)) for c in chunks]
        )
    return text_encoder(batch.to(device))[0].reshape(-1, text_encoder.config.hidden_size)


@torch.no_grad()
def encode_words(tokenizer, text_encoder, text: str) -> Tensor:
    """A non-root node's tokens: its words and end token, [n_words + 1, D] (chunked if long). CLIP's text
    attention is causal, so these equal the same positions of the padded 77-token encoding."""
    ids = _token_ids(tokenizer, text)
    if not ids:
        return text_encoder.get_input_embeddings().weight.new_zeros(0, text_encoder.config.hidden_size)
    n = tokenizer.model_max_length - 2
    out = []
    for i in range(0, len(ids), n):
        chunk = ids[i : i + n]
        batch = torch.tensor(
            [[tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]], device=text_encoder.device
        )
        out.append(text_encoder(batch)[0][0, 1:])
    return torch.cat(out)


def encode_scene(tokenizer, text_encoder, prompts: Sequence[str], negatives: Sequence[str]) -> Conditioning:
    """Embeddings for the flat node list (index 0 = root)."""

    def branch(texts: Sequence[str]) -> tuple[Branch, dict[int, tuple[int, int]]]:
        parts = [encode_text(tokenizer, text_encoder, texts[0])]
        owner = [torch.full((parts[0].shape[0],), -1, dtype=torch.long)]
        ranges, pos = {}, parts[0].shape[0]
        for k, text in enumerate(texts[1:], start=1):
            e = encode_words(tokenizer, text_encoder, text)
            if e.shape[0]:
                parts.append(e)
                owner.append(torch.full((e.shape[0],), k, dtype=torch.long))
                ranges[k] = (pos, pos + e.shape[0])
                pos += e.shape[0]
        return Branch(torch.cat(parts), torch.cat(owner)), ranges

    cond, ranges = branch(prompts)
    uncond, _ = branch(negatives)
    root_words = min(len(_token_ids(tokenizer, prompts[0])), tokenizer.model_max_length - 2)
    return Conditioning(cond, uncond, ranges, root_words)
