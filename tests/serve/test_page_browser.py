"""The web page of `cmvl serve` in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) against the real service on the session's tiny VQA run, behind a bearer token: the page opens without
the token and names nothing of the model, asks for the token, then shows for an uploaded shapes image and a typed
question exactly the answers and probabilities `cmvl predict` gives, and the overlay; an undecodable upload gets
the server's one line; served without overlays (as backend=onnx is) it shows answers only and never asks
/explain.

Without the browser the one browser test skips, saying which; with `CI` set (as `.ci/run`'s caller sets it) a
missing browser fails it instead."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import httpx
import pytest

from cmvl.predict.pipeline import predict
from cmvl.serve.app import ServeSettings, create_app
from cmvl.serve.torch_model import TorchCheckpoint
from tests.serve.serving import json_body, post, running, val_questions

TOKEN = "page-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's packages
WAIT_S = 60  # the longest a page may take to answer (a loaded 2-core machine)


@pytest.fixture(scope="module")
def best(finished_tiny_run) -> Path:
    return finished_tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def served(best):
    """The service behind the token under uvicorn on a free port: (base URL, app)."""
    app = create_app(TorchCheckpoint.open(best), ServeSettings(token=TOKEN))
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def question(tiny_world) -> tuple[Path, str]:
    return next((image, q) for image, q in val_questions(tiny_world) if q.startswith("What color"))


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra)"
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        return f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Debian's binary and driver given by path: Selenium downloads nothing)."""
    missing = _missing_browser()
    if missing:
        message = f"test_the_page_in_headless_chromium needs a browser: {missing}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run it (.ci/run installs the browser)", pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _by_id(driver, element_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=f"the page did not {what}")


def _status(driver) -> str:
    return _by_id(driver, "status").text


def _ask(driver, url: str, image: Path, text: str | None, *, token: str | None) -> None:
    """Open the page, give it the token, the image and the text, and press Ask."""
    driver.get(url + "/")
    if token is not None:
        _by_id(driver, "token-input").send_keys(token)
    _by_id(driver, "image-input").send_keys(str(image))
    if text is not None:
        _by_id(driver, "text-input").send_keys(text)
    _by_id(driver, "submit").click()


def _answered(driver) -> bool:
    """Whether the page shows its answer or an error line (either ends the wait; the test tells which)."""
    from selenium.webdriver.common.by import By

    shown = driver.find_elements(By.CSS_SELECTOR, "#answers-body tr")
    return bool(shown) or "error" in _by_id(driver, "status").get_attribute("class")


def _shown_answers(driver) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#answers-body tr")
    return [tuple(cell.text for cell in row.find_elements(By.TAG_NAME, "td")) for row in rows]


def test_the_page_is_served_without_the_token_and_names_nothing_of_the_model(served):
    url, app = served
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert httpx.get(url + "/info").status_code == 401  # what the page then asks for still needs the token
    html = page.text
    assert '{"overlay": true}' in html and "{{ page_config }}" not in html
    assert app.state.service.card.task not in html.replace("/predict", "")  # "vqa" and the like: only from /info
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # nothing loaded from elsewhere


def test_the_page_in_headless_chromium(browser, served, best, question, tmp_path):
    """The one browser test (it skips, or fails under CI, as a whole): the answers and the overlay, a refused
    upload, and a service without overlays."""
    _answers_what_cmvl_predict_answers_with_the_overlay(browser, served, question)
    _shows_the_servers_line_for_an_undecodable_upload(browser, served, tmp_path)
    _shows_answers_only_without_overlays(browser, best, question)


def _answers_what_cmvl_predict_answers_with_the_overlay(browser, served, question) -> None:
    url, app = served
    image, text = question
    browser.get(url + "/")
    _wait(browser, lambda d: "access token" in _status(d), "ask for the token")
    _ask(browser, url, image, text, token=TOKEN)
    _wait(browser, _answered, "answer")
    assert _shown_answers(browser), _status(browser)
    expected = predict(app.state.service.model.run, image, question=text)
    assert _shown_answers(browser) == [(a.label, f"{a.score:.4f}") for a in expected.answers]
    assert _by_id(browser, "model-info").text.startswith("task: vqa")
    assert _by_id(browser, "text-label").text == "Question"
    _wait(browser, lambda d: _by_id(d, "overlay").get_attribute("src"), "show the overlay")
    overlay = _by_id(browser, "overlay")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    _wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", overlay) > 0, "decode the overlay")
    assert _status(browser) == "answered"


def _shows_the_servers_line_for_an_undecodable_upload(browser, served, tmp_path) -> None:
    url, _ = served
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are not pixels")
    _ask(browser, url, not_an_image, "What color is the circle?", token=TOKEN)
    _wait(browser, _answered, "answer")
    assert _shown_answers(browser) == []
    refused = post(url, "/predict", json_body(not_an_image, "What color is the circle?"), token=TOKEN)
    assert refused.status_code == 422 and _status(browser) == f"/predict: {refused.json()['error']}"
    _ask(browser, url, not_an_image, "   ", token=TOKEN)  # an empty question never leaves the page
    _wait(browser, lambda d: _status(d) == "type a question first", "refuse the empty question")


def _shows_answers_only_without_overlays(browser, best, question) -> None:
    """Served as backend=onnx serves (no maps): answers, no overlay, and /explain is never asked."""
    opened = TorchCheckpoint.open(best)
    no_maps = dataclasses.replace(opened, card=dataclasses.replace(opened.card, explains=False))
    app = create_app(no_maps, ServeSettings())
    image, text = question
    with running(app) as url:
        _ask(browser, url, image, text, token=None)
        _wait(browser, _answered, "answer")
        assert _shown_answers(browser), _status(browser)
        assert "no overlay" in _by_id(browser, "model-info").text
        assert not _by_id(browser, "overlay-figure").is_displayed() and _status(browser) == "answered"
        metrics = app.state.service.metrics
        assert _requests_to(metrics, "/predict") == 1 and _requests_to(metrics, "/explain") == 0


def _requests_to(metrics, route: str) -> float:
    """How many requests the service counted for `route` (any status)."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "cmvl_serve_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"] == route
    )
