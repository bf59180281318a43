"""hmedit.toy.train checkpoints: written atomically, read without running code (no pickle of objects)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from hmedit.cli.app import main
from hmedit.errors import HmeditError
from hmedit.toy.train import load_checkpoint, save_checkpoint

PACKAGE = Path(__file__).resolve().parents[2] / "hmedit"


class _Planted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_checkpoint_round_trips_with_its_optimizer(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "vae.pt"
    save_checkpoint(
        {"model": model.state_dict(), "opt": opt.state_dict(), "step": 7, "ema": [torch.ones(2)]}, path
    )
    st = load_checkpoint(path)
    assert st["step"] == 7 and torch.equal(st["model"]["weight"], model.weight)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(st["opt"])  # an optimizer state loads as before
    assert [p.name for p in tmp_path.iterdir()] == ["vae.pt"]  # no temporary file left


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "vae.pt"
    torch.save({"model": _Planted(marker)}, path)
    with pytest.raises(HmeditError, match="objects other than tensors") as info:
        load_checkpoint(path)
    assert info.value.location.file == path
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(HmeditError):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(HmeditError, match="vae.pt"):  # damaged: one error naming the file
        load_checkpoint(path)


def test_toy_train_with_a_planted_checkpoint_is_exit_2(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": _Planted(marker), "opt": {}, "step": 0}, run / "vae.pt")
    with pytest.raises(SystemExit) as info:
        main(["toy", "train", "--run-dir", str(run), "--stages", "vae", "--vae-steps", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "vae.pt" in err and "Traceback" not in err


def test_no_code_path_unpickles_arbitrary_objects():
    """Every torch.load in the package passes weights_only=True; no pickle.load, no allow_pickle."""
    unsafe = re.compile(
        r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\((?![^)]*weights_only=True)"
    )
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if unsafe.search(line) and not line.lstrip().startswith(("#", '"', "containers", "``"))
    ]
    assert not found, found
