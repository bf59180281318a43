"""Streamed exact tiled decoding (stages cut at the GroupNorms): equal to the untiled decode and to the
pass-based tiled decode, each convolution run once per tile, maps in memory or on disk alike."""

import tempfile

import pytest
import torch

from hmedit.sampling import vae as tv
from hmedit.sampling import vae_stream
from hmedit.sampling.tiling import Window

from .test_vae import latents, untiled


@pytest.fixture(scope="module")
def tiny_vae():
    from hmedit.models.random import tiny_components

    return tiny_components("sd1")["vae"].eval()


@pytest.fixture(scope="module")
def grouped_vae():
    """Three levels, two channels per group, a 1x1 shortcut (16 -> 8 channels) in the last block."""
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
    ).eval()


CASES = [(2, 24, 40, 8), (1, 33, 17, 8), (1, 21, 45, 5)]  # batch, h, w, tile


@pytest.mark.parametrize("which", ["tiny_vae", "grouped_vae"])
@pytest.mark.parametrize(("b", "h", "w", "tile"), CASES)
def test_streamed_decode_equals_untiled_and_passes(which, b, h, w, tile, request):
    vae = request.getfixturevalue(which)
    z = latents(b, h, w, seed=h + w)
    ref = untiled(vae, z)
    report, old = {}, {}
    out = tv.decode_tiled(vae, z, tile=tile, report=report)
    passes = tv.decode_tiled(vae, z, tile=tile, report=old, engine="passes")
    assert report["engine"] == "stream" and old["engine"] == "passes"
    assert report["tiles"] == old["tiles"] > 1
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in vae.decoder.up_blocks.modules()) + 1
    assert report["passes"] == norms  # one sweep per GroupNorm of the head; its first needs none more
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(out, passes, rtol=0, atol=1e-5)


def _conv_calls(vae, z, **kwargs) -> dict[str, int]:
    dec = vae.decoder
    head = [*dec.up_blocks, dec.conv_norm_out, dec.conv_act, dec.conv_out]
    calls: dict[str, int] = {}
    hooks = []
    for i, block in enumerate(head):
        for name, m in block.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                key = f"{i}.{name}"
                calls[key] = 0
                hooks.append(
                    m.register_forward_pre_hook(
                        lambda _m, _a, key=key: calls.__setitem__(key, calls[key] + 1)
                    )
                )
    try:
        tv.decode_tiled(vae, z, **kwargs)
    finally:
        for hk in hooks:
            hk.remove()
    return calls


def test_each_convolution_runs_once_per_tile(tiny_vae):
    z = latents(1, 32, 48, seed=1)
    report = {}
    tv.decode_tiled(tiny_vae, z, tile=16, report=report)
    stream = _conv_calls(tiny_vae, z, tile=16)
    passes = _conv_calls(tiny_vae, z, tile=16, engine="passes")
    # every head convolution once per tile, plus once in the small run that traces the head's geometry
    assert set(stream.values()) == {report["tiles"] + 1}
    assert sum(passes.values()) > sum(stream.values())  # the passes re-run each resnet's first conv


