"""A scene's per-node tokens (hmedit.conditioning.tokens) on tiny random SD1/SD2 models: what a node learns
from (the composite of layers 1..i, cropped around the node at native size), learn -> cache hit without
training -> export -> plain diffusers, embedding files in both formats, one-line errors, and renders of other
scenes unchanged by another scene's tokens."""

from __future__ import annotations

import textwrap
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from hmedit.conditioning import textual_inversion as inv
from hmedit.conditioning import tokens as T
from hmedit.errors import HmeditError
from hmedit.scene import LearnSpec, load_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fresh(tiny_model_dir, tmp_path, monkeypatch):
    """A freshly loaded tiny model per call (tokens are added to it)."""
    from hmedit.models.load import load

    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "hmcache"))
    return lambda family="sd1": load(str(tiny_model_dir(family)), device="cpu")


TEAL = (30, 140, 140)  # the colour of conftest's learn_scene layer


def solid(path, size, colour, mode="RGB"):
    Image.new(mode, size, colour).save(path)
    return path


def test_learn_keys_default_to_the_learn_settings():
    assert T.learn_settings(LearnSpec()) == inv.LearnSettings()
    spec = LearnSpec(steps=7, lr=0.5, init="square", batch=3)
    assert asdict(T.learn_settings(spec)) == {
        "steps": 7,
        "lr": 0.5,
        "batch": 3,
        "init": "square",
        "seed": 0,
        "guidance": 1.0,
        "negative": "",
    }


def test_tokens_learn_under_the_scene_guidance_unless_the_learn_key_says():
    got = T.learn_settings(LearnSpec(), guidance=7.5, negative="a red square")
    assert (got.guidance, got.negative) == (7.5, "a red square")
    got = T.learn_settings(LearnSpec(guidance=3), guidance=7.5, negative="blur")
    assert (got.guidance, got.negative) == (3.0, "blur")
    for g in (1.0, 0.5, 0.0):  # no classifier-free guidance at render time: eq. 1 as written, no negative
        got = T.learn_settings(LearnSpec(), guidance=g, negative="blur")
        assert (got.guidance, got.negative) == (1.0, "")


def test_the_node_learns_from_its_crop_of_the_composite_at_native_size(learn_scene):
    path = learn_scene()
    scene = load_scene(path)
    flat = scene.flat()[1]
    image, alpha, crop = T.learn_source(scene, flat, native=16, multiple=4)
    # the layer covers [16, 48) of a 64 px frame; the window is 32 * 1.25 = 40 px, centred on it
    assert crop == [12, 12, 40, 40]
    assert image.shape == (1, 3, 16, 16) and alpha.shape == (16, 16)
    assert alpha[6:10, 6:10].min() > 0.999 and alpha[0, 0] == 0 and alpha[-1, -1] == 0
    rgb = (image[0].permute(1, 2, 0) + 1) / 2 * 255
    assert torch.allclose(rgb[8, 8], torch.tensor(TEAL, dtype=torch.float32), atol=1)
    assert torch.allclose(rgb[0, 0], torch.tensor([245.0] * 3), atol=1)  # context: the init image


def test_layers_after_the_node_are_not_in_its_composite_and_earlier_ones_are(learn_scene, write_png):
    top = (
        "\n    - id: top\n      prompt: a red square\n      layer: red.png\n      at: [0.25, 0.25]"
        "\n      learn: true"
    )
    path = learn_scene(edit=lambda text: text.rstrip("\n") + top + "\n")
    write_png("red.png", "RGBA", (16, 16), (220, 40, 40, 255))
    scene = load_scene(path)
    sq, top = scene.flat()[1:]
    image, _, _ = T.learn_source(scene, sq, native=40, multiple=4)
    assert image[0, 0].mul(127.5).add(127.5)[16, 16].round() == TEAL[0]  # the red layer is not there yet
    image, alpha, crop = T.learn_source(scene, top, native=20, multiple=4)
    assert crop == [14, 14, 20, 20]  # 16 px layer at 16 px: a 20 px window, clipped nowhere
    rgb = image[0].permute(1, 2, 0).add(1).mul(127.5)
    assert rgb[10, 10].round().tolist() == [220, 40, 40] and rgb[18, 18].round().tolist() == list(TEAL)
    assert rgb[1, 1].round().tolist() == [245] * 3


def test_a_small_layer_keeps_its_scale_up_to_the_native_size(learn_scene):
    path = learn_scene()
    scene = load_scene(path)
    image, alpha, crop = T.learn_source(scene, scene.flat()[1], native=48, multiple=4)
    assert crop == [8, 8, 48, 48] and image.shape == (1, 3, 48, 48)  # cropped, not resized
    image, alpha, crop = T.learn_source(scene, scene.flat()[1], native=128, multiple=4)
    assert crop == [0, 0, 64, 64] and image.shape == (1, 3, 128, 128)  # a frame below native: upscaled


