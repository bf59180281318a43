"""Keyword selection (``keywords: auto``, MRGD eq. 6) on prompts padded with filler words: region colour match
on the toy model, for 2-region scenes of ``hmedit.bench.control_scene``, each node prompt as is ("plain"),
padded with filler words ("padded"), and padded with ``keywords: auto`` ("keywords"). Writes
docs/keywords-toy.json. Run from the repository root (CPU, one thread; about 2 renders a case per variant):

    OMP_NUM_THREADS=1 nice -n 10 python docs/keywords_bench.py [scenes] [steps]
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

from hmedit.bench import Config, _score_regions, colour_of, control_scene, region_masks
from hmedit.models.load import load
from hmedit.pipeline import Settings, render
from hmedit.scene.spec import Scene

ROOT = Path(__file__).resolve().parent.parent
FILLER = ", highly detailed, beautiful, artstation, trending, 4k"
THRESHOLD = Config().threshold  # hmedit bench's colour-match threshold


def variant(raw: dict, name: str) -> dict:
    out = copy.deepcopy(raw)
    for child in out["root"]["children"]:
        if name != "plain":
            child["prompt"] += FILLER
        if name == "keywords":
            child["keywords"] = "auto"
    return out


def main() -> None:
    torch.set_num_threads(1)
    scenes = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    model = load(str(ROOT / "hmedit" / "models" / "weights" / "toy"))
    names = ("plain", "padded", "keywords")
    flags = {v: {"match": [], "bleed": [], "scene": []} for v in names}
    cases = []
    for seed in range(scenes):
        raw = control_scene(seed, n=2, size=128, steps=steps, guidance=7.5)
        base = Scene.model_validate(raw)
        masks = region_masks(base, 128, 128)
        colours = {r.id: colour_of(r.prompt) for r in base.root.children}
        case = {"seed": seed, "prompts": {r.id: r.prompt for r in base.root.children}, "variants": {}}
        for v in names:
            sc = Scene.model_validate(variant(raw, v))
            t0 = time.perf_counter()
            result = render(sc, model, Settings.of(sc, model, seed, record=False))
            scores = _score_regions(result.image, masks, colours, THRESHOLD)
            case["variants"][v] = {
                "regions": scores,
                "keywords": result.stats.get("keywords"),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            flags[v]["match"] += [s["match"] for s in scores.values()]
            flags[v]["bleed"] += [s["bleed"] for s in scores.values()]
            flags[v]["scene"].append(all(s["match"] for s in scores.values()))
            print(
                seed,
                v,
                {r: (s["fraction"], s["match"]) for r, s in scores.items()},
                result.stats.get("keywords"),
                flush=True,
            )
        cases.append(case)

    def rate(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    out = {
        "model": "toy",
        "scenes": scenes,
        "regions": len(flags["plain"]["match"]),
        "size": [128, 128],
        "steps": steps,
        "guidance": 7.5,
        "threshold": THRESHOLD,
        "filler": FILLER,
        **{
            v: {
                "match_rate": rate(f["match"]),
                "bleed_rate": rate(f["bleed"]),
                "scene_match_rate": rate(f["scene"]),
            }
            for v, f in flags.items()
        },
        "cases": cases,
    }
    (ROOT / "docs" / "keywords-toy.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({v: out[v] for v in names}))


if __name__ == "__main__":
    main()
