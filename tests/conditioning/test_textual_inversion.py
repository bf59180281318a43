"""Per-layer textual inversion (Collage Diffusion eq. 1) on tiny random models: only the new row is learned,
seeds reproduce, the loss sees only the alpha, the cache skips training, files load in plain diffusers and
in the A1111 formats."""

from __future__ import annotations

import pytest
import torch

from hmedit.conditioning import textual_inversion as inv
from hmedit.errors import HmeditError

TOKEN = "<hm-sushi>"
PROMPT = f"a {TOKEN} square"
FAST = inv.LearnSettings(steps=3, batch=2, lr=5e-2, init="red")


@pytest.fixture
def fresh(tiny_model_dir, tmp_path, monkeypatch):
    """A freshly loaded tiny model per test (learning adds tokens, so the shared fixture is not used)."""
    from hmedit.models.load import load

    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))
    return lambda family="sd1": load(str(tiny_model_dir(family)))


def composite(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    alpha = torch.zeros(16, 16)
    alpha[4:12, 2:10] = 1
    return image, alpha


def learn(model, token_id, image, alpha, **kw):
    kw = {"steps": 3, "batch": 2, "lr": 5e-2, **kw}
    return inv.learn_embedding(model, image, alpha, PROMPT, token_id, **kw)


def test_add_token_is_idempotent_and_starts_from_the_init_word(fresh):
    m = fresh()
    weight = m.text_encoder.get_input_embeddings().weight
    n = weight.shape[0]
    red = m.tokenizer("red", add_special_tokens=False).input_ids
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "red")
    emb = m.text_encoder.get_input_embeddings()
    assert tid == n and emb.num_embeddings == n + 1 and not emb.weight.requires_grad
    assert torch.equal(emb.weight[tid], emb.weight[red].mean(0))
    assert tid in m.tokenizer(PROMPT).input_ids
    inv.set_embedding(m.text_encoder, tid, torch.ones(emb.weight.shape[1]))
    assert inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "blue") == tid  # no second row, no re-init
    assert m.text_encoder.get_input_embeddings().weight[tid].eq(1).all() and len(m.tokenizer) == n + 1
    with pytest.raises(HmeditError, match="already a word"):
        inv.add_token(m.tokenizer, m.text_encoder, "red", None)


@pytest.mark.slow
def test_guided_learning_uses_the_negative_prompt_and_guidance_one_is_eq_1(fresh):
    m = fresh()
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "red")
    image, alpha = composite()
    start = m.text_encoder.get_input_embeddings().weight[tid].clone()
    plain = learn(m, tid, image, alpha, init=start)
    # guidance 1 fits the conditional prediction alone: the negative prompt plays no part
    assert torch.equal(learn(m, tid, image, alpha, init=start, guidance=1.0, negative="a blue circle"), plain)
    guided = learn(m, tid, image, alpha, init=start, guidance=5.0)
    assert not torch.equal(guided, plain)
    other = learn(m, tid, image, alpha, init=start, guidance=5.0, negative="a blue circle")
    assert not torch.equal(other, guided)  # the unconditional branch is the negative prompt
    assert torch.equal(learn(m, tid, image, alpha, init=start, guidance=5.0), guided)  # and reproducible


