"""hmedit.outputs.a1111: the ``parameters`` PNG chunk, read back by a parser that follows AUTOMATIC1111's
``parse_generation_parameters`` (modules/infotext_utils.py) rule by rule."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from hmedit.outputs.a1111 import SAMPLERS, parameters, quote, sampler_name
from hmedit.scene.load import load_scene, load_text
from hmedit.scene.spec import SCHEDULERS

# A1111's patterns: a "key: value" field of the last line (a value is a JSON-quoted string or anything up to
# the next comma), and an image size.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:  # A1111 keeps what it cannot decode
        return text


def parse_generation_parameters(x: str) -> dict[str, str]:
    """A1111's reader: lines up to "Negative prompt:" are the prompt, the rest up to the last line the
    negative prompt; the last line holds the fields if at least 3 match; sizes split into key-1 / key-2."""
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"] = m.group(1)
            res[f"{k}-2"] = m.group(2)
        else:
            res[k] = v
    return res


TRICKY = r"""
name: tricky
size: [96, 64]
init_image: bg.png
root:
  prompt: "a garden, at dusk: \"warm\" light\nsecond line with a \\ backslash"
  negative: "blurry, low quality\nsecond: line"
  noise: 0.6
  children:
    - id: pond
      prompt: 'a pond: still, deep'
      negative: ripples, waves
      mask: {rect: [0.1, 0.1, 0.4, 0.4]}
      children:
        - id: duck.1
          prompt: "a duck “quack”, ünïcode"
          mask: {rect: [0.2, 0.2, 0.1, 0.1]}
    - id: tree
      prompt: ""
      mask: {rect: [0.6, 0.1, 0.3, 0.3]}
"""


def settings(**kw):
    base = dict(seed=12345, steps=20, guidance=7.5, scheduler="euler_a", width=96, height=64, tiling=None)
    return SimpleNamespace(**{**base, **kw})


def test_every_field_round_trips_through_the_a1111_parser(write_scene, write_png):
    write_png("bg.png", "RGB", (96, 64))
    scene = load_scene(write_scene(TRICKY, "tricky.yaml"))
    tiling = SimpleNamespace(tile=48, overlap=16)
    text = parameters(
        scene,
        settings(tiling=tiling),
        model_name="my/model:v1",
        model_hash="0123456789abcdef",
        version="0.1.0",
    )
    got = parse_generation_parameters(text)
    assert got == {
        "Prompt": 'a garden, at dusk: "warm" light\nsecond line with a \\ backslash',
        "Negative prompt": "blurry, low quality\nsecond: line",
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7.5",
        "Seed": "12345",
        "Size-1": "96",
        "Size-2": "64",
        "Model hash": "0123456789",
        "Model": "my/model:v1",
        "Denoising strength": "0.6",
        "Tiled": "tile 48, overlap 16",
        "Region 1": "pond: a pond: still, deep",
        "Region 1 negative": "ripples, waves",
        "Region 2": "pond/duck.1: a duck “quack”, ünïcode",
        "Region 3": "tree: ",
        "Scene": "tricky",
        "Version": "hmedit 0.1.0",
    }


def test_plain_prompt_without_negative():
    scene = load_text("root: {prompt: a red ring}\n")
    text = parameters(
        scene, settings(scheduler="ddim", guidance=7.0, tiling=None), model_name="toy", model_hash="ab"
    )
    assert text.splitlines()[0] == "a red ring" and "Negative prompt" not in text
    got = parse_generation_parameters(text)
    assert got["Prompt"] == "a red ring" and got["Negative prompt"] == ""
    assert (got["Sampler"], got["CFG scale"], got["Model hash"], got["Model"]) == ("DDIM", "7", "ab", "toy")
    assert "Region 1" not in got and "Denoising strength" not in got and "Tiled" not in got


def test_samplers_and_quoting():
    assert set(SAMPLERS) == set(SCHEDULERS)  # every hmedit scheduler has an A1111 name
    assert [sampler_name(s) for s in ("ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "unipc")] == [
        "DDIM",
        "Euler",
        "Euler a",
        "DPM++ 2M",
        "PLMS",
        "UniPC",
    ]
    assert sampler_name("new_one") == "new_one"
    assert quote("plain words") == "plain words"
    for value in ("a, b", "a: b", "two\nlines", '"quoted"'):
        assert quote(value).startswith('"') and unquote(quote(value)) == value


@pytest.mark.slow
def test_rendered_pngs_carry_parameters_that_match_the_render(checked):
    from PIL import Image

    for name, seeds in (("two_seeds", (3, 4)), ("tiled", (7,))):
        folder = checked.out / name
        record = json.loads((folder / "render.json").read_text())
        spec = record["scene"]["spec"]
        for s in record["settings"]:
            image = "image.png" if len(seeds) == 1 else f"image-{s['seed']}.png"
            with Image.open(folder / image) as img:
                text = img.text["parameters"]
                assert "hmedit:scene" in img.text  # hmedit's own keys stay
            got = parse_generation_parameters(text)
            assert (
                got["Prompt"] == spec["root"]["prompt"] and got["Negative prompt"] == spec["root"]["negative"]
            )
            assert int(got["Seed"]) == s["seed"] and int(got["Steps"]) == s["steps"]
            assert float(got["CFG scale"]) == s["guidance"] and got["Sampler"] == SAMPLERS[s["scheduler"]]
            assert (int(got["Size-1"]), int(got["Size-2"])) == (s["width"], s["height"])
            assert (
                got["Model hash"] == record["model"]["hash"][:10] and got["Model"] == record["model"]["name"]
            )
            assert ("Tiled" in got) == (s["tiling"] is not None)
            children = spec["root"]["children"]
            assert got["Region 1"] == f"{children[0]['id']}: {children[0]['prompt']}"
    assert "Tiled" in got  # the tiled scene was tiled (96x64 on a 64 px model)
    assert got["Region 2"] == "sun/spot.1: a red spot"
