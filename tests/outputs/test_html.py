"""hmedit.outputs.html: the static report page of an output folder; parsed here, and loaded in a real headless
Chromium (Debian's package, driven by Playwright) for console errors, broken images and a blank page."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmedit.errors import HmeditError
from hmedit.outputs.html import build_report, find_scenes, write_report

CHROMIUM = os.environ.get("HMEDIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Page(HTMLParser):
    """The parts of a page the tests look at: images, sections, scripts, external references, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(self.text)


def decode(src: str, kinds=("png", "jpeg")) -> Image.Image:
    head, data = src.split(",", 1)
    assert head in {f"data:image/{k};base64" for k in kinds}
    return Image.open(io.BytesIO(base64.b64decode(data)))


# ------------------------------------------------------------------------------------------------
# Model-free: a hand-made output folder


def fake_scene(
    out: Path, name: str, *, prompt: str = "a red ring", size=(32, 24), record: bool = True
) -> Path:
    folder = out / name
    (folder / "influence").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / "image.png")
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(folder / "influence" / "ring.png")
    if record:
        rec = {
            "format": "hmedit.render",
            "seeds": [5],
            "settings": [
                {
                    "seed": 5,
                    "width": size[0],
                    "height": size[1],
                    "steps": 2,
                    "guidance": 7.5,
                    "scheduler": "ddim",
                    "tiling": None,
                }
            ],
            "model": {"name": "toy", "hash": "abcdef0123456789", "family": "sd1"},
            "scene": {
                "name": name,
                "spec": {
                    "root": {
                        "id": "root",
                        "prompt": "bg",
                        "children": [
                            {"id": "ring", "prompt": prompt, "mask": {"ellipse": [0.1, 0.1, 0.5, 0.5]}}
                        ],
                    }
                },
            },
            "timings": {"load": 1.0, "seeds": {"5": {"sample": 0.5, "decode": 0.25}}, "total": 1.75},
            "outputs": ["image.png", "influence/ring.png"],
        }
        (folder / "render.json").write_text(json.dumps(rec), encoding="utf-8")
    return folder


def test_page_of_a_hand_made_folder_escapes_and_embeds(tmp_path):
    out = tmp_path / "out"
    fake_scene(out, "a", prompt='<script>alert(1)</script> & "quotes"', size=(1000, 600))
    (out / "not-a-scene").mkdir()  # no record, no image: left out
    page = Page(build_report(out, max_side=100))
    assert page.sections == ["scene-a"]
    assert "script" not in page.tags  # the prompt is text, not markup
    assert '<script>alert(1)</script> & "quotes"' in page.plain
    assert [im["alt"] for im in page.images] == ["image.png", "influence of ring"]
    big = decode(page.images[0]["src"], ["png"])
    assert big.size == (100, 60)  # downscaled to max_side for the page
    large = Page(build_report(out, max_side=400)).images[0]["src"]
    assert decode(large, ["jpeg"]).size == (400, 240)  # a large render as JPEG
    assert all(link.startswith(("data:", "#")) for link in page.links)  # nothing from outside the page
    assert "1.750" in page.plain or "1.750 s" in page.plain


def test_linked_images_are_relative_to_the_page(tmp_path):
    out = tmp_path / "out"
    fake_scene(out, "a")
    page = Page(build_report(out, page=tmp_path / "pages" / "r.html", embed=False))
    srcs = [im["src"] for im in page.images]
    assert srcs == ["../out/a/image.png", "../out/a/influence/ring.png"]
    assert "../out/a/image.png" in page.links  # the image links to the full file


def test_hostile_folder_contents_are_not_followed(tmp_path):
    out = tmp_path / "out"
    folder = fake_scene(out, "a")
    secret = tmp_path / "secret.png"
    shutil.move(folder / "image.png", secret)
    (folder / "image.png").symlink_to(secret)  # a link out of the folder is not read
    rec = json.loads((folder / "render.json").read_text())
    rec["outputs"] += ["../../secret.png", "/etc/passwd"]
    (folder / "render.json").write_text(json.dumps(rec))
    page = Page(build_report(out))
    assert [im["alt"] for im in page.images] == ["influence of ring"]
    assert "image.png: missing or not an image" in page.plain


def test_incomplete_and_unreadable_records_are_listed(tmp_path):
    out = tmp_path / "out"
    fake_scene(out, "good")
    fake_scene(out, "cut", record=False)
    (fake_scene(out, "junk", record=False) / "render.json").write_text("{not json")
    scenes, check = find_scenes(out)
    assert check is None
    assert [(s.name, s.complete) for s in scenes] == [("cut", False), ("good", True), ("junk", False)]
    page = Page(build_report(out))
    assert "no render.json: the render failed or was interrupted" in page.plain
    assert "render.json cannot be read" in page.plain
    assert len(page.images) == 4  # good: image + map; cut and junk: their image


