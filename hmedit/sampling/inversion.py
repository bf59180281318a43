"""Real-image inversion: the init image turned into the model's own DDIM trajectory, so that sampling from it
reconstructs the image and an edit keeps the structure of what it does not change (MRGD, Multi-Region Guided
Diffusion, §3.1-3.3, Alg. 1).

Methods (the scene key ``inversion``):

* ``ddim``: DDIM inversion (Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502, eq. 13 run
  backwards; diffusers' ``DDIMInverseScheduler``) under the *source* prompts, without guidance: z_0 (the
  image's latent, the posterior mean) -> z_1 -> ... -> z_n, every z_k kept. With the scene's regional
  attention each region inverts under its own text (MRGD's multi-region inversion).
* ``negative_prompt``: the same trajectory; sampling uses the source prompts' embeddings as the
  unconditional branch (Miyake et al., "Negative-prompt Inversion", arXiv:2305.16807): no optimisation.
* ``null_text``: the same trajectory as pivots, then per sampling step the unconditional embeddings are
  optimised so that the guided step from the current latent lands on the next pivot (Mokady et al.,
  "Null-text Inversion for Editing Real Images using Guided Diffusion Models", arXiv:2211.09794, Alg. 1:
  Adam, 10 inner steps, lr 1e-2·(1 − i/100), early stop at loss < 1e-5 + i·2e-5; the embeddings in fp32).
  The optimisation starts from the source prompts (where negative-prompt inversion stops; see
  :func:`null_text_base`), and the whole unconditional branch is optimised: the root's tokens and every
  node's, each node's under its own regional bias.

Sampling (``hmedit.pipeline.render``) then starts from z at the largest noise level instead of re-noised
source, and the positions the per-node noise levels hold follow the inverted trajectory
(:class:`TrajectoryHolds`) instead of fresh noise. The sampler is DDIM (the inversion's exact reverse). With
``negative_prompt`` and ``null_text``, nodes whose prompt differs from their source prompt are guided against
their negatives instead of the source prompts (:class:`EditGuidance`): the source prompts reconstruct what
stays, the negatives let guidance draw what is new without overshooting it.

The trajectory (and the null-text embeddings) are cached by everything they depend on (:func:`cache_key`),
as learned tokens are, so a rerun or an edit of the target prompts does not invert again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.conditioning.encode import Branch, Conditioning, encode_scene
from hmedit.errors import HmeditError
from hmedit.masks.levels import downsample
from hmedit.sampling.denoise import Denoiser, Guidance, NoiseHolds, TextEmbeddings, conditioning_parts
from hmedit.sampling.plan import Plan, noise_steps
from hmedit.sampling.tiled import Tiler, TileSettings
from hmedit.sampling.tiling import crop

METHODS = ("none", "ddim", "negative_prompt", "null_text")
CACHE_FILE = "inversion.safetensors"
FORMAT = "hmedit-inversion-v1"

# Null-text inversion (Mokady et al. 2023, Alg. 1 and their reference code)
NTI_INNER_STEPS = 10
NTI_LR = 1e-2  # times (1 - i/100) at sampling step i
NTI_EPSILON = 1e-5  # early stop when the loss is below this + i · NTI_EPSILON_STEP
NTI_EPSILON_STEP = 2e-5

Progress = Callable[[int, int], None]


def inverting(scene, plan: Plan | None = None) -> bool:
    """Whether a render of ``scene`` inverts its init image (an inversion method and something to invert)."""
    method = getattr(scene, "inversion", "none")
    if method == "none":
        return False
    return plan is None or plan.canvas is not None


# ------------------------------------------------------------------------------------------ prompts
def _token_prefix(prompt: str) -> str:
    """A learned token the prompt starts with (``<hm-...>``, what :mod:`hmedit.conditioning.tokens` puts
    there), else ''."""
    first = prompt.split(" ", 1)[0]
    return first if first.startswith("<hm-") and first.endswith(">") else ""


def source_prompts(plan: Plan) -> list[str]:
    """Each node's source prompt (what the init image shows there): ``source_prompt``, else ``prompt``. A
    node with a learned token keeps it in its source prompt too: the token describes the image's look."""
    out = []
    for f in plan.flat:
        node = f.node
        if node.source_prompt is None:
            out.append(node.prompt)
            continue
        token = _token_prefix(node.prompt)
        src = node.source_prompt
        out.append(f"{token} {src}".strip() if token and token not in src else src)
    return out


