"""Hostile and careless scene input (issue 13, items 1, 3, 4, 5, 6, 11, 12): every case ends in seconds with
exit 2 and one line naming the problem (or exit 0 where the input is legal), no traceback, bounded memory."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.masks.checks import validate  # what hmedit validate runs: the format, inputs and masks
from hmedit.scene import load_scene
from hmedit.scene.limits import check_render_size, limit
from tests.hostile.helpers import MAX_RSS, assert_clean, run_child, run_cli, write

ROOT = "root:\n  prompt: a cat\n"
CHILD = "  children:\n    - id: a\n      mask: {rect: [0.25, 0.25, 0.5, 0.5]}\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The billion-laughs shape: each anchor lists ``width`` aliases of the previous one (360 bytes)."""
    lines = ["a: &a [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * width) + "]")
    return "\n".join(lines) + "\n" + ROOT


def nested_children(depth: int) -> str:
    lines, indent = [ROOT.rstrip("\n")], "  "
    for i in range(depth):
        lines += [f"{indent}children:", f"{indent}  - id: n{i}", f"{indent}    mask: {{rect: [0, 0, 1, 1]}}"]
        indent += "    "
    return "\n".join(lines) + "\n"


def one_error(path: Path) -> str:
    scene, diags = validate(path)
    assert scene is None and len(diags.errors) == 1, [e.format() for e in diags.errors]
    return diags.errors[0].format()


# ------------------------------------------------------------------------------------------------------
# Item 1: aliases


@pytest.mark.parametrize(
    "text",
    [
        alias_bomb(),
        alias_bomb(levels=20, width=2),  # deep and narrow
        alias_bomb(levels=4, width=200),  # shallow and wide
        # mappings instead of lists, merge keys
        "a: &a {k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1}\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} {{" + ", ".join(f"k{j}: *{chr(97 + i)}" for j in range(8)) + "}\n"
            for i in range(8)
        )
        + ROOT,
        # the bomb hidden inside a scene key
        "x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"x{i}: &x{i} [{', '.join(['*x' if i == 0 else f'*x{i - 1}'] * 10)}]\n" for i in range(7))
        + "root: {prompt: *x6}\n",
    ],
    ids=["nine-by-nine", "deep-narrow", "shallow-wide", "mappings", "in-a-key"],
)
def test_alias_bombs_are_refused_fast(tmp_path, text):
    path = write(tmp_path / "bomb.yaml", text)
    start = time.perf_counter()
    message = one_error(path)
    assert time.perf_counter() - start < 2
    assert "expands to more than" in message and "alias" in message and "HMEDIT_MAX_YAML_VALUES" in message


def test_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path / "loop.yaml", "a: &a [1, *a]\n" + ROOT)
    assert "inside its own anchor &a" in one_error(path)


def test_a_few_aliases_are_fine(tmp_path):
    text = (
        "attention: &w {pos: 1.2, neg: 1.0}\n"
        "root:\n  prompt: a cat\n  children:\n"
        "    - id: a\n      mask: &m {rect: [0.25, 0.25, 0.5, 0.5]}\n      attention: *w\n"
        "    - id: b\n      mask: *m\n      attention: {<<: *w, neg: 2}\n"
    )
    scene = load_scene(write(tmp_path / "ok.yaml", text))
    assert scene.root.children[1].attention.neg == 2 and scene.root.children[1].attention.pos == 1.2


# ------------------------------------------------------------------------------------------------------
# Item 3 and 11: numeric bounds, the memory plan


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("size: [100000, 512]", "size must be <= 65536"),
        ("size: [40000, 40000]", "HMEDIT_MAX_PIXELS"),
        ("size: [8192, 8192]\ntiling: off", "HMEDIT_MAX_UNTILED_PIXELS"),
        ("guidance: 1e6", "guidance must be <= 100 (got 1e+06)"),
        ("guidance: .inf", "expected a finite number"),
        ("guidance: .nan", "expected a finite number"),
        ("steps: 1e3", "write 1000, without a decimal point or exponent"),
        ("attention: {pos: 1e300}", "pos must be <= 10"),
        ("depth_gamma: 1e-400", "depth_gamma must be > 0"),
        ("tiling: {tile: 100000}", "tile must be <= 1024"),
    ],
)
def test_scene_numbers_are_bounded(tmp_path, line, expected):
    message = one_error(write(tmp_path / "n.yaml", f"{line}\n{ROOT}"))
    assert expected in message


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("feather: 1e7", "feather must be <= 1000"),
        ("feather: 1e300", "feather must be <= 1000"),
        ("strength: 1e9", "strength must be <= 10"),
        ("noise: 2e0", "noise must be <= 1"),
    ],
)
def test_node_numbers_are_bounded(tmp_path, key, expected):
    message = one_error(write(tmp_path / "n.yaml", f"size: [64, 64]\n{ROOT}{CHILD}      {key}\n"))
    assert expected in message


