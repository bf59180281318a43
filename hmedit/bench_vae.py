"""The exact tiled VAE decode at the largest sizes (part of ``hmedit bench memory``; also ``python -m
hmedit.bench_vae``, which runs it alone and writes its JSON).

Each figure comes from its own child process that loads only the VAE and decodes (so its peak resident
memory, ru_maxrss, is the decode's alone), one after the other, on the same latents:

- tiled: the ``size`` px decode (latents ``size / 8``) with :func:`hmedit.sampling.vae.decode_tiled` at its
  defaults: seconds (wall and CPU), split into the trunk (the mid block, whose global self-attention is
  quadratic in the latent pixels) and the tiled head; peak RSS.
- untiled: the four quadrants of the same latents, each decoded untiled (``vae.decode``): the same head
  arithmetic at half the size; and the trunk of one quadrant alone.
- tiled_half: one quadrant decoded tiled, against its untiled decode.
- passes (``compare``): the head of the tiled decode by the pass-based engine (the exact tiled decode before
  the streamed one), on the same trunk output: the pixels must agree within 1/255.

The machine this runs on may be shared: CPU seconds (the child's own, one thread) are what the ratios use;
wall seconds are recorded beside them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATIO_TARGET = 1.3  # tiled size / four untiled size/2 decodes (CPU seconds), at most
HALF_RATIO_TARGET = 1.2  # tiled size/2 / untiled size/2, at most
RSS_TARGET_GIB = 4.0
PIXEL_TARGET = 1 / 255  # tiled vs pass-based, [0, 1] pixel units, at most


def bench_latents(n: int, seed: int = 0, batch: int = 1):
    """[batch, 4, n, n] latents whose statistics vary across the image (ramps plus noise), as a decode sees
    them (already divided by the scaling factor)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    ramp = torch.stack([3 * xx, -2 * yy, 4 * xx * yy, torch.sin(6 * xx) * torch.cos(5 * yy)])
    return 0.7 * torch.randn(batch, 4, n, n, generator=g) + ramp


def quadrants(z):
    n = z.shape[-1] // 2
    return [z[..., y : y + n, x : x + n] for y in (0, n) for x in (0, n)]