def encode_source(model, plan: Plan) -> Conditioning:
    """The source prompts and the nodes' negatives through the model's text encoders."""
    fam = model.family
    return encode_scene(
        fam.text(model),
        source_prompts(plan),
        [f.node.negative for f in plan.flat],
        zero_empty_negative=fam.zero_empty_negative(model),
    )


def edited_nodes(plan: Plan) -> list[int]:
    """The nodes whose prompt says something else than what the image shows there (their source prompt)."""
    return [k for k, (f, src) in enumerate(zip(plan.flat, source_prompts(plan))) if f.node.prompt != src]


def edit_mask(plan: Plan) -> Tensor | None:
    """[1, 1, h, w] the edited nodes' effective masks at latent resolution (area-averaged), or None."""
    ks = edited_nodes(plan)
    if not ks:
        return None
    return downsample(plan.effective[ks].sum(0).clamp(0, 1), plan.latent, "area")[None, None]


# ------------------------------------------------------------------------------------------ results
@dataclass
class Inversion:
    """An inverted image of an ``n``-step schedule. ``trajectory[k]``: the latent after k inverse steps,
    [depth + 1, C, h, w] (k = 0: the image's latent; k = depth: the largest noise level a render needs, n
    for noise 1), i.e. the input of sampling step n − k. ``uncond``: null-text's unconditional branch per
    sampling step, [n, T_u, D] (the steps before n − depth, never sampled, hold its starting point), else
    None."""

    method: str
    trajectory: Tensor
    uncond: Tensor | None
    key: str
    cached: bool = False
    seconds: float = 0.0
    losses: list[float] | None = None  # null_text: the last inner loss per step
    total: int | None = None  # n (None: the trajectory is whole)

    @property
    def steps(self) -> int:
        return self.total if self.total is not None else self.depth

    @property
    def depth(self) -> int:
        return self.trajectory.shape[0] - 1

    def latent(self, step: int) -> Tensor:
        """[1, C, h, w] the latent at the input of sampling step ``step`` (``steps``: the image's latent)."""
        return self.trajectory[self.steps - step][None]


def _digest(h, t: Tensor | None) -> None:
    if t is None:
        h.update(b"none\0")
        return
    a = t.detach().float().cpu().contiguous()
    h.update(json.dumps(list(a.shape)).encode() + b"\0")
    h.update(a.numpy().tobytes())


