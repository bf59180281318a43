"""``hmedit dataset``: scenes rendered for several seeds, with one mask per node read from where the model
drew the node's prompt (its cross-attention, aggregated as DAAM does, thresholded, kept within the node's
effective mask), written as images and a COCO ``annotations.json``.

Output folder::

    images/<scene name>-<seed>.png   the renders (atomically)
    annotations.json                 COCO instances: images, categories (node ids or prompts), masks as RLE;
                                     rewritten (atomically) after every scene, so an interrupted run keeps
                                     every finished scene's annotations
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from hmedit.masks.attention import Probe
from hmedit.outputs.coco import Coco

DEFAULT_THRESHOLD = 0.4  # DAAM's
REGION_MIN = 0.05
"""A pixel is within a node's effective mask where the mask is above this: under the normalized and
depth_weighted schemes a node's effective mask is a share, often below 0.5 everywhere."""
Categories = Literal["id", "prompt"]


def node_masks(result, cutoff: float | str, cell: int) -> dict[str, np.ndarray]:
    """Each probed node's mask (boolean [H, W]): its prompt's attention map thresholded at ``cutoff`` (after
    normalising to 0..1; "auto": :func:`hmedit.masks.attention.auto_threshold` against the render over
    ``cell`` px, the model's :func:`hmedit.pipeline.attention_cell`), within the node's effective mask
    (> ``REGION_MIN``). ``result``: a :class:`hmedit.pipeline.RenderResult` rendered with the probes."""
    from hmedit.pipeline import cut

    plan = result.plan
    out = {}
    for probe, m in result.probes.items():
        if probe.word is not None:
            continue
        k = plan.ids.index(probe.node)
        inside = plan.effective[k] > REGION_MIN
        out[probe.node] = ((cut(m, cutoff, result.image, cell) > 0) & inside).numpy()
    return out


def node_probes(scene, refine: str = "none") -> list[Probe]:
    """The probes of a dataset render: every node but the root with a prompt."""
    return [Probe(f.node.id, None, refine) for f in scene.flat()[1:] if f.node.prompt.strip()]


@dataclass
class Dataset:
    """A dataset being written into ``out``: :meth:`add` per rendered seed, :meth:`save` after each scene."""

    out: Path
    categories: Categories = "id"
    coco: Coco = field(default_factory=Coco)
    seconds: list[float] = field(default_factory=list)  # per image: render + masks + write

    def add(self, scene, name: str, seed: int, result, masks: dict[str, np.ndarray], seconds: float) -> str:
        """Write the image and record its masks; returns the image's file name (relative to ``out``)."""
        from hmedit.outputs import real_dir, save_png

        clock = time.perf_counter()
        file = f"images/{name}-{seed}.png"
        real_dir(self.out, "images")
        save_png(self.out / file, result.image, {"hmedit:scene": name, "hmedit:seed": str(seed)})
        h, w = result.image.shape[:2]
        image_id = self.coco.add_image(file, w, h, scene=name, seed=seed)
        for node_id, mask in masks.items():
            node = scene.node(node_id)
            category = node_id if self.categories == "id" else node.prompt
            self.coco.add_mask(image_id, category, mask, node=node_id, prompt=node.prompt)
        self.seconds.append(seconds + time.perf_counter() - clock)
        return file

    def save(self) -> Path:
        from hmedit.outputs import save_json

        return save_json(self.out / "annotations.json", self.coco.data())


def render_scene(
    job,
    model,
    seeds: list[int],
    *,
    cutoff: float | str = DEFAULT_THRESHOLD,
    refine: str = "none",
    on_step: Callable[[int, int], None] | None = None,
):
    """Render ``job``'s scene for each of ``seeds``: yields (seed, result, masks, seconds). Nodes with
    ``learn:`` / ``embedding:`` get their tokens first."""
    import hmedit.pipeline as R
    from hmedit.conditioning.tokens import install_tokens, needs_tokens

    scene = job.scene
    if needs_tokens(scene):
        tokens = install_tokens(
            scene,
            model,
            cache_dir=job.cache_dir,
            guidance=job.requests[0].guidance,
            defaults=job.preset.learn,
        )
        scene = tokens.apply(scene)
    probes = node_probes(scene, refine)
    req = job.requests[0]
    from dataclasses import replace

    for seed in seeds:
        clock = time.perf_counter()
        settings = R.Settings.from_request(job.scene, model, replace(req, seed=seed), job.preset)
        result = R.render(scene, model, settings, progress=on_step, probes=probes)
        masks = node_masks(result, cutoff, R.attention_cell(model))
        yield seed, result, masks, time.perf_counter() - clock