@pytest.mark.parametrize(
    "mask",
    ["{rect: [0, 0, 1e300, 1]}", "{ellipse: [-1e9, 0, 1, 1]}", "{polygon: [[0, 0], [1, 0], [0, 1e20]]}"],
)
def test_coordinates_are_bounded(tmp_path, mask):
    text = f"size: [64, 64]\n{ROOT}  children:\n    - id: a\n      mask: {mask}\n"
    assert "coordinates are fractions of the image, -10 to 10" in one_error(write(tmp_path / "c.yaml", text))


def test_exponent_numbers_are_numbers(tmp_path):
    scene = load_scene(write(tmp_path / "e.yaml", f"guidance: 5e0\ndepth_gamma: 8E-1\n{ROOT}"))
    assert scene.guidance == 5.0 and scene.depth_gamma == 0.8


def test_text_where_a_number_belongs_says_what_to_write(tmp_path):
    assert "without quotes" in one_error(write(tmp_path / "q.yaml", f'guidance: "7.5"\n{ROOT}'))
    assert "without quotes" not in one_error(write(tmp_path / "w.yaml", f"guidance: lots\n{ROOT}"))


def test_render_memory_plan():
    check_render_size(8192, 8192, 13, tiled=True)
    check_render_size(2048, 2048, 256, tiled=False)
    with pytest.raises(HmeditError, match="HMEDIT_MAX_PIXELS=1600000000"):
        check_render_size(40000, 40000, 1, tiled=True)
    with pytest.raises(HmeditError, match="need 24576 MiB.*HMEDIT_MAX_MAP_MIB"):
        check_render_size(8192, 8192, 32, tiled=True)


def test_limits_are_raised_by_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path / "big.yaml", f"size: [16384, 8192]\n{ROOT}")
    assert "HMEDIT_MAX_PIXELS" in one_error(path)
    monkeypatch.setenv("HMEDIT_MAX_PIXELS", str(16384 * 8192))
    assert limit("MAX_PIXELS") == 16384 * 8192
    scene, diags = validate(path)
    assert not diags.errors
    monkeypatch.setenv("HMEDIT_MAX_PIXELS", "lots")
    with pytest.raises(HmeditError, match="HMEDIT_MAX_PIXELS='lots' is not a positive whole number"):
        limit("MAX_PIXELS")


# ------------------------------------------------------------------------------------------------------
# Item 5: user mistakes that were internal errors


def test_seed_beyond_64_bits(tmp_path):
    assert "seed must be <= 9223372036854775807" in one_error(
        write(tmp_path / "s.yaml", f"seed: 18446744073709551616\n{ROOT}")
    )
    assert "seeds are whole numbers from 0 to 2^63 - 1" in one_error(
        write(tmp_path / "t.yaml", f"seeds: [1, -1]\n{ROOT}")
    )


def test_integer_literal_100000_digits(tmp_path):
    path = write(tmp_path / "i.yaml", f"seed: {'9' * 100_000}\n{ROOT}")
    start = time.perf_counter()
    assert "a number 100000 digits long is out of range" in one_error(path)
    assert time.perf_counter() - start < 2


def test_children_nested_400_deep(tmp_path):
    message = one_error(write(tmp_path / "deep.yaml", nested_children(400)))
    assert "nested more than 100 levels deep" in message and "HMEDIT_MAX_YAML_DEPTH" in message


def test_children_nested_40_deep(tmp_path):
    message = one_error(write(tmp_path / "deep.yaml", nested_children(40)))
    assert "the tree of nodes is more than 32 levels deep" in message