def cache_key(
    model,
    plan: Plan,
    source: Conditioning,
    method: str,
    steps: int,
    guidance: float,
    tiling: TileSettings | None,
    depth: int | None = None,
) -> str:
    """sha256 of everything an inversion depends on: the model (its hash), the image (the plan's canvas),
    the source prompts and negatives (their embeddings, so learned tokens count), the regional attention
    (masks, weights, levels, step ranges), steps, the scheduler's config, the guidance (null_text only: the
    DDIM trajectory does not depend on it), the method (ddim and negative_prompt share one trajectory), the
    tiling and, for null_text, the ``depth`` (the steps inverted; None: all): its optimisation starts there,
    while a DDIM trajectory is a prefix of a deeper one (and is continued when a render needs more)."""
    h = hashlib.sha256()
    trajectory_only = method in ("ddim", "negative_prompt")
    head = {
        "format": FORMAT,
        "model": model.hash,
        "dtype": str(model.dtype),
        "method": "ddim" if trajectory_only else method,
        "steps": int(steps),
        "guidance": None if trajectory_only else float(guidance),
        "depth": None if trajectory_only or depth is None or depth >= steps else int(depth),
        "scheduler": {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")},
        "size": [plan.width, plan.height],
        "tiling": asdict(tiling) if tiling is not None else None,
        "regional": bool(plan.regional and source.regional),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode() + b"\0")
    for t in (
        plan.canvas,
        *source.batch()[:2],
        source.pooled,
        plan.effective,
        plan.pos,
        plan.neg,
        plan.active,
    ):
        _digest(h, t)
    for n in sorted(plan.level_gate):
        _digest(h, plan.level_gate[n].float())
    return h.hexdigest()


class InversionCache:
    """Inversions under ``root/<key>/inversion.safetensors`` (default root: ``inversions/`` in hmedit's cache
    folder; ``--cache-dir DIR`` puts them beside the learned tokens in DIR)."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            from hmedit.models.load import cache_dir

            root = cache_dir() / "inversions"
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key / CACHE_FILE

    def get(self, key: str) -> Inversion | None:
        """The cached inversion, or None (a missing, half-written or foreign file is a miss)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            state = load_file(str(path))
        except (OSError, SafetensorError, RuntimeError, ValueError):
            return None
        meta = state.get("method")
        if "trajectory" not in state or meta is None:
            return None
        method = METHODS[int(meta.item())] if 0 < int(meta.item()) < len(METHODS) else None
        if method is None:
            return None
        total = int(state["steps"].item()) if "steps" in state else None
        return Inversion(method, state["trajectory"], state.get("uncond"), key, cached=True, total=total)

    def put(self, inv: Inversion) -> Path | None:
        """Store atomically; None when the cache cannot be written (only costs an inversion next time)."""
        from safetensors.torch import save

        from hmedit.outputs.write import atomic_write

        state = {
            "trajectory": inv.trajectory.detach().float().cpu().contiguous(),
            "method": torch.tensor(METHODS.index(inv.method)),
            "steps": torch.tensor(inv.steps),
        }
        if inv.uncond is not None:
            state["uncond"] = inv.uncond.detach().float().cpu().contiguous()
        path = self.path(inv.key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, save(state))
        except (OSError, HmeditError):
            return None
        return path


# ------------------------------------------------------------------------------------------ schedulers
def schedulers(model, steps: int, device=None):
    """The DDIM sampler and diffusers' ``DDIMInverseScheduler`` from the model's scheduler config, both set
    to ``steps``: the inverse's timesteps are the sampler's, reversed (leading or trailing spacing)."""
    from diffusers import DDIMInverseScheduler

    from hmedit.models.load import make_scheduler

    cfg = {k: v for k, v in model.scheduler_config.items() if not k.startswith("_")}
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        cfg["timestep_spacing"] = "leading"  # DDIMInverseScheduler knows only these two
    sched = make_scheduler("ddim", cfg)
    known = set(inspect.signature(DDIMInverseScheduler.__init__).parameters)
    inverse = DDIMInverseScheduler.from_config({k: v for k, v in cfg.items() if k in known})
    sched.set_timesteps(steps, device=device)
    inverse.set_timesteps(steps, device=device)
    if not torch.equal(sched.timesteps.flip(0).cpu(), inverse.timesteps.cpu()):
        raise HmeditError(
            f"the model's scheduler ({spacing} spacing) has no DDIM inverse with the same timesteps",
            hint="use a model whose scheduler config has timestep_spacing leading or trailing",
        )
    return sched, inverse


def encode_image(model, canvas: Tensor, tiled_above: int = 1024) -> Tensor:
    """z_0: the posterior mean of the canvas [1, 3, H, W] in [-1, 1], scaled (deterministic, unlike the
    sample the re-noising path draws)."""
    from hmedit.sampling import vae as tiled_vae

    x = canvas.to(model.device, model.vae.dtype)
    with torch.no_grad():
        if max(x.shape[-2:]) > tiled_above:
            posterior = tiled_vae.encode_tiled(model.vae, x)
        else:
            posterior = model.vae.encode(x).latent_dist
    return posterior.mean.to(model.dtype) * model.vae.config.scaling_factor


# ------------------------------------------------------------------------------------------ one branch
def _pad(e: Tensor, t: int) -> Tensor:
    return torch.cat([e, e.new_zeros(t - e.shape[0], e.shape[1])]) if e.shape[0] < t else e


def branch_denoiser(
    model,
    plan: Plan,
    cond: Conditioning,
    sched,
    branch: int,
    embeds: Callable[[int], Tensor] | Tensor,
    tiler: Tiler | None,
) -> Denoiser:
    """A denoiser of one guidance branch (0: unconditional, 1: conditional) with that branch's regional
    attention and added conditioning; ``embeds``: its [T, D] embeddings, or a function of the step."""
    dev, dt = model.device, model.dtype
    one = Guidance(1.0)  # one branch in the UNet batch
    if callable(embeds):
        text = TextEmbeddings(per_step=lambda i: embeds(i)[None].to(dev, dt))
    else:
        text = TextEmbeddings(embeds[None].to(dev, dt))
    parts = conditioning_parts(
        model, plan, cond, one, sched, sched.timesteps, branches=(branch,), text=text, tiler=tiler
    )
    return Denoiser(model.unet, sched, parts, one, tiler=tiler)


def inversion_tiler(tiling: TileSettings | None, plan: Plan) -> Tiler | None:
    """Windows for inversion and for sampling from it: the same fixed grid in every step (no random offsets),
    so the inverse and forward steps see the same windows."""
    return Tiler(replace(tiling, offsets=False), plan, None) if tiling is not None else None


# ------------------------------------------------------------------------------------------ inversion
def ddim_trajectory(
    den: Denoiser,
    sched,
    inverse,
    z0: Tensor,
    progress: Progress | None = None,
    total: int | None = None,
    depth: int | None = None,
    prefix: Tensor | None = None,
) -> Tensor:
    """DDIM inversion: [depth + 1, C, h, w] from z_0 (depth: n, the whole schedule, by default). Inverse step
    k runs the UNet at the sampler's timestep t_{n−1−k} (as sampling step n−1−k does: same σ, same step gates
    of the regional attention) on z_k and moves to that noise level with ``DDIMInverseScheduler.step``. Step
    k does not depend on the depth, so ``prefix`` (a shallower trajectory of the same image) is continued."""
    n = len(inverse.timesteps)
    depth = n if depth is None else depth
    out = list(prefix.to(z0)) if prefix is not None else [z0[0]]
    x = out[-1][None]
    for k in range(len(out) - 1, depth):
        t = inverse.timesteps[k]
        eps = den(x, t, n - 1 - k)
        x = inverse.step(eps, t, x, return_dict=False)[0]
        out.append(x[0])
        if progress is not None:
            progress(k + 1, total or depth)
    return torch.stack(out)


def null_text(
    cond_den: Denoiser,
    make_uncond: Callable[[Callable[[int], Tensor]], Denoiser],
    full: Callable[[Tensor], Denoiser],
    sched,
    trajectory: Tensor,
    uncond0: Tensor,
    guidance: float,
    pad_to: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int | None = None,
) -> tuple[Tensor, list[float]]:
    """Null-text inversion (Mokady et al. 2023, Alg. 1): per sampling step i, optimise the unconditional
    embeddings (Adam, lr 1e-2·(1 − i/100), at most 10 inner steps, early stop) so that the guided DDIM step
    from the current latent lands on the pivot ``trajectory[n − i − 1]``, then take that step; from the
    first step a shallower ``trajectory`` (depth d < n) reaches, n − d, on. Returns the embeddings per step
    [n, T_u, D] (fp32; the start ``uncond0`` before step n − d) and the last loss of each step optimised."""
    timesteps = sched.timesteps
    n, depth = len(timesteps), trajectory.shape[0] - 1
    x = trajectory[depth][None]
    u = uncond0.detach().float().clone()
    out, losses = [u.clone() for _ in range(n - depth)], []
    for i in range(n - depth, n):
        t = timesteps[i]
        pivot = trajectory[n - i - 1][None].float()
        with torch.no_grad():
            eps_c = cond_den(x, t, i).float()
        u = u.detach().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=NTI_LR * (1.0 - i / 100.0))
        den_u = make_uncond(lambda _i, u=u: _pad(u, pad_to))
        loss_v = float("nan")
        for _ in range(NTI_INNER_STEPS):
            eps_u = den_u(x, t, i).float()
            eps = eps_u + guidance * (eps_c - eps_u)
            prev = sched.step(eps, t, x.float(), return_dict=False)[0]
            loss = F.mse_loss(prev, pivot)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_v = float(loss.detach())
            if loss_v < NTI_EPSILON + i * NTI_EPSILON_STEP:
                break
        u = u.detach()
        out.append(u.clone())
        losses.append(loss_v)
        with torch.no_grad():
            both = full(u)
            x = sched.step(both(x, t, i), t, x, return_dict=False)[0]
        if progress is not None:
            progress(done + i + 1 - (n - depth), total or depth)
    return torch.stack(out), losses


