"""The denoise step is assembled from parts: each adds its UNet inputs without knowing the others; guidance,
per-step embeddings and merged nested keyword arguments."""

from __future__ import annotations

import torch

from hmedit.sampling.denoise import Denoiser, Guidance, TextEmbeddings, merge


class FakeUNet:
    """Records the keyword arguments of each call; predicts x · (1 + mean of the text embeddings)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, x, t, *, encoder_hidden_states, return_dict=False, **kwargs):
        self.calls.append({"x": x, "encoder_hidden_states": encoder_hidden_states, **kwargs})
        scale = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return (x * (1 + scale),)


class FakeScheduler:
    def scale_model_input(self, x, t):
        return x


class Marker:
    """A part that adds nested keyword arguments, as the regional attention and ControlNet parts do."""

    def __init__(self, key: str, value) -> None:
        self.key, self.value = key, value

    def inputs(self, i, windows, n):
        return {"cross_attention_kwargs": {self.key: (self.value, i, n)}}


def test_parts_merge_their_inputs_and_guidance_combines_the_branches():
    unet = FakeUNet()
    embeds = torch.stack([torch.zeros(3, 4), torch.ones(3, 4)])  # uncond 0, cond 1
    parts = [TextEmbeddings(embeds), Marker("region", "r"), Marker("control", "c")]
    den = Denoiser(unet, FakeScheduler(), parts, Guidance(3.0))
    x = torch.ones(1, 4, 2, 2)
    eps = den(x, 10, 0)
    call = unet.calls[0]
    assert call["x"].shape[0] == 2 and call["encoder_hidden_states"].shape == (2, 3, 4)
    assert call["cross_attention_kwargs"] == {"region": ("r", 0, 1), "control": ("c", 0, 1)}
    # u = x (mean 0), c = 2x (mean 1): u + 3 (c - u) = 4x
    assert torch.equal(eps, 4 * x)
    assert merge({"a": {"b": 1}, "c": 1}, {"a": {"d": 2}, "c": 3}) == {"a": {"b": 1, "d": 2}, "c": 3}


def test_text_embeddings_may_change_every_step():
    """Null-text inversion optimises one unconditional embedding per step: the part takes a function."""
    unet = FakeUNet()
    per_step = [torch.stack([torch.full((2, 4), float(i)), torch.ones(2, 4)]) for i in range(3)]
    den = Denoiser(unet, FakeScheduler(), [TextEmbeddings(per_step=lambda i: per_step[i])], Guidance(2.0))
    for i in range(3):
        den(torch.ones(1, 4, 2, 2), 10 - i, i)
    assert [float(c["encoder_hidden_states"][0].mean()) for c in unet.calls] == [0.0, 1.0, 2.0]


def test_without_guidance_the_batch_holds_the_cond_branch_alone():
    g = Guidance(1.0)
    both = torch.stack([torch.zeros(2), torch.ones(2)])
    assert not g.on and g.branches == 1 and torch.equal(g.select(both), both[1:])
    unet = FakeUNet()
    den = Denoiser(unet, FakeScheduler(), [TextEmbeddings(g.select(torch.stack([torch.zeros(3, 4)] * 2)))], g)
    den(torch.ones(1, 4, 2, 2), 10, 0)
    assert unet.calls[0]["x"].shape[0] == 1
