"""Fuzzing `hmedit validate` (issue 13, acceptance 2): mutated YAML text and mutated parsed structures of the
example scenes in scenes/. Every case must end with exit 0 or 2, print no traceback and no internal error, and
take under 2 s; together they must not grow this process by 1 GiB. Run in-process, so a few hundred cases take
seconds; the bombs that need a child process with a memory limit are in test_scene_input.py."""

from __future__ import annotations

import math
import resource
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.helpers import assert_clean, run_cli

SCENES = Path(__file__).resolve().parents[2] / "scenes"
EXAMPLES = sorted(SCENES.glob("*.yaml"))
TEXTS = [path.read_text(encoding="utf-8") for path in EXAMPLES]
DATA = [yaml.safe_load(text) for text in TEXTS]
FUZZ = settings(
    max_examples=100,
    deadline=2000,  # ms per case: the acceptance bound
    derandomize=True,  # the same cases on every run: a failure here is reproducible, not flaky
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of scenes/ (with its assets), so that mutated scenes find the files they name."""
    out = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(SCENES / "assets", out / "assets")
    run_cli("validate", *EXAMPLES)  # imports (torch) and first calls out of the 2 s of the first case
    return out


@pytest.fixture(scope="module", autouse=True)
def memory_bound():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 2**30, f"fuzzing grew the peak RSS by {grown / 2**20:.0f} MiB"


def check(workdir: Path, text: str) -> None:
    path = workdir / "case.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    result = run_cli("validate", "-q", path)
    assert result.code in (0, 2), result.out + result.err
    assert_clean(result, code=result.code, errors=None)
    assert result.seconds < 2, f"{result.seconds:.1f} s"
    for line in (result.out + result.err).split("\n"):  # one line per problem: nothing spills over
        if not line:
            continue
        assert line.startswith(("error: ", "warning: ")), line
        assert line.isprintable(), line


# ------------------------------------------------------------------------------------------------------
# YAML text

YAML_BITS = st.sampled_from(
    [
        ":",
        " ",
        "\n",
        "  ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "&a ",
        "*a",
        "<<: ",
        "!!python/object:os.system ",
        "'",
        '"',
        "#",
        "|",
        ">",
        "\t",
        "?",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
        "~",
        "null",
        "1e6",
        ".inf",
        "-.nan",
        "0x7f",
        "0o17",
        "1_000",
        "9" * 50,
        "-1",
        "1e309",
        "\\u0000",
        "\u00e9",
        "\ufeff",
        "\U0001f600",
    ]
)


@st.composite
def mutated_text(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "duplicate", "random"]))
        if action == "insert":
            text = text[:at] + draw(YAML_BITS) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        elif action == "duplicate":
            piece = text[at : at + draw(st.integers(1, 200))]
            text = text[:at] + piece + piece + text[at:]
        else:
            text = text[:at] + draw(st.text(max_size=20)) + text[at:]
    return text


@pytest.mark.slow
@FUZZ
@given(text=mutated_text())
def test_fuzz_yaml_text(workdir, text):
    check(workdir, text)


@settings(FUZZ, max_examples=40)
@given(text=st.text(max_size=300))
def test_fuzz_random_text(workdir, text):
    check(workdir, text)


# ------------------------------------------------------------------------------------------------------
# Parsed structure: replace one value anywhere in an example scene with a hostile one

HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**63, 2**64, 10**30, -(10**30), 65536, 65537, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 1e-300, 5e-324, math.inf, -math.inf]),
    st.text(max_size=30),
    st.sampled_from(["", "a" * 5000, "../../etc/passwd", "/dev/zero", "assets", "~", "on", "off", "1e6"]),
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "size",
        "seed",
        "seeds",
        "steps",
        "guidance",
        "scheduler",
        "init_image",
        "composition",
        "depth_gamma",
        "attention",
        "tiling",
        "name",
        "model",
        "version",
        "root",
        "mask",
        "layer",
        "at",
        "scale",
        "strength",
        "noise",
        "feather",
        "active",
        "levels",
        "learn",
        "embedding",
        "children",
        "id",
        "rect",
        "polygon",
    ]
)


def paths(data, prefix=()):
    """Every (path, value) in a parsed scene."""
    yield prefix, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from paths(value, (*prefix, i))


def replaced(data, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        return {**data, head: replaced(data[head], rest, value)}
    out = list(data)
    out[head] = replaced(out[head], rest, value)
    return out


@st.composite
def mutated_structure(draw):
    data = draw(st.sampled_from(DATA))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(list(paths(data))))[0]
        if draw(st.booleans()) or not where:
            data = replaced(data, where, draw(HOSTILE))
        else:  # add a key next to an existing one
            parent = where[:-1]
            target = dict(p for p in paths(data)).get(parent)
            if isinstance(target, dict):
                data = replaced(data, parent, {**target, draw(KEYS): draw(HOSTILE)})
    return data


@pytest.mark.slow
@FUZZ
@given(data=mutated_structure())
def test_fuzz_scene_structure(workdir, data):
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    check(workdir, text)