def invert(
    model,
    plan: Plan,
    method: str,
    steps: int,
    guidance: float,
    *,
    tiling: TileSettings | None = None,
    encode_tiled_above: int = 1024,
    source: Conditioning | None = None,
    cache: InversionCache | None = None,
    force: bool = False,
    progress: Progress | None = None,
    depth: int | None = None,
) -> Inversion:
    """Invert ``plan``'s canvas under its source prompts (see the module docstring), or take the inversion
    from ``cache`` (None: the default cache folder); ``force``: invert even when it is cached (and replace
    it). ``depth``: the inverse steps a render needs (:func:`hmedit.sampling.plan.noise_steps` of its largest
    noise level; None: all ``steps``); a cached DDIM trajectory that is too shallow is continued.
    ``progress(i, n)`` after each step (DDIM steps, then null-text steps)."""
    if method not in METHODS[1:]:
        raise HmeditError(f"unknown inversion method {method!r}", hint="use " + ", ".join(METHODS))
    if plan.canvas is None:
        raise HmeditError(
            "inversion needs an image to invert", field="init_image", hint="add init_image: <a file>"
        )
    cache = cache if cache is not None else InversionCache()
    source = source if source is not None else encode_source(model, plan)
    depth = steps if depth is None else max(0, min(int(depth), steps))
    key = cache_key(model, plan, source, method, steps, guidance, tiling, depth)
    prefix = None
    if not force:
        hit = cache.get(key)
        if hit is not None and hit.steps == steps and (method != "null_text" or hit.uncond is not None):
            if hit.depth >= depth:
                hit.method = method
                return hit
            if method != "null_text":
                prefix = hit.trajectory  # continued below, from its deepest latent
    start = time.perf_counter()
    sched, inverse = schedulers(model, steps, model.device)
    tiler = inversion_tiler(tiling, plan)
    z0 = encode_image(model, plan.canvas, encode_tiled_above)
    embeds = source.batch()[0]  # [2, T, D]: uncond (negatives), cond (source prompts)
    nti = method == "null_text" and guidance > 1.0
    done = prefix.shape[0] - 1 if prefix is not None else 0
    total = (depth - done) * (2 if nti else 1)
    cond_den = branch_denoiser(model, plan, source, sched, 1, embeds[1], tiler)
    from hmedit.attention.processor import regional_attention

    with regional_attention(model.unet):
        with torch.no_grad():
            step = (lambda k, n: progress(k - done, n)) if progress is not None and done else progress
            trajectory = ddim_trajectory(cond_den, sched, inverse, z0, step, total, depth, prefix)
        uncond, losses = None, None
        if method == "null_text":
            base = null_text_base(source, source)  # the unconditional branch starts as the source prompts
            t_u = len(base.uncond)
            uncond0 = base.uncond.embeds.float()
            if nti:

                def make_uncond(fn):
                    return branch_denoiser(model, plan, base, sched, 0, fn, tiler)

                def full(u: Tensor) -> Denoiser:
                    return sampling_denoiser(model, plan, base, sched, guidance, tiler, u)

                uncond, losses = null_text(
                    cond_den,
                    make_uncond,
                    full,
                    sched,
                    trajectory,
                    uncond0,
                    guidance,
                    base.batch()[0].shape[1],
                    progress,
                    depth,
                    total,
                )
            else:  # without guidance the unconditional branch is never used: nothing to optimise
                uncond = uncond0[None].repeat(steps, 1, 1)
            assert uncond.shape[1] == t_u
    inv = Inversion(
        method,
        trajectory.float().cpu(),
        uncond,
        key,
        seconds=time.perf_counter() - start,
        losses=losses,
        total=steps,
    )
    cache.put(inv)
    return inv


