"""A tiny random CLIP folder (the bundled architecture's shape, minute) for tests of code that needs one."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from hmedit.toy.train_clip import save_random

    return save_random(tmp_path_factory.mktemp("clip") / "tiny-clip")
