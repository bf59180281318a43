"""Tiled VAE: equal to untiled encode/decode (shared GroupNorm statistics), naive per-tile statistics
measurably worse, working memory of the high-resolution layers bounded by the tile size."""

import tempfile

import pytest
import torch

from hmedit import metrics
from hmedit.sampling.vae import decode, decode_tiled, encode_tiled


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1] (peak-to-peak 2)."""
    return metrics.psnr(a.detach().clamp(-1, 1), b.detach().clamp(-1, 1), peak=2.0)


@pytest.fixture(scope="module")
def tiny_vae():
    """The tiny random SD1 VAE: block_out_channels (32, 32), scale factor 2, one channel per group."""
    from hmedit.models.random import tiny_components

    return tiny_components("sd1")["vae"].eval()


@pytest.fixture(scope="module")
def grouped_vae():
    """Three levels (scale factor 4), two channels per GroupNorm group, two resnets per block."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
    ).eval()


def latents(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Latents whose statistics vary strongly across the image, so per-tile statistics differ."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ramp = torch.stack([3 * xx, -2 * yy, 4 * xx * yy, torch.sin(3 * xx)])
    return 0.5 * torch.randn(b, 4, h, w, generator=g) + ramp


def untiled(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.mark.parametrize("which", [pytest.param("tiny_vae", marks=pytest.mark.slow), "grouped_vae"])
def test_tiled_decode_matches_untiled(which, request):
    vae = request.getfixturevalue(which)
    z = latents(2, 40, 56)  # several tiles each way, sizes not multiples of the tile
    ref = untiled(vae, z)
    report = {}
    out = decode_tiled(vae, z, tile=16, report=report)
    assert out.shape == ref.shape
    assert report["tiles"] == 12 and report["passes"] > 1 and report["checkpoints"]
    assert psnr(out, ref) >= 40
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)  # exact up to float rounding


def test_naive_per_tile_groupnorm_is_measurably_worse(tiny_vae):
    z = latents(1, 48, 64)
    ref = untiled(tiny_vae, z)
    shared = psnr(decode_tiled(tiny_vae, z, tile=16), ref)
    naive = psnr(decode_tiled(tiny_vae, z, tile=16, shared_stats=False), ref)
    assert naive < 30 < 40 <= shared
    assert shared - naive > 30


def test_recompute_without_stored_maps_is_equally_exact(tiny_vae):
    z = latents(1, 32, 48, seed=3)
    report = {}
    out = decode_tiled(tiny_vae, z, tile=16, store_bytes=0, spill_bytes=0, report=report)
    assert report["checkpoints"] == [] and report["stored_bytes"] == 0 == report["spilled_bytes"]
    torch.testing.assert_close(out, untiled(tiny_vae, z), rtol=0, atol=1e-4)
    small, full = {}, {}
    # room for latent-resolution maps (196 kB each) only, not for the 2x ones
    out = decode_tiled(tiny_vae, z, tile=16, store_bytes=500_000, spill_bytes=0, report=small)
    decode_tiled(tiny_vae, z, tile=16, report=full)
    assert 0 < small["stored_bytes"] <= 500_000 < full["stored_bytes"]
    assert len(small["checkpoints"]) < len(full["checkpoints"])
    torch.testing.assert_close(out, untiled(tiny_vae, z), rtol=0, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_vae", "grouped_vae"])
def test_maps_that_do_not_fit_memory_spill_to_disk_bit_for_bit(which, request, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    vae = request.getfixturevalue(which)
    z = latents(2, 40, 56, seed=5)
    ram, disk, small = {}, {}, {}
    a = decode_tiled(vae, z, tile=16, spill_bytes=0, report=ram)
    b = decode_tiled(vae, z, tile=16, store_bytes=0, report=disk)
    c = decode_tiled(vae, z, tile=16, store_bytes=ram["stored_bytes"] // 3, report=small)
    assert ram["spilled"] == [] and disk["checkpoints"] == disk["spilled"] == ram["checkpoints"]
    assert disk["stored_bytes"] == 0 < disk["spilled_bytes"]
    assert small["checkpoints"] == ram["checkpoints"] and 0 < len(small["spilled"]) < len(
        small["checkpoints"]
    )
    assert torch.equal(a, b) and torch.equal(a, c)  # the same arithmetic, whatever holds the maps
    assert list(tmp_path.iterdir()) == []  # the files are gone


def test_disk_map_reads_any_crop_back(tmp_path, monkeypatch):
    from hmedit.sampling.tiling import Window
    from hmedit.sampling.vae import _DiskMap, _spans

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t = torch.randn(2, 5, 30, 44)
    cores = [Window(y0, y1, x0, x1) for y0, y1 in _spans(30, 8, 2) for x0, x1 in _spans(44, 8, 2)]
    m = _DiskMap(cores, 2, 5, torch.float32, torch.device("cpu"))
    for c in cores:
        m.write(c, t[c.slice])
    assert m.nbytes == t.numel() * 4 and (m.height, m.width) == (30, 44)
    for win in (Window(0, 30, 0, 44), Window(3, 17, 5, 40), Window(29, 30, 0, 1), Window(8, 16, 8, 16)):
        assert torch.equal(m.read(win), t[win.slice])
    m.close()


def test_less_context_than_the_receptive_field_is_approximate(tiny_vae):
    z = latents(1, 32, 48, seed=4)
    ref = untiled(tiny_vae, z)
    exact, short = {}, {}
    a = decode_tiled(tiny_vae, z, tile=16, report=exact)
    b = decode_tiled(tiny_vae, z, tile=16, overlap=1, report=short)
    assert short["margin"] < exact["margin"]
    assert psnr(b, ref) < psnr(a, ref)


@pytest.mark.parametrize("which", ["tiny_vae", "grouped_vae"])
def test_tiled_encode_matches_untiled(which, request):
    vae = request.getfixturevalue(which)
    image = untiled(vae, latents(1, 24, 40, seed=5)).clamp(-1, 1)  # 48x80 / 96x160 px
    with torch.no_grad():
        ref = vae.encode(image).latent_dist
    report = {}
    dist = encode_tiled(vae, image, tile=32, report=report)
    assert report["tiles"] > 4
    torch.testing.assert_close(dist.mean, ref.mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(dist.std, ref.std, rtol=1e-4, atol=1e-5)
    naive = encode_tiled(vae, image, tile=32, shared_stats=False).mean
    assert (naive - ref.mean).abs().max() > 100 * (dist.mean - ref.mean).abs().max()
    with pytest.raises(ValueError):
        encode_tiled(vae, image[..., :47, :], tile=32)  # not a multiple of the scale factor


def test_decode_chooses_tiling_by_size(tiny_vae):
    small = latents(1, 16, 24)
    torch.testing.assert_close(decode(tiny_vae, small, whole=32), untiled(tiny_vae, small), rtol=0, atol=0)
    big, report = latents(1, 40, 24), {}
    out = decode(tiny_vae, big, tile=16, whole=32, report=report)
    assert report["tiles"] == 3 * 2
    torch.testing.assert_close(out, untiled(tiny_vae, big), rtol=0, atol=1e-4)
    decode(tiny_vae, latents(1, 72, 24), report=report)  # above 64 latent px: tiles of 32
    assert report["tiles"] == 3 * 1


def test_original_groupnorms_are_restored(tiny_vae):
    decode_tiled(tiny_vae, latents(1, 32, 32), tile=16)
    norms = [m for m in tiny_vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all("forward" not in vars(m) for m in norms)


def _max_head_activation(vae, z, **kwargs) -> tuple[int, int]:
    """Largest output (numel) of any module in the decoder's high-resolution part during a decode, and of
    the whole decoder."""
    dec = vae.decoder
    head = [*dec.up_blocks, dec.conv_norm_out, dec.conv_act, dec.conv_out]
    head_ids = {id(m) for h in head for m in h.modules()}
    seen = {"head": 0, "all": 0}

    def hook(m, args, out):
        if isinstance(out, torch.Tensor):
            seen["all"] = max(seen["all"], out.numel())
            if id(m) in head_ids:
                seen["head"] = max(seen["head"], out.numel())

    hooks = [m.register_forward_hook(hook) for m in dec.modules()]
    try:
        if kwargs:
            decode_tiled(vae, z, **kwargs)
        else:
            untiled(vae, z)
    finally:
        for h in hooks:
            h.remove()
    return seen["head"], seen["all"]


def test_working_memory_is_bounded_by_the_tile(tiny_vae):
    tile, report = 16, {}
    decode_tiled(tiny_vae, latents(1, 16, 16), tile=tile, report=report)
    margin = report["margin"]
    scale, channels = 2, 32
    bound = channels * ((tile + 2 * margin) * scale) ** 2
    sizes = [(48, 48), (64, 96)]
    tiled = [_max_head_activation(tiny_vae, latents(1, *s), tile=tile, store_bytes=0)[0] for s in sizes]
    whole = [_max_head_activation(tiny_vae, latents(1, *s))[0] for s in sizes]
    assert tiled[0] == tiled[1] <= bound  # does not grow with the image
    assert whole[1] == channels * (64 * scale) * (96 * scale) > 5 * tiled[1]


def test_one_tile_needs_one_pass(tiny_vae):
    z = latents(1, 12, 20)
    report = {}
    out = decode_tiled(tiny_vae, z, tile=32, report=report)
    assert report["tiles"] == 1 and report["passes"] == 1
    torch.testing.assert_close(out, untiled(tiny_vae, z), rtol=0, atol=1e-5)


@pytest.mark.huge
def test_bundled_vae_2048_px_in_32_latent_tiles_matches_untiled(toy_model):
    """Issue acceptance at full scale: a 2048x2048 image's latents (256x256), decoded in 32-latent tiles,
    against one untiled decode (minutes on a CPU; make test-huge)."""
    vae = toy_model.vae
    z = latents(1, 256, 256, seed=3)
    ref = untiled(vae, z)
    out = decode_tiled(vae, z, tile=32)
    value = psnr(out, ref)
    print(f"2048 px tiled decode vs untiled: PSNR {value:.1f} dB")
    assert value >= 40


def test_the_map_budget_follows_the_device(monkeypatch, grouped_vae):
    """On a CUDA device the maps stay on it within half its free memory (spilling them through the host to
    disk made a 2048 px decode on an H200 take 121 s); on a CPU the RAM budget bounds them."""
    from hmedit.sampling import vae as tv

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 16 << 30))
    assert tv.default_store_bytes(torch.device("cuda")) == 4 << 30
    assert tv.default_store_bytes("cuda:0") == 4 << 30
    assert tv.default_store_bytes(torch.device("cpu")) == tv.STORE_BYTES
    z = latents(1, 32, 32)
    given, default = {}, {}
    small = decode_tiled(grouped_vae, z, tile=8, store_bytes=1 << 16, spill_bytes=1 << 30, report=given)
    out = decode_tiled(grouped_vae, z, tile=8, report=default)
    assert given["spilled_bytes"] > 0  # a budget too small for the maps spills them
    assert default["spilled_bytes"] == 0 and default["stored_bytes"] > 0  # the default holds them in RAM
    torch.testing.assert_close(out, small, rtol=0, atol=0)