def sampling_denoiser(model, plan, cond: Conditioning, sched, guidance: float, tiler, u: Tensor) -> Denoiser:
    """Both branches, the unconditional one's embeddings replaced by ``u`` [T_u, D] (null-text's step)."""
    g = Guidance(guidance)
    parts = conditioning_parts(model, plan, with_uncond(cond, u), g, sched, sched.timesteps, tiler=tiler)
    return Denoiser(model.unet, sched, parts, g, tiler=tiler)


def null_text_base(cond: Conditioning, source: Conditioning) -> Conditioning:
    """``cond`` with the source prompts as its unconditional branch (tokens, owners, pooled embedding):
    negative-prompt inversion's conditioning, and where null-text's optimisation starts. Mokady et al. start
    from the empty prompt; on the bundled model 10 inner steps from there leave the loss at 1e-2 and the
    reconstruction 2 dB below the VAE's (measured), while from the source prompts the guided step starts on
    the guidance-free trajectory and the optimisation only removes what is left (as NPI-initialised
    null-text inversion does)."""
    pooled = cond.pooled
    if pooled is not None and source.pooled is not None:
        pooled = torch.stack([source.pooled[1], cond.pooled[1]])
    return replace(cond, uncond=source.cond, pooled=pooled)


def with_uncond(cond: Conditioning, embeds: Tensor) -> Conditioning:
    """``cond`` with the unconditional branch's embeddings replaced (same tokens and owners)."""
    if embeds.shape[0] != len(cond.uncond):
        raise HmeditError(
            f"the inverted negative embeddings have {embeds.shape[0]} tokens, the scene's negatives "
            f"{len(cond.uncond)}",
            hint="the negatives changed since the inversion: invert again (hmedit invert --force)",
        )
    return replace(cond, uncond=Branch(embeds.to(cond.uncond.embeds), cond.uncond.owner))


