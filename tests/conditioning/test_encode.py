"""Per-node prompt encoding: the root exactly as diffusers, other nodes' words with owners, long prompts."""

import torch

from hmedit.conditioning.encode import encode_scene


def test_root_embeddings_equal_diffusers_encode_prompt(tiny_model):
    from diffusers import StableDiffusionPipeline

    m = tiny_model("sd1")
    pipe = StableDiffusionPipeline(**m.components(), scheduler=None)
    ref, neg = pipe.encode_prompt("a red circle", "cpu", 1, True, negative_prompt="blue")
    cond = encode_scene(m.family.text(m), ["a red circle"], ["blue"])
    assert torch.equal(cond.cond.embeds, ref[0])
    assert torch.equal(cond.uncond.embeds, neg[0])
    assert not cond.regional


def test_node_words_equal_their_positions_in_a_padded_encoding(tiny_model):
    m = tiny_model("sd1")
    text = m.family.text(m)
    full = text.encode_window("a blue square")[0]  # [77, D]
    words = text.encode_words("a blue square")  # 3 words + end token
    assert words.shape[0] == 4
    assert torch.allclose(words, full[1:5], atol=1e-5)


def test_owners_ranges_and_branch_padding(tiny_model):
    m = tiny_model("sd1")
    c = encode_scene(m.family.text(m), ["a red circle", "a blue square", "", "green"], ["", "", "a star", ""])
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


def test_long_prompts_are_chunked_into_plain_windows(tiny_model):
    """A prompt of 100 tokens is two 75-token windows, each encoded as diffusers encodes a prompt of its
    words alone (start token, words, end token, padding); a node's words likewise, without start/padding."""
    m = tiny_model("sd1")
    tok, text = m.tokenizer, m.family.text(m)
    assert len(tok("red", add_special_tokens=False).input_ids) == 1  # one token a word
    long, first, rest = (" ".join(["red"] * n) for n in (100, 75, 25))

    def window(t: str):
        return text.encode_window(t)[0]

    e = window(long)
    assert e.shape[0] == 2 * 77
    torch.testing.assert_close(e[:77], window(first), rtol=0, atol=1e-6)
    torch.testing.assert_close(e[77:], window(rest), rtol=0, atol=1e-6)
    w = text.encode_words(long)
    assert w.shape[0] == 100 + 2  # two chunks, each with its end token
    torch.testing.assert_close(w[:76], window(first)[1:77], rtol=0, atol=1e-5)
    torch.testing.assert_close(w[76:], window(rest)[1:27], rtol=0, atol=1e-5)

    c = encode_scene(m.family.text(m), [long, long], ["", ""])
    assert len(c.cond) == 2 * 77 + 102 and c.ranges == {1: (154, 256)}
    assert c.cond.owner[:154].eq(-1).all() and c.cond.owner[154:].eq(1).all()
    torch.testing.assert_close(c.cond.embeds[:154], e, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.cond.embeds[154:], w, rtol=0, atol=1e-6)
    assert c.root_words == 75  # influence maps count the root's words of the first window
    rec = c.record_owner()
    assert rec[0] == -1 and rec[1:76].eq(0).all() and rec[76:154].eq(-1).all() and rec[154:].eq(1).all()
