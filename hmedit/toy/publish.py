"""Write a trained model's folder in one step: into ``<out>.tmp``, then swapped for ``out``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path


def publish(out: Path, write: Callable[[Path], None], record: dict) -> Path:
    """Call ``write(tmp)`` to save the model into a fresh ``<out>.tmp``, add ``training.json`` (``record``)
    and the model card (``README.md``) that ``out`` already has, make every file readable by all (package
    data; libraries write weights 0600), then replace ``out`` with it. A failed export leaves ``out`` as it
    was."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if (out / "README.md").exists():
        shutil.copy2(out / "README.md", tmp / "README.md")
    for f in tmp.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