def test_a_wide_frame_gives_a_window_of_its_height_resized_to_multiples(learn_scene):
    path = learn_scene(
        edit=lambda t: t.replace("size: [64, 64]", "size: [128, 64]").replace(
            "at: [0.25, 0.25]", "at: [0.125, 0]"
        ),
        layer_size=(96, 48),
    )
    scene = load_scene(path)
    image, alpha, crop = T.learn_source(scene, scene.flat()[1], native=32, multiple=8)
    assert crop == [4, 0, 120, 64]  # 96 * 1.25 = 120 wide, clipped to the frame's 64 px height
    assert image.shape == (1, 3, 16, 32) and alpha.shape == (16, 32)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_learn_then_cache_hit_then_export_to_plain_diffusers(
    fresh, tiny_model_dir, family, tmp_path, learn_scene, trainings
):
    from diffusers import StableDiffusionPipeline

    scene = load_scene(learn_scene())
    steps: list[tuple] = []
    m = fresh(family)
    first = T.install_tokens(scene, m, cache_dir=tmp_path / "c", progress=lambda *a: steps.append(a))
    tok = first.tokens["sq"]
    assert trainings == [1] and tok.source == "learned" and tok.loss is not None and tok.seconds > 0
    assert [(s[0], s[1], s[2]) for s in steps] == [("sq", i, 3) for i in range(4)] and steps[0][3] is None
    assert tok.text.startswith("<hm-sq-") and tok.text == f"<hm-sq-{tok.key[:8]}>"
    assert first.prompts == {"sq": f"{tok.text} a square"}
    assert tok.path == tmp_path / "c" / tok.key / "learned_embeds.safetensors" and tok.path.is_file()
    assert tok.learn_size == [m.native_size] * 2
    side = min(max(40, m.native_size), 64)  # 32 px * 1.25, at least the native size, within the frame
    assert tok.crop == [(64 - side) // 2] * 2 + [side] * 2
    rewritten = first.apply(scene)
    assert rewritten.node("sq").prompt == f"{tok.text} a square" and scene.node("sq").prompt == "a square"
    assert rewritten.source == scene.source and rewritten.node("sq").layer == scene.node("sq").layer
    tid = m.tokenizer.convert_tokens_to_ids(tok.text)
    assert torch.equal(m.text_encoder.get_input_embeddings().weight[tid], tok.vector)
    described = first.describe()["sq"]
    assert described["key"] == tok.key and described["settings"]["steps"] == 3
    assert described["source"] == "learned" and described["field"] == "root.children[0].learn"

    # a second run, on a freshly loaded model, takes the token from the cache: no training
    m2 = fresh(family)
    again = T.install_tokens(scene, m2, cache_dir=tmp_path / "c", progress=lambda *a: steps.append(a))
    assert trainings == [1] and len(steps) == 4
    assert again.tokens["sq"].source == "cached" and again.prompts == first.prompts
    assert torch.equal(again.tokens["sq"].vector, tok.vector)
    assert "seconds" not in again.describe()["sq"]

    # --force learns again, and a fixed seed gives the same embedding
    forced = T.install_tokens(scene, fresh(family), cache_dir=tmp_path / "c", force=True)
    assert trainings == [1, 1] and forced.tokens["sq"].source == "learned"
    assert torch.equal(forced.tokens["sq"].vector, tok.vector)

    # the cached file is diffusers' format: plain diffusers loads it under any token
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir(family), safety_checker=None)
    pipe.load_textual_inversion(str(tok.path), token="<teal-square>")
    row = pipe.text_encoder.get_input_embeddings().weight[
        pipe.tokenizer.convert_tokens_to_ids("<teal-square>")
    ]
    assert torch.equal(row, tok.vector)