def test_deep_flow_nesting_is_not_a_recursion_error(tmp_path):
    path = write(tmp_path / "flow.yaml", "x: " + "[" * 50_000 + "]" * 50_000 + "\n" + ROOT)
    assert "nested more than 100 levels deep" in one_error(path)


def test_too_many_nodes(tmp_path):
    children = "".join(f"    - {{id: n{i}, mask: {{rect: [0, 0, 1, 1]}}}}\n" for i in range(300))
    message = one_error(write(tmp_path / "wide.yaml", f"{ROOT}  children:\n{children}"))
    assert "more than 256 nodes" in message and "HMEDIT_MAX_NODES" in message


@pytest.mark.parametrize("key", ["name", "id"])
def test_5000_character_name(tmp_path, key):
    long = "a" * 5000
    text = (
        f"name: {long}\n{ROOT}"
        if key == "name"
        else f"{ROOT}  children:\n    - id: {long}\n      mask: {{rect: [0, 0, 1, 1]}}\n"
    )
    assert f"{key} is 5000 characters long, more than 100" in one_error(write(tmp_path / "n.yaml", text))


def test_long_file_name_without_a_name(tmp_path):
    path = write(tmp_path / f"{'b' * 120}.yaml", ROOT)
    assert "is not a safe folder name" in one_error(path)


def test_scene_file_too_large(tmp_path):
    path = write(tmp_path / "huge.yaml", ROOT + "# " + "x" * (1 << 20) + "\n")
    assert "larger than the limit of 1048576 bytes" in one_error(path)


# ------------------------------------------------------------------------------------------------------
# Item 12: repeated seeds in linear time


def test_100k_seeds_checked_fast():
    from hmedit.errors import Diagnostics
    from hmedit.scene.load import _warn
    from hmedit.scene.spec import Scene

    data = {"seeds": [i % 99_999 for i in range(100_000)], "root": {"prompt": "a cat"}}
    scene = Scene.model_validate(data)
    diags = Diagnostics()
    start = time.perf_counter()
    _warn(scene, data, diags)
    assert time.perf_counter() - start < 0.5  # was 80 s (list.count per seed)
    assert [w.problem for w in diags.warnings] == ["seeds repeat 0: the same image is rendered twice"]


# ------------------------------------------------------------------------------------------------------
# Items 4 and 6: images and embeddings, checked by validate with the loaders a render uses


def png(path: Path, size=(64, 64), mode="RGB") -> Path:
    Image.new(mode, size).save(path)
    return path


