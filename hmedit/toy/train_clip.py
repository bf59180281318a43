"""Train the bundled CLIP: a small transformers ``CLIPModel`` (vision and text towers) of the toy world.

Stages (each resumable from its files in ``--run-dir``):
  1. data    world images of seeds 0..N-1 (every evaluation seed is above them), rendered once and cached
             with what they show (objects' colour, shape, texture; background) as ``data.safetensors``.
  2. train   first (``--aux-warmup`` steps) the image tower alone, on which shapes an image holds, through a
             training-only linear head (a ViT trained from scratch by the contrastive loss learns colour at
             once and outlines not at all in the steps one CPU thread allows: at step 500 of such a run its
             shape guesses were at chance, after 1,500 steps of this warm-up 84% right). Then the symmetric
             contrastive loss of CLIP (Radford et al. 2021) over a batch of images and one
             caption each. A caption is, at random, the world's own caption (all objects and the background),
             one object's full phrase ("a striped red circle") or its short phrase ("a red circle"), the
             words a user's prompt or a zero-shot query uses. Every short phrase brings a hard negative to
             the image-to-text side: the same colour with another shape ("a red star"; NegCLIP, Yuksekgonul
             et al. 2023), since colour is the easy half of the world and shape the hard one. Checkpoints
             are safetensors; every step draws its randomness from a generator seeded by (seed, step), so a
             resumed run repeats a straight run bit for bit. The shape head keeps training beside (weight
             ``--aux-shape``) and is left out of the export. Images are stored at the image tower's size
             (64 px for the bundled ``p8``) and half of them mirrored left-right (every shape is symmetric).
  3. export  a folder that ``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` load: fp16
             safetensors (loaded as fp32), the toy model's tokenizer (a 601-token byte-level BPE of the
             world's words) and an image processor at the tower's size with the world's mean and std.

    python -m hmedit.toy.train_clip --run-dir runs/clip --out hmedit/models/weights/toy-clip --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hmedit.toy import checkpoint, world
from hmedit.toy.publish import publish
from hmedit.toy.train import _log, _lr, start_run

CKPT = "clip.safetensors"
DATA = "data.safetensors"
MAX_TOKENS = 77  # the text tower's positions (as every CLIP); training captions are padded to TRAIN_TOKENS
TRAIN_TOKENS = 40  # longer than any world caption (4 objects, textures, background, style: 36 tokens)
# per-channel mean and std of world images (seeds 0..299, 0..1 scale): the image processor's normalisation
IMAGE_MEAN = [0.5269, 0.4521, 0.4449]
IMAGE_STD = [0.3294, 0.2657, 0.3184]
MAX_OBJECTS = 4

ARCH = {
    # 128 px, 16 px patches: 64 patch tokens + CLS (the bundled toy-clip)
    "full": dict(
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4),
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        projection_dim=128,
        image_size=128,
        patch_size=16,
    ),
    # world images resized to 32 px, 4 px patches: 64 patch tokens + CLS, each patch a whole corner or point
    # of a shape. Tried for shape (360 steps of 32, class loss): zero-shot colour 90%, shape 23%, top-1 20%,
    # no better than "full" within one CPU thread's budget
    "p4": dict(
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
        projection_dim=128,
        image_size=32,
        patch_size=4,
    ),
    # world images resized to 64 px, 8 px patches: 64 patch tokens + CLS. A supervised 5-shape probe of this
    # tower learns shape about twice as fast per step as "full" (50% vs 43% at step 500, 2,238 images)
    "p8": dict(
        vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4),
        text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        projection_dim=128,
        image_size=64,
        patch_size=8,
    ),
    # minute, at 32 px (so that tests go through the resize): tests
    "tiny": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16,
        image_size=32,
        patch_size=16,
    ),
}


def toy_tokenizer():
    """The bundled toy model's tokenizer (a CLIPTokenizer over the world's words, 601 tokens)."""
    from transformers import CLIPTokenizer

    from hmedit.models.load import BUNDLED

    return CLIPTokenizer.from_pretrained(BUNDLED["toy"], subfolder="tokenizer")


def build_clip(arch: str = "full", tokenizer=None, image_size: int | None = None, logit_scale: float = 30.0):
    """A randomly initialised CLIPModel of the named size whose text tower fits ``tokenizer``; ``image_size``:
    the arch's unless given; ``logit_scale``: the initial factor of the cosine similarities (CLIP's
    1/0.07 = 14.3 learns slowly)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tok = tokenizer or toy_tokenizer()
    spec = ARCH[arch]
    text = CLIPTextConfig(
        vocab_size=len(tok),
        max_position_embeddings=MAX_TOKENS,
        projection_dim=spec["projection_dim"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec["text"],
    )
    vision = CLIPVisionConfig(
        image_size=image_size or spec["image_size"],
        patch_size=spec["patch_size"],
        projection_dim=spec["projection_dim"],
        **spec["vision"],
    )
    cfg = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=spec["projection_dim"],
        logit_scale_init_value=math.log(logit_scale),
    )
    return CLIPModel(cfg)