def pixels(x):
    """Decoder output [-1, 1] -> [0, 1] as the pipeline maps it (before rounding to uint8)."""
    return (x / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------- child
class _Clock:
    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = round(time.perf_counter() - self.wall, 3)
        self.cpu = round(time.process_time() - self.cpu, 3)


def _child(argv: list[str]) -> None:
    """One measurement (see the module docstring); prints its JSON as the last line."""
    import argparse
    import resource

    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from hmedit.sampling import vae as tv

    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["tiled", "tiled_head", "tiled_half", "untiled", "passes", "passes_half"])
    ap.add_argument(
        "--sample", type=int, default=16, help="tiled_head: time 1/sample of the attention's queries"
    )
    ap.add_argument("--quarters", type=int, default=4, help="untiled: decode this many of the four quarters")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--latent", type=int, required=True)
    ap.add_argument("--tile", type=int, default=tv.DECODE_TILE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    vae = AutoencoderKL.from_pretrained(a.vae).eval()
    z = bench_latents(a.latent, a.seed).to(vae.dtype)
    work = Path(a.work)
    res: dict = {"job": a.job}
    with torch.no_grad():
        if a.job == "tiled":
            report: dict = {}
            with _Clock() as c:
                with _Clock() as trunk:
                    h = tv.decode_trunk(vae, z)
                with _Clock() as head:
                    out = tv.decode_head(vae, h, a.tile, report=report)
            res.update(seconds=c.wall, cpu_s=c.cpu, trunk_s=trunk.wall, trunk_cpu_s=trunk.cpu)
            res.update(head_s=head.wall, head_cpu_s=head.cpu, report=report)
            np.save(work / "trunk.npy", h.float().cpu().numpy())
            np.save(work / "tiled.npy", pixels(out).float().cpu().numpy())
        elif a.job == "passes":
            h = torch.from_numpy(np.load(work / "trunk.npy", allow_pickle=False)).to(vae.dtype)
            report = {}
            with _Clock() as c:
                out = tv.decode_head(vae, h, a.tile, report=report, engine="passes")
            res.update(head_s=c.wall, head_cpu_s=c.cpu, report=report)
            np.save(work / "passes.npy", pixels(out).float().cpu().numpy())
        elif a.job == "tiled_head":
            # the head exactly as in "tiled", on the trunk's input side without the attention (the head's cost
            # does not depend on its input's values); the trunk timed with 1/sample of the attention's queries
            report = {}
            dec = vae.decoder
            with _Clock() as pre:
                h = dec.conv_in(vae.post_quant_conv(z))
            with _Clock() as head:
                out = tv.decode_head(vae, h, a.tile, report=report)
            del out
            res.update(head_s=head.wall, head_cpu_s=head.cpu, report=report)
            res.update(trunk_sampled=_sampled_trunk(vae, h, a.sample, pre))
        elif a.job == "passes_half":
            report = {}
            with _Clock() as c:
                out = tv.decode_tiled(
                    vae, quadrants(z)[0].contiguous(), a.tile, report=report, engine="passes"
                )
            res.update(seconds=c.wall, cpu_s=c.cpu, report=report)
            np.save(work / "passes_half.npy", pixels(out).float().cpu().numpy())
        elif a.job == "tiled_half":
            report = {}
            with _Clock() as c:
                out = tv.decode_tiled(vae, quadrants(z)[0].contiguous(), a.tile, report=report)
            res.update(seconds=c.wall, cpu_s=c.cpu, report=report)
            np.save(work / "tiled_half.npy", pixels(out).float().cpu().numpy())
        else:
            runs = []
            for i, q in enumerate(quadrants(z)[: a.quarters]):
                with _Clock() as c:
                    out = vae.decode(q.contiguous(), return_dict=False)[0]
                runs.append({"seconds": c.wall, "cpu_s": c.cpu})
                if i == 0:
                    np.save(work / "untiled_half.npy", pixels(out).float().cpu().numpy())
                del out
            with _Clock() as c:
                tv.decode_trunk(vae, quadrants(z)[0].contiguous())
            res.update(
                runs=runs,
                seconds=round(sum(r["seconds"] for r in runs), 3),
                cpu_s=round(sum(r["cpu_s"] for r in runs), 3),
                trunk_one_s=c.wall,
                trunk_one_cpu_s=c.cpu,
            )
    res["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(res))


def _sampled_trunk(vae, h, sample: int, pre: _Clock) -> dict:
    """Seconds of the trunk (post_quant_conv, conv_in, mid block) with its self-attention's
    scaled-dot-product timed on 1/``sample`` of the queries (against all keys) and scaled up: the rest of
    the mid block runs whole."""
    import torch.nn.functional as F

    mb = vae.decoder.mid_block
    attn = mb.attentions[0]
    with _Clock() as r0:
        x = mb.resnets[0](h, None)
    b, c, hh, ww = x.shape
    with _Clock() as proj:
        t = attn.group_norm(x).flatten(2).transpose(1, 2)
        q, k, v = attn.to_q(t), attn.to_k(t), attn.to_v(t)
        heads = attn.heads
        q, k, v = (y.view(b, -1, heads, c // heads).transpose(1, 2) for y in (q, k, v))
    n = q.shape[2] // sample
    with _Clock() as sdpa:
        o = F.scaled_dot_product_attention(q[:, :, :n], k, v)
    with _Clock() as rest:
        o = torch_cat_rows(o, q.shape[2])
        o = attn.to_out[0](o.transpose(1, 2).reshape(b, -1, c)).transpose(1, 2).reshape(b, c, hh, ww)
        y = mb.resnets[1]((o + x) / attn.rescale_output_factor, None)
    del y
    parts = [pre, r0, proj, rest]
    return {
        "sample": sample,
        "sdpa_sample_s": sdpa.wall,
        "sdpa_sample_cpu_s": sdpa.cpu,
        "other_cpu_s": round(sum(p.cpu for p in parts), 3),
        "cpu_s": round(sum(p.cpu for p in parts) + sample * sdpa.cpu, 3),
        "seconds": round(sum(p.wall for p in parts) + sample * sdpa.wall, 3),
    }


def torch_cat_rows(o, rows: int):
    """``o`` [B, heads, n, d] repeated to ``rows`` query rows (values do not matter for the timing)."""
    reps = -(-rows // o.shape[2])
    return o.repeat(1, 1, reps, 1)[:, :, :rows]


# ---------------------------------------------------------------------------------------------- parent
def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "hmedit.bench_vae", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        from hmedit.errors import HmeditError

        raise HmeditError(f"tiled VAE bench ({args[0]}) failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_diff(a: Path, b: Path) -> dict:
    import numpy as np

    x, y = np.load(a, mmap_mode="r", allow_pickle=False), np.load(b, mmap_mode="r", allow_pickle=False)
    worst, worst8 = 0.0, 0
    for i in range(0, x.shape[-2], 256):  # row bands: the parent stays small
        d = np.abs(x[..., i : i + 256, :].astype(np.float64) - y[..., i : i + 256, :])
        worst = max(worst, float(d.max()))
        q = np.abs(np.round(x[..., i : i + 256, :] * 255) - np.round(y[..., i : i + 256, :] * 255))
        worst8 = max(worst8, int(q.max()))
    return {"max_abs": worst, "max_abs_255": round(worst * 255, 5), "max_uint8": worst8}


def measure(
    vae,
    size: int,
    *,
    tile: int | None = None,
    compare: str = "full",
    trunk: str = "whole",
    threads: int = 1,
    parallel: int = 1,
    work: Path | None = None,
    tick=None,
) -> dict:
    """The tiled decode at ``size`` px against four untiled ``size / 2`` decodes (module docstring).
    ``compare``: "full" runs the pass-based engine at both sizes, "half" at ``size / 2`` only (the full size
    costs as much again as the tiled decode), "none" not at all. ``trunk``: "whole" decodes end to end;
    "sampled" runs the tiled head alone and times the trunk with 1/16 of its attention's queries (scaled up:
    the attention is most of the trunk; for a machine too busy for the whole one; no full-size pixel
    comparison then). ``parallel``: children run at once (each
    on ``threads`` threads); ``work``: a folder that keeps each child's result (a rerun reuses them), else
    a temporary one."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="hmedit-vaebench-") as tmp:
            return measure(
                vae,
                size,
                tile=tile,
                compare=compare,
                trunk=trunk,
                threads=threads,
                parallel=parallel,
                work=Path(tmp),
                tick=tick,
            )
    from concurrent.futures import ThreadPoolExecutor

    from hmedit.sampling import vae as tv

    tile = tile or tv.DECODE_TILE
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    n = size // factor
    if n % 2:
        raise ValueError(f"tiled VAE bench: {size} px is not an even number of latent px")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "vae").exists():
        vae.save_pretrained(work / "vae")
    common = ["--vae", str(work / "vae"), "--latent", str(n), "--tile", str(tile)]
    common += ["--threads", str(threads), "--work", str(work)]
    r: dict = {}

    def job(name: str) -> None:
        done = work / f"{name}.json"
        if done.exists():
            r[name] = json.loads(done.read_text())
        else:
            r[name] = _run_child([name, *common])
            done.write_text(json.dumps(r[name]))
        if tick:
            tick(f"memory vae {name}")

    if compare not in ("full", "half", "none") or trunk not in ("whole", "sampled"):
        raise ValueError(f"tiled VAE bench: compare={compare!r}, trunk={trunk!r}")
    if trunk == "sampled" and compare == "full":
        compare = "half"
    big = "tiled" if trunk == "whole" else "tiled_head"
    # the pass-based head needs the tiled run's trunk output
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(job, [big, "untiled", "tiled_half"]))
    if compare != "none":
        job("passes_half")
    if compare == "full":
        job("passes")
    tiled, untiled, half = dict(r[big]), r["untiled"], r["tiled_half"]
    if trunk == "sampled":
        t = tiled["trunk_sampled"]
        tiled.update(trunk_s=t["seconds"], trunk_cpu_s=t["cpu_s"])
        tiled.update(seconds=t["seconds"] + tiled["head_s"], cpu_s=round(t["cpu_s"] + tiled["head_cpu_s"], 3))
    one = untiled["runs"][0]
    # four quarters hold the same arithmetic: where fewer were decoded (a busy machine), scale their sum
    k = 4 / len(untiled["runs"])
    untiled = dict(untiled, seconds=round(untiled["seconds"] * k, 3), cpu_s=round(untiled["cpu_s"] * k, 3))
    untiled["quarters_measured"] = len(untiled["runs"])
    rss = tiled["max_rss_kib"] / 2**20
    out = {
        "size": [size, size],
        "latent": [n, n],
        "tile": tile,
        "threads": threads,
        "trunk": trunk,
        "compare": compare,
        "tiled": _fmt(tiled, rss),
        "untiled_quarters": {
            k: untiled[k]
            for k in ("runs", "quarters_measured", "seconds", "cpu_s", "trunk_one_s", "trunk_one_cpu_s")
        }
        | {"peak_rss_gib": round(untiled["max_rss_kib"] / 2**20, 3)},
        "ratio_cpu": _ratio(tiled["cpu_s"], untiled["cpu_s"]),
        "ratio_wall": _ratio(tiled["seconds"], untiled["seconds"]),
        # the same ratio without the trunks (mid-block attention), the part tiling changes
        "head_ratio_cpu": _ratio(tiled["head_cpu_s"], untiled["cpu_s"] - 4 * untiled["trunk_one_cpu_s"]),
        "trunk_ratio_cpu": _ratio(tiled["trunk_cpu_s"], 4 * untiled["trunk_one_cpu_s"]),
        "half": {
            "tiled": _fmt(half, half["max_rss_kib"] / 2**20),
            "untiled": one,
            "ratio_cpu": _ratio(half["cpu_s"], one["cpu_s"]),
            "ratio_wall": _ratio(half["seconds"], one["seconds"]),
            "max_diff_vs_untiled": _max_diff(work / "tiled_half.npy", work / "untiled_half.npy"),
        },
        "peak_rss_gib": round(rss, 3),
        "targets": {
            "ratio": RATIO_TARGET,
            "half_ratio": HALF_RATIO_TARGET,
            "peak_rss_gib": RSS_TARGET_GIB,
            "max_diff": round(PIXEL_TARGET, 6),
        },
    }
    if compare != "none":
        out["half"]["max_diff_vs_passes"] = _max_diff(work / "tiled_half.npy", work / "passes_half.npy")
        out["half"]["passes_cpu_s"] = r["passes_half"]["cpu_s"]
    if compare == "full":
        p = r["passes"]
        out["passes"] = {"head_s": p["head_s"], "head_cpu_s": p["head_cpu_s"], "report": _slim(p["report"])}
        out["passes"]["head_ratio_cpu"] = _ratio(tiled["head_cpu_s"], p["head_cpu_s"])
        out["max_diff_vs_passes"] = _max_diff(work / "tiled.npy", work / "passes.npy")
    diffs = [out[k] for k in ("max_diff_vs_passes",) if k in out] + [
        out["half"][k] for k in ("max_diff_vs_passes", "max_diff_vs_untiled") if k in out["half"]
    ]
    ok_diff = all(d["max_abs"] <= PIXEL_TARGET for d in diffs)
    out["pass"] = {
        "ratio": out["ratio_cpu"] is not None and out["ratio_cpu"] <= RATIO_TARGET,
        "half_ratio": out["half"]["ratio_cpu"] is not None and out["half"]["ratio_cpu"] <= HALF_RATIO_TARGET,
        "peak_rss": rss <= RSS_TARGET_GIB,
        "pixels": ok_diff,
    }
    return out


def table_rows(v: dict, mark) -> list[tuple[str, str, str]]:
    """Rows (figure, value, target) for the bench's memory table; ``mark`` renders a pass/fail flag."""
    half, ok, tg = v["half"], v["pass"], v["targets"]
    s = v["size"][0]
    rows = [
        (
            f"tiled VAE {s} / 4 untiled {s // 2} (CPU s)",
            _num(v["ratio_cpu"]),
            f"<= {tg['ratio']:g} {mark(ok['ratio'])}",
        ),
        ("  without the trunks (mid-block attention)", _num(v["head_ratio_cpu"]), ""),
        (
            f"tiled VAE {s // 2} / untiled (CPU s)",
            _num(half["ratio_cpu"]),
            f"<= {tg['half_ratio']:g} {mark(ok['half_ratio'])}",
        ),
        (
            f"tiled VAE {s} peak RSS (GiB)",
            f"{v['peak_rss_gib']:.2f}",
            f"<= {tg['peak_rss_gib']:g} {mark(ok['peak_rss'])}",
        ),
    ]
    diffs = [d for d in (v.get("max_diff_vs_passes"), half.get("max_diff_vs_passes")) if d]
    if diffs:
        worst = max(d["max_abs_255"] for d in diffs)
        rows.append(("tiled VAE vs pass-based (/255)", f"{worst:.4f}", f"<= 1 {mark(ok['pixels'])}"))
    return rows


def _ratio(a: float, b: float) -> float | None:
    """a / b rounded, None where b is not positive (too small to time)."""
    return round(a / b, 3) if b > 0 else None


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _slim(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("checkpoints", "spilled")}


def _fmt(r: dict, rss_gib: float) -> dict:
    names = ("seconds", "cpu_s", "trunk_s", "trunk_cpu_s", "head_s", "head_cpu_s", "trunk_sampled")
    keep = {k: r[k] for k in names if k in r}
    return keep | {"report": _slim(r["report"]), "peak_rss_gib": round(rss_gib, 3)}


def main(argv: list[str]) -> None:
    """``python -m hmedit.bench_vae --bench [--model toy] [--size 4096] [-o FILE]``: the VAE part alone."""
    if argv and argv[0] != "--bench":
        _child(argv)
        return
    import argparse

    import torch

    from hmedit.bench import machine
    from hmedit.models.load import load

    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--compare", choices=["full", "half", "none"], default="full")
    ap.add_argument("--trunk", choices=["whole", "sampled"], default="whole")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--work", type=Path)
    ap.add_argument("-o", "--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load(a.model, device="cpu", dtype="fp32")
    start = time.perf_counter()
    fig = measure(
        model.vae,
        a.size,
        compare=a.compare,
        trunk=a.trunk,
        parallel=a.parallel,
        work=a.work,
        tick=lambda s: print(s, file=sys.stderr, flush=True),
    )
    doc = {
        "format": "hmedit-bench-vae",
        "machine": machine(model),
        "note": "2 shared CPU cores (7 sessions at once): CPU seconds of one thread are compared",
        "elapsed_s": round(time.perf_counter() - start, 1),
        "vae": fig,
    }
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if a.out:
        from hmedit.outputs.write import atomic_write

        atomic_write(a.out, text.encode())
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
