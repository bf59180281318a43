"""Per-node prompt encoding: the root exactly as diffusers, other nodes' words with owners, long prompts."""

import torch

from hmedit.conditioning.encode import encode_scene, encode_text, encode_words


def test_root_embeddings_equal_diffusers_encode_prompt(tiny_model):
    from diffusers import StableDiffusionPipeline

    m = tiny_model("sd1")
    pipe = StableDiffusionPipeline(**m.components(), scheduler=None)
    ref, neg = pipe.encode_prompt("a red circle", "cpu", 1, True, negative_prompt="blue")
    cond = encode_scene(m.tokenizer, m.text_encoder, ["a red circle"], ["blue"])
    assert torch.equal(cond.cond.embeds, ref[0])
    assert torch.equal(cond.uncond.embeds, neg[0])
    assert not cond.regional


def test_node_words_equal_their_positions_in_a_padded_encoding(tiny_model):
    m = tiny_model("sd1")
    full = encode_text(m.tokenizer, m.text_encoder, "a blue square")  # [77, D]
    words = encode_words(m.tokenizer, m.text_encoder, "a blue square")  # 3 words + end token
    assert words.shape[0] == 4
    assert torch.allclose(words, full[1:5], atol=1e-5)


def test_owners_ranges_and_branch_padding(tiny_model):
    m = tiny_model("sd1")
    c = encode_scene(
        m.tokenizer, m.text_encoder, ["a red circle", "a blue square", "", "green"], ["", "", "a star", ""]
    )
    assert len(c.cond) == 77 + 4 + 2 and c.ranges == {1: (77, 81), 3: (81, 83)}
    assert (
        c.cond.owner[:77].eq(-1).all() and c.cond.owner[77:81].eq(1).all() and c.cond.owner[81:].eq(3).all()
    )
    assert len(c.uncond) == 77 + 3 and c.uncond.owner[77:].eq(2).all()
    embeds, owners, valid = c.batch()
    assert embeds.shape[:2] == (2, 83)
    assert valid[0].sum() == 80 and valid[1].all() and owners[0, 80:].eq(-1).all()
    rec = c.record_owner()
    assert rec[1:4].eq(0).all() and rec[0] == -1 and rec[4:77].eq(-1).all() and rec[77:81].eq(1).all()


def test_long_root_prompt_is_chunked(tiny_model):
    m = tiny_model("sd1")
    long = " ".join(["red"] * 100)
    e = encode_text(m.tokenizer, m.text_encoder, long)
    assert e.shape[0] == 2 * 77
    w = encode_words(m.tokenizer, m.text_encoder, long)
    assert w.shape[0] == 100 + 2  # two chunks, each with its end token