def make_processor(tokenizer=None, image_size: int = world.SIZE):
    """CLIPProcessor: images resized and centre-cropped to ``image_size``, normalised by the world's mean
    and std; text by the toy tokenizer."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer or toy_tokenizer())


def save_random(folder: Path, arch: str = "tiny", seed: int = 0, image_size: int = 64) -> Path:
    """A CLIP folder with random weights (tests, and code that needs a CLIP without the bundled one)."""
    torch.manual_seed(seed)
    tok = toy_tokenizer()
    model = build_clip(arch, tok, image_size)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    make_processor(tok, image_size).save_pretrained(folder)
    return folder


def pixels(images: torch.Tensor, size: int = world.SIZE) -> torch.Tensor:
    """[N, H, W, 3] uint8 world-size images -> [N, 3, size, size] float, resized (PIL bicubic) and normalised
    as the processor of that size does."""
    if images.shape[1] != size:
        from PIL import Image

        images = torch.from_numpy(
            np.stack(
                [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images.numpy()]
            )
        )
    x = images.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- stage 1: data
def _render_rows(seeds: range, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """World images of ``seeds`` (resized to ``size`` as :func:`pixels` would) and what they show."""
    from PIL import Image

    n = len(seeds)
    images = np.zeros((n, size, size, 3), np.uint8)
    objects = np.full((n, MAX_OBJECTS, 3), -1, np.int64)
    background = np.zeros((n, 2), np.int64)
    outlined = np.zeros(n, np.int64)
    captions = []
    for k, s in enumerate(seeds):
        w = world.sample(s)
        im = w.image
        if size != world.SIZE:
            im = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
        images[k] = im
        for j, o in enumerate(w.objects):
            objects[k, j] = (
                world.COLOURS.index(o.colour),
                world.SHAPES.index(o.shape),
                world.TEXTURES.index(o.texture),
            )
        background[k] = (world.COLOURS.index(w.background), world.TEXTURES.index(w.background_texture))
        outlined[k] = int(w.outlined)
        captions.append(w.caption)
    return images, objects, background, outlined, captions


def make_data(a) -> None:
    """World images 0..N-1, stored at the arch's image size (resized once, as the processor resizes), with
    what they show: objects [N, 4, 3] (colour, shape, texture indices; -1: none), background [N, 2] (colour,
    texture), outlined [N], the world's caption as token ids. ``a.workers`` processes render them."""
    from concurrent.futures import ProcessPoolExecutor

    from hmedit.outputs.write import save_safetensors

    out = a.run_dir / DATA
    if out.exists():
        return
    tok = toy_tokenizer()
    n, size = a.dataset, ARCH[a.arch]["image_size"]
    chunk = 1000
    parts = [range(i, min(i + chunk, n)) for i in range(0, n, chunk)]
    t0 = time.time()
    rows = []
    with ProcessPoolExecutor(max(1, getattr(a, "workers", 1))) as pool:
        for part, row in zip(parts, pool.map(_render_rows, parts, [size] * len(parts))):
            rows.append(row)
            _log(f"data {part.stop}/{n} ({time.time() - t0:.0f} s)", a.log)
    save_safetensors(
        out,
        {
            "images": torch.from_numpy(np.concatenate([r[0] for r in rows])),
            "objects": torch.from_numpy(np.concatenate([r[1] for r in rows])),
            "background": torch.from_numpy(np.concatenate([r[2] for r in rows])),
            "outlined": torch.from_numpy(np.concatenate([r[3] for r in rows])),
            "ids": tokenize(tok, [c for r in rows for c in r[4]]),
        },
        metadata={"seeds": f"0..{n - 1}", "world": "hmedit.toy.world.sample", "image_size": str(size)},
    )


