"""The headless-Chromium page check (tests/report_browser.py) on small known pages: it passes a good
page and flags each kind of bad one. The real report is checked in tests/test_pipeline.py."""

from __future__ import annotations

import numpy as np
import pytest

from report_browser import Expect, browser_or_skip, check_page, img_tags_in

EXPECT = (
    Expect("Figures", tables=1, figures=("a.png",)),
    Expect("Circuit", tables=1, text="Where code exposure changes the reasoning circuit."),
)


def _page(folder, body_extra: str = "", circuit: str = "Where code exposure changes the reasoning circuit.") -> str:
    import matplotlib.pyplot as plt

    plt.imsave(folder / "a.png", np.arange(12.0).reshape(3, 4))
    plt.imsave(folder / "b.png", np.eye(4))
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body><h1>t</h1>"
        '<h2>Figures</h2><figure><img src="a.png" alt="a"></figure><figure><img src="b.png" alt="b"></figure>'
        "<table><tr><td>1</td></tr></table>"
        f"<h2>Circuit</h2><p><b>{circuit}</b> text</p><table><tr><td>2</td></tr></table>{body_extra}"
        "</body></html>"
    )
    (folder / "index.html").write_text(html)
    return folder / "index.html"


@pytest.fixture(scope="module")
def browser():
    driver = browser_or_skip()
    yield driver
    driver.quit()


def test_a_good_page_passes(browser, tmp_path):
    page = _page(tmp_path)
    assert img_tags_in(page) == 2
    assert check_page(browser, page, EXPECT) == []


def test_a_deleted_image_is_flagged(browser, tmp_path):
    page = _page(tmp_path)
    (tmp_path / "b.png").unlink()
    problems = check_page(browser, page, EXPECT)
    assert "image not loaded: b.png" in problems
    assert any(p.startswith("console error") and "b.png" in p for p in problems)


def test_an_unreadable_image_is_flagged(browser, tmp_path):
    page = _page(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not a png")
    assert "image not loaded: a.png" in check_page(browser, page, EXPECT)


def test_a_script_error_is_flagged(browser, tmp_path):
    page = _page(tmp_path, body_extra="<script>undefinedFunction();</script>")
    problems = check_page(browser, page, EXPECT)
    assert len(problems) == 1 and problems[0].startswith("console error") and "undefinedFunction" in problems[0]


def test_an_image_swallowed_by_a_broken_tag_is_flagged(browser, tmp_path):
    page = _page(tmp_path, body_extra='<textarea><img src="a.png"></textarea>')
    assert check_page(browser, page, EXPECT) == ["the page shows 2 images but the HTML has 3 <img> tags"]


def test_a_missing_section_or_paragraph_is_flagged(browser, tmp_path):
    page = _page(tmp_path, circuit="Something else.")
    problems = check_page(browser, page, EXPECT + (Expect("Attention heads", tables=1),))
    assert problems == [
        "section 'Circuit' has no paragraph 'Where code exposure changes the reasoning circuit.' followed by a table",
        "section 'Attention heads' is missing (sections: ['Figures', 'Circuit'])",
    ]
