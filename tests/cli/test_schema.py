"""`hmedit schema`: the JSON Schema of the scene format, with a description on every field."""

from __future__ import annotations

import json

import pytest

from hmedit.cli.app import main


def run_schema(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["schema", *args])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_schema_is_valid_json_with_the_format(capsys):
    schema = json.loads(run_schema(capsys))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "root" in schema["properties"] and "composition" in schema["properties"]
    assert schema["required"] == ["root"]
    assert schema["additionalProperties"] is False
    node = schema["$defs"]["Node"]
    assert node["additionalProperties"] is False
    assert {"mask", "layer", "noise", "levels", "children", "active"} <= set(node["properties"])
    assert set(schema["properties"]["composition"]["enum"]) == {
        "multiplicative",
        "normalized",
        "top_down",
        "depth_weighted",
        "hybrid",
    }
    levels = node["properties"]["levels"]
    assert {"const": "all", "type": "string"} in levels["anyOf"] or "all" in json.dumps(levels)


def test_every_field_has_a_description(capsys):
    schema = json.loads(run_schema(capsys))
    models = [schema, *schema["$defs"].values()]
    missing = [
        f"{model.get('title')}.{name}"
        for model in models
        for name, prop in model.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not missing


def test_schema_to_file(tmp_path, capsys):
    target = tmp_path / "scene.schema.json"
    assert run_schema(capsys, "-o", str(target)) == ""
    assert "root" in json.loads(target.read_text())["properties"]
