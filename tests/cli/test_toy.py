"""``hmedit toy``: the world sampler and the pass-through of training options."""

from PIL import Image
from typer.testing import CliRunner

from hmedit.cli.app import app


def test_sample_writes_a_grid_and_captions(tmp_path):
    out = tmp_path / "w.png"
    r = CliRunner().invoke(app, ["toy", "sample", "--count", "10", "--seed", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (8 * 128, 2 * 128)
    assert r.output.splitlines()[0].startswith("5: ") and "background" in r.output


def test_train_help_passes_through():
    r = CliRunner().invoke(app, ["toy", "train", "--help"])
    assert r.exit_code == 0 and "--unet-steps" in r.output
