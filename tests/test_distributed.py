"""Batches on a Ray cluster (``--ray``, hmedit.distributed) against a serial run, on a local cluster of 2 CPUs
started once for the module, with the tiny random model at 64x64: the same image bytes, failing scenes
reported while the others go on, a rerun that skips what is done, ``check --ray``, Ctrl-C, and the
one-line error without Ray."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from hmedit.batch import INTERRUPTED, NOT_RUN, OK, Batch, Options, Reporter, prepare
from hmedit.cli.app import main
from hmedit.cli.options import ray_value
from hmedit.distributed import RayRunner, is_address, resolve_address
from hmedit.errors import HmeditError

SCENE = """
model: random:tiny
size: [64, 64]
steps: {steps}
seed: {seed}
root:
  prompt: a {colour} background
  children:
    - id: box
      prompt: a blue square
      mask: {{rect: [0.5, 0.5, 0.4, 0.4]}}
"""

TWO_SEEDS = """
model: random:tiny
size: [64, 64]
steps: 2
seeds: [1, 2]
root:
  prompt: a gray background
  children:
    - id: disc
      prompt: a red circle
      mask: {image: disc.png}
"""

BROKEN = """
model: random:tiny
size: [64, 64]
root:
  prompt: a yellow background
  children:
    - id: hat
      mask: {rect: [0.3, 0, -0.4, 0.3]}
"""

# planned fine on the driver (the folder resolves and hashes), fails on the worker that loads it
BAD_MODEL = """
model: ./not-a-model
size: [64, 64]
steps: 2
root:
  prompt: a white background
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs, so 2 workers; the batches of this module share it (and its workers,
    which keep their models: RayRunner pools them while the connection is the caller's)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def scene_folder(root: Path) -> Path:
    scenes = root / "scenes"
    for i, colour in enumerate(("red", "green", "blue")):
        write(scenes, f"{colour}.yaml", SCENE.format(steps=2, seed=i + 3, colour=colour))
    write(scenes, "sub/two.yaml", TWO_SEEDS)
    img = Image.new("L", (64, 64), 0)
    img.paste(255, (8, 8, 40, 40))
    img.save(scenes / "sub" / "disc.png")
    return scenes


def images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("image*.png"))}


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_ray_batch_equals_serial_reports_failures_and_skips_on_rerun(cluster, tmp_path, capsys):
    scenes = scene_folder(tmp_path)
    assert run("render", scenes, "--out", tmp_path / "serial") == 0
    serial = images(tmp_path / "serial")
    assert len(serial) == 5  # 3 scenes of one seed, one of two

    write(scenes, "broken.yaml", BROKEN)
    write(scenes, "zbad.yaml", BAD_MODEL)
    bad = scenes / "not-a-model"
    (bad / "unet").mkdir(parents=True)
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    out = tmp_path / "ray"
    capsys.readouterr()
    assert run("render", "--ray", scenes, "--out", out) == 2  # `--ray SCENES`: no address, a path
    text = capsys.readouterr().out
    assert images(out) == serial
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("broken.yaml" in line for line in errors) and any("zbad.yaml" in line for line in errors)
    assert "4 rendered, 0 up to date, 2 failed" in text
    for name in ("red", "green", "blue", "two"):
        assert (out / name / "render.json").is_file()
    assert not (out / "zbad" / "render.json").exists() and not leftovers(out)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert run("render", scenes, "--out", out, "--ray") == 2
    text = capsys.readouterr().out
    assert "0 rendered, 4 up to date, 2 failed" in text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing written again


