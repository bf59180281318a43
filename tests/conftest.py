"""Fixtures shared across the test suite."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


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