# ------------------------------------------------------------------------------------------ sampling
class TrajectoryHolds(NoiseHolds):
    """Per-node noise levels with an inverted image: a held position follows the inverted trajectory (the
    latent the image has at that noise level) instead of the source re-noised with fresh noise."""

    def __init__(self, plan: Plan, sched, timesteps, inv: Inversion, t_start: int, n: int, device, dtype):
        self.trajectory = inv.trajectory.to(device, dtype)
        super().__init__(
            plan, sched, timesteps, self.trajectory[0][None], self.trajectory[0][None], t_start, n
        )
        self.total = n

    def after_step(self, x: Tensor, i: int) -> Tensor:
        hold = self.held_after(i)
        if not hold.any():
            return x
        target = self.trajectory[self.total - (self.t_start + i + 1)][None]
        return torch.where(hold, target.to(x.dtype), x)


class EditGuidance(Denoiser):
    """Sampling from a negative-prompt or null-text inversion with edited nodes. Their unconditional branch
    is the source prompts, so that guidance reconstructs the image; in an edited node that turns guidance
    into scale × (target − source), which overshoots (on the bundled model "a brown square" -> orange came out
    yellow). In the edited nodes' mask m the guided prediction is taken against the negatives instead, as a
    render without inversion (and ``ddim``) has it: ε = g_src + m·(g_neg − g_src), where
    g_neg − g_src = (1 − scale)·(ε_neg − ε_src) needs one more UNet branch (``null``: the negatives), run only
    while some edited position is not held."""

    def __init__(self, den: Denoiser, null: Denoiser, mask: Tensor) -> None:
        super().__init__(den.unet, den.scheduler, den.parts, den.guidance, tiler=den.tiler, holds=den.holds)
        self.null, self.mask = null, mask

    def predict(self, x: Tensor, t, i: int, windows=None) -> Tensor:
        u, c = self.raw(x, t, i, windows).chunk(2)
        scale = self.guidance.scale
        out = u + scale * (c - u)
        m = self.mask.to(x.device, x.dtype)
        held = self.holds.held_after(i) if self.holds is not None else None
        if held is not None:
            m = m * ~held.to(m.device)
        if windows is not None:
            m = torch.cat([crop(m, w) for w in windows])
        if not bool((m > 0).any()):
            return out
        return out + m * (1.0 - scale) * (self.null.raw(x, t, i, windows) - u)


def edit_guidance(den: Denoiser, model, plan: Plan, cond: Conditioning, controls=None) -> Denoiser:
    """``den`` (sampling from an inversion whose unconditional branch is the source prompts) as an
    :class:`EditGuidance` when the plan has edited nodes and guidance is on; else ``den`` itself. ``cond``:
    the render's own conditioning (its negatives); ``controls``: a ControlNet part for the extra branch."""
    mask = edit_mask(plan)
    if mask is None or not den.guidance.on:
        return den
    null = branch_denoiser(model, plan, cond, den.scheduler, 0, cond.batch()[0][0], den.tiler)
    if controls is not None:
        null.parts.append(controls)
    return EditGuidance(den, null, mask)


