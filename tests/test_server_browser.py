"""The web page in real headless Chromium (Debian's, driven by Selenium): upload, result, errors.

Needs `chromium` and `chromium-driver` (apt); without them this test fails, it never skips.
"""

import pytest
from test_server_support import (
    headless_chromium,
    live_server,
    sample_images,
)

from emovlm_kd.apps.server.app import create_app
from emovlm_kd.apps.server.config import ServerConfig

# A phone's screen: the page must fit it without sideways scrolling.
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"), screen=PHONE)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(model, browser):
    with live_server(create_app(model, ServerConfig(model_name="tiny"))) as base:
        browser.get(base + "/")
        yield browser, base, model


def wait_for(driver, condition, seconds: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition)


def test_uploading_an_image_shows_emotion_bars_and_explanation(page, sample_root):
    from selenium.webdriver.common.by import By

    driver, base, model = page
    labels = model.taxonomy.labels
    image = sample_images(sample_root, 1)[0]
    driver.find_element(By.ID, "file").send_keys(str(image))
    wait_for(driver, lambda d: d.find_element(By.ID, "result").is_displayed())

    # textContent: what the server said, before CSS capitalises it.
    label = driver.find_element(By.ID, "label").get_attribute("textContent")
    assert label in labels
    assert driver.find_element(By.ID, "confidence").text.endswith("%)")
    # Three distributions, one bar per label each, widths matching the percentages shown.
    charts = driver.find_elements(By.CSS_SELECTOR, ".bars")
    assert [chart.get_attribute("data-part") for chart in charts] == ["probs", "vlm", "head"]
    for chart in charts:
        rows = chart.find_elements(By.CSS_SELECTOR, ".row")
        assert [row.find_element(By.CSS_SELECTOR, ".name").get_attribute("textContent") for row in rows] == list(labels)
        shown = [float(row.find_element(By.CSS_SELECTOR, ".value").text.rstrip("%")) for row in rows]
        assert sum(shown) == pytest.approx(100, abs=1)
        assert len(chart.find_elements(By.CSS_SELECTOR, ".row.top")) == 1
    fused = charts[0].find_element(By.CSS_SELECTOR, ".row.top .name").get_attribute("textContent")
    assert fused == label
    explanation = driver.find_element(By.ID, "explanation")
    assert explanation.is_displayed() and explanation.text.strip()
    assert driver.find_element(By.ID, "preview").is_displayed()

    # Fits a phone: no sideways scrolling.
    # (A page wider than the phone would widen the emulated viewport itself.)
    too_wide = driver.execute_script(
        "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > arguments[0])"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className)",
        PHONE[0],
    )
    assert driver.execute_script("return window.innerWidth") == PHONE[0] and not too_wide, too_wide
    # Nothing was fetched from anywhere but this server (no CDN, no fonts).
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith((base, "blob:", "data:")) for url in fetched), fetched


def test_a_file_that_is_not_an_image_shows_the_servers_sentence(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver, _, _ = page
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    driver.find_element(By.ID, "file").send_keys(str(text_file))
    status = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#status.error"))
    assert "notes.txt" in status.text and "not an image" in status.text


def test_dropping_an_image_classifies_it(page, sample_root):
    import base64

    from selenium.webdriver.common.by import By

    driver, _, model = page
    data = base64.b64encode(sample_images(sample_root, 2)[1].read_bytes()).decode()
    # What a drag from the desktop delivers: a drop event carrying a file.
    driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));",
        data,
    )
    wait_for(driver, lambda d: "dropped.png" in d.find_element(By.ID, "hint").text and d.find_element(By.ID, "status").text == "")
    assert driver.find_element(By.ID, "label").get_attribute("textContent") in model.taxonomy.labels
    assert not driver.find_elements(By.CSS_SELECTOR, "#status.error")
