"""`hmedit learn` and learned tokens in `hmedit render`, end to end on a tiny random model: learn, cache hit,
--force, --export, render with the token (provenance, up-to-date key), embedding files, one-line errors."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from PIL import Image

import hmedit.conditioning.textual_inversion as inv
from hmedit.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "hmcache"))


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code or 0


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


LEARN = "{steps: 2, batch: 2}"


@pytest.fixture
def scene(learn_scene):
    return learn_scene(LEARN, name="teal.yaml")


@pytest.mark.slow
def test_learn_caches_and_exports(scene, tiny, tmp_path, trainings, capsys):
    cache = tmp_path / "tokens"
    assert run("learn", scene, "--model", tiny, "--cache-dir", cache, "--device", "cpu") == 0
    out = capsys.readouterr().out
    assert trainings == [1] and "learned" in out and "1 token: 1 learned, 0 cached, 0 loaded" in out
    files = list(cache.glob("*/learned_embeds.safetensors"))
    assert len(files) == 1 and str(files[0]) in out and "<hm-sq-" in out

    export = tmp_path / "export"
    assert run("learn", scene, "--model", tiny, "--cache-dir", cache, "--export", export) == 0
    out = capsys.readouterr().out
    assert trainings == [1] and "1 token: 0 learned, 1 cached, 0 loaded" in out
    exported = export / "teal" / "sq.safetensors"
    assert exported.is_file()
    assert torch.equal(
        next(iter(inv.load_embedding(exported).values())), inv.EmbeddingCache(cache).get(files[0].parent.name)
    )

    assert run("learn", scene, "--model", tiny, "--cache-dir", cache, "--force") == 0
    assert trainings == [1, 1] and "1 learned" in capsys.readouterr().out


def test_render_learns_missing_tokens_then_reuses_them(scene, tiny, tmp_path, trainings, capsys):
    out_dir, cache = tmp_path / "out", tmp_path / "tokens"
    args = ("render", scene, "--model", tiny, "--out", out_dir, "--cache-dir", cache)
    assert run(*args) == 0 and trainings == [1]
    rec = json.loads((out_dir / "teal" / "render.json").read_text())
    emb = rec["embeddings"]["sq"]
    assert emb["source"] == "learned" and emb["settings"]["steps"] == 2 and emb["token"].startswith("<hm-sq-")
    assert emb["cache_file"] == str(cache / emb["key"] / "learned_embeds.safetensors")
    assert rec["timings"]["tokens"] > 0
    assert rec["scene"]["spec"]["root"]["children"][0]["prompt"] == "a square"  # the scene as written

    # rendered again (--force): the token comes from the cache, and the image is the same
    first = (out_dir / "teal" / "image.png").read_bytes()
    assert run(*args, "--force") == 0 and trainings == [1]
    rec = json.loads((out_dir / "teal" / "render.json").read_text())
    assert rec["embeddings"]["sq"]["source"] == "cached" and rec["embeddings"]["sq"]["key"] == emb["key"]
    assert (out_dir / "teal" / "image.png").read_bytes() == first

    # hmedit learn finds it in the same cache
    capsys.readouterr()
    assert run("learn", scene, "--model", tiny, "--cache-dir", cache) == 0 and trainings == [1]
    assert "1 cached" in capsys.readouterr().out


def test_embedding_file_renders_and_is_part_of_the_up_to_date_key(tmp_path, tiny, capsys):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "style.safetensors")
    scene = write(
        tmp_path,
        "styled.yaml",
        """
        size: [64, 64]
        steps: 2
        root:
          prompt: a background
          children:
            - {id: a, prompt: a square, mask: {rect: [0, 0, 0.5, 0.5]}, embedding: style.safetensors}
        """,
    )
    out_dir = tmp_path / "out"
    assert run("render", scene, "--model", tiny, "--out", out_dir) == 0
    rec = json.loads((out_dir / "styled" / "render.json").read_text())
    assert rec["embeddings"]["a"]["source"] == "file" and rec["embeddings"]["a"]["vectors"] == 2
    assert rec["assets"]["root.children[0].embedding"]["sha256"] == rec["embeddings"]["a"]["sha256"]
    capsys.readouterr()
    assert run("render", scene, "--model", tiny, "--out", out_dir) == 0
    assert "skipped (up to date)" in capsys.readouterr().out
    save_file({"emb_params": torch.randn(2, 32)}, tmp_path / "style.safetensors")
    assert run("render", scene, "--model", tiny, "--out", out_dir) == 0
    assert "1 rendered" in capsys.readouterr().out

    assert run("learn", scene, "--model", tiny) == 0
    assert "1 token: 0 learned, 0 cached, 1 loaded" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(tmp_path, scene, tiny, capsys):
    inv.export_diffusers(tmp_path / "wide.safetensors", "<w>", torch.zeros(1024))
    wide = write(
        tmp_path,
        "wide.yaml",
        """
        root:
          prompt: x
          children:
            - {id: a, mask: {rect: [0, 0, 1, 1]}, embedding: wide.safetensors}
        """,
    )
    nolayer = write(
        tmp_path,
        "nolayer.yaml",
        "root:\n  prompt: x\n  children:\n    - {id: a, mask: {rect: [0, 0, 1, 1]}, learn: true}\n",
    )
    missing = write(
        tmp_path,
        "missing.yaml",
        "root:\n  prompt: x\n  children:\n    - {id: a, mask: {rect: [0, 0, 1, 1]}, embedding: no.pt}\n",
    )
    plain = write(tmp_path, "plain.yaml", "root: {prompt: x}\n")
    for command in ("learn", "render"):
        extra = ("--out", tmp_path / "out") if command == "render" else ()
        code = run(command, wide, nolayer, missing, plain, scene, "--model", tiny, *extra)
        assert code == 2
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("error:")]
        assert len(lines) == 3, lines
        by_file = {
            name: [ln for ln in lines if f"{tmp_path / name}.yaml:4:" in ln]
            for name in ("wide", "nolayer", "missing")
        }
        by_file = {k: v[0] for k, v in by_file.items() if len(v) == 1}
        assert len(by_file) == 3, lines
        assert "1024 wide, made for SD 2.x" in by_file["wide"] and "wide.safetensors" in by_file["wide"]
        assert "learn needs a layer" in by_file["nolayer"]
        assert "file not found: no.pt" in by_file["missing"]


@pytest.mark.slow
def test_a_tiled_render_learns_at_native_size(tmp_path, tiny, trainings, learn_scene):
    """A render above the model's native size is tiled; the token is still learned on a native-size crop."""
    scene = learn_scene(
        LEARN,
        edit=lambda t: t.replace("size: [64, 64]", "size: [192, 192]\ntiling: on"),
        layer_size=(40, 40),
        colour=(128, 128, 0),
        bg_size=(192, 192),
        name="big.yaml",
    )
    out_dir = tmp_path / "out"
    assert run("render", scene, "--model", tiny, "--out", out_dir, "--cache-dir", tmp_path / "c") == 0
    rec = json.loads((out_dir / "big" / "render.json").read_text())
    emb = rec["embeddings"]["sq"]
    assert trainings == [1] and emb["source"] == "learned"
    assert emb["learn_size"] == [rec["model"]["native_size"]] * 2 and rec["model"]["native_size"] < 192
    native = rec["model"]["native_size"]
    x = 48 + 20 - native // 2  # the 40 px layer at 48 px, centred in a native-size window
    assert emb["crop"] == [x, x, native, native]
    with Image.open(out_dir / "big" / "image.png") as img:
        assert img.size == (192, 192)