@pytest.mark.slow
def test_other_nodes_and_settings_change_the_key(fresh, tmp_path, learn_scene):
    path = learn_scene()
    m = fresh()
    base = T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c").tokens["sq"]
    text = path.read_text()
    variants = {
        "prompt": text.replace("prompt: a square", "prompt: a box"),
        "steps": text.replace("steps: 3,", "steps: 2,"),
        "place": text.replace("at: [0.25, 0.25]", "at: [0.3, 0.25]"),
        "init": text.replace("init: square", "init: circle"),
    }
    keys = {base.key}
    for changed in variants.values():
        path.write_text(changed)
        keys.add(T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c").tokens["sq"].key)
    assert len(keys) == 1 + len(variants)
    # the render's steps and seed do not
    path.write_text(text.replace("steps: 2\n", "steps: 9\nseed: 4\n", 1))
    assert T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c").tokens["sq"].key == base.key


def test_embedding_files_in_both_formats(fresh, tmp_path):
    from safetensors.torch import save_file

    m = fresh("sd2")
    d = m.text_encoder.config.hidden_size
    vecs = torch.randn(2, d, generator=torch.Generator().manual_seed(0))
    inv.export_diffusers(tmp_path / "learned_embeds.safetensors", "<teal>", vecs[0])
    torch.save(
        {"string_to_param": {"*": torch.nn.Parameter(vecs.clone())}, "name": "two"}, tmp_path / "two.pt"
    )
    save_file({"emb_params": vecs[1:].clone()}, tmp_path / "one.safetensors")
    text = """
    root:
      prompt: a background
      embedding: two.pt
      children:
        - {id: a, prompt: a square, mask: {rect: [0, 0, 0.5, 0.5]}, embedding: learned_embeds.safetensors}
        - {id: b, prompt: "", mask: {rect: [0.5, 0, 0.5, 0.5]}, embedding: one.safetensors}
    """
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    got = T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c")
    weight = m.text_encoder.get_input_embeddings().weight
    for node, expected in (("root", vecs), ("a", vecs[:1]), ("b", vecs[1:])):
        tok = got.tokens[node]
        assert tok.source == "file" and tok.vectors == expected.shape[0]
        ids = m.tokenizer(tok.text, add_special_tokens=False).input_ids
        assert len(ids) == expected.shape[0] and torch.equal(weight[ids], expected)
        assert got.describe()[node]["sha256"] == tok.sha256 and len(tok.sha256) == 64
    assert got.prompts["root"].endswith(" a background") and " " in got.tokens["root"].text
    assert got.prompts["b"] == got.tokens["b"].text  # an empty prompt is just the token
    assert not (tmp_path / "c").exists()  # files are not cached


def test_bad_inputs_are_one_line_errors_at_the_field(fresh, tmp_path, learn_scene):
    m = fresh()
    inv.export_diffusers(tmp_path / "wide.safetensors", "<w>", torch.zeros(768))
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    for name, match in (("wide.safetensors", "768 wide, made for SD 1.x"), ("junk.pt", "cannot read")):
        path = tmp_path / "s.yaml"
        path.write_text(
            "root:\n  prompt: x\n  children:\n"
            f"    - {{id: a, mask: {{rect: [0, 0, 1, 1]}}, embedding: {name}}}\n"
        )
        with pytest.raises(HmeditError, match=match) as e:
            T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c")
        msg = e.value.format()
        assert "\n" not in msg and msg.startswith(f"{path}:4:") and "root.children[0].embedding" in msg
        assert name in msg

    # an init word the tokenizer has no tokens for; a layer wholly outside the frame
    path = learn_scene(edit=lambda t: t.replace("init: square", 'init: " "'))
    with pytest.raises(HmeditError, match="has no tokens") as e:
        T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c")
    assert "root.children[0].learn" in e.value.format() and "\n" not in e.value.format()
    path = learn_scene(edit=lambda t: t.replace("at: [0.25, 0.25]", "at: [2, 2]"))
    with pytest.raises(HmeditError, match="region is empty") as e:
        T.install_tokens(load_scene(path), m, cache_dir=tmp_path / "c")
    assert "root.children[0].layer" in e.value.format()


@pytest.mark.slow
def test_another_scenes_tokens_leave_a_render_byte_identical(fresh, tmp_path, learn_scene):
    """Tokens of one scene stay in the loaded model; a scene without them renders exactly as before."""
    from hmedit.pipeline import Settings, render

    plain_path = tmp_path / "plain.yaml"
    plain_path.write_text(
        "size: [64, 64]\nsteps: 2\nroot:\n  prompt: a red square on a blue background\n  children:\n"
        "    - {id: sq, prompt: a square, mask: {rect: [0.2, 0.2, 0.5, 0.5]}}\n"
    )
    plain = load_scene(plain_path)
    m = fresh()
    before = render(plain, m, Settings.of(plain, m, 3)).image
    n = m.text_encoder.get_input_embeddings().num_embeddings
    learned = load_scene(learn_scene())
    tokens = T.install_tokens(learned, m, cache_dir=tmp_path / "c")
    assert m.text_encoder.get_input_embeddings().num_embeddings == n + 1
    after = render(plain, m, Settings.of(plain, m, 3)).image
    assert np.array_equal(before, after)
    # and the learned scene renders with its token
    out = render(tokens.apply(learned), m, Settings.of(learned, m, 0))
    assert out.image.shape == (64, 64, 3)
