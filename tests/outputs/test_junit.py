"""hmedit.outputs.junit: JUnit XML of a check, validated against the Jenkins xUnit schema (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from hmedit.outputs.junit import junit_xml, write_junit

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is a dev dependency: pip install -e .[dev]")

SCHEMA = Path(__file__).parents[1] / "data" / "junit-10.xsd"


@pytest.fixture(scope="module")
def schema():
    return xmlschema.XMLSchema(str(SCHEMA))


def entry(**kw):
    base = {
        "scene": "s",
        "file": "s.yaml",
        "seed": 1,
        "image": "s/image.png",
        "golden": "/g/s/image.png",
        "value": "inf",
        "passed": True,
        "regressed": False,
        "problem": None,
        "error": None,
        "note": None,
        "diff": None,
        "compare": None,
        "folder": "s",
        "seconds": 1.23456,
    }
    return {**base, **kw}


def record(*entries):
    return {
        "format": "hmedit.check",
        "created": "2026-11-30T08:56:01Z",
        "metric": "psnr",
        "tolerance": 35.0,
        "golden": "/g",
        "results": list(entries),
    }


def test_cases_failures_and_errors_validate(schema, tmp_path):
    rec = record(
        entry(),
        entry(seed=2, value=21.456, passed=False, regressed=True, diff="s/image-2.diff.png"),
        entry(
            scene="t",
            seed=None,
            image=None,
            golden=None,
            value=None,
            passed=False,
            problem="render failed",
            error="file not found: x.png \x00\x1b[31m",
        ),  # control characters are no XML
        entry(
            scene="u",
            value=None,
            passed=False,
            problem="no golden image /g/u/image.png (add it with --update)",
        ),
    )
    path = write_junit(tmp_path / "junit.xml", rec, out=tmp_path / "out")
    schema.validate(str(path))  # raises if not valid
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "2")
    assert suite.get("timestamp") == "2026-11-30T08:56:01" and suite.get("time") == "4.938"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["s seed 1", "s seed 2", "t", "u seed 1"]
    assert [c.get("classname") for c in cases] == ["hmedit.check.s"] * 2 + [
        "hmedit.check.t",
        "hmedit.check.u",
    ]
    assert cases[0].find("failure") is None and "inf" in cases[0].find("system-out").text
    failure = cases[1].find("failure")
    assert (
        failure.get("message") == "psnr 21.46 dB, expected >= 35 dB" and failure.get("type") == "regression"
    )
    assert str(tmp_path / "out" / "s" / "image-2.diff.png") in failure.text
    error = cases[2].find("error")
    assert error.get("type") == "render failed" and "x.png" in error.get("message")
    assert "\x00" not in path.read_text(encoding="utf-8")
    assert cases[3].find("error").get("type") == "not compared"


def test_maxdiff_and_no_output_folder(schema, tmp_path):
    rec = {
        **record(entry(value=7.0, passed=False, regressed=True, diff="s/image.diff.png")),
        "metric": "maxdiff",
        "tolerance": 2.0,
    }
    data = junit_xml(rec, out=None, hostname="ci")
    schema.validate(data.decode())
    failure = ET.fromstring(data).find("testsuite/testcase/failure")
    assert failure.get("message") == "maxdiff 7.00, expected <= 2"
    assert "diff:" not in failure.text and "golden: /g/s/image.png" in failure.text  # the temp folder is gone
    assert ET.fromstring(junit_xml(record())).get("tests") == "0"


@pytest.mark.slow
def test_check_writes_junit_that_marks_the_injected_regression(checked, schema):
    from hmedit.check import CHECK_JSON

    assert checked.code == 1  # a regression
    schema.validate(str(checked.junit))
    suite = ET.parse(checked.junit).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert sorted(cases) == ["broken", "tiled seed 7", "two_seeds seed 3", "two_seeds seed 4"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    failure = cases["two_seeds seed 4"].find("failure")
    assert failure is not None and failure.get("message").startswith("psnr ")
    assert str(checked.out / "two_seeds" / "image-4.diff.png") in failure.text
    assert (checked.out / "two_seeds" / "image-4.diff.png").is_file()
    for name in ("tiled seed 7", "two_seeds seed 3"):
        assert cases[name].find("failure") is None and cases[name].find("error") is None
        assert float(cases[name].get("time")) > 0
    assert "missing.png" in cases["broken"].find("error").get("message")

    # check.json says the same, with the numbers
    rec = json.loads((checked.out / CHECK_JSON).read_text())
    assert (rec["passed"], rec["failed"], rec["not_compared"], rec["exit_code"]) == (2, 1, 1, 1)
    by = {(e["scene"], e["seed"]): e for e in rec["results"]}
    bad = by[("two_seeds", 4)]
    assert bad["regressed"] and bad["value"] < 35 and bad["diff"] == "two_seeds/image-4.diff.png"
    assert bad["compare"] == "two_seeds/image-4.compare.png" and bad["image"] == "two_seeds/image-4.png"
    assert f"{bad['value']:.2f} dB" in failure.get("message")
    assert by[("tiled", 7)]["value"] == "inf" and by[("tiled", 7)]["golden"].endswith("tiled/image.png")


def test_junit_with_update_is_a_user_error(tmp_path, capsys):
    from hmedit.cli.app import main

    scene = tmp_path / "s.yaml"
    scene.write_text("root: {prompt: x}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["check", str(scene), "-g", str(tmp_path / "g"), "--update", "--junit", str(tmp_path / "j.xml")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--junit" in err and "--update" in err
    assert not (tmp_path / "j.xml").exists() and not (tmp_path / "g").exists()
