"""--report-html / --report-md: one self-contained page with tables and plots, seen in Chromium."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from lightir import zoo
from lightir.cli import run as main
from lightir.data import LABELS_KEY
from lightir.report_html import COLORS, PLOT_HINT, render_html

PIPELINE = "reparam,prune{ratio=0.3,round=16},int8"  # round pinned: the default is measured per CPU


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The issue's two runs through the command line: a pipeline and a search."""
    folder = tmp_path_factory.mktemp("reports")
    rng = np.random.default_rng(0)
    calib = folder / "calib.npz"
    np.savez(calib, input=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    pages = {}
    code = main(
        [
            "zoo:resnet",
            "-p",
            PIPELINE,
            "--calib",
            str(calib),
            "--report-html",
            str(folder / "pipeline.html"),
            "--report-md",
            str(folder / "pipeline.md"),
            "-q",
        ]
    )
    assert code == 0
    images, labels = zoo.digits_test_split()
    digits = folder / "digits.npz"
    np.savez(digits, input=images[:160], **{LABELS_KEY: labels[:160]})
    code = main(
        [
            "zoo:digits",
            "-p",
            "compress{max-drop=0.03,time-limit=60}",
            "--calib",
            str(digits),
            "--metric",
            "top1",
            "--report-html",
            str(folder / "search.html"),
            "-q",
        ]
    )
    assert code == 0
    for name in ("pipeline", "search"):
        pages[name] = (folder / f"{name}.html").read_text()
    pages["markdown"] = (folder / "pipeline.md").read_text()
    pages["folder"] = folder
    return pages


def test_the_page_holds_the_tables_and_plots_and_fetches_nothing(runs):
    page = runs["pipeline"]
    assert "<h2>Passes</h2>" in page and "<h2>Op types</h2>" in page and "<h2>Layers</h2>" in page
    assert "<td>BatchNormalization</td><td class=num>15</td><td class=num>0</td>" in page
    # Every layer keeps its name through fold-bn; prune and int8 show on it.
    assert "<td>conv_1</td>" in page
    assert "weight 32x32x3x3 -&gt; 16x32x3x3; int8 weights" in page
    assert page.count('src="data:image/svg+xml;base64,') >= 2  # time per pass, cost
    # One file that opens offline: nothing to fetch, no script.
    assert "<script" not in page and 'src="http' not in page and 'href="http' not in page
    search = runs["search"]
    assert search.count('src="data:image/svg+xml;base64,') >= 3  # time, front, sensitivity
    assert 'alt="#2 compress front"' in search and 'alt="#2 compress sensitivity"' in search


def test_markdown_carries_the_same_tables(runs):
    markdown = runs["markdown"]
    assert "| # | pass | contract |" in markdown
    assert "| BatchNormalization | 15 | 0 | -15 |" in markdown
    assert "| conv_1 | Conv |" in markdown


def test_without_matplotlib_the_page_keeps_its_tables_and_says_why(monkeypatch):
    import lightir

    report = lightir.optimize("zoo:resnet", "fold-bn", verify="structural").report
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises
    page = render_html(report)
    assert PLOT_HINT.replace("'", "&#x27;") in page
    assert "data:image/svg" not in page and "<h2>Layers</h2>" in page


def _browser():
    from lightir.testing.browser import find

    browser, why = find()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI renders the HTML report in Chromium, but: {why}")
        pytest.skip(why)
    return browser


def _pixels(png) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _count(pixels: np.ndarray, color: str) -> int:
    """Pixels of the screenshot within a few levels of ``color``."""
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], np.int16)
    return int((np.abs(pixels - rgb).max(axis=-1) <= 12).sum())


def test_the_pages_render_in_chromium_with_their_plots(runs):
    """Each plot's own colours show in a headless screenshot; the same page without plots
    (as without matplotlib) shows none of them, so the colours come from the plots."""
    from lightir.testing.browser import screenshot

    _browser()
    folder = runs["folder"]
    pipeline = _pixels(screenshot(folder / "pipeline.html", folder / "pipeline.png"))
    search = _pixels(screenshot(folder / "search.html", folder / "search.png"))
    bare = folder / "bare.html"
    bare.write_text(runs["pipeline"].split("<h2>Plots</h2>")[0] + "</body></html>")
    control = _pixels(screenshot(bare, folder / "bare.png"))
    for pixels in (pipeline, search, control):
        assert (pixels < 250).any(axis=-1).mean() > 0.01  # not a blank page
    # A few markers of the front are a few hundred pixels; a bar or a line, thousands.
    shown = {
        "pipeline": [_count(pipeline, c) for c in (*COLORS["time"], *COLORS["cost"])],
        "search front": [_count(search, COLORS["front"][0])],
        "search sensitivity": [max(_count(search, c) for c in COLORS["sensitivity"])],
    }
    for plot, counts in shown.items():
        assert all(count >= 150 for count in counts), (plot, counts)
    every = [c for colors in COLORS.values() for c in colors]
    assert max(_count(control, c) for c in every) < 30


def test_a_factorized_layer_counts_its_whole_chain_and_shows_its_rank():
    import lightir
    from lightir.data import CalibrationData
    from lightir.report_html import layer_table

    rng = np.random.default_rng(0)
    calib = CalibrationData({"input": rng.standard_normal((32, 3, 32, 32)).astype(np.float32)})
    report = lightir.optimize("zoo:resnet", "fold-bn,svd{energy=0.9}", calib=calib).report
    stats = report.record("svd").stats["layers"]
    rows = {row[0]: row for row in layer_table(report)[1:]}
    for name, entry in stats.items():
        row = rows[name]
        assert row[6].startswith("factorized into 2: "), row
        assert f"rank {entry['rank']}" in row[7]
        after = [a for a in report.profile["after"]["layers"] if a["name"] in entry["chain"]]
        assert sum(a["macs"] for a in after) < next(
            b["macs"] for b in report.profile["before"]["layers"] if b["name"] == name
        )
