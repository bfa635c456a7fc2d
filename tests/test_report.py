"""The evaluation report: self-contained, and every figure loads in a real (headless) browser."""

import re

import pytest
from chromium import headless_chromium


def test_report_is_self_contained(evaluated):
    out, _ = evaluated
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == 5 and all(src.startswith("data:image/png;base64,") for src in sources)
    # Nothing to fetch: no links, scripts or style sheets from anywhere.
    assert not re.search(r"https?://|<script|<link|@import", page)
    for section in ("Scores", "Complementarity", "Per class", "Calibration", "Training", "Efficiency"):
        assert f"<h2>{section}</h2>" in page


@pytest.fixture
def browser(tmp_path):
    driver = headless_chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def test_every_image_of_the_report_loads_in_chromium(evaluated, browser):
    out, _ = evaluated
    browser.get((out / "report.html").as_uri())
    images = browser.execute_script(
        "return Array.from(document.images)"
        ".map(i => ({id: i.parentElement.id, complete: i.complete, width: i.naturalWidth}))"
    )
    assert [image["id"] for image in images] == ["confusion", "complementarity", "per_class", "reliability", "training"]
    assert all(image["complete"] and image["width"] > 0 for image in images), images
    # The page asked the network for nothing.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "EmoVLM-KD evaluation" in browser.title


def test_without_matplotlib_evaluate_says_what_to_install(trained, tmp_path, monkeypatch, capsys):
    import importlib.util

    from test_pipeline import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, err = cli(capsys, "evaluate", "--run", trained[0], "--out", tmp_path)
    assert code == 1 and "pip install 'emovlm-kd[plot]'" in err and "--no-report" in err
    assert not (tmp_path / "metrics.json").exists()  # refused before any work