@pytest.mark.parametrize(
    "odd",
    [
        {"settings": "x", "timings": [1], "model": "m", "outputs": {"image.png": 1}, "scene": "s"},
        {
            "settings": [None, 3],
            "timings": {"seeds": {"1": "fast"}},
            "scene": {"spec": {"root": {"children": 5}}},
        },
        {
            "scene": {
                "spec": {"root": {"id": 7, "prompt": None, "mask": [1], "children": [{"id": "c", "mask": 3}]}}
            }
        },
    ],
)
def test_odd_records_still_make_a_page(tmp_path, odd):
    folder = fake_scene(tmp_path / "out", "a")
    rec = {**json.loads((folder / "render.json").read_text()), **odd}
    (folder / "render.json").write_text(json.dumps(rec))
    page = Page(build_report(tmp_path / "out"))
    assert page.sections == ["scene-a"]


def test_a_folder_without_renders_is_refused(tmp_path):
    fake_scene(tmp_path / "out", "cut", record=False)
    with pytest.raises(HmeditError, match="no renders"):
        build_report(tmp_path / "out")
    with pytest.raises(HmeditError, match="no such output folder"):
        build_report(tmp_path / "nowhere")


def test_a_scene_folder_itself_can_be_reported(tmp_path):
    folder = fake_scene(tmp_path, "solo")
    scenes, _ = find_scenes(folder)
    assert [(s.name, s.folder) for s in scenes] == [("solo", folder)]
    path = write_report(folder, tmp_path / "r.html")
    assert Page(path.read_text()).sections == ["scene-solo"]


# ------------------------------------------------------------------------------------------------
# A real checked output folder (tests/outputs/conftest.py)


@pytest.mark.slow
def test_report_of_a_check_shows_every_scene_and_the_regression(checked):
    page = Page(build_report(checked.out))
    assert page.sections == ["scene-broken", "scene-leftover", "scene-tiled", "scene-two_seeds"]
    text = page.plain
    assert "missing.png" in text  # the failed render's error, from check.json
    assert "no render.json" in text  # the leftover folder
    assert "<b>bold</b>" in text and "b" not in [t for t in page.tags if t == "b"]  # a prompt, escaped
    rec = json.loads((checked.out / "check.json").read_text())
    bad = next(e for e in rec["results"] if e["regressed"])
    assert f"{bad['value']:.2f} dB" in text and "FAIL" in text
    alts = [im["alt"] for im in page.images]
    # tiled: image, sheet, golden, render, diff, 3 maps; two_seeds: 2 images, sheet, 2 x 3 check, 2 maps
    assert alts.count("golden") == 3 and alts.count("render") == 3 and alts.count("diff") == 3
    assert alts.count("influence maps") == 2 and "influence of spot.1" in alts
    for im in page.images:
        assert decode(im["src"]).size[0] > 0
    # the diff of the injected regression shows the altered square, the passing one is black
    diffs = [
        np.asarray(decode(im["src"], ["png"]).convert("RGB")) for im in page.images if im["alt"] == "diff"
    ]
    assert sorted(int(d.max() > 0) for d in diffs) == [0, 0, 1]
    assert "tiled" in text and "euler_a" in text  # the tiled render's settings


def launch(playwright):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set HMEDIT_CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.mark.slow
def test_report_in_headless_chromium(checked, tmp_path):
    """The embedded page and the linked one: no console message, no failed request, every image loaded, and
    a full-page screenshot that is not blank."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    pages = {}
    for embed in (True, False):
        target = checked.out / ("report.html" if embed else "linked.html")
        write_report(checked.out, target, embed=embed)
        pages[target] = len(Page(target.read_text()).images)
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        try:
            for target, count in pages.items():
                page = browser.new_page(viewport={"width": 1200, "height": 900})
                messages, failed = [], []
                page.on("console", lambda m, messages=messages: messages.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e, messages=messages: messages.append(f"pageerror: {e}"))
                page.on("requestfailed", lambda r, failed=failed: failed.append(r.url))
                page.goto(target.as_uri(), wait_until="load")
                sizes = page.evaluate(
                    "Array.from(document.images)"
                    ".map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
                )
                shot = page.screenshot(full_page=True)
                page.close()
                assert messages == [] and failed == [], target
                assert len(sizes) == count == 20  # leftover 1, tiled 8, two_seeds 11
                assert all(complete and w > 0 and h > 0 for _, complete, w, h in sizes), (target, sizes)
                pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
                assert (
                    pixels.shape[1] == 1200 and pixels.shape[0] > 900
                )  # the whole page, taller than the window
                assert pixels.std() > 20, target  # not blank
        finally:
            browser.close()
