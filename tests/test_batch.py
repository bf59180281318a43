"""hmedit.batch without rendering: jobs, keys, the up-to-date check, stale outputs, temp files, exit codes.

The model is a stand-in folder (model_index.json and one weight file): enough to resolve and hash it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hmedit import batch
from hmedit.batch import FAILED, OK, Options, Result, exit_code, image_name, prepare, up_to_date
from hmedit.errors import HmeditError
from hmedit.outputs import temp_path_for

SCENE = """
size: [64, 64]
steps: 2
seed: 3
root:
  prompt: a yellow background
  children:
    - id: disc
      prompt: a red circle
      mask: {image: disc.png}
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v1")
    return path


@pytest.fixture
def scene(write_scene, write_png) -> Path:
    write_png("disc.png", size=(64, 64))
    return write_scene(SCENE, "disc.yaml")


def job_for(path, model_dir, tmp_path, **kw):
    kw = {"device": "cpu", "dtype": "fp32", **kw}
    return prepare(path, Options(out=tmp_path / "out", model=str(model_dir), **kw))


def test_job_has_target_seeds_assets_and_key(scene, model_dir, tmp_path):
    job = job_for(scene, model_dir, tmp_path)
    assert job.target == tmp_path / "out" / "disc"
    assert job.seeds == [3] and job.model_ref.path == model_dir.resolve()
    assert list(job.assets) == ["root.children[0].mask.image"]
    from hmedit.scene.presets import load_preset

    # the stand-in folder has no UNet config: its family's preset is the fallback, sd15
    assert [r.key() for r in job.requests] == [
        {
            "seed": 3,
            "size": [64, 64],
            "steps": 2,
            "guidance": 7.5,
            "scheduler": "ddim",
            "record_attention": True,
            "preset": "sd15",
            "preset_digest": load_preset("sd15").digest(),
        }
    ]
    assert len(job.key) == 64 and job.key == job_for(scene, model_dir, tmp_path).key
    assert job_for(scene, model_dir, tmp_path, seed=9).seeds == [9]


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 3},
        {"seed": 4},
        {"size": (128, 64)},
        {"guidance": 3.0},
        {"scheduler": "euler"},
        {"attention": False},
        {"preset": "sdxl"},
    ],
)
def test_key_follows_every_override(scene, model_dir, tmp_path, options):
    assert job_for(scene, model_dir, tmp_path, **options).key != job_for(scene, model_dir, tmp_path).key


