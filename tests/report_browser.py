"""Open a report page in a real headless Chromium and list what is wrong with it (a test helper).

The report (``codetransfer/report.py``) is a static page: ``index.html`` plus PNG figures next to
it. Reading the HTML as text cannot tell whether a browser shows it: a figure whose file is missing
or unreadable, a broken tag, a script error. So the tests open ``file://.../index.html`` in
Debian's ``chromium`` driven through ``chromium-driver`` (Selenium) and ask the page itself:

1. the browser's console holds no SEVERE entry (a missing image logs ``Failed to load resource``);
2. ``document.readyState`` is ``complete`` (the load event waits for every image);
3. every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``), and the page holds as many images
   as the HTML file has ``<img>`` tags (none lost by a broken tag);
4. every section the issue names is there with its content, as the browser parsed it: the grid
   figure, the paper-style table, the probing / patching / head tables and the paragraph "Where code
   exposure changes the reasoning circuit" followed by its table.

:func:`check_page` returns the list of problems (empty = the page is fine), so a test can assert
both that the real report passes and that a known-bad copy (one PNG deleted) is flagged.

Chromium is installed by ``make test`` (``apt-get install chromium chromium-driver`` when root and
apt exist). :func:`browser_or_skip` starts it, skips the test when it is absent and cannot be
installed here (not root or no apt), and fails when it could have been installed but was not, so
that CI cannot silently skip the check.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

#: Chromium flags for a headless run in a container (no sandbox, no GPU, no network chatter).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
)


@dataclass(frozen=True)
class Expect:
    """What one report section (an ``<h2>`` and the elements up to the next ``<h2>``) must hold."""

    title: str
    """Start of the section's heading text."""
    tables: int = 0
    """Least number of ``<table>`` elements in the section."""
    figures: tuple[str, ...] = ()
    """Image files (``src``) that must be shown in the section."""
    text: str = ""
    """A sentence that must start a paragraph of the section, and be followed by a table."""
    items: int = 0
    """Least number of list items (``<li>``) in the section."""


#: The sections the issue names (the report's headings in codetransfer/report.py).
REPORT_SECTIONS = (
    Expect("Headline findings", items=3),
    Expect("The grid", tables=1, figures=("grid.png",)),
    Expect("Evaluation: the paper-style table", tables=1, figures=("relative_change.png",)),
    Expect("Probing", tables=1),
    Expect("Activation patching", tables=1),  # its cross-model table only where a gap exists (often none)
    Expect("Attention heads", tables=1),
)

_SECTIONS_JS = """
const out = [];
let cur = null;
for (const el of document.body.children) {
  if (el.tagName === 'H2') { cur = {title: el.textContent, tables: 0, items: 0, images: [], paragraphs: []}; out.push(cur); continue; }
  if (cur === null) continue;
  cur.tables += (el.tagName === 'TABLE' ? 1 : 0) + el.querySelectorAll('table').length;
  for (const img of (el.tagName === 'IMG' ? [el] : el.querySelectorAll('img'))) cur.images.push(img.getAttribute('src'));
  if (el.tagName === 'P') {
    let next = el.nextElementSibling;
    cur.paragraphs.push([el.textContent, next !== null && next.tagName === 'TABLE']);
  }
  cur.items += (el.tagName === 'LI' ? 1 : 0) + el.querySelectorAll('li').length;
}
return out;
"""

_IMAGES_JS = """
return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}));
"""


class _ImgTags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.count = 0

    def handle_starttag(self, tag, attrs):
        self.count += tag == "img"


def img_tags_in(html_file: Path) -> int:
    """Number of ``<img>`` tags in the HTML file's text (what the page should show)."""
    parser = _ImgTags()
    parser.feed(Path(html_file).read_text(encoding="utf-8"))
    return parser.count


def start_chromium():
    """A headless Chromium driven by Debian's chromedriver (Selenium), logging the browser console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def browser_or_skip():
    """Start the browser, or skip (absent and not installable here), or fail (installable but absent)."""
    pytest.importorskip("selenium", reason="selenium is in the 'test' extra: pip install -e '.[test]'")
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        can_install = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None
        if can_install:
            pytest.fail(
                f"{' and '.join(missing)} not found although this machine can install them: "
                "run `make test` (or apt-get install chromium chromium-driver)"
            )
        pytest.skip(
            f"{' and '.join(missing)} not found and not installable here (needs root and apt-get): "
            "the report's browser check is skipped"
        )
    return start_chromium()


def check_page(driver, html_file: Path, expect: tuple[Expect, ...] = REPORT_SECTIONS) -> list[str]:
    """Open ``html_file`` in ``driver`` and return every problem found (empty list: the page is fine)."""
    html_file = Path(html_file).resolve()
    driver.get_log("browser")  # drop entries of earlier pages
    driver.get(html_file.as_uri())
    problems = []
    state = driver.execute_script("return document.readyState")
    if state != "complete":
        problems.append(f"document.readyState is '{state}', not 'complete'")
    for entry in driver.get_log("browser"):
        if entry.get("level") == "SEVERE":
            problems.append(f"console error: {entry.get('message')}")
    images = driver.execute_script(_IMAGES_JS)
    for img in images:
        if not img["complete"] or not img["width"]:
            problems.append(f"image not loaded: {img['src']}")
    tags = img_tags_in(html_file)
    if len(images) != tags:
        problems.append(f"the page shows {len(images)} images but the HTML has {tags} <img> tags")
    sections = driver.execute_script(_SECTIONS_JS)
    for want in expect:
        found = [s for s in sections if s["title"].strip().startswith(want.title)]
        if not found:
            problems.append(f"section '{want.title}' is missing (sections: {[s['title'] for s in sections]})")
            continue
        s = found[0]
        if s["tables"] < want.tables:
            problems.append(f"section '{want.title}' has {s['tables']} tables, expected at least {want.tables}")
        if s["items"] < want.items:
            problems.append(f"section '{want.title}' has {s['items']} list items, expected at least {want.items}")
        for fig in want.figures:
            if fig not in s["images"]:
                problems.append(f"section '{want.title}' does not show {fig}")
        if want.text and not any(p.strip().startswith(want.text) and table for p, table in s["paragraphs"]):
            problems.append(f"section '{want.title}' has no paragraph '{want.text}' followed by a table")
    return problems
