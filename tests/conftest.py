"""Fixtures shared across the test suite."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """hmedit's cache folder (model hashes, learned tokens) is a temporary one for the whole session, so tests
    never write into the user's ~/.cache/hmedit, and caches built by one test (e.g. a model's hash) serve the
    next. XDG_CACHE_HOME too, for anything else that caches there; the Hugging Face cache stays where it was
    (tests only read it: the ``sd_weights`` tests look for real weights there). A test that needs an empty
    cache sets HMEDIT_CACHE itself (monkeypatch), and gets this one back afterwards."""
    import os

    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        if "HF_HOME" not in os.environ:
            mp.setenv("HF_HOME", str(xdg / "huggingface"))
        mp.setenv("XDG_CACHE_HOME", str(root / "xdg"))
        mp.setenv("HMEDIT_CACHE", str(root / "hmedit"))
        yield root / "hmedit"


@pytest.fixture
def write_scene(tmp_path: Path) -> Callable[..., Path]:
    """Write a scene (dedented YAML) into tmp_path and return its path: ``write_scene(text, "a.yaml")``."""

    def write(text: str, name: str = "scene.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_png(tmp_path: Path) -> Callable[..., Path]:
    """Write a small image into tmp_path: ``write_png("layer.png", mode="RGBA", size=(32, 32))``."""

    def write(name: str, mode: str = "L", size: tuple[int, int] = (64, 64), color=255) -> Path:
        from PIL import Image

        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color).save(path)
        return path

    return write


LEARN_SCENE = """
size: [64, 64]
steps: 2
init_image: bg.png
root:
  prompt: a white background
  noise: 0
  children:
    - id: sq
      prompt: a square
      layer: sq.png
      at: [0.25, 0.25]
      noise: 0.8
      learn: LEARN
"""
TEAL = (30, 140, 140)


@pytest.fixture
def learn_scene(write_scene, write_png) -> Callable[..., Path]:
    """A 64x64 edit of a white init image (bg.png) whose node ``sq``, a teal square layer (sq.png) at
    (16, 16) re-made at noise 0.8, learns a token:
    ``learn_scene(learn="{steps: 2}", edit=lambda text: text.replace(...), layer_size=(32, 32))``."""

    def make(
        learn: str = "{steps: 3, batch: 2, lr: 0.05, init: square}",
        edit: Callable[[str], str] | None = None,
        layer_size: tuple[int, int] = (32, 32),
        colour: tuple[int, int, int] = TEAL,
        bg_size: tuple[int, int] = (64, 64),
        name: str = "scene.yaml",
    ) -> Path:
        write_png("bg.png", "RGB", bg_size, (245, 245, 245))
        write_png("sq.png", "RGBA", layer_size, (*colour, 255))
        text = LEARN_SCENE.replace("LEARN", learn)
        return write_scene(edit(text) if edit else text, name)

    return make


@pytest.fixture
def trainings(monkeypatch) -> list[int]:
    """Counts calls of inversion.learn_embedding (the training), which still runs."""
    import hmedit.conditioning.textual_inversion as inv

    real, calls = inv.learn_embedding, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(inv, "learn_embedding", counted)
    return calls


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Callable[[str], Path]:
    """A tiny random SD1-like or SD2-like diffusers folder, built once per session:
    ``tiny_model_dir("sd2")``."""
    made: dict[str, Path] = {}

    def get(family: str = "sd1") -> Path:
        if family not in made:
            from hmedit.models.random import save_tiny

            made[family] = save_tiny(tmp_path_factory.mktemp(f"tiny-{family}") / "model", family)
        return made[family]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> Callable[[str], object]:
    """The tiny model loaded through hmedit.models.load (cached per family)."""
    loaded: dict[str, object] = {}

    def get(family: str = "sd1"):
        if family not in loaded:
            from hmedit.models.load import load

            loaded[family] = load(str(tiny_model_dir(family)))
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny convolutions gain nothing from more, and lose a lot on a busy
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir) -> Path:
    """The tiny random SD1-like diffusers folder (built once per session)."""
    return tiny_model_dir("sd1")


@pytest.fixture(scope="session")
def toy_model():
    """The bundled toy model, loaded once per session."""
    from hmedit.models.load import load

    return load("toy")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random transformers CLIPModel + CLIPProcessor folder (32 px views, the bundled tokenizer),
    built once per session: what click masks and mask refinement are tested with."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from hmedit.models.random import bundled_tokenizer

    tok = bundled_tokenizer()
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "max_position_embeddings": 77,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            **small,
        },
        vision_config={"image_size": 32, "patch_size": 8, **small},
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip") / "clip"
    CLIPModel(config).eval().save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)
    return folder