@pytest.mark.slow
def test_check_on_ray_against_serial_goldens(cluster, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    write(scenes, "a.yaml", SCENE.format(steps=2, seed=11, colour="white"))
    write(scenes, "b.yaml", SCENE.format(steps=3, seed=12, colour="black"))
    golden = tmp_path / "golden"
    assert run("check", scenes, "--golden", golden, "--update") == 0
    capsys.readouterr()
    args = ("check", scenes, "--golden", golden, "--metric", "maxdiff", "--tolerance", "0", "--ray")
    assert run(*args) == 0
    assert "2 images (maxdiff <= 0): 2 passed, 0 failed" in capsys.readouterr().out
    write(scenes, "b.yaml", SCENE.format(steps=3, seed=13, colour="black"))  # another seed: a regression
    assert run(*args) == 1


class StopAtStart(Reporter):
    """Ctrl-C as the second job goes to a worker, while the first renders."""

    def __init__(self) -> None:
        self.started: list[Path] = []

    def scene_started(self, file: Path) -> None:
        self.started.append(file)
        if len(self.started) == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_stops_the_running_jobs_and_leaves_no_temporary_file(cluster, tmp_path):
    scenes = tmp_path / "scenes"
    files = [write(scenes, f"{c}.yaml", SCENE.format(steps=400, seed=1, colour=c)) for c in ("a", "b", "c")]
    out = tmp_path / "out"
    reporter = StopAtStart()
    with RayRunner("local") as runner:
        batch = Batch(Options(out=out), reporter, runner=runner)
        results = batch.run(files)
    assert batch.interrupted
    assert [r.status for r in results] == [INTERRUPTED, INTERRUPTED, NOT_RUN]  # stopped mid-sampling
    assert not leftovers(out) and not list(out.rglob("render.json")) and not list(out.rglob("image*.png"))
    assert not list(out.rglob(".hmedit.lock"))

    # the workers are free again: the next batch renders
    quick = write(scenes, "a.yaml", SCENE.format(steps=2, seed=1, colour="a"))
    with RayRunner("local") as runner:
        results = Batch(Options(out=out), runner=runner).run([quick])
    assert results[0].status == OK and (out / "a" / "render.json").is_file()


def test_jobs_are_planned_for_the_workers_device(tmp_path):
    """GPU workers behind a driver without CUDA: the jobs (and their keys) are the GPU's."""
    scene = write(tmp_path, "s.yaml", SCENE.format(steps=2, seed=1, colour="red"))
    gpu = prepare(scene, Options(out=tmp_path, cuda=True))
    cpu = prepare(scene, Options(out=tmp_path, cuda=False))
    assert (gpu.device, gpu.dtype) == ("cuda", "float16") and (cpu.device, cpu.dtype) == ("cpu", "float32")
    assert gpu.key != cpu.key


def test_ray_value_and_address():
    assert ray_value(["render", "--ray", "scenes/"]) == ["render", "--ray=", "scenes/"]
    assert ray_value(["render", "s", "--ray"]) == ["render", "s", "--ray="]
    assert ray_value(["--ray", "--model", "m"]) == ["--ray=", "--model", "m"]
    for address in ("local", "auto", "10.0.0.5:6379", "ray://head:10001", "[::1]:6379"):
        assert ray_value(["--ray", address, "s"]) == ["--ray", address, "s"]
        assert is_address(address)
    assert ray_value(["--", "--ray", "x"]) == ["--", "--ray", "x"]
    assert not is_address("scenes/") and not is_address("my:scene.yaml")
    assert resolve_address("", {}) == "local"
    assert resolve_address("", {"RAY_ADDRESS": "head:6379"}) == "head:6379"
    assert resolve_address("local", {"RAY_ADDRESS": "head:6379"}) == "local"
    assert resolve_address("ray://h:10001", {}) == "ray://h:10001"


def test_without_ray_it_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    scene = write(tmp_path, "s.yaml", SCENE.format(steps=2, seed=1, colour="red"))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert run("render", scene, "--ray", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: --ray needs Ray, which is not installed (install it with: pip install 'hmedit[ray]')"
    )
    assert not (tmp_path / "out" / "s").exists()


def test_unreachable_cluster_is_an_error_at_once():
    ray = pytest.importorskip("ray")
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HmeditError) as info:
        RayRunner(f"127.0.0.1:{port}")._connect(ray)  # Ray itself would retry for minutes
    assert info.value.problem.startswith(f"cannot connect to the Ray cluster at '127.0.0.1:{port}'")


def test_ray_is_imported_only_for_ray():
    code = "import sys, hmedit.cli.app, hmedit.batch, hmedit.distributed; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