def tokenize(tok, texts: list[str]) -> torch.Tensor:
    return tok(
        texts, padding="max_length", max_length=TRAIN_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


def trim(ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Drop the padding columns after every row's first end token (the text tower pools at the first one and
    attends causally, so the features do not change; the step gets cheaper)."""
    first = (ids == eos).int().argmax(1)
    return ids[:, : int(first.max()) + 1]


def load_data(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# ---------------------------------------------------------------- captions
def class_of(colour: int, shape: int) -> int:
    """Index of "a {colour} {shape}" among :func:`class_captions` (colour-major)."""
    return colour * len(world.SHAPES) + shape


def class_captions() -> list[str]:
    """Every "a {colour} {shape}" of the world: the zero-shot classes (60)."""
    return [world.object_phrase(c, s) for c in world.COLOURS for s in world.SHAPES]


def draw_captions(
    data: dict[str, torch.Tensor], idx: torch.Tensor, g: torch.Generator, p_world: float, p_short: float
) -> tuple[list[str | None], list[str], list[int], list[list[int]]]:
    """Per image: a caption (None: the world's own, already tokenised), the class of one of its objects (the
    one its caption names when it names one; -1 for an empty image) and the classes of all its objects; plus
    the hard negatives (same colour, another shape) of the images captioned with a short phrase."""
    captions: list[str | None] = []
    negatives: list[str] = []
    targets: list[int] = []
    present: list[list[int]] = []
    u = torch.rand(len(idx), generator=g).tolist()
    pick = torch.rand(len(idx), generator=g).tolist()
    other = torch.randint(1, len(world.SHAPES), (len(idx),), generator=g).tolist()
    for k, i in enumerate(idx.tolist()):
        objs = [o for o in data["objects"][i].tolist() if o[0] >= 0]
        present.append([class_of(c, s) for c, s, _ in objs])
        if not objs:
            captions.append(None)
            targets.append(-1)
            continue
        c, s, t = objs[int(pick[k] * len(objs))]
        targets.append(class_of(c, s))
        colour, shape = world.COLOURS[c], world.SHAPES[s]
        if u[k] < p_world:
            captions.append(None)
        elif u[k] < p_world + p_short:
            captions.append(world.object_phrase(colour, shape))
            negatives.append(world.object_phrase(colour, world.SHAPES[(s + other[k]) % len(world.SHAPES)]))
        else:
            captions.append(world.object_phrase(colour, shape, world.TEXTURES[t], bool(data["outlined"][i])))
    return captions, negatives, targets, present


# ---------------------------------------------------------------- checkpoints
def save_state(path: Path, model, opt, names: list[str], ema: list[torch.Tensor], step: int, a) -> None:
    """:func:`hmedit.toy.checkpoint.save_state` with this trainer's argument record."""
    checkpoint.save_state(path, model, opt, names, ema, step, _arg_record(a))


load_state = checkpoint.load_state


def _arg_record(a) -> dict:
    keys = (
        "seed",
        "arch",
        "dataset",
        "steps",
        "batch",
        "lr",
        "warmup",
        "ema",
        "p_world",
        "p_short",
        "class_loss",
        "aux_shape",
        "aux_warmup",
        "flip",
        "logit_scale",
        "save_every",
    )
    return {k: getattr(a, k, None) for k in keys}


def make_optimizer(model, lr: float):
    """AdamW with weight decay on the matrices (not on embeddings, norms, biases, the logit scale); returns
    (optimiser, the parameters' names in its order: checkpoints and the EMA keep that order)."""
    named = list(model.named_parameters())
    decayed = [(n, p) for n, p in named if p.ndim >= 2 and "embedding" not in n]
    kept = [(n, p) for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    groups = [
        {"params": [p for _, p in decayed], "weight_decay": 0.05},
        {"params": [p for _, p in kept], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    return opt, [n for n, _ in decayed + kept]


# ---------------------------------------------------------------- stage 2: train
def clip_loss(
    model,
    pix: torch.Tensor,
    ids: torch.Tensor,
    n_pos: int,
    class_ids: torch.Tensor | None = None,
    targets: list[int] | None = None,
    present: list[list[int]] | None = None,
    aux_weight: float = 0.0,
    aux_only: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE: image i's caption is text i (i < n_pos); texts from n_pos on are negatives only.
    With ``class_ids`` (the tokenised :func:`class_captions`), plus the zero-shot task as a loss: each image
    against all 60 "a {colour} {shape}" captions, the class of its target object right and the classes of its
    other objects left out of the softmax (they are not wrong). With ``aux_weight`` and the model's
    training-only ``aux_shape`` head (:func:`attach_aux`), plus that weight times a multi-label loss: which
    shapes the image holds, read linearly from the image tower's pooled output; ``aux_only``: that loss
    alone (the text tower is not run). Returns (loss, figures)."""
    from hmedit.clip.load import text_features

    pooled = model.vision_model(pixel_values=pix).pooler_output
    if aux_only:
        aux, acc = shape_loss(model, pooled, present or [])
        return aux, {"aux": acc}
    img = F.normalize(model.visual_projection(pooled), dim=-1)
    txt = F.normalize(text_features(model, ids), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.T  # [B, B + negatives]
    target = torch.arange(n_pos)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :n_pos].T, target)) / 2
    figures = {"acc": (logits.argmax(1) == target).float().mean().item()}
    if class_ids is not None and targets is not None and present is not None:
        rows = [k for k, t in enumerate(targets) if t >= 0]
        if rows:
            cls = F.normalize(text_features(model, class_ids), dim=-1)
            cl = scale * img[rows] @ cls.T  # [R, 60]
            mask = torch.zeros_like(cl, dtype=torch.bool)
            for r, k in enumerate(rows):
                for c in present[k]:
                    if c != targets[k]:
                        mask[r, c] = True
            cl = cl.masked_fill(mask, float("-inf"))
            want = torch.tensor([targets[k] for k in rows])
            loss = loss + F.cross_entropy(cl, want)
            best = cl.argmax(1)
            n_shapes = len(world.SHAPES)
            figures["cls"] = (best == want).float().mean().item()
            figures["shape"] = (best % n_shapes == want % n_shapes).float().mean().item()
    if aux_weight and present is not None and hasattr(model, "aux_shape"):
        aux, figures["aux"] = shape_loss(model, pooled, present)
        loss = loss + aux_weight * aux
    return loss, figures


def shape_loss(model, pooled: torch.Tensor, present: list[list[int]]) -> tuple[torch.Tensor, float]:
    """The ``aux_shape`` head's multi-label loss (which of the world's shapes each image holds) and the share
    of images whose every shape it gets right."""
    n_shapes = len(world.SHAPES)
    want = torch.zeros(len(present), n_shapes)
    for k, classes in enumerate(present):
        for c in classes:
            want[k, c % n_shapes] = 1.0
    guess = model.aux_shape(pooled)
    return F.binary_cross_entropy_with_logits(guess, want), ((guess > 0) == (want > 0)).all(
        1
    ).float().mean().item()


def attach_aux(model) -> None:
    """A training-only linear head ``aux_shape`` on the image tower's pooled output (which shapes an image
    holds): it pushes the tower to see outlines, which the contrastive loss alone teaches slowly. It is
    checkpointed with the model and left out of the export."""
    model.aux_shape = torch.nn.Linear(model.config.vision_config.hidden_size, len(world.SHAPES))


def train(a) -> None:
    tok = toy_tokenizer()
    data = load_data(a.run_dir / DATA)
    images, world_ids = data["images"], data["ids"]
    model = build_clip(a.arch, tok, logit_scale=a.logit_scale).train()
    if a.aux_shape:
        attach_aux(model)
    size = ARCH[a.arch]["image_size"]
    opt, names = make_optimizer(model, a.lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    ema = [p.detach().clone() for p in params]
    step = 0
    ckpt = a.run_dir / CKPT
    if ckpt.exists():
        ema, step = load_state(ckpt, model, opt, names)
    _log(
        f"clip params {sum(p.numel() for p in params) / 1e6:.2f} M, dataset {len(images)}, from step {step}",
        a.log,
    )
    class_ids = trim(tokenize(tok, class_captions()), tok.eos_token_id) if a.class_loss else None
    t0, losses, figs, done = time.time(), [], [], 0
    stop = min(a.steps, a.until or a.steps)
    while step < stop:
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, a.steps, a.lr, warmup=a.warmup, floor=0.02)
        idx = torch.randint(0, len(images), (a.batch,), generator=g)
        captions, negatives, targets, present = draw_captions(data, idx, g, a.p_world, a.p_short)
        ids = world_ids[idx].clone()
        mine = [k for k, c in enumerate(captions) if c is not None]
        if mine:
            ids[mine] = tokenize(tok, [captions[k] for k in mine])
        if negatives:
            ids = torch.cat([ids, tokenize(tok, negatives)])
        pix = pixels(images[idx], size)
        if a.flip:
            mirror = torch.rand(len(idx), generator=g) < a.flip
            pix = torch.where(mirror.view(-1, 1, 1, 1), pix.flip(-1), pix)
        loss, fig = clip_loss(
            model,
            pix,
            trim(ids, tok.eos_token_id),
            len(idx),
            class_ids,
            targets,
            present,
            a.aux_shape,
            aux_only=bool(a.aux_shape) and step < a.aux_warmup,
        )
        step = checkpoint.optimiser_step(opt, loss, params, ema, a.ema, step)
        done += 1
        losses.append(loss.item())
        figs.append(fig)
        if step % a.log_every == 0 or step == stop:
            _log(
                f"clip step {step}/{a.steps} loss {np.mean(losses):.4f} "
                + " ".join(
                    f"{k} {np.mean([f[k] for f in figs]):.3f}" for k in figs[0] if all(k in f for f in figs)
                )
                + f" scale {model.logit_scale.exp().item():.1f} lr {opt.param_groups[0]['lr']:.2e}"
                f" ({(time.time() - t0) / done:.2f} s/step)",
                a.log,
            )
            losses, figs, t0, done = [], [], time.time(), 0
        if step % a.save_every == 0 or step == stop:
            save_state(ckpt, model, opt, names, ema, step, a)


# ---------------------------------------------------------------- stage 3: export
def export(a, out: Path, use_ema: bool = True, extra: dict | None = None) -> Path:
    """Write the CLIP (EMA weights unless ``use_ema`` is false) as an fp16 transformers folder with its
    processor and training.json; a README.md already in ``out`` (the model card) is kept."""
    tok = toy_tokenizer()
    model = build_clip(a.arch, tok)
    if a.aux_shape:
        attach_aux(model)
    opt, names = make_optimizer(model, a.lr)
    ema, step = load_state(a.run_dir / CKPT, model, opt, names)
    if use_ema:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, e in zip(names, ema):
                params[n].copy_(e)
    if a.aux_shape:
        del model.aux_shape  # training only
    size = ARCH[a.arch]["image_size"]

    def write(tmp: Path) -> None:
        # fp16 storage halves the folder (transformers loads it as fp32 unless asked otherwise)
        model.half().save_pretrained(tmp, safe_serialization=True)
        # transformers 5 loads in the config's dtype by default: say fp32, so that from_pretrained gives fp32
        cfg = json.loads((tmp / "config.json").read_text())
        for part in (cfg, cfg.get("text_config", {}), cfg.get("vision_config", {})):
            for key in ("dtype", "torch_dtype"):
                if key in part:
                    part[key] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        make_processor(tok, size).save_pretrained(tmp)

    record = {
        "weights": "ema" if use_ema else "raw",
        "train_seeds": f"0..{a.dataset - 1}",
        "world_size": world.SIZE,
        "image_size": size,
        "patch_size": ARCH[a.arch]["patch_size"],
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        **_arg_record(a),
        "schedule_steps": a.steps,
        "steps": step,
        **(extra or {}),
    }
    return publish(out, write, record)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=Path("runs/clip"))
    p.add_argument("--out", type=Path, default=None, help="export the CLIP folder here when done")
    p.add_argument("--stages", default="data,train,export")
    p.add_argument("--arch", choices=tuple(ARCH), default="p8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--dataset", type=int, default=48000, help="world images 0..N-1")
    p.add_argument("--workers", type=int, default=1, help="processes that render the data")
    p.add_argument("--flip", type=float, default=0.5, help="share of images mirrored left-right")
    p.add_argument("--steps", type=int, default=3500, help="length of the run (the lr schedule's)")
    p.add_argument("--until", type=int, default=0, help="stop this session at this step (resume later)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--p-world", type=float, default=0.4, help="share of images captioned as the world does")
    p.add_argument("--p-short", type=float, default=0.4, help="share captioned 'a {colour} {shape}'")
    p.add_argument(
        "--class-loss",
        type=int,
        default=1,
        help="1: add the zero-shot task as a loss (each image vs every 'a {colour} {shape}'); 0: CLIP's",
    )
    p.add_argument(
        "--aux-shape",
        type=float,
        default=1.0,
        help="weight of a training-only loss: which shapes the image holds, from the image tower (0: none)",
    )
    p.add_argument(
        "--aux-warmup",
        type=int,
        default=1500,
        help="the first N steps train the image tower on that loss alone (needs --aux-shape)",
    )
    p.add_argument("--logit-scale", type=float, default=30.0, help="initial temperature factor")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    stages = start_run(a)
    if "data" in stages:
        make_data(a)
    if "train" in stages:
        train(a)
    if "export" in stages and a.out:
        _log(f"exported to {export(a, a.out, use_ema=not a.raw)}", a.log)


if __name__ == "__main__":
    main()