def png_header(path: Path, width: int, height: int, color_type: int = 6) -> Path:
    """A PNG that claims ``width`` x ``height`` (RGBA by default) with next to no pixel data: the file a
    decompression bomb starts with, written in microseconds."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    good = png(tmp_path / "good.png")
    data = good.read_bytes()
    jpeg = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(jpeg)
    files = {
        "zero-byte": b"",
        "not-an-image": b"hello, world\n",
        "truncated-png": data[: len(data) // 2],
        "truncated-jpeg": jpeg.read_bytes()[: jpeg.stat().st_size * 2 // 3],
        "corrupt-png": data[:40] + bytes(len(data) - 40),
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name}.png"
        out[name].write_bytes(content)
    return out


@pytest.mark.parametrize(
    "kind", ["zero-byte", "not-an-image", "truncated-png", "truncated-jpeg", "corrupt-png"]
)
def test_broken_init_image_fails_validate(tmp_path, bad_files, kind):
    path = write(tmp_path / "s.yaml", f"size: [64, 64]\ninit_image: {bad_files[kind].name}\n{ROOT}")
    message = one_error(path)
    assert "init_image" in message and bad_files[kind].name in message
    with pytest.raises(HmeditError):  # what a render reads, through the same loader
        from hmedit.scene.assets import load_rgb

        load_rgb(bad_files[kind])


@pytest.mark.parametrize("key", ["layer", "mask: {image"])
def test_broken_layer_or_mask_fails_validate(tmp_path, bad_files, key):
    ref = bad_files["truncated-png"].name
    region = f"layer: {ref}" if key == "layer" else f"mask: {{image: {ref}}}"
    path = write(tmp_path / "s.yaml", f"size: [64, 64]\n{ROOT}  children:\n    - id: a\n      {region}\n")
    assert ref in one_error(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", b"\xff" * 64],
    ids=["empty", "bad-header", "garbage"],
)
def test_unloadable_embedding_fails_validate(tmp_path, content):
    (tmp_path / "tok.safetensors").write_bytes(content)
    node = "    - id: a\n      mask: {rect: [0, 0, 1, 1]}\n      embedding: tok.safetensors\n"
    text = f"{ROOT}  children:\n{node}"
    message = one_error(write(tmp_path / "s.yaml", text))
    assert "root.children[0].embedding" in message and "cannot read the embedding" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_embedding_is_not_run(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').close()",))

    (tmp_path / "tok.pt").write_bytes(pickle.dumps({"string_to_param": {"*": Boom()}}))
    text = f"{ROOT}  children:\n    - id: a\n      mask: {{rect: [0, 0, 1, 1]}}\n      embedding: tok.pt\n"
    assert "embedding" in one_error(write(tmp_path / "s.yaml", text))
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_huge_images_refused_from_the_header(tmp_path):
    png_header(tmp_path / "huge.png", 20000, 20000, color_type=2)  # 1.2 GB decoded
    path = write(tmp_path / "s.yaml", f"size: [64, 64]\ninit_image: huge.png\n{ROOT}")
    message = one_error(path)
    assert "than the limit of 67.1 Mpx" in message and "HMEDIT_MAX_IMAGE_PIXELS" in message


def test_reduced_decode_keeps_the_full_size(tmp_path):
    from hmedit.scene.assets import image_size, load_gray, load_rgba

    Image.new("LA", (3000, 1000), (255, 255)).save(tmp_path / "big.png")
    Image.new("RGB", (3000, 1000), (255, 255, 255)).save(tmp_path / "big.jpg")
    assert image_size(tmp_path / "big.png") == (3000, 1000)
    assert load_rgba(tmp_path / "big.png", max_side=1000).shape == (334, 1000, 4)
    small = load_gray(tmp_path / "big.jpg", max_side=500)
    assert 500 <= small.shape[1] <= 1000 and abs(small.shape[1] / small.shape[0] - 3) < 0.01
    assert small.min() > 0.95


# ------------------------------------------------------------------------------------------------------
# The bombs again, through the CLI, in one child process: bounded memory and time, one line each


@pytest.mark.slow
def test_bombs_in_a_child_process_stay_small(tmp_path):
    png_header(tmp_path / "layer.png", 13000, 13000)  # as a 685 KB file: 7.3 GiB and 59 s in validate before
    png_header(tmp_path / "huge.png", 20000, 20000, color_type=2)  # was a DecompressionBombError
    region = "  children:\n    - id: a\n      layer: layer.png\n"
    scenes = {
        "alias.yaml": alias_bomb(),
        "deep.yaml": nested_children(400),
        "digits.yaml": f"seed: {'9' * 100_000}\n{ROOT}",
        "size.yaml": f"size: [40000, 40000]\n{ROOT}",
        "feather.yaml": f"size: [64, 64]\n{ROOT}{CHILD}      feather: 1e7\n",
        "layer.yaml": f"size: [512, 512]\n{ROOT}{region}",
        "init.yaml": f"size: [64, 64]\ninit_image: huge.png\n{ROOT}",
    }
    for name, text in scenes.items():
        write(tmp_path / name, text)
    result = run_child("validate", "-q", *(tmp_path / name for name in scenes))
    assert_clean(result, errors=len(scenes))
    assert result.max_rss < MAX_RSS / 2, f"peak RSS {result.max_rss / 2**20:.0f} MiB"
    assert result.seconds < 60  # mostly importing torch; each scene takes milliseconds
    for name in scenes:
        assert sum(line.startswith(f"error: {tmp_path / name}") for line in result.errors) == 1, result.errors


def test_masks_command_refuses_the_same(tmp_path):
    write(tmp_path / "big.yaml", f"size: [40000, 40000]\n{ROOT}")
    result = run_cli("masks", tmp_path / "big.yaml", "--out", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.out + result.err
