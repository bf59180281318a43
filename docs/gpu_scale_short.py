"""Short GPU scale run: hmedit 2048, Panorama 2048, hmedit 4096 (random:sd15, fp16); writes after each item."""

import json, os, sys, time
import torch
from hmedit.models.load import load
from hmedit.bench_tiled import memory_scene, _Meter, _panorama_pipe, _panorama_scale
from hmedit.pipeline import Settings, render
from hmedit.scene.spec import Scene

out = os.environ.get("OUT", "gpu-results")
os.makedirs(out, exist_ok=True)
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
sizes = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "2048,4096").split(",")]
steps = 3
res = {"model": "random:sd15", "dtype": "fp16", "steps": steps, "items": {}}


def dump():
    json.dump(res, open(f"{out}/scale-short.json", "w"), indent=1)


t = time.time()
model = load("random:sd15", device=dev, dtype="fp16" if dev == "cuda" else "fp32")
res["load_s"] = round(time.time() - t, 1)
dump()
print("loaded", res["load_s"], flush=True)
if dev == "cuda":
    res["gpu"] = torch.cuda.get_device_name(0)
    res["torch"] = torch.__version__
pipe = _panorama_pipe(model)
for size in sizes:
    scene = Scene.model_validate(memory_scene(size, steps))
    settings = Settings.of(scene, model, 0)
    with _Meter(model.device) as m, torch.no_grad():
        r = render(scene, model, settings)
    res["items"][f"hmedit-{size}"] = {
        "seconds": m.seconds,
        "s_per_step": round(r.timings["sample"] / steps, 3),
        "decode_s": r.timings["decode"],
        "peak_gib": m.peak_gib,
        "windows_per_step": r.stats.get("windows_total", 0) // steps,
        "timings": r.timings,
    }
    dump()
    print("hmedit", size, res["items"][f"hmedit-{size}"], flush=True)
    if size <= 2048:
        res["items"][f"panorama-{size}"] = _panorama_scale(
            pipe, scene, size, steps, model.vae_scale_factor, model, settings.guidance
        )
        dump()
        print("panorama", size, res["items"][f"panorama-{size}"], flush=True)