def test_maps_in_memory_or_on_disk_give_the_same_bits(grouped_vae, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    z = latents(2, 24, 40, seed=7)
    ram, disk, mixed = {}, {}, {}
    a = tv.decode_tiled(grouped_vae, z, tile=8, spill_bytes=0, report=ram)
    b = tv.decode_tiled(grouped_vae, z, tile=8, store_bytes=0, report=disk)
    c = tv.decode_tiled(grouped_vae, z, tile=8, store_bytes=ram["stored_bytes"] // 2, report=mixed)
    assert {r["engine"] for r in (ram, disk, mixed)} == {"stream"}
    assert ram["spilled"] == [] and disk["spilled"] == disk["checkpoints"]
    assert 0 < len(mixed["spilled"]) < len(mixed["checkpoints"])
    assert mixed["stored_bytes"] <= ram["stored_bytes"] // 2
    assert torch.equal(a, b) and torch.equal(a, c)
    assert list(tmp_path.iterdir()) == []


def test_budgets_too_small_for_the_maps_fall_back_to_passes(tiny_vae):
    z = latents(1, 32, 32, seed=2)
    report = {}
    out = tv.decode_tiled(tiny_vae, z, tile=16, store_bytes=100_000, spill_bytes=0, report=report)
    assert report["engine"] == "passes"
    torch.testing.assert_close(out, untiled(tiny_vae, z), rtol=0, atol=1e-4)


def test_plan_counts_the_maps_alive_at_once(tiny_vae):
    dec = tiny_vae.decoder
    units = tv._flatten([*dec.up_blocks, dec.conv_norm_out, dec.conv_act, dec.conv_out])
    tv._trace(units, torch.zeros(1, 32, tv.TRACE_PX, tv.TRACE_PX))
    stages = vae_stream.stages(units)
    kinds = [[op.kind for op in st.ops] for st in stages]
    assert kinds[0] == ["norm", "first"] and kinds[1] == ["norm", "second"]
    assert kinds[-1] == ["norm", "unit", "unit"]  # conv_norm_out, conv_act, conv_out
    assert [st.skip for st in stages] == [k[1] == "second" for k in kinds]
    ups = [st for st in stages if st.scale == 2]
    assert len(ups) == 1 and ups[0].margin == 2  # conv2 (1 px) + the upsampler's conv (half a px)
    sizes = []
    for st in stages[:-1]:
        r = st.res * st.scale
        sizes.append(st.out_channels * int(20 * r) * int(30 * r) * 4)
    full = vae_stream.plan(stages, 1, 20, 30, 4, 1 << 40, 0)
    # stage j holds its output, its input, and for a resnet's second half that resnet's input
    assert full.stored_bytes == max(
        sizes[j] + (sizes[j - 1] if j else 0) + (sizes[j - 2] if stages[j].skip and j > 1 else 0)
        for j in range(len(sizes))
    )
    assert full.where == ["ram"] * len(sizes)
    assert vae_stream.plan(stages, 1, 20, 30, 4, 0, 0) is None
    disk = vae_stream.plan(stages, 1, 20, 30, 4, 0, 1 << 40)
    assert disk.where == ["disk"] * len(sizes) and disk.spilled_bytes == full.stored_bytes


def test_encoder_heads_are_not_streamed(tiny_vae):
    enc = tiny_vae.encoder
    units = tv._flatten([enc.conv_in, *enc.down_blocks])
    tv._trace(units, torch.zeros(1, 3, tv.TRACE_PX, tv.TRACE_PX))
    assert vae_stream.stages(units) is None  # downsampling: the pass-based engine


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_maps_read_any_crop_back(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t = torch.randn(2, 5, 30, 44)
    cores = [Window(y0, y1, x0, x1) for y0, y1 in tv._spans(30, 8, 1) for x0, x1 in tv._spans(44, 16, 1)]
    m = vae_stream.RamMap(2, 5, 30, 44, t) if kind == "ram" else vae_stream.DiskMap(cores, 2, 5, t)
    for c in cores:
        m.write(c, t[c.slice])
    for win in (Window(0, 30, 0, 44), Window(3, 17, 5, 40), Window(29, 30, 0, 1), Window(8, 16, 0, 44)):
        got = m.read(win)
        assert got.is_contiguous() and torch.equal(got, t[win.slice])
    m.close()


def test_report_splits_trunk_and_head_seconds(tiny_vae):
    report = {}
    tv.decode_tiled(tiny_vae, latents(1, 24, 24), tile=8, report=report)
    assert report["trunk_s"] >= 0 and report["head_s"] > 0 and report["head_cpu_s"] > 0


@pytest.mark.huge
def test_bundled_vae_2048_px_streamed_equals_pass_based(toy_model):
    """At full scale (make test-huge; minutes on a CPU): a 2048x2048 image's latents decoded by the streamed
    stages and by the pass-based engine give the same pixels within 1/255."""
    z = latents(1, 256, 256, seed=3)
    report = {}
    a = tv.decode_tiled(toy_model.vae, z, report=report)
    b = tv.decode_tiled(toy_model.vae, z, engine="passes")
    assert report["engine"] == "stream" and report["spilled"]  # the full-resolution maps went to disk
    worst = float((a.clamp(-1, 1) - b.clamp(-1, 1)).abs().max()) / 2  # [0, 1] pixel units
    print(f"2048 px streamed vs pass-based: max difference {worst * 255:.4f}/255")
    assert worst <= 1 / 255