def test_guided_learning_fits_the_guided_prediction(fresh):
    """The loss of a guided step is that of u + g (c - u): computed by hand from the UNet, it matches."""
    from diffusers import DDPMScheduler

    m = fresh()
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "red")
    image, alpha = composite()
    losses: list[float] = []
    learn(
        m, tid, image, alpha, steps=1, batch=2, guidance=4.0, progress=lambda i, n, loss: losses.append(loss)
    )
    latents, weight = inv._encode_target(m, image, alpha)
    sched = DDPMScheduler.from_config(m.scheduler_config)
    gen = torch.Generator().manual_seed(inv.LearnSettings.seed)
    t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=gen)
    noise = torch.randn((2, *latents.shape[1:]), generator=gen)
    x0 = latents.expand(2, -1, -1, -1)
    noisy = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
    with torch.no_grad():
        text = m.family.text(m)
        c = text.encode_window(PROMPT)[0][None].expand(2, -1, -1)
        u = text.encode_window("")[0][None].expand(2, -1, -1)
        pc = m.unet(noisy, t, encoder_hidden_states=c).sample
        pu = m.unet(noisy, t, encoder_hidden_states=u).sample
    want = inv.masked_mse(pu + 4.0 * (pc - pu), target, weight).item()
    plain = inv.masked_mse(pc, target, weight).item()
    assert losses[0] == pytest.approx(want, rel=1e-4) and abs(want - plain) > 1e-3 * abs(want)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_only_the_new_row_changes(fresh, family, tmp_path):
    m = fresh(family)
    before = {
        name: {k: v.clone() for k, v in mod.state_dict().items()}
        for name, mod in (("text", m.text_encoder), ("unet", m.unet), ("vae", m.vae))
    }
    image, alpha = composite()
    got = inv.learn_token(m, TOKEN, image, alpha, PROMPT, FAST, cache=inv.EmbeddingCache(tmp_path))
    assert got.embedding.shape == (m.text_encoder.config.hidden_size,) and not got.cached
    after = {"text": m.text_encoder.state_dict(), "unet": m.unet.state_dict(), "vae": m.vae.state_dict()}
    for name, state in before.items():
        for k, v in state.items():
            w = after[name][k]
            if w.shape != v.shape:  # the token embedding gained the new row, the rest is bit-identical
                assert torch.equal(w[: v.shape[0]], v), k
                assert torch.equal(w[got.token_id], got.embedding)
            else:
                assert torch.equal(w, v), f"{name}.{k} changed"
    start = inv.init_vector(m.tokenizer, m.text_encoder, "red")
    assert not torch.equal(got.embedding, start)  # something was learned
    assert all(not p.requires_grad for p in m.unet.parameters())


def test_a_seed_gives_the_same_embedding(fresh):
    m = fresh()
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "red")
    image, alpha = composite()
    losses = []
    a = learn(m, tid, image, alpha, seed=1, progress=lambda i, n, loss: losses.append((i, n, loss)))
    b = learn(m, tid, image, alpha, seed=1)
    c = learn(m, tid, image, alpha, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [(i, n) for i, n, _ in losses] == [(1, 3), (2, 3), (3, 3)] and all(v > 0 for *_, v in losses)


def test_the_loss_sees_only_the_alpha(fresh, monkeypatch):
    """Eq. 1: errors where alpha = 0 count for nothing. The UNet still sees the whole composite (its context),
    so the test perturbs the prediction outside the alpha rather than the pixels."""
    m = fresh()
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN, "red")
    image, alpha = composite()
    alpha[:, 8:] = 0  # latent columns 4.. lie wholly outside the alpha
    forward, perturb = m.unet.forward, [False]

    def off_target(*args, **kwargs):
        out = forward(*args, **kwargs)
        if perturb[0]:
            out.sample = out.sample + torch.zeros_like(out.sample).index_fill(3, torch.arange(4, 8), 1e3)
        return out

    monkeypatch.setattr(m.unet, "forward", off_target)
    plain = learn(m, tid, image, alpha)
    perturb[0] = True
    assert torch.equal(learn(m, tid, image, alpha), plain)
    alpha[:, 8] = 0.5  # the control: once the alpha reaches the perturbed latents, they count
    perturb[0] = False
    plain = learn(m, tid, image, alpha)
    perturb[0] = True
    assert not torch.equal(learn(m, tid, image, alpha), plain)


def test_masked_mse_is_weighted_by_the_alpha():
    pred, target = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])[None, None]
    assert inv.masked_mse(pred, target, w).item() == 1.0
    pred[..., 1, 1] = 100
    assert inv.masked_mse(pred, target, w).item() == 1.0
    assert torch.equal(
        inv.alpha_weight(torch.ones(4, 4).tril(), (2, 2))[0, 0], torch.tensor([[0.75, 0], [1, 0.75]])
    )


