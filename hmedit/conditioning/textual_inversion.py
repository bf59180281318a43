"""Per-layer textual inversion (Collage Diffusion, Sarukkai et al., arXiv:2303.00262, §4.3, eq. 1; after
An Image is Worth One Word, Gal et al., arXiv:2208.01618): a placeholder token per layer, whose one
embedding row is learned so that "<hm-sushi> sushi" reproduces the layer's look on the composite.

    a_i* = argmin_a E_eps || alpha_i · (x_target_i - D(x_target_i + eps, sigma, (a, c_i))) ||²      (eq. 1)

x_target_i is the composite of layers 1..i and alpha_i the layer's alpha: the UNet sees the whole composite
(its context), but only the layer's pixels count in the loss. Every model weight stays frozen; only a
separate leaf tensor for the new row is optimised and spliced into the token lookup by a forward hook, so no
other row (nor any UNet/VAE weight) can change.

Guidance-aware (``guidance`` g > 1, hmedit's default for scenes): D is the prediction the token will be
rendered with, the classifier-free guided one u + g·(c - u), where c is the prediction with the prompt (grad
flows through it) and u the one with the negative prompt (no grad). Eq. 1 as written fits c alone; guidance
then multiplies the token's pull by g at render time and overshoots (on the bundled model a teal layer comes
out nearly black: error 58 vs 30 with g = 7.5, see the README). g = 1 is eq. 1 exactly.

Learned embeddings are cached by a hash of everything they depend on, in diffusers' ``learned_embeds``
format (SDXL: ``clip_l`` and ``clip_g``), so they load in plain diffusers (``pipe.load_textual_inversion``).
Existing embeddings load from the diffusers, A1111 and SDXL formats (:mod:`hmedit.scene.embeddings`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hmedit.errors import HmeditError
from hmedit.scene.embeddings import SDXL_KEYS, check_width, load_embedding

DIFFUSERS_FILE = "learned_embeds.safetensors"

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class LearnSettings:
    """How one token is learned. Defaults fit the bundled 128 px toy model on 2 CPU cores (~1-2 minutes:
    ~0.8 s per batch-16 step with backward); a large model on a GPU wants more steps and a lower lr."""

    steps: int = 120
    lr: float = 1e-2
    batch: int = 16
    init: str | None = None  # word whose embedding starts the row; None: the mean of the vocabulary
    seed: int = 0
    guidance: float = 1.0  # the guidance the token is learned under (1: eq. 1 as in the paper; see above)
    negative: str = ""  # the unconditional prompt of the guided prediction


# ---------------------------------------------------------------- tokens and rows
def add_token(tokenizer, text_encoder, token: str, init_word: str | None = None) -> int:
    """Add placeholder ``token`` to the tokenizer and a row for it to the text encoder, initialised from
    ``init_word`` (the mean of its tokens' rows) or the vocabulary mean; return its id. A token that is
    already added is left as it is (its row is not re-initialised)."""
    added = token in tokenizer.get_added_vocab()
    if not added and len(tokenizer.tokenize(token)) == 1:  # adding it would hijack a word of other prompts
        raise HmeditError(
            f"'{token}' is already a word of the model's vocabulary",
            hint="use a placeholder that is no word, such as <hm-name>",
        )
    init = None if added else init_vector(tokenizer, text_encoder, init_word)
    tokenizer.add_tokens(token)
    token_id = tokenizer.convert_tokens_to_ids(token)
    emb = text_encoder.get_input_embeddings()
    if emb.num_embeddings < len(tokenizer):
        grad = emb.weight.requires_grad
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        text_encoder.get_input_embeddings().weight.requires_grad_(grad)
    if init is not None:
        set_embedding(text_encoder, token_id, init)
    return token_id


def init_vector(tokenizer, text_encoder, init_word: str | None = None) -> Tensor:
    """[D] the starting row: the mean of ``init_word``'s token rows, or of the base vocabulary's rows."""
    weight = text_encoder.get_input_embeddings().weight
    if init_word is None:
        return weight[: tokenizer.vocab_size].detach().float().mean(0)
    ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not ids:
        raise HmeditError(f"init word '{init_word}' has no tokens", hint="use a plain word such as 'square'")
    return weight[ids].detach().float().mean(0)


@torch.no_grad()
def set_embedding(text_encoder, token_id: int, vector: Tensor) -> None:
    """Write [D] ``vector`` into the text encoder's row for ``token_id`` (and nothing else)."""
    weight = text_encoder.get_input_embeddings().weight
    check_width(vector.shape[-1], weight.shape[1], "the embedding")
    weight[token_id] = vector.to(weight.device, weight.dtype)


# ---------------------------------------------------------------- all of a model's text encoders
# A token's embedding is one row per text encoder; hmedit keeps them as one vector, the rows concatenated in
# encoder order ([768 + 1280] on SDXL: clip_l, clip_g), so that SD and SDXL tokens are handled alike.
def widths(model) -> list[int]:
    """The width of each of the model's text encoders, in order."""
    return [int(e.config.hidden_size) for e in model.text_encoders]


def split_row(model, vector: Tensor) -> list[Tensor]:
    """A concatenated row [..., sum D] -> one [..., D_k] per text encoder."""
    check_width(vector.shape[-1], sum(widths(model)), "the embedding")
    return list(torch.split(vector, widths(model), dim=-1))


def add_tokens(model, token: str, init_word: str | None = None) -> list[int]:
    """:func:`add_token` in every text encoder of ``model``; the token's id in each tokenizer."""
    return [add_token(t, e, token, init_word) for t, e in zip(model.tokenizers, model.text_encoders)]


def init_row(model, init_word: str | None = None) -> Tensor:
    """[sum D] :func:`init_vector` of every text encoder, concatenated."""
    return torch.cat([init_vector(t, e, init_word) for t, e in zip(model.tokenizers, model.text_encoders)])


def set_row(model, token_ids: list[int], vector: Tensor) -> None:
    """Write a concatenated row into each text encoder's row of the token."""
    for enc, tid, part in zip(model.text_encoders, token_ids, split_row(model, vector)):
        set_embedding(enc, tid, part)


def install_embedding(model, token: str, vectors: Tensor) -> str:
    """Add a loaded embedding ([sum D], or [n, sum D] for a multi-vector one) under ``token`` in every text
    encoder; return the text that stands for it in prompts: ``token``, or ``token token_1 ... token_{n-1}``
    (diffusers' naming)."""
    vectors = vectors.reshape(-1, vectors.shape[-1])
    names = [token] + [f"{token}_{k}" for k in range(1, vectors.shape[0])]
    for name, vec in zip(names, vectors):
        set_row(model, add_tokens(model, name), vec)
    return " ".join(names)


@contextmanager
def _spliced(model, token_ids: list[int], row: Tensor) -> Iterator[None]:
    """Within the block each text encoder looks its ``token_ids[k]`` up as its part of ``row`` (a tensor that
    may require grad): the frozen embedding matrices are never written."""
    check_width(row.shape[-1], sum(widths(model)), "the embedding")
    handles, start = [], 0
    for enc, tid, width in zip(model.text_encoders, token_ids, widths(model)):

        def hook(module, args, out, tid=tid, lo=start, hi=start + width):
            hit = (args[0] == tid).unsqueeze(-1)
            return torch.where(hit, row[lo:hi].to(out.dtype), out)  # sliced per call: the row changes

        handles.append(enc.get_input_embeddings().register_forward_hook(hook))
        start += width
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _frozen(*modules) -> Iterator[None]:
    """Every parameter frozen and every module in eval mode (no dropout) within the block; restored after."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(m, m.training) for m in modules]
    try:
        for m in modules:
            m.eval().requires_grad_(False)
        yield
    finally:
        for p, g in saved:
            p.requires_grad_(g)
        for m, t in modes:
            m.train(t)


# ---------------------------------------------------------------- learning (eq. 1)
def alpha_weight(alpha: Tensor, size: tuple[int, int]) -> Tensor:
    """[1, 1, h, w] the alpha averaged over each latent pixel's footprint (the loss weight of eq. 1)."""
    return F.interpolate(alpha.float()[None, None], size=size, mode="area")


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error weighted by ``weight`` [1, 1, h, w] (eq. 1's alpha), normalised by the weight's
    mass: pixels of weight 0 contribute nothing, neither to the value nor to the gradient."""
    err = (pred.float() - target.float()).pow(2) * weight
    return err.sum() / (weight.sum() * pred.shape[0] * pred.shape[1]).clamp_min(1e-8)


def learn_embedding(
    model,
    image: Tensor,
    alpha: Tensor,
    prompt: str,
    token_id: int | list[int],
    *,
    steps: int = LearnSettings.steps,
    lr: float = LearnSettings.lr,
    batch: int = LearnSettings.batch,
    seed: int = LearnSettings.seed,
    init: Tensor | None = None,
    guidance: float = LearnSettings.guidance,
    negative: str = LearnSettings.negative,
    progress: Progress | None = None,
) -> Tensor:
    """Textual inversion of one token by Collage Diffusion eq. 1; return the learned row (fp32, CPU): [D],
    or the rows of every text encoder concatenated ([D_l + D_g] on SDXL, both learned together).

    ``image``: the composite of layers 1..i, [1, 3, H, W] in [-1, 1]; ``alpha``: the layer's alpha [H, W]
    in 0..1; ``prompt``: the layer text with the token ("<hm-sushi> sushi"); ``token_id``: its id in each
    tokenizer (one int for one encoder). The row starts from ``init`` (default: its current value).
    ``guidance`` > 1: fit the guided prediction with ``negative`` as the unconditional prompt (see the module
    docstring). The model's family encodes the prompt (SDXL: both encoders' penultimate states, the pooled
    embedding and the size ids), as a render does. Timesteps and noise come from a generator seeded with
    ``seed``, so a seed gives the same embedding. No weight of ``model`` changes (the caller installs the
    result with ``set_row``).
    """
    from diffusers import DDPMScheduler

    fam = model.family
    token_ids = [token_id] if isinstance(token_id, int) else list(token_id)
    vae, unet = model.vae, model.unet
    stack = fam.text(model)
    rows = [_prompt_ids(tok, prompt, tid) for (tok, _), tid in zip(stack.pairs, token_ids)]
    latents, weight = _encode_target(model, image, alpha)
    sched = DDPMScheduler.from_config(model.scheduler_config)
    gen = torch.Generator().manual_seed(seed)
    if init is None:
        weights = [e.get_input_embeddings().weight[t] for e, t in zip(model.text_encoders, token_ids)]
        start = torch.cat([w.detach().float() for w in weights])
    else:
        start = init
    row = start.detach().to(unet.device, torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([row], lr=lr)
    guided = guidance > 1.0
    h, w = image.shape[-2:]
    time_ids = (
        fam.time_ids((h, w), (0, 0), (h, w))[None].to(unet.device, unet.dtype) if fam.uses_time_ids else None
    )
    if guided:  # encoded as a render encodes it (a negative longer than one window is not cut off)
        with torch.no_grad():
            zero = fam.zero_empty_negative(model) and not negative
            uncond, upooled = stack.encode_window(negative, zero=zero)
            uncond = uncond[None].to(unet.device, unet.dtype)

    def added(pooled: Tensor | None, n: int) -> dict | None:
        if time_ids is None:
            return None
        return fam.added_cond(pooled.reshape(1, -1).to(unet.dtype).expand(n, -1), time_ids.expand(n, -1))

    with _frozen(vae, *model.text_encoders, unet), torch.enable_grad(), _spliced(model, token_ids, row):
        for i in range(1, steps + 1):
            t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
            noise = torch.randn((batch, *latents.shape[1:]), generator=gen).to(latents)
            x0 = latents.expand(batch, -1, -1, -1)
            t = t.to(latents.device)
            noisy = sched.add_noise(x0, noise, t)
            target = (
                sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
            )
            hidden, pooled = stack.embed(rows)
            cond = hidden.to(unet.device, unet.dtype).expand(batch, -1, -1)
            pred = unet(noisy, t, encoder_hidden_states=cond, added_cond_kwargs=added(pooled, batch)).sample
            if guided:
                with torch.no_grad():
                    base = unet(
                        noisy,
                        t,
                        encoder_hidden_states=uncond.expand(batch, -1, -1),
                        added_cond_kwargs=added(upooled, batch),
                    ).sample
                pred = base + guidance * (pred - base)
            loss = masked_mse(pred, target, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(i, steps, loss.item())
    return row.detach().float().cpu()


def _prompt_ids(tokenizer, prompt: str, token_id: int) -> Tensor:
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    if not (ids == token_id).any():
        token = tokenizer.convert_ids_to_tokens(token_id)
        raise HmeditError(
            f"the prompt '{prompt}' does not contain the token {token} it should learn",
            hint=f"put {token} in the prompt, e.g. '{token} {prompt}'",
        )
    return ids


@torch.no_grad()
def _encode_target(model, image: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """The composite's latents [1, 4, h, w] (encoded once, the posterior mean) and the loss weight."""
    f = model.vae_scale_factor
    if image.ndim != 4 or image.shape[:2] != (1, 3) or image.shape[2] % f or image.shape[3] % f:
        raise HmeditError(
            f"the image to learn from is {list(image.shape)}, not [1, 3, H, W] with H and W multiples of {f}"
        )
    if tuple(alpha.shape) != tuple(image.shape[2:]):
        raise HmeditError(
            f"the alpha is {list(alpha.shape)} but the image is {list(image.shape[2:])}",
            hint="learn on the layer's alpha at the composite's size",
        )
    if not alpha.gt(0).any():
        raise HmeditError(
            "the layer's alpha is empty: there is nothing to learn", hint="check the layer's mask"
        )
    vae = model.vae
    dist = vae.encode(image.to(vae.device, vae.dtype)).latent_dist
    latents = (dist.mean * vae.config.scaling_factor).to(model.unet.dtype)
    return latents, alpha_weight(alpha, latents.shape[2:]).to(latents.device)


# ---------------------------------------------------------------- cache
def cache_key(model_hash: str, image: Tensor, alpha: Tensor, prompt: str, settings: dict) -> str:
    """sha256 of everything a learned embedding depends on (tensors by their fp32 bytes and shape)."""
    h = hashlib.sha256()
    h.update(b"hmedit-inversion-v1\0" + model_hash.encode() + b"\0")
    for t in (image, alpha):
        a = t.detach().float().cpu().contiguous()
        h.update(json.dumps(list(a.shape)).encode() + b"\0")
        h.update(a.numpy().tobytes())
    h.update(prompt.encode() + b"\0")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class EmbeddingCache:
    """Learned embeddings under ``root/<key>/learned_embeds.safetensors`` (diffusers' format)."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            from hmedit.models.load import cache_dir

            root = cache_dir() / "embeddings"
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key / DIFFUSERS_FILE

    def get(self, key: str) -> Tensor | None:
        """The cached row [D] (SDXL: [D_l + D_g]), or None (a missing or unreadable entry is a miss: it is
        learned again)."""
        try:
            found = load_embedding(self.path(key))
        except HmeditError:  # a half-written or foreign file is just a miss
            return None
        (vector,) = found.values()
        return vector.reshape(-1) if vector.numel() == vector.shape[-1] else None

    def put(self, key: str, token: str, embedding: Tensor, split: list[int] | None = None) -> Path | None:
        """Store atomically; return the file, or None when the cache cannot be written (only costs a
        retrain next time)."""
        try:
            return export_diffusers(self.path(key), token, embedding, split)
        except OSError:
            return None


@dataclass
class LearnedToken:
    token: str
    token_id: int
    embedding: Tensor  # [D] ([sum D] over the text encoders: concatenated rows)
    key: str
    cached: bool  # True when it came from the cache without training


def learn_token(
    model,
    token: str,
    image: Tensor,
    alpha: Tensor,
    prompt: str,
    settings: LearnSettings = LearnSettings(),
    *,
    cache: EmbeddingCache | None = None,
    progress: Progress | None = None,
    key: str | None = None,
    force: bool = False,
) -> LearnedToken:
    """Add ``token`` to the model, take its row from the cache or learn it (eq. 1) and cache it, then install
    it, so prompts with ``token`` encode with the learned row. ``cache=None``: the default cache folder.
    ``key``: the cache key, when the caller computes it (default: ``cache_key`` of these arguments);
    ``force``: learn even when the cache holds the embedding (and replace it)."""
    cache = cache if cache is not None else EmbeddingCache()
    token_ids = add_tokens(model, token, settings.init)
    key = key or cache_key(model.hash, image, alpha, prompt, asdict(settings))
    vector = None if force else cache.get(key)
    if vector is not None and vector.shape[-1] != sum(widths(model)):
        vector = None  # a foreign entry: learned again
    cached = vector is not None
    if vector is None:
        init = init_row(model, settings.init)
        vector = learn_embedding(
            model,
            image,
            alpha,
            prompt,
            token_ids if len(token_ids) > 1 else token_ids[0],
            steps=settings.steps,
            lr=settings.lr,
            batch=settings.batch,
            seed=settings.seed,
            init=init,
            guidance=settings.guidance,
            negative=settings.negative,
            progress=progress,
        )
        cache.put(key, token, vector, widths(model))
    set_row(model, token_ids, vector)
    return LearnedToken(token, token_ids[0], vector, key, cached)


# ---------------------------------------------------------------- files
def export_diffusers(path: str | Path, token: str, embedding: Tensor, split: list[int] | None = None) -> Path:
    """Write an embedding as safetensors, atomically: ``{token: [D]}`` (diffusers' ``learned_embeds``
    format) for one text encoder; with ``split`` (the widths of SDXL's two encoders) the SDXL layout
    ``{"clip_l": [n, D_l], "clip_g": [n, D_g]}``, which diffusers loads into each encoder with
    ``pipe.load_textual_inversion(state["clip_g"], token=..., text_encoder=pipe.text_encoder_2,
    tokenizer=pipe.tokenizer_2)`` (and ``clip_l`` into ``text_encoder``)."""
    from safetensors.torch import save

    from hmedit.outputs.write import atomic_write

    vec = embedding.detach().float().cpu()
    if split is not None and len(split) > 1:
        if len(split) != len(SDXL_KEYS):
            raise HmeditError(f"no embedding file layout for {len(split)} text encoders")
        parts = torch.split(vec.reshape(-1, vec.shape[-1]), split, dim=-1)
        state = {k: p.contiguous() for k, p in zip(SDXL_KEYS, parts)}
    else:
        state = {token: vec.reshape(-1).contiguous()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save(state))
    return path
