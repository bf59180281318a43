"""The regional attention processor: stock behaviour without a region, the Collage Diffusion bias with one."""

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from hmedit.attention.processor import RegionAttnProcessor, RegionCall, regional_attention, sigma_weight


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()


def make_call(n=4, k=2, t=5, owners=None, masks=None, pos=1.0, neg=1.0, active=None, record=False):
    owners = owners if owners is not None else torch.tensor([[-1, -1, -1, -1, -1], [-1, -1, 1, 1, -1]])
    masks = masks if masks is not None else torch.tensor([[[1.0] * n, [1.0, 1.0, 0.0, 0.0]]])
    active = active if active is not None else torch.ones(k, dtype=torch.bool)
    return RegionCall(
        masks={n: masks},
        active={n: active},
        owners=owners,
        valid=torch.ones(2, t, dtype=torch.bool),
        pos=torch.full((k,), pos),
        neg=torch.full((k,), neg),
        y_sigma=0.5,
        record={n: torch.zeros(1, k, n)} if record else None,
        record_owner=torch.tensor([-1, 0, 1, 1, -1]) if record else None,
    )


def test_without_region_it_is_the_stock_processor(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    ref = AttnProcessor2_0()(attn, x, ctx)
    assert torch.equal(RegionAttnProcessor()(attn, x, ctx), ref)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    ref = AttnProcessor2_0()(self_attn, x, None)
    assert torch.equal(RegionAttnProcessor()(self_attn, x, None, region=make_call()), ref)


def test_zero_weights_leave_attention_unchanged(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    out = RegionAttnProcessor()(attn, x, ctx, region=make_call(pos=0.0, neg=0.0))
    assert torch.allclose(out, AttnProcessor2_0()(attn, x, ctx), atol=1e-6)


def test_bias_follows_collage_formula():
    call = make_call(pos=2.0, neg=3.0)
    smax = torch.tensor([10.0, 10.0])
    b = call.bias(4, 1, smax, 1.0, torch.float32)[:, 0]  # [2, N, T]
    y = 0.5 * 10.0
    assert torch.all(b[0] == 0)  # uncond branch has no node tokens
    assert torch.all(b[1][:, [0, 1, 4]] == 0)  # global tokens untouched
    assert torch.allclose(b[1][:2, 2], torch.tensor([y * 2.0] * 2))  # inside: + s·y·v_pos
    assert torch.allclose(b[1][2:, 2], torch.tensor([-y * 3.0] * 2))  # outside: − s·y·v_neg


def test_inactive_nodes_leave_the_softmax(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    call = make_call(active=torch.tensor([True, False]))
    b = call.bias(4, 1, torch.ones(2), 1.0, torch.float32)
    assert torch.isinf(b[1, 0, :, 2:4]).all()
    out = RegionAttnProcessor()(attn, x, ctx, region=call)
    # same as attending to the context without the node's tokens
    keep = [0, 1, 4]
    ref = AttnProcessor2_0()(attn, x, ctx[:, keep])
    assert torch.allclose(out[1], ref[1], atol=1e-5)


def test_bias_moves_attention_into_the_region(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    call = make_call(record=True, pos=4.0, neg=4.0)
    RegionAttnProcessor()(attn, x, ctx, region=call)
    mass = call.record[4][0, 1]  # node 1's mass per query
    assert mass[:2].min() > mass[2:].max()
    total = call.record[4][0].sum(0)
    assert (total <= 1 + 1e-5).all() and call.record_count[4] == 1


def test_recording_gives_the_same_output_as_sdpa(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    a = RegionAttnProcessor()(attn, x, ctx, region=make_call())
    b = RegionAttnProcessor()(attn, x, ctx, region=make_call(record=True))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_install_restores_original_processors(tiny_model):
    unet = tiny_model("sd1").unet
    before = unet.attn_processors
    with regional_attention(unet):
        assert all(isinstance(p, RegionAttnProcessor) for p in unet.attn_processors.values())
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_sigma_weight():
    assert sigma_weight(0) == 0
    assert sigma_weight(1.0) < sigma_weight(5.0) < sigma_weight(14.6)
    assert sigma_weight(math.inf) == sigma_weight(14.6) == sigma_weight(1e6)


def _probs(attn, x, ctx):
    """The cond branch's attention probabilities, mean over heads: [1, N, T]."""
    q, k = attn.to_q(x[-1:]), attn.to_k(ctx[-1:])
    h = attn.heads
    q, k = (t.view(1, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k))
    return torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1).mean(1)


def test_token_recording_keeps_each_token_map(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    call = make_call(record=True, pos=0.0, neg=0.0)  # zero weights: the probabilities are the plain ones
    call.record_tokens = torch.tensor([1, 3])
    call.token_record = {4: torch.zeros(1, 2, 4)}
    with torch.no_grad():
        RegionAttnProcessor()(attn, x, ctx, region=call)
        ref = _probs(attn, x, ctx)[0]  # [N, T]
    assert torch.allclose(call.token_record[4][0], ref[:, [1, 3]].T, atol=1e-5)


def test_record_only_output_is_the_stock_one_and_records(attn):
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 5, 8)
    owners = torch.full((2, 5), -1)  # a root-only scene: no regional token
    call = make_call(record=True, owners=owners)
    call.record_only = True
    call.record_tokens = torch.tensor([1, 2])
    call.token_record = {4: torch.zeros(1, 2, 4)}
    with torch.no_grad():
        out = RegionAttnProcessor()(attn, x, ctx, region=call)
        ref = _probs(attn, x, ctx)[0]
    assert torch.equal(out, AttnProcessor2_0()(attn, x, ctx))  # bit for bit: the stock path computes it
    assert torch.allclose(call.token_record[4][0], ref[:, [1, 2]].T, atol=1e-5)
    assert call.record_count[4] == 1


def test_self_attention_recording_leaves_the_output_alone():
    torch.manual_seed(1)
    self_attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(2, 4, 16)
    call = make_call()
    call.self_record = {4: torch.zeros(1, 4, 4)}
    with torch.no_grad():
        out = RegionAttnProcessor()(self_attn, x, None, region=call)
        ref = _probs(self_attn, x, x)[0]
    assert torch.equal(out, AttnProcessor2_0()(self_attn, x, None))
    assert torch.allclose(call.self_record[4][0], ref, atol=1e-5)
    assert torch.allclose(call.self_record[4][0].sum(-1), torch.ones(4))
    other = make_call()
    other.self_record = {16: torch.zeros(1, 16, 16)}  # another level: nothing recorded here
    RegionAttnProcessor()(self_attn, x, None, region=other)
    assert other.self_record[16].abs().sum() == 0