def test_a_cache_hit_does_not_train(fresh, tmp_path, monkeypatch):
    cache = inv.EmbeddingCache(tmp_path / "emb")
    image, alpha = composite()
    first = inv.learn_token(fresh(), TOKEN, image, alpha, PROMPT, FAST, cache=cache)
    assert cache.path(first.key).is_file() and list(cache.path(first.key).parent.iterdir()) == [
        cache.path(first.key)
    ]

    def no_training(*a, **k):
        raise AssertionError("trained although the embedding is cached")

    monkeypatch.setattr(inv, "learn_embedding", no_training)
    m = fresh()
    again = inv.learn_token(m, TOKEN, image, alpha, PROMPT, FAST, cache=cache)
    assert again.cached and again.key == first.key and torch.equal(again.embedding, first.embedding)
    assert torch.equal(m.text_encoder.get_input_embeddings().weight[again.token_id], first.embedding)
    # anything the embedding depends on changes the key
    other = [
        inv.cache_key("other", image, alpha, PROMPT, vars(FAST)),
        inv.cache_key(m.hash, image.flip(-1), alpha, PROMPT, vars(FAST)),
        inv.cache_key(m.hash, image, alpha.T, PROMPT, vars(FAST)),
        inv.cache_key(m.hash, image, alpha, PROMPT + "!", vars(FAST)),
        inv.cache_key(m.hash, image, alpha, PROMPT, {**vars(FAST), "seed": 1}),
    ]
    assert len({first.key, *other}) == 6
    with pytest.raises(AssertionError, match="trained"):
        inv.learn_token(m, TOKEN, image, alpha, PROMPT, inv.LearnSettings(steps=4), cache=cache)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_exported_file_loads_in_plain_diffusers(fresh, tiny_model_dir, family, tmp_path):
    from diffusers import StableDiffusionPipeline

    m = fresh(family)
    image, alpha = composite()
    got = inv.learn_token(m, TOKEN, image, alpha, PROMPT, FAST, cache=inv.EmbeddingCache(tmp_path / "c"))
    path = inv.export_diffusers(tmp_path / "learned_embeds.safetensors", TOKEN, got.embedding)
    loaded = inv.load_embedding(path, dim=m.text_encoder.config.hidden_size)
    assert list(loaded) == [TOKEN] and torch.equal(loaded[TOKEN], got.embedding)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir(family), safety_checker=None)
    pipe.load_textual_inversion(str(path), token=TOKEN)
    tid = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid], got.embedding)
    ref, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    assert torch.allclose(m.family.text(m).encode_window(PROMPT)[0], ref[0], atol=1e-6)


def test_a1111_formats_load_and_install(fresh, tmp_path):
    from safetensors.torch import save_file

    m = fresh()
    d = m.text_encoder.config.hidden_size
    vecs = torch.randn(2, d)
    pt = tmp_path / "style.pt"
    param = torch.nn.Parameter(vecs.clone())
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": param}, "name": "my-style"}, pt)
    st = tmp_path / "look.safetensors"
    save_file({"emb_params": vecs[:1].clone()}, st)
    bin_ = tmp_path / "learned_embeds.bin"
    torch.save({"<b>": vecs[1:].clone()}, bin_)

    assert torch.equal(inv.load_embedding(pt, dim=d)["my-style"], vecs)
    assert torch.equal(inv.load_embedding(st, dim=d)["look"], vecs[0])  # [1, D] -> [D]
    assert torch.equal(inv.load_embedding(bin_, dim=d)["<b>"], vecs[1])

    text = inv.install_embedding(m, "<my-style>", vecs)
    assert text == "<my-style> <my-style>_1"
    ids = m.tokenizer(text, add_special_tokens=False).input_ids
    assert torch.equal(m.text_encoder.get_input_embeddings().weight[ids], vecs)


@pytest.mark.parametrize("width,family", [(768, "SD 1.x"), (1024, "SD 2.x"), (40, "40 wide")])
def test_a_wrong_width_is_a_one_line_error(tmp_path, width, family):
    path = inv.export_diffusers(tmp_path / "e.safetensors", "<x>", torch.zeros(width))
    with pytest.raises(HmeditError) as e:
        inv.load_embedding(path, dim=32)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and family in msg and "32 wide" in msg


def test_unreadable_files_and_prompts_without_the_token(fresh, tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3), "b": torch.zeros(3)}, tmp_path / "two.safetensors")
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, tmp_path / "xl.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    for name, match, dim in [
        ("two", "not a textual-inversion", None),
        ("xl", "made for SDXL", 32),
        ("junk", "cannot read", None),
    ]:
        with pytest.raises(HmeditError, match=match) as e:
            inv.load_embedding(tmp_path / (name + (".pt" if name == "junk" else ".safetensors")), dim=dim)
        assert "\n" not in str(e.value)
    (xl,) = inv.load_embedding(
        tmp_path / "xl.safetensors", dim=768 + 1280
    ).values()  # SDXL: rows concatenated
    assert xl.shape == (768 + 1280,)
    m = fresh()
    tid = inv.add_token(m.tokenizer, m.text_encoder, TOKEN)
    image, alpha = composite()
    with pytest.raises(HmeditError, match="does not contain the token"):
        inv.learn_embedding(m, image, alpha, "a square", tid, steps=1, batch=1)
    with pytest.raises(HmeditError, match="alpha is empty"):
        learn(m, tid, image, torch.zeros(16, 16))