@dataclass
class Start:
    """What sampling from an inversion changes in a render: the first latent, the conditioning (the
    unconditional branch of negative_prompt), the text embeddings (per step for null_text), the holds."""

    latents: Tensor
    cond: Conditioning
    text: TextEmbeddings
    holds: TrajectoryHolds | None
    inversion: Inversion
    tiler: Tiler | None = None


def start(
    inv: Inversion,
    model,
    plan: Plan,
    cond: Conditioning,
    source: Conditioning,
    guidance: Guidance,
    sched,
    timesteps,
    t_start: int,
    steps: int,
) -> Start:
    """Sampling inputs from inversion ``inv``: the latent at step ``t_start``; negative_prompt: the source
    prompts' embeddings (and pooled embedding) as the unconditional branch; null_text: its embeddings of each
    step as the unconditional branch."""
    dev, dt = model.device, model.dtype
    if inv.method in ("negative_prompt", "null_text"):
        cond = null_text_base(cond, source)
    if inv.method == "null_text" and inv.uncond is not None:
        per = [
            guidance.select(with_uncond(cond, inv.uncond[t_start + i]).batch()[0]).to(dev, dt)
            for i in range(len(timesteps))
        ]
        text = TextEmbeddings(per_step=lambda i: per[i])
    else:
        text = TextEmbeddings(guidance.select(cond.batch()[0]).to(dev, dt))
    holds = None
    if plan.noise_map is not None:
        holds = TrajectoryHolds(plan, sched, timesteps, inv, t_start, steps, dev, dt)
    return Start(inv.latent(t_start).to(dev, dt), cond, text, holds, inv)


def prepare(
    model,
    plan: Plan,
    settings,
    cond: Conditioning,
    sched,
    timesteps,
    t_start: int,
    cache: InversionCache | None = None,
    progress: Progress | None = None,
) -> Start:
    """For :func:`hmedit.pipeline.render`: invert the plan's canvas (or take it from ``cache``) with the
    render's ``settings`` (steps, guidance, tiling) and return the sampling inputs from it."""
    method = plan.scene.inversion
    source = encode_source(model, plan)
    inv = invert(
        model,
        plan,
        method,
        settings.steps,
        settings.guidance,
        tiling=settings.tiling,
        encode_tiled_above=settings.encode_tiled_above,
        source=source,
        cache=cache,
        progress=progress,
        depth=settings.steps - t_start,
    )
    out = start(
        inv, model, plan, cond, source, Guidance(settings.guidance), sched, timesteps, t_start, settings.steps
    )
    out.tiler = inversion_tiler(settings.tiling, plan)
    return out


def invert_scene(
    scene,
    model,
    settings,
    *,
    cache: InversionCache | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Inversion | None:
    """``hmedit invert``: the inversion a render of ``scene`` with ``settings`` (a
    :class:`hmedit.pipeline.Settings`) needs, from the cache or computed now; None when the scene inverts
    nothing (``inversion: none``, or no init image or layer). Click and ``refine:`` masks are searched first,
    and attention masks read from their first pass (which inverts its own plan into ``cache`` too), as a
    render does, so that the render finds this inversion under the same regions."""
    from hmedit.pipeline import attention_masks, attention_nodes, plan_of
    from hmedit.sampling.mask_search import needs_search, search_masks

    if scene.inversion == "none":
        return None
    masks = search_masks(scene, model, settings).masks if not scene.edits and needs_search(scene) else None
    given = None
    if attention_nodes(scene) and not scene.edits:  # the first pass inverts (and caches) its own plan
        given, _ = attention_masks(scene, model, settings, inversions=cache)
    plan = plan_of(scene, model, settings, masks=masks, given=given)
    if plan.canvas is None:
        return None
    targets = [plan_of(scene.edit_target(e), model, settings) for e in scene.edits]
    top = max([plan.max_noise] + [t.max_noise for t in targets])  # sampling starts as deep as the deepest
    return invert(
        model,
        plan,
        scene.inversion,
        settings.steps,
        settings.guidance,
        tiling=settings.tiling,
        encode_tiled_above=settings.encode_tiled_above,
        cache=cache,
        force=force,
        progress=progress,
        depth=noise_steps(settings.steps, top),
    )
