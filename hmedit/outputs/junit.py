"""JUnit XML from a regression check (``hmedit check --junit FILE``), the result file CI systems parse
(Jenkins, GitLab, GitHub Actions test reporters, Azure Pipelines, ...).

One ``<testcase>`` per scene and seed, ``classname`` ``hmedit.check.<scene>``, ``name`` ``<scene> seed
<seed>``; its ``time`` is the seed's render time. An image below the tolerance is a ``<failure>`` whose
message gives the value and the bound and whose text names the diff image, the new render and the golden;
an image that could not be compared (no golden, a scene that failed to render) is an ``<error>``. A passing
case says in ``<system-out>`` what was compared. The file validates against the JUnit schema of Jenkins'
xUnit plugin, which pytest tests its own JUnit output against (``junit-10.xsd``; tests/data/).

Built from the content of ``check.json`` (:func:`hmedit.check.check_record`), so the two always agree.
Model-free: the standard library's ElementTree.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from hmedit.outputs.write import atomic_write

__all__ = ["junit_xml", "write_junit"]

# characters XML 1.0 does not allow, even escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _seconds(value: Any) -> str:
    try:
        return f"{max(float(value), 0.0):.3f}"
    except (TypeError, ValueError):
        return "0.000"


def _value(entry: Mapping[str, Any], metric: str) -> str:
    value = entry.get("value")
    if value is None:
        return "not compared"
    if value == "inf":
        return f"{metric} inf (identical)"
    unit = " dB" if metric == "psnr" else ""
    return f"{metric} {float(value):.2f}{unit}"


def _bound(metric: str, tolerance: float) -> str:
    return f">= {tolerance:g} dB" if metric == "psnr" else f"<= {tolerance:g}"


def _where(entry: Mapping[str, Any], out: Path | None) -> list[str]:
    """The files of an entry, one line each; those in the output folder only if it is known (``out``)."""
    lines = []
    for key, label in (("diff", "diff"), ("compare", "golden | new | diff"), ("image", "new render")):
        path = entry.get(key)
        if path and out is not None:
            lines.append(f"{label}: {out / path}")
    if entry.get("golden"):
        lines.append(f"golden: {entry['golden']}")
    if entry.get("note"):
        lines.append(f"note: {entry['note']}")
    return lines


def junit_xml(
    record: Mapping[str, Any],
    *,
    out: Path | None = None,
    suite: str = "hmedit check",
    hostname: str | None = None,
) -> bytes:
    """The JUnit XML (UTF-8 bytes) of a check record; ``out``: the check's output folder, to which the
    record's relative paths are resolved in the messages (None: a folder that is gone, not named)."""
    metric = str(record.get("metric", "psnr"))
    tolerance = float(record.get("tolerance", 0.0))
    entries = list(record.get("results", []))
    failures = sum(bool(e.get("regressed")) for e in entries)
    errors = sum(not e.get("passed") and not e.get("regressed") for e in entries)
    total = sum(float(e.get("seconds") or 0.0) for e in entries)
    created = str(record.get("created", ""))
    timestamp = created.removesuffix("Z")[:19]  # the Ant schema wants no zone; check.json's is UTC
    counts = {"tests": str(len(entries)), "failures": str(failures), "errors": str(errors)}

    root = ET.Element("testsuites", {"name": suite, "time": _seconds(total), **counts})
    attrs = {
        "name": suite,
        **counts,
        "skipped": "0",
        "time": _seconds(total),
        "timestamp": timestamp,
        "hostname": _text(hostname or socket.gethostname() or "localhost"),
        "id": "0",
        "package": "hmedit",
    }
    testsuite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(testsuite, "properties")
    for name in ("metric", "tolerance", "golden", "created"):
        ET.SubElement(props, "property", {"name": name, "value": _text(record.get(name, ""))})

    for entry in entries:
        scene = _text(entry.get("scene") or "scene")
        seed = entry.get("seed")
        case = ET.SubElement(
            testsuite,
            "testcase",
            {
                "classname": f"hmedit.check.{scene}",
                "name": scene if seed is None else f"{scene} seed {seed}",
                "time": _seconds(entry.get("seconds")),
            },
        )
        where = _where(entry, out)
        if entry.get("regressed"):
            reason = entry.get("problem") or f"{_value(entry, metric)}, expected {_bound(metric, tolerance)}"
            failure = ET.SubElement(case, "failure", {"message": _text(reason), "type": "regression"})
            failure.text = _text("\n".join([str(reason), *where]))
        elif not entry.get("passed"):
            problem = entry.get("problem") or "not compared"
            if entry.get("error"):
                problem = f"{problem}: {entry['error']}"
            kind = "render failed" if entry.get("error") or "render" in str(problem) else "not compared"
            error = ET.SubElement(case, "error", {"message": _text(problem), "type": kind})
            error.text = _text("\n".join([str(problem), *where]))
        else:
            summary = f"{_value(entry, metric)} ({_bound(metric, tolerance)} passes)"
            ET.SubElement(case, "system-out").text = _text("\n".join([summary, *where]))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(
    path: str | os.PathLike,
    record: Mapping[str, Any],
    *,
    out: Path | None = None,
    suite: str = "hmedit check",
) -> Path:
    """Write :func:`junit_xml` of ``record`` to ``path`` atomically; returns the path."""
    return atomic_write(path, junit_xml(record, out=out, suite=suite))
