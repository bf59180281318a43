"""`hmedit models`: the bundled models' table, --path for scripts (toy may or may not be trained yet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hmedit.cli.app import main
from hmedit.cli.models import hub_models
from hmedit.models.load import BUNDLED


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEDIT_CACHE", str(tmp_path / "cache"))


def run(*args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def toy_present() -> bool:
    return (BUNDLED["toy"] / "model_index.json").is_file()


def test_table_lists_toy(capsys):
    assert run("models") == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("toy ") and "│" in line]
    assert "bundled" in row and str(BUNDLED["toy"]) in row
    assert ("yes" in row) if toy_present() else ("missing" in row)


def test_json_lists_toy(capsys):
    assert run("models", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    (toy,) = [r for r in rows if r["name"] == "toy"]
    assert toy["path"] == str(BUNDLED["toy"]) and toy["present"] == toy_present()
    if toy["present"]:
        assert toy["size_mb"] > 0 and len(toy["hash"]) == 16
    else:
        assert toy["size_mb"] is None and toy["hash"] is None


def test_path_prints_the_folder_or_one_line_error(capsys):
    code = run("models", "--path", "toy")
    out, err = capsys.readouterr()
    if toy_present():
        assert code == 0 and out.strip() == str(BUNDLED["toy"]) and Path(out.strip()).is_dir()
    else:
        assert code == 2 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1 and "toy" in err


def test_path_of_a_missing_bundled_model_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BUNDLED, "toy", tmp_path / "nothing-here")
    assert run("models", "--path", "toy") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "missing" in err
    assert run("models", "--path", "nope") == 2
    assert "not a bundled model" in capsys.readouterr().err


def test_present_bundled_model_has_size_and_hash(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "toy"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "w.safetensors").write_bytes(b"\0" * 300_000)
    monkeypatch.setitem(BUNDLED, "toy", folder)
    assert run("models", "--path", "toy") == 0
    assert capsys.readouterr().out.strip() == str(folder)
    assert run("models", "--json") == 0
    (toy,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "toy"]
    assert toy["present"] and toy["size_mb"] == 0.3 and len(toy["hash"]) == 16


def test_hub_cache_pipelines_are_found(tmp_path):
    snap = tmp_path / "models--org--sd-tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "models--org--not-a-pipeline" / "snapshots" / "def").mkdir(parents=True)
    rows = hub_models(tmp_path)
    assert [(r["name"], r["pipeline"]) for r in rows] == [("org/sd-tiny", "StableDiffusionPipeline")]
    assert hub_models(tmp_path / "absent") == []


def test_the_bundled_controlnet_is_listed_and_its_path_printed(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "toy-controlnet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 200_000)
    monkeypatch.setitem(BUNDLED, "toy-controlnet", folder)
    assert run("models", "--path", "toy-controlnet") == 0
    assert capsys.readouterr().out.strip() == str(folder)
    assert run("models", "--json") == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "toy-controlnet"]
    assert row["present"] and row["size_mb"] == 0.2 and len(row["hash"]) == 16
    monkeypatch.setitem(BUNDLED, "toy-controlnet", tmp_path / "absent")
    assert run("models", "--path", "toy-controlnet") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "bundled ControlNet 'toy-controlnet' is missing" in err