def test_key_follows_the_bytes_of_scene_assets_and_weights(scene, model_dir, tmp_path):
    key = job_for(scene, model_dir, tmp_path).key
    disc = scene.parent / "disc.png"
    os.utime(disc, (1, 1))  # a new mtime alone changes nothing: the key is over the bytes
    assert job_for(scene, model_dir, tmp_path).key == key

    from PIL import Image

    Image.new("L", (64, 64), 200).save(disc)
    changed_asset = job_for(scene, model_dir, tmp_path).key
    assert changed_asset != key

    (model_dir / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v2")
    changed_model = job_for(scene, model_dir, tmp_path).key
    assert changed_model not in (key, changed_asset)

    scene.write_text(scene.read_text().replace("a red circle", "a blue circle"))
    assert job_for(scene, model_dir, tmp_path).key not in (key, changed_asset, changed_model)
    assert job_for(scene, model_dir, tmp_path, dtype="fp16").key != job_for(scene, model_dir, tmp_path).key


def finish(job, outputs=("image.png", "influence.png"), key=None):
    from hmedit.outputs.folder import describe_outputs

    job.target.mkdir(parents=True, exist_ok=True)
    for name in outputs:
        (job.target / name).parent.mkdir(parents=True, exist_ok=True)
        (job.target / name).write_bytes(b"x")
    inside = [n for n in outputs if not n.startswith("..")]
    record = {"key": key or job.key, "outputs": list(outputs), "files": describe_outputs(job.target, inside)}
    (job.target / batch.RENDER_JSON).write_text(json.dumps(record))
    return record


def test_up_to_date_needs_the_same_key_and_every_output(scene, model_dir, tmp_path):
    job = job_for(scene, model_dir, tmp_path)
    assert up_to_date(job) is None  # nothing rendered yet
    record = finish(job, ("image.png", "influence/disc.png"))
    assert up_to_date(job) == record
    (job.target / "influence" / "disc.png").unlink()
    assert up_to_date(job) is None
    finish(job, key="0" * 64)
    assert up_to_date(job) is None
    (job.target / batch.RENDER_JSON).write_text("{not json")
    assert up_to_date(job) is None
    finish(job, outputs=())
    assert up_to_date(job) is None  # a record without outputs is not a finished render
    (tmp_path / "out" / "elsewhere.png").write_bytes(b"x")
    finish(job, outputs=("image.png", "../elsewhere.png"))
    assert up_to_date(job) is None  # a record cannot point outside its folder


def test_stale_outputs_of_the_old_record_are_removed(tmp_path):
    target = tmp_path / "scene"
    target.mkdir()
    for name in ("image-1.png", "image-2.png", "image.png", "notes.txt"):
        (target / name).write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    old = {"outputs": ["image-1.png", "image-2.png", "../outside.png", "render.json"]}
    batch._remove_stale(target, old, ["image.png"])
    assert sorted(p.name for p in target.iterdir()) == ["image.png", "notes.txt"]
    assert (tmp_path / "outside.png").exists()


def test_remove_temp_files_takes_only_this_process_temps(tmp_path):
    mine = temp_path_for(tmp_path / "influence" / "a.png")
    mine.parent.mkdir()
    mine.write_bytes(b"x")
    other = tmp_path / ".image.png.999999999.tmp"
    other.write_bytes(b"x")
    batch.remove_temp_files(tmp_path)
    assert not mine.exists() and other.exists()


def test_two_scenes_with_one_name_are_refused(write_scene, model_dir, tmp_path):
    a = write_scene("name: same\nroot: {prompt: a}\n", "a.yaml")
    b = write_scene("name: same\nroot: {prompt: b}\n", "b.yaml")
    options = Options(out=tmp_path / "out", model=str(model_dir), device="cpu")
    claimed: dict = {}
    prepare(a, options, claimed=claimed)
    with pytest.raises(HmeditError, match="already written by") as info:
        prepare(b, options, claimed=claimed)
    assert info.value.location.line == 1 and info.value.location.field == "name"


def test_missing_scene_model_points_at_the_scene(write_scene, tmp_path, monkeypatch):
    given = write_scene("model: ./nowhere\nroot: {prompt: a}\n", "given.yaml")
    default = write_scene("root: {prompt: a}\n", "default.yaml")
    options = Options(out=tmp_path / "out", device="cpu")
    with pytest.raises(HmeditError, match="not found") as info:
        prepare(given, options)
    assert (info.value.location.file, info.value.location.line) == (given, 1)
    monkeypatch.setattr("hmedit.models.load.BUNDLED", {"toy": tmp_path / "no-toy"})
    with pytest.raises(HmeditError, match="bundled model 'toy' is missing") as info:
        prepare(default, options)
    # the scene does not name a model: no line to point at, but the file and field are named
    assert info.value.location.file == default and info.value.location.line is None
    assert info.value.location.field == "model"


def test_image_names_and_exit_codes():
    assert image_name(5, [5]) == "image.png"
    assert image_name(5, [4, 5]) == "image-5.png"
    ok, user = Result(Path("a"), status=OK), Result(Path("b"), status=FAILED)
    bug = Result(Path("c"), status=FAILED, internal=True)
    assert exit_code([ok]) == 0
    assert exit_code([ok, bug]) == 1
    assert exit_code([ok, bug, user]) == 2
    assert exit_code([ok], interrupted=True) == 130


def test_scene_model_paths_are_relative_to_the_scene(write_scene, model_dir, tmp_path, monkeypatch):
    path = write_scene("model: ../model\nroot: {prompt: a}\n", "sub/s.yaml")
    monkeypatch.chdir(path.parent.parent.parent)  # elsewhere: the scene's folder decides
    job = prepare(path, Options(out=tmp_path / "out", device="cpu"))
    assert job.model_ref.path == model_dir.resolve() and job.model_ref.source == "folder"


def test_each_model_loads_once(model_dir, monkeypatch):
    from hmedit.models.load import resolve

    loads = []

    def fake_load(ref, *, device, dtype, config=None):
        loads.append((ref.path, device, dtype))
        if "broken" in ref.name:
            raise HmeditError("cannot load")
        return object()

    monkeypatch.setattr("hmedit.models.load.load", fake_load)
    from hmedit.jobs import ModelCache

    models = ModelCache()
    ref = resolve(str(model_dir))
    first, seconds = models.get(ref, "cpu", "float32")
    again, no_time = models.get(resolve(str(model_dir)), "cpu", "fp32")
    assert again is first and no_time == 0.0 and len(loads) == 1
    models.get(ref, "cpu", "float16")
    assert len(loads) == 2  # another dtype is another model

    broken = type(ref)("broken", model_dir.parent / "broken", "folder")
    for _ in range(2):
        with pytest.raises(HmeditError, match="cannot load"):
            models.get(broken, "cpu", "fp32")
    assert len(loads) == 3  # a failure is remembered, not retried per scene


class Recorder(batch.Reporter):
    """A reporter that keeps what the batch tells it, as data."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def problem(self, file, error, severity="error") -> None:
        self.calls.append(("problem", file.name, error.problem, severity))

    def internal(self, file, exc, traceback=None) -> None:
        self.calls.append(("internal", file.name, repr(exc), traceback))


@pytest.mark.parametrize("debug", [False, True])
def test_batch_reports_problems_as_data(tmp_path, monkeypatch, debug):
    """The runner hands its reporter the file, the error and its severity; formatting is the console's."""

    def fake_prepare(file, options, *, claimed=None, on_warning=None):
        on_warning(HmeditError("an old key"))
        if file.name == "a.yaml":
            raise HmeditError("bad width", file=file, line=3)
        raise RuntimeError("stop here")

    monkeypatch.setattr(batch, "prepare", fake_prepare)
    rec = Recorder()
    runner = batch.Batch(Options(out=tmp_path / "out", device="cpu", dtype="fp32"), rec, debug=debug)
    a, b = runner.run([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert (a.status, a.internal, a.warnings, a.error) == (FAILED, False, 1, "bad width")
    assert (b.status, b.internal, b.error) == (FAILED, True, "internal error: RuntimeError")
    assert rec.calls[:4] == [
        ("problem", "a.yaml", "an old key", "warning"),
        ("problem", "a.yaml", "bad width", "error"),
        ("problem", "b.yaml", "an old key", "warning"),
        ("internal", "b.yaml", "RuntimeError('stop here')", rec.calls[3][3]),
    ]
    trace = rec.calls[3][3]
    assert trace is None if not debug else trace.startswith("Traceback") and "stop here" in trace
    assert exit_code([a, b]) == 2 and exit_code([b]) == 1
